//! The sandbox zygote: one small single-threaded process per worker (`faasd __zygote`) that
//! forks every sandboxed executor, so a call pays for a `fork` of a process that is already
//! loaded rather than for an `exec` of faasd, and reuses what can be reused:
//!
//! - the seccomp filter, compiled once;
//! - network namespaces: a pool of empty ones with loopback up, one per running executor,
//!   given back when the worker reaps it and reused only by the same function's executors, and
//!   only when they run without privileges (creating and destroying a namespace per call costs
//!   more than everything else the sandbox does, and one shared namespace would let functions
//!   reach each other over loopback);
//! - cgroups: a pool of memory and pids cgroup pairs, one per running executor, reused once
//!   its call is over (a removed memory cgroup lingers in the kernel while page cache is
//!   charged to it);
//! - template roots, one per set of read-only paths, built in the zygote's own mount namespace
//!   and rebuilt after a minute (so a host file replaced since is seen);
//! - fast cgroup moves: on cgroup v1 a process entering a cgroup waits for an RCU grace period
//!   (about 11 ms here) unless some hierarchy is mounted with `favordynmods`; the zygote mounts
//!   an empty named hierarchy with that option, privately, for as long as it lives. The
//!   kernel's documented trade: moves get fast, forks and exits take a slightly slower lock.
//!
//! - ready sandboxes (`ready.rs`): after each spawn, the next call's sandbox for the same
//!   configuration is prepared while the current call runs (everything up to the function's
//!   start), so the next call only hands over its stdio, command line, environment and report
//!   pipe; a sandbox whose function runs without privileges serves the next call of its
//!   configuration once its call is reaped, with new processes, `/tmp` and IPC namespace;
//!   a few per configuration, each ended after a few idle seconds.
//!
//! The worker talks to it over a Unix stream socket on the zygote's stdin, one request at a
//! time: `Spawn` (the shim's command line, the environment, the working directory, and the
//! three stdio fds as `SCM_RIGHTS`) is answered by the child's pid with a pidfd for it and a
//! copy of the read end of its report pipe, which turns readable once the function has ended;
//! `Reap` (sent once either says so; refused, never waited for, while neither holds) by its
//! wait status, from init's report when init is still tearing its namespaces down (the zygote
//! then reaps it, and refills its pools, once it has ended); `Kill` kills and reaps a child the
//! worker cannot follow. The zygote never reaps a child before it is asked to, so the worker
//! may signal the child's process group until then, exactly as it would its own child. Frames
//! are a little-endian `u32` length and a postcard body; a frame the zygote cannot use fails
//! that request alone.
//!
//! The zygote dies with the worker (`PR_SET_PDEATHSIG`, tied to the thread that started it, so a
//! dedicated thread that lives as long as the process starts every zygote), and its children
//! with it. It runs in its own process group, so a Ctrl-C meant for the worker leaves it (and
//! the calls the worker is draining) alone. If it dies anyway, the next spawn starts a new one
//! (a new generation); children of an earlier generation are never signalled by pid nor reaped
//! through the new one, since their pids may have been reused.
//!
//! The files: `wire.rs` (the frames and their framing), `client.rs` (the worker's side: the
//! [`Zygote`] handle and its requests), `server.rs` (the zygote process and its requests),
//! `pools.rs` (its network namespaces and cgroups), `templates.rs` (its template roots) and
//! `ready.rs` (its ready sandboxes).

mod client;
mod pools;
mod ready;
mod server;
mod templates;
mod wire;

pub use client::{Spawned, StartError, Started, ZYGOTE_COMMAND, Zygote, get, start};
pub use server::zygote_main;
