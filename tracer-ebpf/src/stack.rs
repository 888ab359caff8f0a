//! User stack capture with our own unwinder and storage, keyed by a 64-bit hash of the frames.
//!
//! Stacks are captured in return probes: there the kernel has put the caller's return address
//! in the instruction pointer, so the first frame is the call site itself, whatever the
//! allocator's (or a wrapper's) frame layout. The page-fault profile (`fault`) walks from the
//! faulting instruction, with the user registers the kernel saved at the fault. Each further frame is found by the method of the
//! binary whose code it is in (`UNWIND_MAPPINGS`): saved frame pointers, one user read per
//! frame, where the binary keeps them; its unwind table (compiled by the daemon from
//! `.eh_frame`) where it does not. Code the daemon has no mapping for is walked by frame
//! pointer, as before.
//!
//! Measured here, a frame-pointer walk is about four times cheaper than `bpf_get_stack`, whose
//! generic perf callchain path cost ~1 µs for a five-frame stack; and the kernel's STACK_TRACE
//! map fails on a hash bucket collision, so exact keys here make a lost stack a full map,
//! counted.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    bindings::pt_regs,
    helpers::{bpf_get_current_task, bpf_probe_read_user, generated},
    maps::lpm_trie::Key,
};
use tracer_common::{
    MAX_STACK_DEPTH, Stat, UNKNOWN_STACK_ID, UNWIND_BINARY_SEARCH_STEPS,
    UNWIND_MAPPING_KEY_PREFIX_BITS, UnwindEntry, UnwindMapping, UnwindMappingKey, unwind_method,
};

use crate::{
    config::kernel_layout,
    maps::{STACK_SCRATCH, STACK_TRACES, UNWIND_ENTRIES, UNWIND_MAPPINGS},
    stats::bump,
    thread_state::current,
};

const EEXIST: i32 = 17;

/// The registers an unwinder step needs, for the frame being left.
struct Frame {
    pc: u64,
    sp: u64,
    bp: u64,
    /// Where `pc` was read from as a return address (0 for the first frame).
    slot: u64,
}

/// Where a walk's user-memory reads are kept. A walk is a function of the registers it starts
/// from, the unwind maps and the words it reads: a later walk from the same registers, whose
/// reads would give the same words, walks the same stack (see `fault`'s stack cache).
pub(crate) trait ReadLog {
    /// The walk read `value` at `address`.
    fn read(&mut self, address: u64, value: u64);
    /// The walk could not read the word at `address` (and took that for the stack's end).
    fn unreadable(&mut self, address: u64);
    /// The walk cannot be replayed (a read failed, a frame was lost, the stack was not
    /// stored).
    fn spoil(&mut self);
}

/// No log: stacks captured in uprobes are walked every time.
impl ReadLog for () {
    #[inline(always)]
    fn read(&mut self, _address: u64, _value: u64) {}
    #[inline(always)]
    fn unreadable(&mut self, _address: u64) {}
    #[inline(always)]
    fn spoil(&mut self) {}
}

/// Pending returns read per walk: the allocator's own (a fault inside malloc while its return
/// probe waits) and the one outside it (a traced `operator new` calling a traced malloc).
const MAX_PENDING_RETURNS: usize = 2;

/// Return addresses the kernel took off the stack for pending uretprobes and uprobe sessions'
/// returns: it wrote its trampoline's address into each slot (one address for every caller, in
/// no binary) and keeps the originals in the task's `return_instances`, innermost first. A
/// walk that read a return address from one of those slots takes the original instead, as the
/// kernel's own `fixup_uretprobe_trampoline_entries` does for its stack traces.
#[derive(Clone, Copy, Default)]
struct PendingReturns {
    /// The hijacked slots' addresses (0: none).
    slots: [u64; MAX_PENDING_RETURNS],
    /// What each held.
    originals: [u64; MAX_PENDING_RETURNS],
}

impl PendingReturns {
    /// The current task's (none until it has hit a uprobe with a return). No branch on what
    /// is read: a failed read (no `utask`, no pending return) reads as 0, so the verifier
    /// walks each program's stack loop once, with unknown values, rather than once per case.
    #[inline(always)]
    fn of_current_task() -> Self {
        let mut pending = Self::default();
        let layout = kernel_layout();
        if layout.uretprobes_valid == 0 {
            return pending;
        }
        // SAFETY: no preconditions.
        let task = unsafe { bpf_get_current_task() };
        let utask = kernel_word(task.wrapping_add(u64::from(layout.task_utask)));
        let mut instance =
            kernel_word(utask.wrapping_add(u64::from(layout.utask_return_instances)));
        for i in 0..MAX_PENDING_RETURNS {
            pending.slots[i] =
                kernel_word(instance.wrapping_add(u64::from(layout.return_instance_stack)));
            pending.originals[i] = kernel_word(
                instance.wrapping_add(u64::from(layout.return_instance_orig_ret_vaddr)),
            );
            instance = kernel_word(instance.wrapping_add(u64::from(layout.return_instance_next)));
        }
        pending
    }

    /// The return address of `frame`, or the original a pending return took from its slot.
    #[inline(always)]
    fn repair(&self, frame: &mut Frame) {
        for i in 0..MAX_PENDING_RETURNS {
            if frame.slot == self.slots[i] {
                frame.pc = self.originals[i];
            }
        }
    }
}

/// The kernel word at `address`; 0 when it cannot be read (the helper zeroes its destination).
#[inline(always)]
fn kernel_word(address: u64) -> u64 {
    let mut word: u64 = 0;
    // SAFETY: a checked kernel read into a local.
    let _ = unsafe {
        generated::bpf_probe_read_kernel(
            (&raw mut word).cast(),
            8,
            address as *const core::ffi::c_void,
        )
    };
    word
}

/// What one step found.
enum Step {
    /// The caller's frame.
    Caller(Frame),
    /// The stack ends here (the outermost frame, or no frame-pointer chain).
    End,
    /// The frame's code cannot be unwound (counted).
    Lost,
}

/// Captures the current user stack in a uprobe or uretprobe, whose context is the user
/// registers, and returns its id ([`UNKNOWN_STACK_ID`] when lost).
pub(crate) fn capture<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: uprobe programs get the user registers as their context.
    let regs = unsafe { &*ctx.as_ptr().cast::<pt_regs>() };
    let (tgid, _) = current();
    walk(
        tgid,
        Frame {
            pc: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
            slot: 0,
        },
        &mut (),
    )
}

/// Captures the user stack of a task stopped at a faulting instruction, from its saved user
/// registers (`bpf_task_pt_regs`), and returns its id. The faulting instruction is no return
/// address: it is recorded one byte on, so that, like every other frame, the instruction it
/// stands for is at `pc - 1` for the unwinder's lookups and for the symbolizer. (Taken as is,
/// a fault at a function's first instruction, a stack-growing `push`, would be looked up in the
/// function before it.)
/// Every user-memory word the walk reads goes to `log`.
pub(crate) fn capture_at_fault<L: ReadLog>(tgid: u32, regs: &pt_regs, log: &mut L) -> u64 {
    walk(
        tgid,
        Frame {
            pc: regs.rip.wrapping_add(1),
            sp: regs.rsp,
            bp: regs.rbp,
            slot: 0,
        },
        log,
    )
}

/// Walks from `frame` (whose `pc` reads as a return address), stores the stack and returns
/// its id.
#[inline(always)]
fn walk<L: ReadLog>(tgid: u32, mut frame: Frame, log: &mut L) -> u64 {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        log.spoil();
        bump(Stat::STACKS_LOST);
        return UNKNOWN_STACK_ID;
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    scratch.ips[0] = frame.pc;
    let mut frames: u64 = 1;
    let mut mapping = UnwindMapping::default();
    let pending = PendingReturns::of_current_task();
    for i in 1..MAX_STACK_DEPTH {
        frame = match step(tgid, &frame, &mut mapping, log) {
            Step::Caller(caller) => caller,
            Step::End => break,
            Step::Lost => {
                log.spoil();
                bump(Stat::FRAMES_NOT_UNWOUND);
                break;
            }
        };
        if frame.pc == 0 {
            break;
        }
        pending.repair(&mut frame);
        scratch.ips[i] = frame.pc;
        frames += 1;
    }
    scratch.len = frames;
    if pending.slots[0] != 0 {
        // A slot may have held the trampoline, the same for every caller: a replay of this
        // walk's reads could not tell callers apart. (Once the return is gone, the slot holds
        // the caller again, and a replay of an earlier walk reads what that walk read.)
        log.spoil();
    }

    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ frames;
    for i in 0..MAX_STACK_DEPTH {
        if i as u64 >= frames {
            break;
        }
        hash = (hash ^ scratch.ips[i]).wrapping_mul(0x0000_0100_0000_01b3);
        hash ^= hash >> 31;
    }
    let stack_id = if hash == UNKNOWN_STACK_ID { 1 } else { hash };

    if STACK_TRACES.get_ptr(&stack_id).is_none() {
        match STACK_TRACES.insert(&stack_id, &*scratch, u64::from(BPF_NOEXIST)) {
            Ok(()) => {}
            Err(err) if err == -EEXIST => {}
            Err(_) => {
                log.spoil();
                bump(Stat::STACK_TRACES_MAP_FULL);
                return UNKNOWN_STACK_ID;
            }
        }
    }
    stack_id
}

/// Unwinds one frame: from the code at `frame.pc` to its caller. `mapping` is the mapping of
/// the previous frame's code, reused while frames stay in it (most do).
#[inline(always)]
fn step<L: ReadLog>(tgid: u32, frame: &Frame, mapping: &mut UnwindMapping, log: &mut L) -> Step {
    // A return address points after its call: the call itself is at pc - 1 (and may be the
    // last instruction of a mapping or a function).
    let call = frame.pc.wrapping_sub(1);
    if call < mapping.start || call >= mapping.end {
        let key = Key::new(
            UNWIND_MAPPING_KEY_PREFIX_BITS + 64,
            UnwindMappingKey {
                tgid_be: tgid.to_be(),
                _pad: 0,
                addr_be: call.to_be(),
            },
        );
        *mapping = match UNWIND_MAPPINGS.get(&key) {
            Some(found) => *found,
            // Unknown code (JIT, a library loaded after attach, a watched process that is not
            // profiled): frame pointers, and the next frame looks again.
            None => {
                bump(Stat::FRAMES_WITHOUT_UNWIND_MAPPING);
                UnwindMapping::default()
            }
        };
    }
    if mapping.method != unwind_method::UNWIND_TABLE {
        return by_frame_pointer(frame, log);
    }
    let address = call.wrapping_sub(mapping.bias);
    if address > u64::from(u32::MAX) {
        return Step::Lost;
    }
    match find_row(mapping.table_start, mapping.table_len, address as u32) {
        Some(row) => by_table(frame, &row, log),
        None => Step::Lost,
    }
}

/// A step by saved frame pointer: [saved %rbp, return address] at %rbp.
#[inline(always)]
fn by_frame_pointer<L: ReadLog>(frame: &Frame, log: &mut L) -> Step {
    let bp = frame.bp;
    if bp == 0 || bp % 8 != 0 || bp < frame.sp {
        return Step::End;
    }
    // SAFETY: a checked user-memory read; a bad address gives an error, not a fault.
    let Ok(pair) = (unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }) else {
        log.unreadable(bp);
        return Step::End;
    };
    log.read(bp, pair[0]);
    log.read(bp + 8, pair[1]);
    // A bogus saved %rbp (the caller keeps no frame pointer) still leaves a good return
    // address; the next step checks the %rbp it gets (frames live at increasing addresses).
    if pair[1] == 0 {
        return Step::End;
    }
    Step::Caller(Frame {
        pc: pair[1],
        sp: bp + 16,
        bp: pair[0],
        slot: bp + 8,
    })
}

/// A step by an unwind-table row.
#[inline(always)]
fn by_table<L: ReadLog>(frame: &Frame, row: &UnwindEntry, log: &mut L) -> Step {
    let base = match row.rule {
        UnwindEntry::RULE_CFA_RSP => frame.sp,
        UnwindEntry::RULE_CFA_RBP => frame.bp,
        UnwindEntry::RULE_END => return Step::End,
        _ => return Step::Lost,
    };
    let cfa = base.wrapping_add(row.cfa_offset as i64 as u64);
    // The caller's frame is above this one; anything else would loop.
    if cfa <= frame.sp {
        return Step::Lost;
    }
    // SAFETY: a checked user-memory read.
    let Ok(return_address) = (unsafe { bpf_probe_read_user((cfa - 8) as *const u64) }) else {
        return Step::Lost;
    };
    log.read(cfa - 8, return_address);
    let bp = if row.rbp_offset == 0 {
        frame.bp
    } else {
        let slot = cfa.wrapping_add(row.rbp_offset as i64 as u64);
        // SAFETY: as above.
        match unsafe { bpf_probe_read_user(slot as *const u64) } {
            Ok(bp) => {
                log.read(slot, bp);
                bp
            }
            Err(_) => return Step::Lost,
        }
    };
    bump(Stat::FRAMES_UNWOUND_BY_TABLE);
    Step::Caller(Frame {
        pc: return_address,
        sp: cfa,
        bp,
        slot: cfa - 8,
    })
}

/// The last row at or before `address` in a binary's table (binary search, bounded).
#[inline(always)]
fn find_row(start: u32, len: u32, address: u32) -> Option<UnwindEntry> {
    if len == 0 {
        return None;
    }
    let mut low = start;
    let mut high = start.wrapping_add(len);
    for _ in 0..UNWIND_BINARY_SEARCH_STEPS {
        if high.wrapping_sub(low) <= 1 {
            break;
        }
        let middle = low + (high - low) / 2;
        let row = UNWIND_ENTRIES.get(middle)?;
        if row.pc <= address {
            low = middle;
        } else {
            high = middle;
        }
    }
    let row = *UNWIND_ENTRIES.get(low)?;
    (row.pc <= address).then_some(row)
}
