//! Placement on real prologue bytes (this machine's glibc) and on synthetic prologues that
//! exercise each rule.

use iced_x86::Register;

use super::*;
use crate::attach::ALLOCATOR_FUNCTIONS;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn needs_of(symbol: &str) -> ProbeNeeds {
    ALLOCATOR_FUNCTIONS
        .iter()
        .find(|f| f.symbol == symbol)
        .expect("known function")
        .needs()
}

const FREE_LIKE: ProbeNeeds = ProbeNeeds {
    reads: &[Register::RDI],
    has_return: false,
    null_first_arg_needs_no_record: true,
};
const MALLOC_LIKE: ProbeNeeds = ProbeNeeds {
    reads: &[Register::RDI],
    has_return: true,
    null_first_arg_needs_no_record: false,
};

#[test]
fn glibc_2_36_functions_get_their_first_safe_emulated_instruction() {
    let expected = [
        ("malloc", 0, "push %r12"),
        ("free", 3, "je"),
        ("calloc", 0, "push %r13"),
        ("realloc", 0, "push %r15"),
        ("reallocarray", 0, "mov %rsi,%rax"),
        ("posix_memalign", 7, "push %r12"),
        ("memalign", 7, "je"),
        ("aligned_alloc", 7, "je"),
        ("valloc", 7, "push %rbx"),
        ("pvalloc", 7, "push %rbx"),
        ("mmap", 10, "jne"),
        ("munmap", 0, "mov $0xb,%eax"),
    ];
    let fixture = include_str!("../fixtures/glibc-2.36-9+deb12u14.txt");
    for (symbol, offset, instruction) in expected {
        let line = fixture
            .lines()
            .find(|l| l.split_whitespace().next() == Some(symbol))
            .unwrap_or_else(|| panic!("{symbol} not in the fixture"));
        let bytes = hex(line.split_whitespace().nth(2).expect("bytes"));
        let placement = place(&bytes, &needs_of(symbol), PlacementMode::Smart);
        assert_eq!(placement.offset, offset, "{symbol}: {placement:?}");
        assert!(
            placement.instruction.starts_with(instruction),
            "{symbol}: {placement:?}"
        );
    }
}

#[test]
fn reallocarray_stays_at_entry_because_mul_overwrites_the_size_argument() {
    let bytes = hex("4889f048f7e24889c6");
    let placement = place(&bytes, &needs_of("reallocarray"), PlacementMode::Smart);
    assert_eq!(placement.offset, 0);
    assert!(placement.reason.contains("RDX"), "{placement:?}");
}

#[test]
fn a_syscall_before_any_emulated_instruction_keeps_the_probe_at_entry() {
    let placement = place(
        &hex("b80b0000000f05c3"),
        &needs_of("munmap"),
        PlacementMode::Smart,
    );
    assert_eq!(placement.offset, 0);
    assert!(
        placement.reason.contains("syscall") || placement.reason.contains("kernel"),
        "{placement:?}"
    );
}

#[test]
fn a_null_check_first_lets_free_skip_past_a_branch_the_kernel_would_single_step() {
    // test %rdi,%rdi; bnd je +5 (prefixed: single-stepped); push %rbp
    let bytes = hex("4885fff2740555");
    assert_eq!(place(&bytes, &FREE_LIKE, PlacementMode::Smart).offset, 6);
    // The same branch is not a path malloc may skip: its probe stays at entry.
    let placement = place(&bytes, &MALLOC_LIKE, PlacementMode::Smart);
    assert_eq!(placement.offset, 0, "{placement:?}");
    assert!(placement.reason.contains("can leave"), "{placement:?}");
}

#[test]
fn an_early_branch_that_is_not_a_null_check_keeps_the_probe_at_entry() {
    // test %rsi,%rsi; bnd jne +16; push %rbp: the branch can jump past the candidate.
    let placement = place(&hex("4885f6f2751055"), &FREE_LIKE, PlacementMode::Smart);
    assert_eq!(placement.offset, 0, "{placement:?}");
}

#[test]
fn an_argument_overwritten_before_the_candidate_keeps_the_probe_at_entry() {
    // mov %rsi,%rdi; push %rbp
    let placement = place(&hex("4889f755"), &FREE_LIKE, PlacementMode::Smart);
    assert_eq!(placement.offset, 0);
    assert!(placement.reason.contains("RDI"), "{placement:?}");
    // Writing a register the program does not read is fine: mov %rdi,%rax; push %rbp.
    assert_eq!(
        place(&hex("4889f855"), &FREE_LIKE, PlacementMode::Smart).offset,
        3
    );
}

#[test]
fn a_stack_change_blocks_functions_with_a_return_probe_only() {
    // sub $8,%rsp; push %rbp
    let bytes = hex("4883ec0855");
    assert_eq!(place(&bytes, &MALLOC_LIKE, PlacementMode::Smart).offset, 0);
    assert_eq!(place(&bytes, &FREE_LIKE, PlacementMode::Smart).offset, 4);
}

#[test]
fn a_cet_prologue_skips_endbr64_which_is_single_stepped() {
    // endbr64; push %rbp
    let placement = place(&hex("f30f1efa55"), &MALLOC_LIKE, PlacementMode::Smart);
    assert_eq!(placement.offset, 4, "{placement:?}");
}

#[test]
fn entry_mode_always_probes_offset_zero_and_says_whether_it_is_emulated() {
    let free = place(&hex("4885ff0f84bf000000"), &FREE_LIKE, PlacementMode::Entry);
    assert_eq!((free.offset, free.emulated), (0, false));
    let malloc = place(&hex("41545553"), &MALLOC_LIKE, PlacementMode::Entry);
    assert_eq!((malloc.offset, malloc.emulated), (0, true));
}

#[test]
fn undecodable_bytes_keep_the_probe_at_entry() {
    assert_eq!(
        place(&[0x0f, 0x0b], &MALLOC_LIKE, PlacementMode::Smart).offset,
        0
    );
    assert_eq!(place(&[], &MALLOC_LIKE, PlacementMode::Smart).offset, 0);
}
