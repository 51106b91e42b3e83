//! What a warm executor's calls use, read from `/proc`: the executor process's CPU time before
//! and after a call (the call's share is the difference) and its peak resident memory.
//!
//! A cold call's usage needs none of this: it comes from `wait4` when its process is reaped
//! (see [`crate::sandbox::sys::Usage`]). A warm executor is never reaped between calls, so its
//! CPU is read from `/proc/PID/stat` (user + system time of the process, plus that of the
//! children it waited for, in clock ticks) and its peak memory from `/proc/PID/status`
//! (`VmHWM`: the process's peak over its whole life, not only over the call).
//!
//! The process measured is the function's interpreter, not the one the worker started: the
//! sandbox puts its shim and the namespace's init (both faasd) above it. [`executor_pid`] walks
//! down that chain once, when the executor is ready.

use std::sync::OnceLock;

/// How many faasd processes (shim, init) may stand between the worker and the interpreter.
const MAX_CHAIN: usize = 4;

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `/proc/PID/stat`
/// times.
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// Clock ticks as microseconds.
pub fn ticks_to_us(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / ticks_per_second()
}

/// The CPU time of process `pid` (user + system, its own and its waited-for children's), in
/// clock ticks; `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// Fields 14 to 17 of a `/proc/PID/stat` line (utime, stime, cutime, cstime), summed. The
/// command name (field 2) is in parentheses and may hold spaces, so fields count from the last
/// `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After `)`, the first field is field 3 (the state).
    let fields: Vec<&str> = rest.split_whitespace().skip(11).take(4).collect();
    if fields.len() < 4 {
        return None;
    }
    fields
        .iter()
        .map(|f| f.parse::<i64>().ok().map(|v| v.max(0) as u64))
        .sum()
}

/// The peak resident memory of process `pid` over its life (`VmHWM`), in bytes.
pub fn peak_memory_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A process's command name (`/proc/PID/comm`).
fn comm(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// The children of process `pid` (of its main thread, which is all a shim or init has).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process that runs the function under `started` (the process the worker started): down
/// from it through faasd's own processes (the sandbox shim, the namespace's init), each with one
/// child, to the first that is not faasd. `started` itself when it is not faasd (no sandbox).
pub fn executor_pid(started: u32) -> u32 {
    let Some(own) = comm("self") else {
        return started;
    };
    let mut pid = started;
    for _ in 0..MAX_CHAIN {
        if comm(&pid.to_string()).as_deref() != Some(own.as_str()) {
            break;
        }
        match children(pid).as_slice() {
            [only] => pid = *only,
            _ => break,
        }
    }
    pid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_sum_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 5 1000 10";
        assert_eq!(parse_cpu_ticks(stat), Some(13));
        assert_eq!(parse_cpu_ticks("42 (x) S 1 2"), None);
    }

    #[test]
    fn vm_hwm_reads_as_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  30000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2 << 20));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(cpu_ticks(me).is_some_and(|t| t > 0));
        assert!(peak_memory_bytes(me).is_some_and(|b| b > 1 << 20));
        // Not faasd's own command name as a child would see it: the test binary is itself.
        assert_eq!(executor_pid(me), me);
        assert_eq!(ticks_to_us(ticks_per_second()), 1_000_000);
    }
}
