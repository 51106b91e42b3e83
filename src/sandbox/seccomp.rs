//! The sandbox's seccomp filter: the system calls a function may not make answer EPERM (and
//! `clone3` ENOSYS, so the C library falls back to `clone`, whose flags the filter can read).
//! It imports nothing else of faasd.
//!
//! The filter is built here rather than by a general compiler because its shape is what a call
//! pays for. When a process installs a filter, the kernel runs it once for every system call
//! number of every architecture, to cache which calls it always allows, and it does so with
//! interrupts off; a filter that tests the numbers one after the other costs that walk for
//! every allowed call. This one finds a number with a binary search (a few comparisons), so
//! installing it costs about a third of the linear chain's time (`docs/performance.md`,
//! "Cold sandboxed starts, round three"). Every denied call jumps to one shared return.

use nix::libc::{self, sock_filter};

/// A classic BPF program, as `seccomp(SECCOMP_SET_MODE_FILTER)` takes it.
pub type BpfProgram = Vec<sock_filter>;

/// The syscalls a function may not make; each answers EPERM.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_perf_event_open,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_reboot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_open_by_handle_at,
    libc::SYS_userfaultfd,
    // The new mount API, refused like mount itself.
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
];

/// Namespace flags a `clone` may not carry (all in the low 32 bits of its first argument).
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME) as u32;

/// The audit architecture of this build (`AUDIT_ARCH_*`: the ELF machine, 64-bit, little
/// endian); a call made under any other (such as `int 0x80` on x86-64) kills the process.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Numbers at or above this are the x32 ABI's (x86-64 with `__X32_SYSCALL_BIT`), which the
/// search below would not recognise: they answer ENOSYS, as on a kernel built without x32.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: the call's number, its architecture, the low 32 bits of
/// its first argument (little endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

/// At most this many numbers are tested one after the other at a leaf of the search.
const LEAF: usize = 3;

/// What the filter does with one call number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rule {
    /// EPERM.
    Deny,
    /// EPERM if its flags create a namespace, else allowed.
    CloneFlags,
    /// ENOSYS.
    NoSys,
}

/// The shared returns at the end of the program, jumped to from anywhere above them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    CloneCheck,
    Deny,
    NoSys,
}

/// The seccomp filter as classic BPF.
pub fn program() -> BpfProgram {
    let mut rules: Vec<(u32, Rule)> = DENIED.iter().map(|nr| (*nr as u32, Rule::Deny)).collect();
    rules.push((libc::SYS_clone as u32, Rule::CloneFlags));
    rules.push((libc::SYS_clone3 as u32, Rule::NoSys));
    rules.sort_unstable_by_key(|(nr, _)| *nr);
    rules.dedup_by_key(|(nr, _)| *nr);
    let mut b = Builder::default();
    b.stmt(LD_ABS, ARCH);
    b.jump(JEQ, AUDIT_ARCH, Jump::Next(1), Jump::Next(0));
    b.stmt(RET, libc::SECCOMP_RET_KILL_PROCESS);
    b.stmt(LD_ABS, NR);
    b.jump(JGE, X32_SYSCALL_BIT, Jump::To(Target::NoSys), Jump::Next(0));
    b.search(&rules);
    // The shared ends, in this order (every jump above is forward).
    b.place(Target::CloneCheck);
    b.stmt(LD_ABS, ARG0_LOW);
    b.jump(JSET, NAMESPACE_FLAGS, Jump::To(Target::Deny), Jump::Next(0));
    b.stmt(RET, libc::SECCOMP_RET_ALLOW);
    b.place(Target::Deny);
    b.stmt(RET, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
    b.place(Target::NoSys);
    b.stmt(RET, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
    b.finish()
}

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Where a conditional jump goes: `Next(n)` skips n instructions; `To` a shared end.
#[derive(Clone, Copy)]
enum Jump {
    Next(u8),
    To(Target),
}

/// A program being written: its instructions, and the jumps to shared ends still to resolve
/// (instruction index, whether it is the true branch, the end).
#[derive(Default)]
struct Builder {
    code: Vec<sock_filter>,
    pending: Vec<(usize, bool, Target)>,
}

impl Builder {
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push(sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }

    fn jump(&mut self, code: u16, k: u32, jt: Jump, jf: Jump) {
        let at = self.code.len();
        let mut offset = |jump: Jump, taken: bool| match jump {
            Jump::Next(n) => n,
            Jump::To(target) => {
                self.pending.push((at, taken, target));
                0
            }
        };
        let (jt, jf) = (offset(jt, true), offset(jf, false));
        self.code.push(sock_filter { code, jt, jf, k });
    }

    /// A binary search over `rules` (sorted by number), the call's number in the accumulator:
    /// a rule's number goes to its end; every other number is allowed.
    fn search(&mut self, rules: &[(u32, Rule)]) {
        if rules.len() <= LEAF {
            for (nr, rule) in rules {
                let target = match rule {
                    Rule::Deny => Target::Deny,
                    Rule::CloneFlags => Target::CloneCheck,
                    Rule::NoSys => Target::NoSys,
                };
                self.jump(JEQ, *nr, Jump::To(target), Jump::Next(0));
            }
            self.stmt(RET, libc::SECCOMP_RET_ALLOW);
            return;
        }
        let (low, high) = rules.split_at(rules.len() / 2);
        let at = self.code.len();
        // Patched below to skip the lower half when the number is at least the upper half's.
        self.jump(JGE, high[0].0, Jump::Next(0), Jump::Next(0));
        self.search(low);
        self.code[at].jt = offset_from(at, self.code.len());
        self.search(high);
    }

    /// Resolves the jumps to `target`, which starts at the next instruction.
    fn place(&mut self, target: Target) {
        let here = self.code.len();
        for (at, taken, t) in &self.pending {
            if *t == target {
                let offset = offset_from(*at, here);
                let insn = &mut self.code[*at];
                if *taken {
                    insn.jt = offset;
                } else {
                    insn.jf = offset;
                }
            }
        }
    }

    fn finish(self) -> BpfProgram {
        self.code
    }
}

/// The offset of a jump at `at` to `target` (jumps count from the next instruction). The
/// program is about 60 instructions, far below the 255 a jump can span; `program_fits` in the
/// tests holds it there.
fn offset_from(at: usize, target: usize) -> u8 {
    u8::try_from(target - at - 1).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` on a call, as the kernel would (only the instructions it uses).
    fn run(program: &[sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let insn = &program[pc];
            pc += 1;
            let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            match insn.code {
                LD_ABS => {
                    let k = insn.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                JEQ => pc += branch(acc == insn.k),
                JGE => pc += branch(acc >= insn.k),
                JSET => pc += branch(acc & insn.k != 0),
                RET => return insn.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn every_denied_call_answers_eperm_and_every_other_number_is_allowed() {
        let program = program();
        for nr in 0..1024u32 {
            let expected = if DENIED.contains(&i64::from(nr)) {
                EPERM
            } else if i64::from(nr) == libc::SYS_clone3 {
                ENOSYS
            } else {
                libc::SECCOMP_RET_ALLOW
            };
            assert_eq!(run(&program, AUDIT_ARCH, nr, 0), expected, "syscall {nr}");
        }
    }

    #[test]
    fn clone_is_refused_only_with_a_namespace_flag() {
        let program = program();
        let clone = libc::SYS_clone as u32;
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(
            run(&program, AUDIT_ARCH, clone, thread),
            libc::SECCOMP_RET_ALLOW
        );
        let vfork = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64;
        assert_eq!(
            run(&program, AUDIT_ARCH, clone, vfork),
            libc::SECCOMP_RET_ALLOW
        );
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWTIME,
        ] {
            assert_eq!(
                run(&program, AUDIT_ARCH, clone, thread | flag as u64),
                EPERM,
                "clone with {flag:#x}"
            );
        }
    }

    #[test]
    fn another_architecture_is_killed_and_x32_numbers_answer_enosys() {
        let program = program();
        let i386 = 0x4000_0003;
        assert_eq!(run(&program, i386, 20, 0), libc::SECCOMP_RET_KILL_PROCESS);
        let x32_mount = X32_SYSCALL_BIT | libc::SYS_mount as u32;
        assert_eq!(run(&program, AUDIT_ARCH, x32_mount, 0), ENOSYS);
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let program = program();
        // Every jump lands inside the program (none was clamped at 255).
        for (at, insn) in program.iter().enumerate() {
            if insn.code != LD_ABS && insn.code != RET {
                assert!(at + 1 + usize::from(insn.jt.max(insn.jf)) < program.len());
            }
        }
        assert!(program.len() < 100, "{} instructions", program.len());
    }
}
