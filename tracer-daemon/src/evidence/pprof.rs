//! Encodes a leak report as a pprof profile (the `perftools.profiles` protobuf, gzipped), so
//! the evidence of a leak opens in `go tool pprof` and every other pprof viewer. The wire
//! structs are written here from the public format; no prost type leaves this module.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use crate::symbolize::Frame;

/// One leaking call stack of one process and what it still holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileStack {
    /// Innermost (the allocation call site) first, as the symbolizer resolved them; an
    /// inlined frame precedes the frame it was inlined into.
    pub frames: Arc<[Frame]>,
    /// Bytes allocated here and not yet freed.
    pub bytes: u64,
    /// Allocations made here and not yet freed.
    pub count: u64,
    /// Process the stack was seen in.
    pub pid: u32,
}

/// Profile-wide facts shown by pprof viewers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileMeta {
    /// When the tracing window started, in nanoseconds since the Unix epoch.
    pub time_unix_ns: i64,
    /// Length of the tracing window in nanoseconds.
    pub duration_ns: i64,
    /// Free-form lines, e.g. "pod shop/api-0 container app", "evidence 12: oom_kill".
    pub comments: Vec<String>,
    /// What the values are.
    pub kind: ProfileKind,
}

/// What a profile's values are: never mixed in one profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProfileKind {
    /// Outstanding allocations (exact tracing): inuse_objects/count, inuse_space/bytes.
    #[default]
    Outstanding,
    /// Resident growth by first touch (page faults): first_touch_pages/count,
    /// first_touch_space/bytes; a stack's `count` is pages.
    FirstTouch,
}

impl ProfileKind {
    /// What its values are, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Outstanding => "outstanding allocations",
            Self::FirstTouch => "growth profile",
        }
    }

    /// The sample types (count, then bytes).
    fn sample_types(self) -> [&'static str; 2] {
        match self {
            Self::Outstanding => ["inuse_objects", "inuse_space"],
            Self::FirstTouch => ["first_touch_pages", "first_touch_space"],
        }
    }
}

/// Failures of [`encode_gzipped`].
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// The gzip stream could not be written.
    #[error("failed to gzip the pprof profile")]
    Compress {
        /// The encoder's error.
        #[source]
        source: std::io::Error,
    },
}

/// Encodes the stacks as a pprof profile with the kind's sample types (count, then bytes;
/// the bytes are the default sample type), gzipped as pprof files are on disk. The `base`
/// stacks, when any, are added negated and labelled `pprof::base=true`, exactly as
/// `go tool pprof -diff_base` merges a base profile: the profile shows the change from them.
///
/// # Errors
///
/// [`PprofError::Compress`] when the gzip encoder fails.
pub fn encode_gzipped(
    stacks: &[ProfileStack],
    base: &[ProfileStack],
    meta: &ProfileMeta,
) -> Result<Vec<u8>, PprofError> {
    let compress = |source| PprofError::Compress { source };
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(&encode(stacks, base, meta))
        .map_err(compress)?;
    encoder.finish().map_err(compress)
}

/// The same as [`encode_gzipped`], not compressed (for tests and callers that compress
/// themselves).
pub fn encode(stacks: &[ProfileStack], base: &[ProfileStack], meta: &ProfileMeta) -> Vec<u8> {
    let mut builder = Builder::default();
    // pprof requires string_table[0] == "": index 0 doubles as "unset".
    builder.string("");
    let [count_type, bytes_type] = meta.kind.sample_types();
    builder.profile.sample_type = vec![
        builder.value_type(count_type, "count"),
        builder.value_type(bytes_type, "bytes"),
    ];
    builder.profile.default_sample_type = builder.string(bytes_type);
    builder.profile.time_nanos = meta.time_unix_ns;
    builder.profile.duration_nanos = meta.duration_ns;
    let comments = meta.comments.iter();
    builder.profile.comment = comments.map(|comment| builder.string(comment)).collect();
    let pid_key = builder.string("pid");
    // The label go tool pprof puts on a -diff_base profile's samples.
    let base_key = builder.string("pprof::base");
    let base_value = builder.string("true");
    // Viewers take mapping[0] as the main binary (the "File:" line); the leaf frame is
    // usually in libc, so register the first module that is not a shared library first.
    let mut modules = stacks
        .iter()
        .chain(base)
        .flat_map(|stack| stack.frames.iter())
        .filter_map(|frame| frame.module.as_deref());
    if let Some(main_binary) = modules.find(|module| !is_shared_library(module)) {
        builder.mapping(main_binary);
    }
    let samples = stacks.iter().map(|s| (s, false));
    for (stack, is_base) in samples.chain(base.iter().map(|s| (s, true))) {
        let location_id = builder.location_ids(&stack.frames);
        // Order matches `sample_type`; pprof values are signed, so clamp rather than wrap.
        let mut value = vec![saturating_i64(stack.count), saturating_i64(stack.bytes)];
        let mut label = vec![Label {
            key: pid_key,
            num: i64::from(stack.pid),
            ..Label::default()
        }];
        if is_base {
            value.iter_mut().for_each(|v| *v = -*v);
            label.push(Label {
                key: base_key,
                str: base_value,
                ..Label::default()
            });
        }
        builder.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }
    builder.profile.encode_to_vec()
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Interns strings, functions, locations and mappings while the profile is assembled.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    /// (name, filename) string indices → function id.
    functions: HashMap<(i64, i64), u64>,
    /// (address, mapping id or 0) → location id.
    locations: HashMap<(u64, u64), u64>,
    /// Module path → index in `profile.mapping`.
    mappings: HashMap<String, usize>,
}

impl Builder {
    fn string(&mut self, value: &str) -> i64 {
        if let Some(&index) = self.strings.get(value) {
            return index;
        }
        let index = i64::try_from(self.profile.string_table.len()).unwrap_or(i64::MAX);
        self.profile.string_table.push(value.to_owned());
        self.strings.insert(value.to_owned(), index);
        index
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    /// One location per physical frame (see [`physical_chains`]).
    fn location_ids(&mut self, frames: &[Frame]) -> Vec<u64> {
        physical_chains(frames)
            .into_iter()
            .map(|chain| self.location(chain))
            .collect()
    }

    /// `chain` is innermost first and ends with the physical frame.
    fn location(&mut self, chain: &[Frame]) -> u64 {
        let Some(physical) = chain.last() else {
            return 0;
        };
        let mapping_index = physical
            .module
            .as_deref()
            .map(|module| self.mapping(module));
        let mapping_id = mapping_index.map_or(0, |index| index as u64 + 1);
        if let Some(&id) = self.locations.get(&(physical.addr, mapping_id)) {
            return id;
        }
        let line = chain
            .iter()
            .map(|frame| Line {
                function_id: self.function(frame),
                line: frame.line.map_or(0, i64::from),
            })
            .collect();
        if let Some(index) = mapping_index {
            let mapping = &mut self.profile.mapping[index];
            mapping.has_functions |= chain.iter().any(|frame| frame.function.is_some());
            mapping.has_filenames |= chain.iter().any(|frame| frame.file.is_some());
            mapping.has_line_numbers |= chain.iter().any(|frame| frame.line.is_some());
            mapping.has_inline_frames |= chain.len() > 1;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address: physical.addr,
            line,
        });
        self.locations.insert((physical.addr, mapping_id), id);
        id
    }

    fn mapping(&mut self, module: &str) -> usize {
        if let Some(&index) = self.mappings.get(module) {
            return index;
        }
        let index = self.profile.mapping.len();
        // Addresses are per process while a mapping is per module, so no address range
        // would be right for every pid: memory_start, memory_limit and file_offset stay unset.
        let filename = self.string(module);
        self.profile.mapping.push(Mapping {
            id: index as u64 + 1,
            filename,
            ..Mapping::default()
        });
        self.mappings.insert(module.to_owned(), index);
        index
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = match &frame.function {
            Some(name) => self.string(name),
            None => self.string(&unsymbolized_name(frame)),
        };
        let filename = frame.file.as_deref().map_or(0, |file| self.string(file));
        if let Some(&id) = self.functions.get(&(name, filename)) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        // system_name stays unset: pprof re-demangles (and strips `<..>` and `(..)` from)
        // any name equal to its system_name, and ours are already demangled.
        self.profile.function.push(Function { id, name, filename });
        self.functions.insert((name, filename), id);
        id
    }
}

/// The frames grouped by physical frame, innermost first: a run of inlined frames joins the
/// frame they were inlined into, which ends the chain (pprof and OTLP both put the caller as a
/// location's last line).
pub(crate) fn physical_chains(frames: &[Frame]) -> Vec<&[Frame]> {
    let mut chains = Vec::new();
    let mut start = 0;
    for (index, frame) in frames.iter().enumerate() {
        // A trailing inlined frame has no caller to join; keep it rather than drop it.
        if !frame.inlined || index + 1 == frames.len() {
            chains.push(&frames[start..=index]);
            start = index + 1;
        }
    }
    chains
}

fn is_shared_library(module: &str) -> bool {
    let file_name = module.rsplit('/').next().unwrap_or(module);
    file_name.ends_with(".so") || file_name.contains(".so.") || file_name.starts_with('[')
}

/// A name for a frame the symbolizer could not resolve, so that it still shows up as its own
/// node: `libfoo.so+0x1a2b` when the module is known, the bare address otherwise.
pub(crate) fn unsymbolized_name(frame: &Frame) -> String {
    match (&frame.module, frame.module_offset) {
        (Some(module), Some(offset)) => {
            let file_name = module.rsplit('/').next().unwrap_or(module);
            format!("{file_name}+{offset:#x}")
        }
        _ => format!("{:#x}", frame.addr),
    }
}

// The subset of github.com/google/pprof proto/profile.proto (package perftools.profiles)
// this encoder writes, with the public field numbers; fields it never sets are left out.

#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(int64, repeated, tag = "13")]
    comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
    #[prost(int64, tag = "3")]
    num: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
    #[prost(bool, tag = "8")]
    has_filenames: bool,
    #[prost(bool, tag = "9")]
    has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    has_inline_frames: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(uint64, tag = "3")]
    address: u64,
    /// Inlined callees first, the function they were inlined into last.
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::process::Command;

    use super::*;

    const SERVER: &str = "/app/bin/server";
    const LIBC: &str = "/usr/lib/libc.so.6";

    fn frame(address: u64, function: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            addr: address,
            function: function.map(str::to_owned),
            file: function.map(|_| "src/shop.rs".to_owned()),
            line: function.map(|_| 7),
            module: module.map(str::to_owned),
            module_offset: Some(address & 0xf_ffff),
            inlined: false,
        }
    }

    fn server(address: u64, function: &str) -> Frame {
        frame(address, Some(function), Some(SERVER))
    }

    /// pid 42 leaks 3 MiB through an inlined `insert`; pid 7 leaks 1 MiB (its `main` at
    /// another load address) and 256 KiB under a frame with no module.
    fn fixture() -> Vec<ProfileStack> {
        let malloc = frame(0x7f00_0009_a0f3, None, Some(LIBC));
        let mut insert = server(0x5555_0000_1234, "shop::Cache<K>::insert");
        insert.inlined = true;
        let handle = server(0x5555_0000_1234, "shop::handle");
        let main_42 = server(0x5555_0000_2000, "main");
        let main_7 = server(0x5656_0000_2000, "main");
        let load = server(0x5656_0000_3000, "shop::load_config");
        let unknown = frame(0xdead_beef, None, None);
        let frames_42 = vec![malloc.clone(), insert, handle, main_42];
        let frames_7 = vec![malloc, load, main_7.clone()];
        let frames_unknown = vec![unknown, main_7];
        let stack = |frames: Vec<Frame>, bytes, count, pid| ProfileStack {
            frames: frames.into(),
            bytes,
            count,
            pid,
        };
        vec![
            stack(frames_42, 3 << 20, 3, 42),
            stack(frames_7, 1 << 20, 1, 7),
            stack(frames_unknown, 256 << 10, 2, 7),
        ]
    }

    fn meta() -> ProfileMeta {
        let comments = ["pod shop/api-0 container app", "evidence 12: oom_kill"];
        ProfileMeta {
            time_unix_ns: 1_700_000_000_000_000_000,
            duration_ns: 60_000_000_000,
            comments: comments.map(str::to_owned).to_vec(),
            kind: ProfileKind::Outstanding,
        }
    }

    fn decode(stacks: &[ProfileStack]) -> Profile {
        Profile::decode(encode(stacks, &[], &meta()).as_slice()).expect("our own output decodes")
    }

    fn text(profile: &Profile, index: i64) -> &str {
        &profile.string_table[usize::try_from(index).expect("non-negative string index")]
    }

    /// A sample's stack as function names, one inner list per location.
    fn names<'a>(profile: &'a Profile, sample: &Sample) -> Vec<Vec<&'a str>> {
        let function = |id| profile.function.iter().find(|f: &&Function| f.id == id);
        let location = |id| profile.location.iter().find(|l: &&Location| l.id == id);
        let name = |line: &Line| text(profile, function(line.function_id).expect("function").name);
        let lines = |id| location(id).map(|l| l.line.iter().map(name).collect());
        let stack = sample.location_id.iter().map(|&id| lines(id));
        stack.collect::<Option<_>>().expect("every location exists")
    }

    #[test]
    fn a_first_touch_profile_has_its_own_sample_types() {
        let meta = ProfileMeta {
            kind: ProfileKind::FirstTouch,
            ..meta()
        };
        let profile = Profile::decode(encode(&[], &[], &meta).as_slice()).expect("decodes");
        let types: Vec<[&str; 2]> = profile
            .sample_type
            .iter()
            .map(|t| [text(&profile, t.r#type), text(&profile, t.unit)])
            .collect();
        assert_eq!(
            types,
            [
                ["first_touch_pages", "count"],
                ["first_touch_space", "bytes"]
            ]
        );
        assert_eq!(
            text(&profile, profile.default_sample_type),
            "first_touch_space"
        );
    }

    #[test]
    fn empty_input_is_a_valid_profile_with_sample_types_and_meta() {
        let profile = decode(&[]);
        assert_eq!(profile.string_table[0], "");
        let types = profile.sample_type.iter();
        let types: Vec<_> = types
            .map(|t| [t.r#type, t.unit].map(|i| text(&profile, i)))
            .collect();
        assert_eq!(
            types,
            [["inuse_objects", "count"], ["inuse_space", "bytes"]]
        );
        assert_eq!(text(&profile, profile.default_sample_type), "inuse_space");
        assert!(profile.sample.is_empty() && profile.location.is_empty());
        let times = (profile.time_nanos, profile.duration_nanos);
        assert_eq!(times, (1_700_000_000_000_000_000, 60_000_000_000));
        let comments: Vec<_> = profile.comment.iter().map(|&i| text(&profile, i)).collect();
        assert_eq!(comments, meta().comments);
    }

    #[test]
    fn strings_functions_locations_and_mappings_are_deduplicated() {
        let profile = decode(&fixture());
        // malloc, insert+handle, main@42, load_config, main@7 (same function), 0xdeadbeef.
        assert_eq!((profile.location.len(), profile.function.len()), (6, 6));
        let mut strings = profile.string_table.clone();
        strings.sort();
        strings.dedup();
        assert_eq!(strings.len(), profile.string_table.len(), "{strings:?}");
        let mappings = profile.mapping.iter().map(|m| {
            let flags = (m.has_functions, m.has_line_numbers, m.has_inline_frames);
            (text(&profile, m.filename), flags)
        });
        let expected = [(SERVER, (true, true, true)), (LIBC, (false, false, false))];
        assert_eq!(mappings.collect::<Vec<_>>(), expected, "main binary first");
    }

    #[test]
    fn stacks_put_inlined_callees_first_and_name_unsymbolized_frames() {
        let profile = decode(&fixture());
        let stacks: Vec<_> = profile.sample.iter().map(|s| names(&profile, s)).collect();
        let malloc = vec!["libc.so.6+0x9a0f3"];
        let inlined = vec!["shop::Cache<K>::insert", "shop::handle"];
        assert_eq!(stacks[0], [malloc.clone(), inlined, vec!["main"]]);
        assert_eq!(stacks[1], [malloc, vec!["shop::load_config"], vec!["main"]]);
        assert_eq!(stacks[2], [vec!["0xdeadbeef"], vec!["main"]]);
        let location = &profile.location[1];
        assert_eq!(location.address, 0x5555_0000_1234);
        assert_eq!(location.line[0].line, 7);
    }

    #[test]
    fn samples_hold_count_then_bytes_and_a_numeric_pid_label() {
        let profile = decode(&fixture());
        let values: Vec<_> = profile.sample.iter().map(|s| s.value.clone()).collect();
        assert_eq!(values, [[3, 3 << 20], [1, 1 << 20], [2, 256 << 10]]);
        let label = &profile.sample[0].label[0];
        assert_eq!((text(&profile, label.key), label.num), ("pid", 42));
        let huge = ProfileStack {
            bytes: u64::MAX,
            ..ProfileStack::default()
        };
        let values = &decode(&[huge]).sample[0].value;
        assert_eq!(values, &[0, i64::MAX], "saturates, never wraps");
    }

    #[test]
    fn trailing_inlined_frame_and_frameless_stack_still_encode() {
        let mut orphan = server(0x5555_0000_9000, "shop::orphan");
        orphan.inlined = true;
        let stack = ProfileStack {
            frames: [orphan].into(),
            ..ProfileStack::default()
        };
        let profile = decode(&[stack, ProfileStack::default()]);
        assert_eq!(names(&profile, &profile.sample[0]), [["shop::orphan"]]);
        assert!(profile.sample[1].location_id.is_empty());
    }

    #[test]
    fn gzipped_output_inflates_to_the_plain_encoding() {
        let gzipped = encode_gzipped(&fixture(), &[], &meta()).expect("gzip into memory");
        let mut plain = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(gzipped.as_slice());
        decoder.read_to_end(&mut plain).expect("valid gzip");
        assert_eq!(plain, encode(&fixture(), &[], &meta()));
    }

    /// Runs `go tool pprof ARGS FILE` on the gzipped profile; returns its stdout's lines with
    /// runs of blanks collapsed, so that column widths do not matter.
    fn go_tool_pprof(stacks: &[ProfileStack], args: &[&str]) -> Vec<String> {
        go_tool_pprof_diff(stacks, &[], None, args)
    }

    /// [`go_tool_pprof`] of `stacks` encoded with `base`; with `diff_base`, that profile is
    /// also written and passed as `-diff_base`.
    fn go_tool_pprof_diff(
        stacks: &[ProfileStack],
        base: &[ProfileStack],
        diff_base: Option<&[ProfileStack]>,
        args: &[&str],
    ) -> Vec<String> {
        // Tests run in parallel, several with the same arguments: every file is its own.
        static FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = |what: &str, stacks: &[ProfileStack], base: &[ProfileStack]| {
            let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("pprof-{}-{n}-{what}.pb.gz", std::process::id());
            let path = std::env::temp_dir().join(name);
            let gzipped = encode_gzipped(stacks, base, &meta()).expect("gzip into memory");
            std::fs::write(&path, gzipped).expect("write the profile to the temp dir");
            path
        };
        let path = write(if base.is_empty() { "plain" } else { "diff" }, stacks, base);
        let base_path = diff_base.map(|b| write("base", b, &[]));
        let mut go_args: Vec<String> = ["tool", "pprof"].map(str::to_owned).to_vec();
        if let Some(base_path) = &base_path {
            go_args.push(format!("-diff_base={}", base_path.display()));
        }
        go_args.extend(args.iter().map(|&a| a.to_owned()));
        let output = Command::new("go").args(&go_args).arg(&path).output();
        let _ = std::fs::remove_file(&path);
        if let Some(base_path) = base_path {
            let _ = std::fs::remove_file(base_path);
        }
        let output = match output {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
                "`go` is not on PATH: install Debian's golang-go (apt-get install -y golang-go) \
                 to run the go tool pprof compatibility tests"
            ),
            result => result.expect("run go tool pprof"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{go_args:?}: {stderr}{stdout}");
        let words = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
        stdout.lines().map(words).collect()
    }

    /// Asserts that `expected` appears in `lines` as consecutive lines.
    fn assert_lines(lines: &[String], expected: &[&str]) {
        let found = lines
            .windows(expected.len())
            .any(|window| window == expected);
        assert!(found, "expected {expected:#?}\nin {lines:#?}");
    }

    #[test]
    fn go_tool_pprof_top_shows_every_function_with_its_inuse_values() {
        let output = go_tool_pprof(&fixture(), &["-top", "-sample_index=inuse_space"]);
        let header = [
            "File: server",
            "pod shop/api-0 container app",
            "evidence 12: oom_kill",
        ];
        assert_lines(&output, &[&header[..], &["Type: inuse_space"]].concat());
        assert_lines(
            &output,
            &[
                "flat flat% sum% cum cum%",
                "4096kB 94.12% 94.12% 4096kB 94.12% libc.so.6+0x9a0f3",
                "256kB 5.88% 100% 256kB 5.88% 0xdeadbeef",
                "0 0% 100% 4352kB 100% main",
                "0 0% 100% 3072kB 70.59% shop::Cache<K>::insert (inline)",
                "0 0% 100% 3072kB 70.59% shop::handle",
                "0 0% 100% 1024kB 23.53% shop::load_config",
            ],
        );
        let objects = go_tool_pprof(&fixture(), &["-top", "-sample_index=inuse_objects"]);
        assert_lines(&objects, &["0 0% 100% 6 100% main"]);
    }

    #[test]
    fn go_tool_pprof_traces_show_inlined_frames_innermost_first() {
        let output = go_tool_pprof(&fixture(), &["-traces", "-sample_index=inuse_space"]);
        assert_lines(
            &output,
            &[
                "pid: 42",
                "3MB libc.so.6+0x9a0f3",
                "shop::Cache<K>::insert (inline)",
                "shop::handle",
                "main",
            ],
        );
    }

    #[test]
    fn go_tool_pprof_tagfocus_selects_samples_by_pid() {
        // No -sample_index: the profile's default sample type, inuse_space, applies.
        let output = go_tool_pprof(&fixture(), &["-top", "-tagfocus=pid=7"]);
        assert_lines(
            &output,
            &[
                "Showing nodes accounting for 1280kB, 29.41% of 4352kB total",
                "flat flat% sum% cum cum%",
                "1024kB 23.53% 23.53% 1024kB 23.53% libc.so.6+0x9a0f3",
                "256kB 5.88% 29.41% 256kB 5.88% 0xdeadbeef",
                "0 0% 29.41% 1280kB 29.41% main",
                "0 0% 29.41% 1024kB 23.53% shop::load_config",
            ],
        );
    }

    /// The fixture an hour earlier: pid 42 held 1 MiB through `insert` (not 3), pid 7 the
    /// same 1 MiB, and the frameless stack did not exist yet.
    fn an_hour_earlier() -> Vec<ProfileStack> {
        let mut base = fixture();
        let _ = base.pop();
        base[0].bytes = 1 << 20;
        base[0].count = 1;
        base
    }

    #[test]
    fn a_profile_with_a_base_shows_the_change_as_go_tool_pprof_diff_base_does() {
        let args = ["-top", "-sample_index=inuse_space"];
        let expected = [
            "flat flat% sum% cum cum%",
            "2048kB 100% 100% 2048kB 100% libc.so.6+0x9a0f3",
            "256kB 12.50% 112.50% 256kB 12.50% 0xdeadbeef",
            "0 0% 112.50% 2304kB 112.50% main",
            "0 0% 112.50% 2048kB 100% shop::Cache<K>::insert (inline)",
            "0 0% 112.50% 2048kB 100% shop::handle",
        ];
        let with_base = go_tool_pprof_diff(&fixture(), &an_hour_earlier(), None, &args);
        assert_lines(&with_base, &expected);
        // The same as pprof's own merge of two plain profiles, line for line from the totals
        // (only the merged duration differs: pprof adds the two profiles' durations).
        let diff_base = go_tool_pprof_diff(&fixture(), &[], Some(&an_hour_earlier()), &args);
        let from_totals = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .skip_while(|l| !l.starts_with("Showing nodes"))
                .cloned()
                .collect()
        };
        assert_eq!(from_totals(&with_base), from_totals(&diff_base));
        // What did not change is there with nothing: load_config's 1 MiB is gone from the top.
        assert!(
            !with_base
                .iter()
                .any(|l| l.contains("shop::load_config") && l.contains("1024kB")),
            "{with_base:#?}"
        );
    }

    #[test]
    fn base_samples_are_negated_and_labelled_as_pprof_labels_a_diff_base() {
        let profile = Profile::decode(encode(&fixture(), &an_hour_earlier(), &meta()).as_slice())
            .expect("decodes");
        let base: Vec<&Sample> = profile
            .sample
            .iter()
            .filter(|s| {
                s.label.iter().any(|l| {
                    text(&profile, l.key) == "pprof::base" && text(&profile, l.str) == "true"
                })
            })
            .collect();
        let values: Vec<&[i64]> = base.iter().map(|s| s.value.as_slice()).collect();
        assert_eq!(values, [[-1, -(1 << 20)], [-1, -(1 << 20)]]);
        assert_eq!(profile.sample.len(), 5, "3 samples and 2 base samples");
    }

    #[test]
    fn go_tool_pprof_opens_an_empty_profile() {
        let output = go_tool_pprof(&[], &["-top"]);
        assert_lines(&output, &["Type: inuse_space"]);
    }
}
