//! Where a uprobe lands inside an allocator function, chosen by decoding its first instructions.
//!
//! A uprobe on an instruction the kernel can emulate costs about a tenth of one it must
//! single-step out of line (see BENCHMARKS.md for this kernel's table). So each probe goes on
//! the earliest emulated instruction such that: every instruction before it leaves the argument
//! registers the BPF program reads untouched; for a function with a return probe, nothing
//! before it moves the stack pointer (the kernel takes the return address from the top of the
//! stack when the probe fires); and no earlier branch can leave the function or skip the probe,
//! except a NULL check of the first argument for functions where a NULL call records nothing
//! (free). Whenever any of this cannot be proven, the probe stays at offset 0. The logic knows
//! nothing about glibc: it reads the bytes of whatever library serves the function.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter as _, GasFormatter, Instruction,
    InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};
use serde::Serialize;

/// Instructions looked at before giving up on finding an emulated one.
const MAX_INSTRUCTIONS: usize = 16;

/// What the BPF program at a function's entry needs.
#[derive(Clone, Copy, Debug)]
pub struct ProbeNeeds {
    /// Argument registers the entry program reads.
    pub reads: &'static [Register],
    /// Whether a return probe is attached at the same place.
    pub has_return: bool,
    /// Whether a call with a NULL first argument records nothing (free(NULL)).
    pub null_first_arg_needs_no_record: bool,
}

/// How probes are placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementMode {
    /// On the earliest emulated instruction that is provably equivalent to the entry.
    #[default]
    Smart,
    /// At offset 0, the way other tools attach (for comparison).
    Entry,
}

/// The chosen place and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Offset from the function's start.
    pub offset: u64,
    /// The instruction at that offset (AT&T syntax), when decodable.
    pub instruction: String,
    /// Whether this kernel emulates that instruction (cheap) or single-steps it.
    pub emulated: bool,
    /// Why this offset.
    pub reason: String,
}

/// Whether the kernel emulates a uprobe on this instruction instead of single-stepping it
/// out of line. Measured on Linux 6.18 (x86-64) by `cargo xtask bench --suite instructions`:
/// push of a register, direct jumps, direct calls, conditional jumps, and the standard 1- to
/// 6-byte nops; everything else tried (mov, lea, test, cmp, sub/add on rsp, endbr64, the
/// non-standard nop `0f 1f 04 00`) is single-stepped.
pub fn is_emulated(instruction: &Instruction, bytes: &[u8]) -> bool {
    const STANDARD_NOPS: &[&[u8]] = &[
        &[0x90],
        &[0x66, 0x90],
        &[0x0f, 0x1f, 0x00],
        &[0x0f, 0x1f, 0x40, 0x00],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    ];
    if STANDARD_NOPS.contains(&bytes) {
        return true;
    }
    // Prefixed forms (bnd, notrack, segment overrides) take the single-step path.
    let plain_length = match instruction.code() {
        Code::Push_r64 => return bytes.len() <= 2,
        Code::Jmp_rel8_64 => 2,
        Code::Jmp_rel32_64 | Code::Call_rel32_64 => 5,
        _ if instruction.is_jcc_short() => 2,
        _ if instruction.is_jcc_near() => 6,
        _ => return false,
    };
    bytes.len() == plain_length
}

fn disassemble(instruction: &Instruction) -> String {
    let mut text = String::new();
    let mut formatter = GasFormatter::new();
    formatter.options_mut().set_uppercase_hex(false);
    formatter.format(instruction, &mut text);
    text
}

/// Chooses where to probe a function whose first bytes are `code`.
pub fn place(code: &[u8], needs: &ProbeNeeds, mode: PlacementMode) -> Placement {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let first = decoder.decode();
    let at_entry = |reason: String| Placement {
        offset: 0,
        instruction: if first.is_invalid() {
            "?".into()
        } else {
            disassemble(&first)
        },
        emulated: !first.is_invalid() && is_emulated(&first, bytes_of(code, &first)),
        reason,
    };
    if mode == PlacementMode::Entry {
        return at_entry("entry placement requested".into());
    }
    let mut previous: Option<Instruction> = None;
    let mut instruction = first;
    for _ in 0..MAX_INSTRUCTIONS {
        if instruction.is_invalid() {
            return at_entry("could not decode the prologue".into());
        }
        let text = disassemble(&instruction);
        if is_emulated(&instruction, bytes_of(code, &instruction)) {
            let reason = if instruction.ip() == 0 {
                "the first instruction is emulated".into()
            } else {
                format!(
                    "first emulated instruction; the {} before it keep the arguments{}",
                    if instruction.ip() == 1 {
                        "byte"
                    } else {
                        "bytes"
                    },
                    if needs.has_return {
                        " and the return address in place"
                    } else {
                        ""
                    }
                )
            };
            return Placement {
                offset: instruction.ip(),
                instruction: text,
                emulated: true,
                reason,
            };
        }
        // This instruction runs before any later probe: it must not change what is read there.
        if let Some(register) = written_argument(&mut info, &instruction, needs.reads) {
            return at_entry(format!(
                "`{text}` writes {register:?} before any emulated instruction"
            ));
        }
        if needs.has_return && moves_stack_pointer(&mut info, &instruction) {
            return at_entry(format!(
                "`{text}` moves the stack pointer before any emulated instruction"
            ));
        }
        if matches!(
            instruction.mnemonic(),
            Mnemonic::Syscall | Mnemonic::Sysenter | Mnemonic::Int
        ) {
            return at_entry(format!(
                "`{text}` enters the kernel before any emulated instruction"
            ));
        }
        match instruction.flow_control() {
            FlowControl::Next => {}
            FlowControl::ConditionalBranch
                if needs.null_first_arg_needs_no_record
                    && is_null_check_of_first_argument(previous.as_ref(), &instruction) => {}
            _ => {
                return at_entry(format!(
                    "`{text}` can leave before any emulated instruction"
                ));
            }
        }
        previous = Some(instruction);
        if !decoder.can_decode() {
            break;
        }
        instruction = decoder.decode();
    }
    at_entry("no emulated instruction early enough".into())
}

fn bytes_of<'a>(code: &'a [u8], instruction: &Instruction) -> &'a [u8] {
    let start = instruction.ip() as usize;
    code.get(start..start + instruction.len()).unwrap_or(&[])
}

/// The first argument register in `reads` the instruction writes (sub-registers count).
fn written_argument(
    info: &mut InstructionInfoFactory,
    instruction: &Instruction,
    reads: &[Register],
) -> Option<Register> {
    info.info(instruction)
        .used_registers()
        .iter()
        .find_map(|used| {
            let writes = matches!(
                used.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            let full = used.register().full_register();
            (writes && reads.contains(&full)).then_some(full)
        })
}

fn moves_stack_pointer(info: &mut InstructionInfoFactory, instruction: &Instruction) -> bool {
    instruction.stack_pointer_increment() != 0
        || info.info(instruction).used_registers().iter().any(|used| {
            used.register().full_register() == Register::RSP
                && matches!(
                    used.access(),
                    OpAccess::Write
                        | OpAccess::ReadWrite
                        | OpAccess::CondWrite
                        | OpAccess::ReadCondWrite
                )
        })
}

/// `test rdi, rdi` (or `cmp rdi, 0`) then `je`/`jz`: the taken path is the NULL call.
fn is_null_check_of_first_argument(previous: Option<&Instruction>, branch: &Instruction) -> bool {
    let Some(check) = previous else { return false };
    if !matches!(branch.mnemonic(), Mnemonic::Je) {
        return false;
    }
    let is_rdi = |op: u32| {
        check.op_kind(op) == OpKind::Register
            && check.op_register(op).full_register() == Register::RDI
    };
    match check.mnemonic() {
        Mnemonic::Test => check.op_count() == 2 && is_rdi(0) && is_rdi(1),
        Mnemonic::Cmp => {
            check.op_count() == 2
                && is_rdi(0)
                && matches!(
                    check.op_kind(1),
                    OpKind::Immediate8to64 | OpKind::Immediate32to64 | OpKind::Immediate8
                )
                && check.immediate(1) == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
