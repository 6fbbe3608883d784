//! An eBPF assembler with labels, and a disassembler for its output.
//!
//! Programs are built instruction by instruction ([`Asm`]), jumps name [`Label`]s that are
//! resolved by [`Asm::finish`], and references to maps stay symbolic ([`MapRef`]) until the
//! loader knows the maps' file descriptors. Everything here is pure: the same calls give the
//! same bytes, so programs can be compared against golden listings without a kernel.

use std::fmt::{self, Write as _};

/// A register. `R0` holds return values, `R1`–`R5` helper arguments (clobbered by calls),
/// `R6`–`R9` survive calls, `R10` is the read-only frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

/// Width of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// 8 bits.
    B,
    /// 16 bits.
    H,
    /// 32 bits.
    W,
    /// 64 bits.
    Dw,
}

impl Size {
    fn code(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::Dw => 0x18,
        }
    }
    fn from_code(c: u8) -> Self {
        match c & 0x18 {
            0x00 => Size::W,
            0x08 => Size::H,
            0x10 => Size::B,
            _ => Size::Dw,
        }
    }
    fn c_type(self) -> &'static str {
        match self {
            Size::B => "u8",
            Size::H => "u16",
            Size::W => "u32",
            Size::Dw => "u64",
        }
    }
}

/// Arithmetic operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Xor = 0xa0,
    Mov = 0xb0,
}

impl Alu {
    fn from_code(c: u8) -> Option<Self> {
        Some(match c & 0xf0 {
            0x00 => Alu::Add,
            0x10 => Alu::Sub,
            0x40 => Alu::Or,
            0x50 => Alu::And,
            0x60 => Alu::Lsh,
            0x70 => Alu::Rsh,
            0xa0 => Alu::Xor,
            0xb0 => Alu::Mov,
            _ => return None,
        })
    }
    fn symbol(self) -> &'static str {
        match self {
            Alu::Add => "+=",
            Alu::Sub => "-=",
            Alu::Or => "|=",
            Alu::And => "&=",
            Alu::Lsh => "<<=",
            Alu::Rsh => ">>=",
            Alu::Xor => "^=",
            Alu::Mov => "=",
        }
    }
}

/// Jump conditions (unsigned comparisons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Ne = 0x50,
    Lt = 0xa0,
    Le = 0xb0,
}

impl Cond {
    fn from_code(c: u8) -> Option<Self> {
        Some(match c & 0xf0 {
            0x10 => Cond::Eq,
            0x20 => Cond::Gt,
            0x30 => Cond::Ge,
            0x50 => Cond::Ne,
            0xa0 => Cond::Lt,
            0xb0 => Cond::Le,
            _ => return None,
        })
    }
    fn symbol(self) -> &'static str {
        match self {
            Cond::Eq => "==",
            Cond::Gt => ">",
            Cond::Ge => ">=",
            Cond::Ne => "!=",
            Cond::Lt => "<",
            Cond::Le => "<=",
        }
    }
}

/// The kernel helpers meshpass's programs call (numbers from `enum bpf_func_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Helper {
    MapLookupElem = 1,
    GetCurrentUidGid = 15,
    Setsockopt = 49,
    SkRelease = 86,
    GetNetnsCookie = 122,
    SkAssign = 124,
}

impl Helper {
    fn from_id(id: i32) -> Option<Self> {
        Some(match id {
            1 => Helper::MapLookupElem,
            15 => Helper::GetCurrentUidGid,
            49 => Helper::Setsockopt,
            86 => Helper::SkRelease,
            122 => Helper::GetNetnsCookie,
            124 => Helper::SkAssign,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Helper::MapLookupElem => "map_lookup_elem",
            Helper::GetCurrentUidGid => "get_current_uid_gid",
            Helper::Setsockopt => "setsockopt",
            Helper::SkRelease => "sk_release",
            Helper::GetNetnsCookie => "get_netns_cookie",
            Helper::SkAssign => "sk_assign",
        }
    }
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;
const SRC_X: u8 = 0x08;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// One 8-byte instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble of the register byte).
    pub dst: u8,
    /// Source register (high nibble).
    pub src: u8,
    /// Signed offset.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self { code, dst, src, off, imm }
    }

    /// The kernel's encoding (little-endian, as on every target meshpass runs on).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

/// A jump target, created by [`Asm::label`] and placed by [`Asm::bind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// A 64-bit immediate load that must be patched with a map's file descriptor at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRef {
    /// Index of the first half of the `ld_imm64` instruction.
    pub insn: usize,
    /// Which of the program's maps (index into the loader's list).
    pub slot: u32,
}

/// Why a program could not be assembled (a bug in the generator, never user input).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AsmError {
    /// A jump names a label that was never bound.
    #[error("label {0} is used but never bound")]
    Unbound(usize),
    /// A label was bound twice.
    #[error("label {0} is bound twice")]
    Rebound(usize),
    /// A jump is too far for the 16-bit offset.
    #[error("jump from instruction {from} to {to} does not fit a 16-bit offset")]
    TooFar {
        /// The jump.
        from: usize,
        /// Its target.
        to: usize,
    },
}

/// An assembled program: instructions plus the map references still to patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The instructions (an `ld_imm64` takes two).
    pub insns: Vec<Insn>,
    /// Map references, patched by [`Program::bytes`].
    pub maps: Vec<MapRef>,
}

impl Program {
    /// The program's bytes with each map reference replaced by `map_fds[slot]`. A slot without
    /// a descriptor is `None`.
    pub fn bytes(&self, map_fds: &[i32]) -> Option<Vec<u8>> {
        let mut insns = self.insns.clone();
        for m in &self.maps {
            insns[m.insn].imm = *map_fds.get(m.slot as usize)?;
        }
        Some(insns.iter().flat_map(|i| i.to_bytes()).collect())
    }

    /// A readable listing in the kernel verifier's notation, one instruction per line
    /// (`ld_imm64` on one line). Used by dry runs and golden tests.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        let mut pc = 0;
        while pc < self.insns.len() {
            let i = self.insns[pc];
            let text = disasm(&self.insns, pc, &self.maps);
            let _ = writeln!(out, "{pc:4}: {text}");
            pc += if i.code == (CLASS_LD | MODE_IMM | 0x18) { 2 } else { 1 };
        }
        out
    }

    /// Number of instruction slots.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// True for a program without instructions.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }
}

fn disasm(insns: &[Insn], pc: usize, maps: &[MapRef]) -> String {
    let i = insns[pc];
    let class = i.code & 0x07;
    let (d, s) = (i.dst, i.src);
    let target = |off: i16| (pc as i64 + 1 + i64::from(off)).to_string();
    match class {
        CLASS_LD if i.code == (CLASS_LD | MODE_IMM | 0x18) => {
            if let Some(m) = maps.iter().find(|m| m.insn == pc) {
                return format!("r{d} = map[{}]", m.slot);
            }
            let hi = insns.get(pc + 1).map_or(0, |n| n.imm as u32);
            format!("r{d} = {:#x} ll", (u64::from(hi) << 32) | u64::from(i.imm as u32))
        }
        CLASS_LDX => format!("r{d} = *({} *)(r{s} {:+})", Size::from_code(i.code).c_type(), i.off),
        CLASS_ST => format!("*({} *)(r{d} {:+}) = {}", Size::from_code(i.code).c_type(), i.off, i.imm),
        CLASS_STX if i.code & 0xe0 == MODE_ATOMIC && i.imm == 0 => {
            format!("lock *({} *)(r{d} {:+}) += r{s}", Size::from_code(i.code).c_type(), i.off)
        }
        CLASS_STX => format!("*({} *)(r{d} {:+}) = r{s}", Size::from_code(i.code).c_type(), i.off),
        CLASS_ALU | CLASS_ALU64 => {
            let w = if class == CLASS_ALU { "w" } else { "r" };
            let Some(op) = Alu::from_code(i.code) else { return format!("alu {:#04x}", i.code) };
            if i.code & SRC_X != 0 {
                format!("{w}{d} {} {w}{s}", op.symbol())
            } else {
                format!("{w}{d} {} {}", op.symbol(), hex_if_big(i.imm))
            }
        }
        CLASS_JMP | CLASS_JMP32 => match i.code & 0xf0 {
            0x00 => format!("goto {}", target(i.off)),
            OP_CALL => match Helper::from_id(i.imm) {
                Some(h) => format!("call {}", h.name()),
                None => format!("call #{}", i.imm),
            },
            OP_EXIT => "exit".to_owned(),
            _ => {
                let w = if class == CLASS_JMP32 { "w" } else { "r" };
                let Some(c) = Cond::from_code(i.code) else { return format!("jmp {:#04x}", i.code) };
                let rhs = if i.code & SRC_X != 0 { format!("{w}{s}") } else { hex_if_big(i.imm) };
                format!("if {w}{d} {} {rhs} goto {}", c.symbol(), target(i.off))
            }
        },
        _ => format!("insn {:#04x}", i.code),
    }
}

fn hex_if_big(imm: i32) -> String {
    // Ports (and small numbers) read better in decimal, addresses in hex.
    if (-1024..=65535).contains(&imm) {
        imm.to_string()
    } else {
        format!("{:#x}", imm as u32)
    }
}

/// The assembler.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    maps: Vec<MapRef>,
    error: Option<AsmError>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// True when some jump names `l`. The verifier refuses unreachable instructions, so
    /// generators emit a block only when something jumps to it.
    pub fn is_used(&self, l: Label) -> bool {
        self.fixups.iter().any(|(_, x)| *x == l)
    }

    /// Places `l` at the next instruction.
    pub fn bind(&mut self, l: Label) {
        if self.labels[l.0].replace(self.insns.len()).is_some() && self.error.is_none() {
            self.error = Some(AsmError::Rebound(l.0));
        }
    }

    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) {
        self.push(Insn::new(CLASS_ALU64 | Alu::Mov as u8, dst as u8, 0, 0, imm));
    }

    /// `dst = src` (64-bit).
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) {
        self.push(Insn::new(CLASS_ALU64 | Alu::Mov as u8 | SRC_X, dst as u8, src as u8, 0, 0));
    }

    /// `dst op= imm`, 64-bit.
    pub fn alu64_imm(&mut self, op: Alu, dst: Reg, imm: i32) {
        self.push(Insn::new(CLASS_ALU64 | op as u8, dst as u8, 0, 0, imm));
    }

    /// `dst op= imm`, 32-bit (the upper half of `dst` becomes zero).
    pub fn alu32_imm(&mut self, op: Alu, dst: Reg, imm: u32) {
        self.push(Insn::new(CLASS_ALU | op as u8, dst as u8, 0, 0, imm as i32));
    }

    /// `dst op= src`, 32-bit (the upper half of `dst` becomes zero).
    pub fn alu32_reg(&mut self, op: Alu, dst: Reg, src: Reg) {
        self.push(Insn::new(CLASS_ALU | op as u8 | SRC_X, dst as u8, src as u8, 0, 0));
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) {
        self.push(Insn::new(CLASS_LDX | MODE_MEM | size.code(), dst as u8, src as u8, off, 0));
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) {
        self.push(Insn::new(CLASS_ST | MODE_MEM | size.code(), dst as u8, 0, off, imm));
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store_reg(&mut self, size: Size, dst: Reg, off: i16, src: Reg) {
        self.push(Insn::new(CLASS_STX | MODE_MEM | size.code(), dst as u8, src as u8, off, 0));
    }

    /// `lock *(u64 *)(dst + off) += src`: an atomic add, for counters shared by CPUs.
    pub fn atomic_add64(&mut self, dst: Reg, off: i16, src: Reg) {
        self.push(Insn::new(CLASS_STX | MODE_ATOMIC | Size::Dw.code(), dst as u8, src as u8, off, 0));
    }

    /// `dst = imm64` (two instruction slots).
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) {
        self.push(Insn::new(CLASS_LD | MODE_IMM | 0x18, dst as u8, 0, 0, imm as u32 as i32));
        self.push(Insn::new(0, 0, 0, 0, (imm >> 32) as u32 as i32));
    }

    /// `dst = &map[slot]`, patched with the map's descriptor at load time.
    pub fn ld_map(&mut self, dst: Reg, slot: u32) {
        self.maps.push(MapRef { insn: self.insns.len(), slot });
        self.push(Insn::new(CLASS_LD | MODE_IMM | 0x18, dst as u8, PSEUDO_MAP_FD, 0, 0));
        self.push(Insn::new(0, 0, 0, 0, 0));
    }

    fn jump(&mut self, code: u8, dst: Reg, src: Reg, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.push(Insn::new(code, dst as u8, src as u8, 0, imm));
    }

    /// `if dst <cond> imm goto to`, comparing 64 bits (`imm` is sign-extended).
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, to: Label) {
        self.jump(CLASS_JMP | cond as u8, dst, Reg::R0, imm, to);
    }

    /// `if dst <cond> imm goto to`, comparing the low 32 bits.
    pub fn jmp32_imm(&mut self, cond: Cond, dst: Reg, imm: u32, to: Label) {
        self.jump(CLASS_JMP32 | cond as u8, dst, Reg::R0, imm as i32, to);
    }

    /// `if dst <cond> src goto to`, comparing 64 bits.
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, to: Label) {
        self.jump(CLASS_JMP | cond as u8 | SRC_X, dst, src, 0, to);
    }

    /// `goto to`.
    pub fn ja(&mut self, to: Label) {
        self.jump(CLASS_JMP, Reg::R0, Reg::R0, 0, to);
    }

    /// Calls a kernel helper; the result is in `R0`, `R1`–`R5` are clobbered.
    pub fn call(&mut self, h: Helper) {
        self.push(Insn::new(CLASS_JMP | OP_CALL, 0, 0, 0, h as i32));
    }

    /// `return R0`.
    pub fn exit(&mut self) {
        self.push(Insn::new(CLASS_JMP | OP_EXIT, 0, 0, 0, 0));
    }

    /// `R0 = code; exit`.
    pub fn ret(&mut self, code: i32) {
        self.mov64_imm(Reg::R0, code);
        self.exit();
    }

    /// Resolves the labels.
    pub fn finish(mut self) -> Result<Program, AsmError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for (at, l) in std::mem::take(&mut self.fixups) {
            let to = self.labels[l.0].ok_or(AsmError::Unbound(l.0))?;
            let off = to as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(off).map_err(|_| AsmError::TooFar { from: at, to })?;
        }
        Ok(Program { insns: self.insns, maps: self.maps })
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.listing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_kernel_does() {
        let mut a = Asm::new();
        a.mov64_imm(Reg::R0, 1);
        a.exit();
        let p = a.finish().expect("assembles");
        // From the kernel's BPF_MOV64_IMM(BPF_REG_0, 1) and BPF_EXIT_INSN().
        assert_eq!(p.bytes(&[]).expect("no maps"), [0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn resolves_forward_and_backward_labels() {
        let mut a = Asm::new();
        let top = a.label();
        let end = a.label();
        a.bind(top);
        a.load(Size::W, Reg::R2, Reg::R1, 12);
        a.jmp32_imm(Cond::Ne, Reg::R2, 6, end);
        a.ja(top);
        a.bind(end);
        a.ret(1);
        let p = a.finish().expect("assembles");
        assert_eq!(p.insns[1].off, 1);
        assert_eq!(p.insns[2].off, -3);
        assert_eq!(
            p.listing(),
            "   0: r2 = *(u32 *)(r1 +12)\n   1: if w2 != 6 goto 3\n   2: goto 0\n   3: r0 = 1\n   4: exit\n"
        );
    }

    #[test]
    fn unbound_and_rebound_labels_are_errors() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        assert_eq!(a.finish(), Err(AsmError::Unbound(0)));
        let mut a = Asm::new();
        let l = a.label();
        a.bind(l);
        a.bind(l);
        assert_eq!(a.finish(), Err(AsmError::Rebound(0)));
    }

    #[test]
    fn map_references_are_patched_at_load() {
        let mut a = Asm::new();
        a.ld_map(Reg::R1, 0);
        a.ld_imm64(Reg::R2, 0x1_0000_0002);
        a.ret(0);
        let p = a.finish().expect("assembles");
        let bytes = p.bytes(&[7]).expect("slot 0 given");
        assert_eq!(bytes[0], 0x18);
        assert_eq!(bytes[1], 0x11, "dst r1, src PSEUDO_MAP_FD");
        assert_eq!(&bytes[4..8], &7i32.to_le_bytes());
        assert!(p.bytes(&[]).is_none(), "a missing descriptor is refused");
        assert_eq!(
            p.listing().lines().collect::<Vec<_>>(),
            ["   0: r1 = map[0]", "   2: r2 = 0x100000002 ll", "   4: r0 = 0", "   5: exit"]
        );
    }

    #[test]
    fn atomic_add_encodes_as_bpf_atomic_add() {
        let mut a = Asm::new();
        a.atomic_add64(Reg::R0, 8, Reg::R1);
        a.ret(0);
        let p = a.finish().expect("assembles");
        // The kernel's BPF_ATOMIC_OP(BPF_DW, BPF_ADD, BPF_REG_0, BPF_REG_1, 8).
        assert_eq!(&p.bytes(&[]).expect("no maps")[..8], &[0xdb, 0x10, 8, 0, 0, 0, 0, 0]);
        assert!(p.listing().starts_with("   0: lock *(u64 *)(r0 +8) += r1\n"), "{}", p.listing());
    }

    #[test]
    fn far_jumps_are_refused() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        for _ in 0..40_000 {
            a.mov64_imm(Reg::R0, 0);
        }
        a.bind(l);
        a.exit();
        assert!(matches!(a.finish(), Err(AsmError::TooFar { from: 0, .. })));
    }
}
