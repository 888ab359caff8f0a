//! Builds one OTLP `ExportProfilesServiceRequest` (profiles signal, v1development) from the
//! agent's per-process stacks: a resource per traced process (its pod, container, node, pid and
//! executable), in-use bytes and objects as two profiles (exact tracing), and the growth
//! profile as a profile of its own, never mixed with outstanding-allocation bytes. Strings,
//! functions, locations and stacks are shared by every profile in the request's dictionary.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    profiles::v1development::{
        Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
        ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
    },
    resource::v1::Resource,
};

use crate::{
    evidence::pprof::{ProfileStack, physical_chains, unsymbolized_name},
    symbolize::Frame,
};

/// The sample types: (type, unit). In-use ones follow pprof's heap profile names.
pub const INUSE_SPACE: (&str, &str) = ("inuse_space", "bytes");
/// Outstanding allocations.
pub const INUSE_OBJECTS: (&str, &str) = ("inuse_objects", "count");
/// Bytes first touched (made resident) by each call site since its container was watched.
pub const RESIDENT_GROWTH: (&str, &str) = ("resident_growth", "bytes");

/// The growth profile's attribute saying it is sampled (one new page in N recorded, weighted
/// by N: estimates unless N is 1).
pub const GROWTH_SAMPLED_ONE_PAGE_IN: &str = "tracer.growth.sampled_one_page_in";

/// Who a process is, as OpenTelemetry resource attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessResource {
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// `k8s.pod.name`.
    pub pod_name: Option<String>,
    /// `k8s.pod.uid`.
    pub pod_uid: Option<String>,
    /// `k8s.container.name`.
    pub container_name: Option<String>,
    /// `k8s.node.name`.
    pub node_name: String,
    /// `process.pid`.
    pub pid: u32,
    /// `process.executable.path` (as the process sees it); its last component is
    /// `process.executable.name`.
    pub executable_path: Option<String>,
    /// `process.executable.name` when the path is unknown (the command name). `service.name` is
    /// the container's name, else the executable's.
    pub comm: Option<String>,
}

/// One process's profiles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessProfiles {
    /// The process.
    pub resource: ProcessResource,
    /// Outstanding allocations by stack (exact tracing); `None`: not traced.
    pub in_use: Option<Vec<ProfileStack>>,
    /// Resident growth by first-touch call site (a call site merged over processes counts for
    /// the first); `None`: no growth profile.
    pub growth: Option<Vec<ProfileStack>>,
    /// One new page in this many was recorded (growth bytes are estimates unless it is 1).
    pub growth_sampled_one_page_in: u32,
}

/// Builds the request: one `ResourceProfiles` per process, at `time_unix_ns`.
pub fn build(processes: &[ProcessProfiles], time_unix_ns: u64) -> ExportProfilesServiceRequest {
    let mut dictionary = Dictionary::new();
    let resource_profiles = processes
        .iter()
        .map(|process| {
            let mut profiles = Vec::new();
            if let Some(stacks) = &process.in_use {
                for (sample_type, value) in [
                    (
                        INUSE_SPACE,
                        (|s: &ProfileStack| s.bytes) as fn(&ProfileStack) -> u64,
                    ),
                    (INUSE_OBJECTS, |s: &ProfileStack| s.count),
                ] {
                    profiles.push(dictionary.profile(sample_type, stacks, value, time_unix_ns));
                }
            }
            if let Some(stacks) = &process.growth {
                let mut profile =
                    dictionary.profile(RESIDENT_GROWTH, stacks, |s| s.bytes, time_unix_ns);
                profile.attribute_indices.push(dictionary.attribute(
                    GROWTH_SAMPLED_ONE_PAGE_IN,
                    i64::from(process.growth_sampled_one_page_in),
                ));
                profiles.push(profile);
            }
            ResourceProfiles {
                resource: Some(Resource {
                    attributes: resource_attributes(&process.resource),
                    ..Resource::default()
                }),
                scope_profiles: vec![ScopeProfiles {
                    scope: Some(InstrumentationScope {
                        name: env!("CARGO_PKG_NAME").to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    profiles,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dictionary.table),
    }
}

fn resource_attributes(resource: &ProcessResource) -> Vec<KeyValue> {
    let text = |key: &str, value: &str| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    };
    let mut attributes = Vec::new();
    for (key, value) in [
        ("k8s.namespace.name", &resource.namespace),
        ("k8s.pod.name", &resource.pod_name),
        ("k8s.pod.uid", &resource.pod_uid),
        ("k8s.container.name", &resource.container_name),
    ] {
        if let Some(value) = value {
            attributes.push(text(key, value));
        }
    }
    attributes.push(text("k8s.node.name", &resource.node_name));
    attributes.push(KeyValue {
        key: "process.pid".to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(i64::from(resource.pid))),
        }),
        ..KeyValue::default()
    });
    if let Some(path) = &resource.executable_path {
        attributes.push(text("process.executable.path", path));
    }
    let name = resource
        .executable_path
        .as_deref()
        .and_then(|path| path.rsplit('/').next())
        .or(resource.comm.as_deref());
    if let Some(name) = name {
        attributes.push(text("process.executable.name", name));
    }
    // Backends name what they show by service.name (Pyroscope's service_name): the container,
    // else the executable.
    if let Some(service) = resource.container_name.as_deref().or(name) {
        attributes.push(text("service.name", service));
    }
    attributes
}

/// Interns what the profiles share. Every table starts with its zero value, as the format
/// requires (index 0 means "unset").
struct Dictionary {
    table: ProfilesDictionary,
    strings: HashMap<String, i32>,
    /// (name, filename) string indices → function index.
    functions: HashMap<(i32, i32), i32>,
    /// (pid, address) → location index: addresses are per process.
    locations: HashMap<(u32, u64), i32>,
    /// Module path → mapping index.
    mappings: HashMap<String, i32>,
    /// Location indices → stack index.
    stacks: HashMap<Vec<i32>, i32>,
}

/// A table's next index (tables are bounded by the stacks of one export, far below 2^31).
fn next_index<T>(table: &[T]) -> i32 {
    i32::try_from(table.len()).unwrap_or(i32::MAX)
}

impl Dictionary {
    fn new() -> Self {
        let mut dictionary = Self {
            table: ProfilesDictionary {
                mapping_table: vec![Mapping::default()],
                location_table: vec![Location::default()],
                function_table: vec![Function::default()],
                link_table: vec![Link::default()],
                string_table: Vec::new(),
                attribute_table: vec![KeyValueAndUnit::default()],
                stack_table: vec![Stack::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            mappings: HashMap::new(),
            stacks: HashMap::new(),
        };
        let _ = dictionary.string("");
        dictionary
    }

    fn profile(
        &mut self,
        (kind, unit): (&str, &str),
        stacks: &[ProfileStack],
        value: impl Fn(&ProfileStack) -> u64,
        time_unix_ns: u64,
    ) -> Profile {
        // Stacks that symbolize alike (two kernel stack ids, one call site) are one sample.
        let mut samples: Vec<Sample> = Vec::new();
        let mut by_stack: HashMap<i32, usize> = HashMap::new();
        for stack in stacks {
            let stack_index = self.stack(stack);
            // Values are signed: clamp rather than wrap.
            let value = i64::try_from(value(stack)).unwrap_or(i64::MAX);
            match by_stack.get(&stack_index) {
                Some(&at) => samples[at].values[0] = samples[at].values[0].saturating_add(value),
                None => {
                    let _ = by_stack.insert(stack_index, samples.len());
                    samples.push(Sample {
                        stack_index,
                        values: vec![value],
                        ..Sample::default()
                    });
                }
            }
        }
        Profile {
            sample_type: Some(ValueType {
                type_strindex: self.string(kind),
                unit_strindex: self.string(unit),
            }),
            samples,
            time_unix_nano: time_unix_ns,
            ..Profile::default()
        }
    }

    fn string(&mut self, value: &str) -> i32 {
        if let Some(&index) = self.strings.get(value) {
            return index;
        }
        let index = next_index(&self.table.string_table);
        self.table.string_table.push(value.to_owned());
        let _ = self.strings.insert(value.to_owned(), index);
        index
    }

    fn attribute(&mut self, key: &str, value: i64) -> i32 {
        let index = next_index(&self.table.attribute_table);
        let key_strindex = self.string(key);
        self.table.attribute_table.push(KeyValueAndUnit {
            key_strindex,
            value: Some(AnyValue {
                value: Some(Value::IntValue(value)),
            }),
            unit_strindex: 0,
        });
        index
    }

    fn stack(&mut self, stack: &ProfileStack) -> i32 {
        let location_indices: Vec<i32> = physical_chains(&stack.frames)
            .into_iter()
            .map(|chain| self.location(stack.pid, chain))
            .collect();
        if let Some(&index) = self.stacks.get(&location_indices) {
            return index;
        }
        let index = next_index(&self.table.stack_table);
        let _ = self.stacks.insert(location_indices.clone(), index);
        self.table.stack_table.push(Stack { location_indices });
        index
    }

    /// `chain` is innermost first and ends with the physical frame; its lines keep that
    /// order (the caller the others were inlined into last).
    fn location(&mut self, pid: u32, chain: &[Frame]) -> i32 {
        let Some(physical) = chain.last() else {
            return 0;
        };
        if let Some(&index) = self.locations.get(&(pid, physical.addr)) {
            return index;
        }
        let mapping_index = physical
            .module
            .as_deref()
            .map_or(0, |module| self.mapping(module));
        let lines = chain
            .iter()
            .map(|frame| Line {
                function_index: self.function(frame),
                line: frame.line.map_or(0, i64::from),
                column: 0,
            })
            .collect();
        let index = next_index(&self.table.location_table);
        self.table.location_table.push(Location {
            mapping_index,
            address: physical.addr,
            lines,
            attribute_indices: Vec::new(),
        });
        let _ = self.locations.insert((pid, physical.addr), index);
        index
    }

    fn mapping(&mut self, module: &str) -> i32 {
        if let Some(&index) = self.mappings.get(module) {
            return index;
        }
        let index = next_index(&self.table.mapping_table);
        // Addresses are per process while a mapping is per module: no range would be right
        // for every process, so memory_start, memory_limit and file_offset stay unset.
        let filename_strindex = self.string(module);
        self.table.mapping_table.push(Mapping {
            filename_strindex,
            ..Mapping::default()
        });
        let _ = self.mappings.insert(module.to_owned(), index);
        index
    }

    fn function(&mut self, frame: &Frame) -> i32 {
        let name = match &frame.function {
            Some(name) => self.string(name),
            None => self.string(&unsymbolized_name(frame)),
        };
        let filename = frame.file.as_deref().map_or(0, |file| self.string(file));
        if let Some(&index) = self.functions.get(&(name, filename)) {
            return index;
        }
        let index = next_index(&self.table.function_table);
        self.table.function_table.push(Function {
            name_strindex: name,
            system_name_strindex: 0,
            filename_strindex: filename,
            start_line: 0,
        });
        let _ = self.functions.insert((name, filename), index);
        index
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn frame(addr: u64, function: Option<&str>, module: &str, inlined: bool) -> Frame {
        Frame {
            addr,
            function: function.map(str::to_owned),
            file: function.map(|_| "leak.c".to_owned()),
            line: function.map(|_| 12),
            module: Some(module.to_owned()),
            module_offset: Some(addr & 0xffff),
            inlined,
        }
    }

    fn process(pid: u32) -> ProcessProfiles {
        let malloc = frame(0x7f00_0000_1234, None, "/usr/lib/libc.so.6", false);
        let helper = frame(0x5555_0000_1000, Some("fill"), "/app/leaker", true);
        let leak = frame(0x5555_0000_1000, Some("leak_site"), "/app/leaker", false);
        let main = frame(0x5555_0000_2000, Some("main"), "/app/leaker", false);
        let stack = |frames: Vec<Frame>, bytes, count| ProfileStack {
            frames: frames.into(),
            bytes,
            count,
            pid,
        };
        ProcessProfiles {
            resource: ProcessResource {
                namespace: Some("shop".into()),
                pod_name: Some("api-0".into()),
                pod_uid: Some("uid-1".into()),
                container_name: Some("app".into()),
                node_name: "node-a".into(),
                pid,
                executable_path: Some("/app/leaker".into()),
                comm: Some("leaker".into()),
            },
            in_use: Some(vec![
                stack(vec![malloc.clone(), helper, leak, main.clone()], 4096, 4),
                stack(vec![malloc, main], 100, 1),
            ]),
            growth: Some(vec![stack(
                vec![frame(0x5555_0000_3000, Some("touch"), "/app/leaker", false)],
                1 << 20,
                256,
            )]),
            growth_sampled_one_page_in: 16,
        }
    }

    /// Round-trips through the wire format, as a receiver sees it.
    fn decoded(processes: &[ProcessProfiles]) -> ExportProfilesServiceRequest {
        let bytes = build(processes, 1_700_000_000_000_000_000).encode_to_vec();
        ExportProfilesServiceRequest::decode(bytes.as_slice()).expect("our own output decodes")
    }

    fn text(dictionary: &ProfilesDictionary, index: i32) -> &str {
        &dictionary.string_table[usize::try_from(index).expect("non-negative index")]
    }

    /// A sample's stack as lines of function names, leaf first.
    fn names(dictionary: &ProfilesDictionary, sample: &Sample) -> Vec<Vec<String>> {
        let stack = &dictionary.stack_table[sample.stack_index as usize];
        let location = |i: &i32| &dictionary.location_table[*i as usize];
        let function = |line: &Line| &dictionary.function_table[line.function_index as usize];
        let name = |line: &Line| text(dictionary, function(line).name_strindex).to_owned();
        let lines = |i| location(i).lines.iter().map(name).collect();
        stack.location_indices.iter().map(lines).collect()
    }

    #[test]
    fn each_process_gets_inuse_space_inuse_objects_and_a_separate_growth_profile() {
        let request = decoded(&[process(42)]);
        let dictionary = request.dictionary.as_ref().expect("dictionary");
        let profiles = &request.resource_profiles[0].scope_profiles[0].profiles;
        let types: Vec<_> = profiles
            .iter()
            .map(|p| p.sample_type.expect("sample type"))
            .map(|t| {
                (
                    text(dictionary, t.type_strindex),
                    text(dictionary, t.unit_strindex),
                )
            })
            .collect();
        assert_eq!(types, [INUSE_SPACE, INUSE_OBJECTS, RESIDENT_GROWTH]);
        let values = |p: &Profile| {
            p.samples
                .iter()
                .map(|s| s.values.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(values(&profiles[0]), [[4096], [100]]);
        assert_eq!(values(&profiles[1]), [[4], [1]]);
        assert_eq!(values(&profiles[2]), [[1 << 20]]);
        assert_eq!(profiles[0].time_unix_nano, 1_700_000_000_000_000_000);
        let sampled = &dictionary.attribute_table[profiles[2].attribute_indices[0] as usize];
        assert_eq!(
            text(dictionary, sampled.key_strindex),
            GROWTH_SAMPLED_ONE_PAGE_IN
        );
        assert_eq!(
            sampled.value.as_ref().and_then(|v| v.value.clone()),
            Some(Value::IntValue(16))
        );
    }

    #[test]
    fn stacks_are_leaf_first_with_inlined_callees_before_their_caller() {
        let request = decoded(&[process(42)]);
        let dictionary = request.dictionary.as_ref().expect("dictionary");
        let profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        assert_eq!(
            names(dictionary, &profile.samples[0]),
            [
                vec!["libc.so.6+0x1234".to_owned()],
                vec!["fill".to_owned(), "leak_site".to_owned()],
                vec!["main".to_owned()],
            ]
        );
        let leak_location = &dictionary.location_table[dictionary.stack_table
            [profile.samples[0].stack_index as usize]
            .location_indices[1] as usize];
        let mapping = &dictionary.mapping_table[leak_location.mapping_index as usize];
        assert_eq!(text(dictionary, mapping.filename_strindex), "/app/leaker");
        assert_eq!(leak_location.lines[1].line, 12);
    }

    #[test]
    fn tables_start_with_zero_values_and_share_entries_across_profiles() {
        let request = decoded(&[process(42), process(43)]);
        let dictionary = request.dictionary.as_ref().expect("dictionary");
        assert_eq!(dictionary.string_table[0], "");
        assert_eq!(dictionary.stack_table[0], Stack::default());
        assert_eq!(dictionary.location_table[0], Location::default());
        assert_eq!(dictionary.function_table[0], Function::default());
        assert_eq!(dictionary.mapping_table[0], Mapping::default());
        // The two in-use profiles of a process share its stacks; two processes do not share
        // locations (addresses are per process), but they share functions and strings.
        let stacks = |p: &Profile| p.samples.iter().map(|s| s.stack_index).collect::<Vec<_>>();
        let first = &request.resource_profiles[0].scope_profiles[0].profiles;
        let second = &request.resource_profiles[1].scope_profiles[0].profiles;
        assert_eq!(stacks(&first[0]), stacks(&first[1]));
        assert_ne!(stacks(&first[0]), stacks(&second[0]));
        // leak_site, fill, main, touch, libc's unsymbolized frame (once per module offset).
        assert_eq!(dictionary.function_table.len(), 1 + 5);
        let mut strings = dictionary.string_table.clone();
        strings.sort();
        strings.dedup();
        assert_eq!(strings.len(), dictionary.string_table.len());
    }

    #[test]
    fn resources_carry_the_pod_container_node_pid_and_executable() {
        let request = decoded(&[process(42)]);
        let resource = request.resource_profiles[0]
            .resource
            .as_ref()
            .expect("resource");
        let attributes: Vec<(String, Value)> = resource
            .attributes
            .iter()
            .map(|a| {
                (
                    a.key.clone(),
                    a.value.clone().and_then(|v| v.value).expect("value"),
                )
            })
            .collect();
        let text = |key: &str, value: &str| (key.to_owned(), Value::StringValue(value.into()));
        assert_eq!(
            attributes,
            [
                text("k8s.namespace.name", "shop"),
                text("k8s.pod.name", "api-0"),
                text("k8s.pod.uid", "uid-1"),
                text("k8s.container.name", "app"),
                text("k8s.node.name", "node-a"),
                ("process.pid".to_owned(), Value::IntValue(42)),
                text("process.executable.path", "/app/leaker"),
                text("process.executable.name", "leaker"),
                text("service.name", "app"),
            ]
        );
    }

    #[test]
    fn stacks_that_symbolize_alike_are_one_sample() {
        let mut twice = process(42);
        if let Some(stacks) = twice.in_use.as_mut() {
            let again = stacks[0].clone();
            stacks.push(again);
        }
        let request = decoded(&[twice]);
        let profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        let values: Vec<_> = profile.samples.iter().map(|s| s.values.clone()).collect();
        assert_eq!(values, [[8192], [100]]);
    }

    #[test]
    fn a_process_without_tracing_or_growth_sends_no_profiles_and_values_saturate() {
        let mut quiet = process(7);
        quiet.in_use = None;
        quiet.growth = None;
        let request = decoded(&[quiet]);
        assert!(
            request.resource_profiles[0].scope_profiles[0]
                .profiles
                .is_empty()
        );
        let mut huge = process(8);
        huge.growth = None;
        if let Some(stacks) = huge.in_use.as_mut() {
            stacks[0].bytes = u64::MAX;
        }
        let request = decoded(&[huge]);
        let profile = &request.resource_profiles[0].scope_profiles[0].profiles[0];
        assert_eq!(profile.samples[0].values, [i64::MAX]);
    }
}
