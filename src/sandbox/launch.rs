//! The function's own process (pid 2 of its namespace, or the next free pid in a sandbox that
//! serves another call), from init's `clone` to its `execve`: step 4's rlimits, step 5's
//! `no_new_privs`, uid and gid, step 6's seccomp filter, every fd above 2 closed, then the
//! program. Init itself stays unfiltered, so that a sandbox can renew its `/tmp` and IPC
//! namespace between calls (`zygote/ready.rs`).
//!
//! Init starts it with `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: the child runs on
//! a stack of its own inside init's memory, and init sleeps until the child has called
//! `execve` or exited. So no page table is copied, neither process takes copy-on-write faults,
//! and no copied address space is torn down at the `execve`; with a `fork` those were the
//! largest part of what the sandbox added to a cold call (`docs/performance.md`, "Cold
//! sandboxed starts, round three"). The price is discipline: everything the child uses is made
//! ready by init beforehand ([`Launch::new`]), and between the clone and the `execve` the child
//! only makes system calls. It allocates nothing, takes no lock and leaves init's memory as it
//! found it, but for the one cell where it says which call failed. Init's signal dispositions
//! are all defaults (`prologue` resets them), so no handler of init's can run on the child's
//! stack.

use std::cell::Cell;
use std::ffi::{CString, OsString, c_char};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::Pid;

use super::sys::Error;

/// The child's stack. Its steps are a few system calls deep; a debug build's frames fit too.
const STACK_BYTES: usize = 64 << 10;

/// Everything the function's process needs between its clone and its `execve`.
pub(super) struct Launch<'f> {
    /// Step 4: each limit, with the name of its call.
    limits: Vec<(&'static str, Resource, u64)>,
    /// Step 5: the uid and gid to switch to, if the sandbox drops them.
    ids: Option<(libc::uid_t, libc::gid_t)>,
    /// Step 6: the seccomp filter.
    filter: &'f [libc::sock_filter],
    /// The program, its arguments and environment, and the NULL-ended pointer arrays `execve`
    /// reads (pointing into the strings, which live as long as this).
    program: CString,
    _strings: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

impl<'f> Launch<'f> {
    /// Makes ready the start of `argv` with `env` under `limits` (step 4: each with the name
    /// of its call), as `ids` (uid, gid) if the sandbox drops them; with a private filesystem
    /// `HOME` and `TMPDIR` are the sandbox's own writable space.
    pub(super) fn new(
        limits: Vec<(&'static str, Resource, u64)>,
        ids: Option<(libc::uid_t, libc::gid_t)>,
        filter: &'f [libc::sock_filter],
        private_fs: bool,
        argv: &[OsString],
        env: &[OsString],
    ) -> Result<Self, Error> {
        let c = |s: &OsString| CString::new(s.as_bytes()).map_err(|_| Error::NulByte);
        let args = argv.iter().map(c).collect::<Result<Vec<_>, _>>()?;
        let program = args
            .first()
            .cloned()
            .ok_or(Error::Arguments { what: "no program" })?;
        // HOME and TMPDIR point at the sandbox's own writable space (without a private
        // filesystem the worker already pointed them at the working directory).
        let own: &[OsString] = if private_fs {
            &[OsString::from("HOME=/tmp"), OsString::from("TMPDIR=/tmp")][..]
        } else {
            &[]
        };
        let vars = env
            .iter()
            .filter(|kv| {
                let b = kv.as_bytes();
                !private_fs || (!b.starts_with(b"HOME=") && !b.starts_with(b"TMPDIR="))
            })
            .chain(own)
            .map(c)
            .collect::<Result<Vec<_>, _>>()?;
        let pointers = |strings: &[CString]| {
            let mut p: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let (argv, envp) = (pointers(&args), pointers(&vars));
        let mut strings = args;
        strings.extend(vars);
        Ok(Launch {
            limits,
            ids,
            filter,
            program,
            _strings: strings,
            argv,
            envp,
        })
    }

    /// Starts the function's process; returns its pid once it has called `execve`, with the
    /// error of the step that failed before (the process then exited with `failed_status`).
    pub(super) fn start(&self, failed_status: i32) -> Result<(Pid, Option<Error>), Error> {
        let failed: Cell<Option<(&'static str, Errno)>> = Cell::new(None);
        let mut stack = vec![0u8; STACK_BYTES];
        let child = Box::new(|| {
            let failure = self.run();
            failed.set(Some(failure));
            failed_status as isize
        });
        // SAFETY: the child shares this process's memory and runs `run` on `stack` while this
        // (single-threaded) process sleeps until its `execve` or exit (`CLONE_VFORK`); `run`
        // makes system calls on data prepared above and writes only `failed`. With SIGCHLD as
        // its exit signal, init reaps it like a forked child.
        let pid = unsafe {
            nix::sched::clone(
                child,
                &mut stack,
                CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|errno| Error::Call {
            call: "clone",
            errno,
        })?;
        let error = failed.get().map(|(call, errno)| {
            if call == "execve" {
                Error::Path {
                    call,
                    path: PathBuf::from(std::ffi::OsStr::from_bytes(self.program.as_bytes())),
                    errno,
                }
            } else {
                Error::Call { call, errno }
            }
        });
        Ok((pid, error))
    }

    /// In the function's process: every step, then `execve`; returns the call that failed.
    /// Only system calls on what [`Launch::new`] prepared: see the module's comment.
    fn run(&self) -> (&'static str, Errno) {
        for (call, resource, value) in &self.limits {
            if let Err(errno) = setrlimit(*resource, *value, *value) {
                return (call, errno);
            }
        }
        // SAFETY (every call below): system calls with integer arguments or pointers into
        // `self`, which outlives them.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return ("prctl(PR_SET_NO_NEW_PRIVS)", Errno::last());
        }
        if let Some((uid, gid)) = self.ids {
            // Raw system calls: the C library's wrappers would coordinate the change with
            // every thread of the process, which this borrowed process must not touch.
            let groups = [gid];
            if unsafe { libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) } != 0 {
                return ("setgroups", Errno::last());
            }
            if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } != 0 {
                return ("setresgid", Errno::last());
            }
            if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
                return ("setresuid", Errno::last());
            }
        }
        if !self.filter.is_empty() {
            let program = libc::sock_fprog {
                len: self.filter.len() as libc::c_ushort,
                filter: self.filter.as_ptr().cast_mut(),
            };
            let mode = libc::SECCOMP_SET_MODE_FILTER;
            if unsafe { libc::syscall(libc::SYS_seccomp, mode, 0, &program) } != 0 {
                return ("seccomp(SECCOMP_SET_MODE_FILTER)", Errno::last());
            }
        }
        // Every fd above 2, inherited or init's own.
        if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
            return ("close_range", Errno::last());
        }
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        ("execve", Errno::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};

    fn launch(program: &str, env: &[&str]) -> Launch<'static> {
        let argv = [
            OsString::from(program),
            OsString::from("-c"),
            "exit 3".into(),
        ];
        let env: Vec<OsString> = env.iter().map(OsString::from).collect();
        Launch::new(Vec::new(), None, &[], false, &argv, &env).expect("a launch")
    }

    #[test]
    fn a_started_program_runs_and_its_status_is_its_own() {
        let (pid, failed) = launch("/bin/sh", &["PATH=/usr/bin:/bin"])
            .start(125)
            .expect("clone");
        assert!(failed.is_none());
        assert_eq!(
            waitpid(pid, None).expect("wait"),
            WaitStatus::Exited(pid, 3)
        );
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_named_and_exits_with_the_set_up_status() {
        let (pid, failed) = launch("/nonexistent/program", &[])
            .start(125)
            .expect("clone");
        let message = failed.expect("the failed step").to_string();
        assert_eq!(
            message,
            "execve(/nonexistent/program) failed: ENOENT: No such file or directory"
        );
        assert_eq!(
            waitpid(pid, None).expect("wait"),
            WaitStatus::Exited(pid, 125)
        );
    }

    #[test]
    fn arguments_with_a_nul_byte_are_refused_before_anything_starts() {
        let argv = [OsString::from("/bin/sh"), OsString::from("a\0b")];
        let refused = Launch::new(Vec::new(), None, &[], false, &argv, &[]);
        assert!(matches!(refused, Err(Error::NulByte)));
        assert!(matches!(
            Launch::new(Vec::new(), None, &[], false, &[], &[]),
            Err(Error::Arguments { .. })
        ));
    }

    #[test]
    fn a_private_filesystem_points_home_and_tmpdir_at_tmp() {
        let argv = [OsString::from("/bin/sh")];
        let env = [OsString::from("HOME=/root"), OsString::from("A=1")];
        let launch = Launch::new(Vec::new(), None, &[], true, &argv, &env).expect("a launch");
        let vars: Vec<String> = launch
            .envp
            .iter()
            .take_while(|p| !p.is_null())
            // SAFETY: each pointer is into a CString the launch owns.
            .map(|p| {
                unsafe { std::ffi::CStr::from_ptr(*p) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(vars, ["A=1", "HOME=/tmp", "TMPDIR=/tmp"]);
    }
}
