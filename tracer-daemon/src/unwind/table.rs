//! An x86-64 ELF binary's `.eh_frame` compiled into the sorted, gap-free unwind table the BPF
//! unwinder binary-searches: one [`UnwindEntry`] per address range, plus the choice between
//! frame pointers and the table for walking the binary's code.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection as _, UnwindTableRow, X86_64,
};
use object::{Architecture, Object as _, ObjectSection as _};
use tracer_common::UnwindEntry;

/// FDEs of functions shorter than this are left out of the frame-pointer vote: a function of a
/// few instructions (a tail-calling stub) has no frame to set up even in a frame-pointer build.
const MIN_VOTING_FUNCTION_BYTES: u64 = 16;
/// Share of voting functions that must keep a frame pointer for the binary to be walked by them.
const FRAME_POINTER_PERCENT: usize = 80;

/// How the binary's code is walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindMethod {
    /// Saved frame pointers: the binary sets up %rbp frames in (nearly) every function.
    FramePointers,
    /// The compiled unwind table ([`UnwindTable::entries`]).
    UnwindTable,
}

/// A binary's compiled table.
#[derive(Clone, Debug)]
pub struct UnwindTable {
    /// Rows sorted by pc, no two with the same pc; consecutive rows with identical rules merged.
    pub entries: Vec<UnwindEntry>,
    /// Chosen method (see [`compile`] for the frame-pointer detection).
    pub method: UnwindMethod,
    /// FDEs read, including those whose CFI was malformed and was skipped.
    pub functions: usize,
    /// Rows that became `RULE_UNSUPPORTED` because their CFI could not be expressed (a CFA
    /// expression, another CFA register, an unusual %rbp or return-address rule, offsets out of
    /// range), plus one per FDE whose CFI was malformed.
    pub unsupported_rows: usize,
}

/// Why a binary's unwind table could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum UnwindTableError {
    /// The bytes are not an ELF file object can parse.
    #[error("not an ELF file")]
    NotElf(#[source] object::Error),
    /// The binary is for another architecture (the unwinder knows x86-64 only).
    #[error("not an x86-64 binary ({0:?})")]
    NotX86_64(Architecture),
    /// The binary has no `.eh_frame` section.
    #[error("no .eh_frame section")]
    NoEhFrame,
    /// The `.eh_frame` section's bytes cannot be read from the file.
    #[error("cannot read .eh_frame")]
    Section(#[source] object::Error),
    /// Not a single entry of `.eh_frame` could be parsed.
    #[error("malformed .eh_frame")]
    Malformed(#[source] gimli::Error),
    /// An FDE covers code above 4 GiB, which a row's 32-bit `pc` cannot address.
    #[error("address {address:#x} does not fit the table's 32-bit pc")]
    AddressTooLarge {
        /// The offending (end) address.
        address: u64,
    },
}

/// A row's rule as `(rule, cfa_offset, rbp_offset)`, the fields of [`UnwindEntry`] but `pc`.
type Rule = (u8, i32, i16);
/// One CFI row: `(start, end, rule)`, the rule `None` when it cannot be expressed.
type Row = (u64, u64, Option<Rule>);
/// `RULE_UNSUPPORTED`, for gaps and rows that cannot be expressed.
const UNSUPPORTED: Rule = (UnwindEntry::RULE_UNSUPPORTED, 0, 0);

/// Compiles a binary's .eh_frame.
///
/// Rows come from every FDE's CFI; addresses no FDE covers get `RULE_UNSUPPORTED` rows, so a
/// gap never inherits the rule of the function before it. Where FDEs overlap, the one starting
/// first (then the one earlier in the section) wins. FDEs whose CFI is malformed are counted
/// and their ranges marked unsupported; only a section whose first entry cannot be parsed fails.
///
/// The method is chosen per binary: a binary built with frame pointers establishes CFA = %rbp +
/// 16 with %rbp saved in every non-trivial function, so if at least 80% of the functions of at
/// least 16 bytes with ordinary CFI (no outermost frame, no unsupported row: that leaves out
/// `_start`, PLT stubs and signal trampolines) have such a row, frame pointers walk it more
/// cheaply; otherwise the table is used.
pub fn compile(elf: &[u8]) -> Result<UnwindTable, UnwindTableError> {
    let file = object::File::parse(elf).map_err(UnwindTableError::NotElf)?;
    if file.architecture() != Architecture::X86_64 {
        return Err(UnwindTableError::NotX86_64(file.architecture()));
    }
    let section = file
        .section_by_name(".eh_frame")
        .ok_or(UnwindTableError::NoEhFrame)?;
    let data = section.data().map_err(UnwindTableError::Section)?;
    // What FDE pointer encodings may be relative to: pcrel (.eh_frame), textrel, datarel (.got).
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got").map(|got| got.address()) {
        bases = bases.set_got(got);
    }
    let eh_frame = EhFrame::new(data, LittleEndian);
    let mut ctx = Box::new(UnwindContext::new());
    let (mut fdes, mut functions, mut unsupported_rows) = (Vec::new(), 0, 0);
    let (mut voters, mut frame_pointer_voters) = (0_usize, 0_usize);
    let mut entries = eh_frame.entries(&bases);
    loop {
        let partial = match entries.next() {
            Ok(None) => break,
            Ok(Some(CieOrFde::Cie(_))) => continue,
            Ok(Some(CieOrFde::Fde(partial))) => partial,
            // The iterator cannot resync after an error: keep the FDEs read so far.
            Err(error) if functions == 0 => return Err(UnwindTableError::Malformed(error)),
            Err(error) => {
                tracing::debug!(%error, functions, "truncated .eh_frame");
                break;
            }
        };
        functions += 1;
        let parsed = partial.parse(EhFrame::cie_from_offset);
        let Ok(fde) = parsed.inspect_err(|error| tracing::debug!(%error, "malformed FDE skipped"))
        else {
            unsupported_rows += 1;
            continue;
        };
        let start = fde.initial_address();
        let end = start.saturating_add(fde.len());
        if end > u64::from(u32::MAX) {
            return Err(UnwindTableError::AddressTooLarge { address: end });
        }
        let rows = fde_rows(&fde, end, &eh_frame, &bases, &mut ctx).unwrap_or_else(|error| {
            tracing::debug!(%error, start, "malformed CFI, FDE marked unsupported");
            vec![(start, end, None)]
        });
        unsupported_rows += rows.iter().filter(|row| row.2.is_none()).count();
        let long = end - start >= MIN_VOTING_FUNCTION_BYTES;
        if let Some(framed) = keeps_frame_pointer(&rows).filter(|_| long) {
            voters += 1;
            frame_pointer_voters += usize::from(framed);
        }
        fdes.push((start, rows));
    }
    let method = if voters > 0 && frame_pointer_voters * 100 >= voters * FRAME_POINTER_PERCENT {
        UnwindMethod::FramePointers
    } else {
        UnwindMethod::UnwindTable
    };
    let entries = lay_out(fdes);
    Ok(UnwindTable {
        entries,
        method,
        functions,
        unsupported_rows,
    })
}

/// Whether a function keeps a frame pointer (has a row with CFA = %rbp + n and %rbp saved), or
/// `None` when its CFI says nothing about the compiler's choice: an outermost frame (`_start`)
/// or a row that cannot be expressed (PLT stubs, signal trampolines).
fn keeps_frame_pointer(rows: &[Row]) -> Option<bool> {
    let mut framed = false;
    for row in rows {
        let (rule, _, rbp_offset) = row.2?;
        if rule == UnwindEntry::RULE_END {
            return None;
        }
        framed |= rule == UnwindEntry::RULE_CFA_RBP && rbp_offset != 0;
    }
    Some(framed)
}

/// The rows of one FDE (clipped to its end, whatever its CFI advances to), each with the rule it
/// compiles to (`None`: unsupported).
fn fde_rows(
    fde: &gimli::FrameDescriptionEntry<EndianSlice<'_, LittleEndian>>,
    end: u64,
    eh_frame: &EhFrame<EndianSlice<'_, LittleEndian>>,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
) -> Result<Vec<Row>, gimli::Error> {
    let mut table = fde.rows(eh_frame, bases, ctx)?;
    let mut rows = Vec::new();
    while let Some(row) = table.next_row()? {
        let (start, row_end) = (row.start_address(), row.end_address().min(end));
        if start < row_end {
            rows.push((start, row_end, convert(row)));
        }
    }
    Ok(rows)
}

/// One CFI row as the BPF unwinder's rule, or `None` if it cannot be expressed.
fn convert(row: &UnwindTableRow<usize>) -> Option<Rule> {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return Some((UnwindEntry::RULE_END, 0, 0)),
        // The unwinder reads the return address at CFA - 8, as every x86-64 CIE says.
        Some(RegisterRule::Offset(-8)) => {}
        _ => return None,
    }
    let CfaRule::RegisterAndOffset { register, offset } = row.cfa() else {
        return None;
    };
    let rule = match *register {
        X86_64::RSP => UnwindEntry::RULE_CFA_RSP,
        X86_64::RBP => UnwindEntry::RULE_CFA_RBP,
        _ => return None,
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => 0,
        // 0 would mean "unchanged": a save at the CFA itself cannot be expressed.
        Some(RegisterRule::Offset(offset)) => i16::try_from(offset).ok().filter(|o| *o != 0)?,
        Some(_) => return None,
    };
    Some((rule, i32::try_from(*offset).ok()?, rbp_offset))
}

/// Lays the FDEs' rows out by address: overlaps clipped (first wins), gaps and the end of each
/// covered run marked unsupported, consecutive identical rules merged.
fn lay_out(mut fdes: Vec<(u64, Vec<Row>)>) -> Vec<UnwindEntry> {
    /// Appends a row unless it repeats the last one's rule.
    fn push(laid: &mut Vec<(u64, Rule)>, pc: u64, rule: Rule) {
        if laid.last().map(|last| last.1) != Some(rule) {
            laid.push((pc, rule));
        }
    }
    fdes.sort_by_key(|fde| fde.0); // Stable: FDEs starting together keep section order.
    let mut laid = Vec::new();
    let mut covered = 0; // End of the last row laid out.
    for (start, end, rule) in fdes.into_iter().flat_map(|fde| fde.1) {
        let start = start.max(covered);
        if start >= end {
            continue;
        }
        if start > covered && !laid.is_empty() {
            push(&mut laid, covered, UNSUPPORTED);
        }
        push(&mut laid, start, rule.unwrap_or(UNSUPPORTED));
        covered = end;
    }
    if !laid.is_empty() {
        push(&mut laid, covered, UNSUPPORTED);
    }
    let entry = |(pc, (rule, cfa_offset, rbp_offset)): (u64, Rule)| UnwindEntry {
        // Never saturates: every address laid out is at most an FDE's end, checked to fit.
        pc: u32::try_from(pc).unwrap_or(u32::MAX),
        cfa_offset,
        rule,
        _pad: 0,
        rbp_offset,
    };
    laid.into_iter().map(entry).collect()
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use object::ObjectSymbol as _;

    use super::*;

    /// Small functions that need stack frames, calling one another, so that they have FDEs.
    const PROGRAM: &str = r#"
        #include <stdio.h>
        #define F(n, next) __attribute__((noinline)) long f##n(long x) { volatile long b[9 + n]; \
            for (int i = 0; i < 9 + n; i++) b[i] = x * i; return b[x & 7] + next; }
        __attribute__((noinline)) long leaf(long x) { volatile long v = x * 3; return v + 1; }
        F(0, 0) F(1, f0(x + 1)) F(2, f1(x ^ 5)) F(3, f2(x - 2)) F(4, f3(leaf(x)))
        int main(int argc, char **argv) { printf("%ld\n", f4(argc) + leaf(argc)); return 0; }
    "#;

    /// `PROGRAM` built with `cc -O2` and `flags`: the binary's bytes.
    fn build(flags: &[&str]) -> Vec<u8> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tracer-unwind-{}-{unique}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        std::fs::write(dir.join("p.c"), PROGRAM).expect("write the source");
        let args = ["-O2", "-o", "p", "p.c"].iter().chain(flags);
        let status = Command::new("cc").args(args).current_dir(&dir).status();
        let elf = std::fs::read(dir.join("p"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(status.expect("run cc").success(), "cc {flags:?} failed");
        elf.expect("read the binary")
    }

    /// Whether the rows are strictly sorted by pc.
    fn sorted(table: &UnwindTable) -> bool {
        table.entries.windows(2).all(|w| w[0].pc < w[1].pc)
    }

    /// Compiles `elf`, checks the rows are sorted and prints the method and the counts of
    /// entries, FDEs and unsupported rows.
    fn compiled(name: &str, elf: &[u8]) -> UnwindTable {
        let table = compile(elf).expect("compile");
        let counts = (table.entries.len(), table.functions, table.unsupported_rows);
        eprintln!("{name}: {:?} {counts:?}", table.method);
        assert!(sorted(&table), "{name}: not sorted");
        table
    }

    /// The rule of the row covering the symbol `name`.
    fn rule_at(table: &UnwindTable, elf: &[u8], name: &str) -> (u8, i32) {
        let file = object::File::parse(elf).expect("parse");
        let symbol = file.symbols().find(|symbol| symbol.name() == Ok(name));
        let address = symbol.unwrap_or_else(|| panic!("no {name}")).address();
        let entries = &table.entries;
        let index = entries.partition_point(|e| u64::from(e.pc) <= address);
        let entry = entries[index.checked_sub(1).expect("a row covers it")];
        (entry.rule, entry.cfa_offset)
    }

    /// Checks the binary's method, its functions' entries and `_start`.
    fn check(flags: &[&str], method: UnwindMethod) -> UnwindTable {
        let elf = build(flags);
        let table = compiled(&flags.join(" "), &elf);
        assert_eq!(table.method, method);
        for name in ["leaf", "f3", "main"] {
            let entry = rule_at(&table, &elf, name);
            assert_eq!(entry, (UnwindEntry::RULE_CFA_RSP, 8), "{name}");
        }
        assert_eq!(rule_at(&table, &elf, "_start").0, UnwindEntry::RULE_END);
        table
    }

    #[test]
    fn omitted_frame_pointers_use_the_table() {
        check(&["-fomit-frame-pointer"], UnwindMethod::UnwindTable);
    }

    #[test]
    fn kept_frame_pointers_are_detected() {
        const RBP: u8 = UnwindEntry::RULE_CFA_RBP;
        let flags = ["-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"];
        let table = check(&flags, UnwindMethod::FramePointers);
        let rbp = |e: &UnwindEntry| (e.rule, e.cfa_offset, e.rbp_offset) == (RBP, 16, -16);
        assert!(table.entries.iter().any(rbp), "no CFA = %rbp + 16");
    }

    #[test]
    fn libc_compiles() {
        let elf = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").expect("read libc");
        let table = compiled("libc", &elf);
        assert_eq!(table.method, UnwindMethod::UnwindTable);
        assert!(table.entries.len() > 1000);
    }

    #[test]
    fn gaps_are_unsupported_overlaps_clipped_and_repeats_merged() {
        let (rsp8, rsp16) = (Some((1, 8, 0)), Some((1, 16, 0)));
        let fdes = vec![
            (0x200, vec![(0x200, 0x208, rsp8), (0x208, 0x210, rsp8)]),
            (0x100, vec![(0x100, 0x104, rsp8), (0x104, 0x120, rsp16)]),
            (0x110, vec![(0x110, 0x118, rsp16), (0x118, 0x130, rsp8)]),
            (0x130, vec![(0x130, 0x140, rsp16)]),
        ];
        let laid = lay_out(fdes)
            .iter()
            .map(|e| (e.pc, e.rule, e.cfa_offset))
            .collect::<Vec<_>>();
        let expected = [(0x100, 1, 8), (0x104, 1, 16), (0x120, 1, 8), (0x130, 1, 16)];
        assert_eq!(laid[..4], expected);
        assert_eq!(laid[4..], [(0x140, 0, 0), (0x200, 1, 8), (0x210, 0, 0)]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(compile(b"not an elf at all").is_err());
        assert!(compile(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0]).is_err());
    }

    #[test]
    fn truncated_or_corrupt_eh_frame_does_not_panic() {
        let elf = build(&[]);
        let file = object::File::parse(&*elf).expect("parse");
        let section = file.section_by_name(".eh_frame").expect(".eh_frame");
        let (offset, size) = section.file_range().expect("in the file");
        let [start, end] = [offset, offset + size].map(|n| usize::try_from(n).expect("usize"));
        // The section header's sh_size: e_shoff + index * e_shentsize + 32.
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().expect("8 bytes"));
        let size_at = usize::try_from(shoff).expect("usize") + section.index().0 * 64 + 32;
        for cut in 0..size {
            let mut truncated = elf.clone();
            truncated[size_at..size_at + 8].copy_from_slice(&cut.to_le_bytes());
            if let Ok(table) = compile(&truncated) {
                assert!(sorted(&table), "cut at {cut}");
            }
        }
        for (at, byte) in (start..end).zip([0xff, 0x00, 0x7f, 0x80].iter().cycle()) {
            let mut corrupt = elf.clone();
            corrupt[at] = *byte;
            let _ = compile(&corrupt);
        }
    }
}
