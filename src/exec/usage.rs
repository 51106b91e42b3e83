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
//!
//! A [`Meter`] keeps both files open and rereads them in place (`pread` at offset 0), and a
//! call's CPU reading is the next call's starting point. `status` is the dear one (the kernel
//! formats some fifty lines for it: 4–5% of a busy server's CPU when read after every call), so
//! it is reread only when the peak may have moved: when `stat` shows the resident size above
//! what it was at the last reading, or CPU time spent since (a clock tick, 10 ms, the least
//! time in which a call can map and free tens of MB), or every [`PEAK_EVERY`] calls. A warm
//! call thus usually costs one small read. What this can miss, a short call's transient peak
//! freed before it ends, shows at the next reading, on a later call: `VmHWM` keeps it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// How many faasd processes (shim, init) may stand between the worker and the interpreter.
const MAX_CHAIN: usize = 4;

/// The most calls between two readings of the peak (`VmHWM`) when nothing else prompts one.
pub const PEAK_EVERY: u32 = 64;

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

/// What the meter takes from one `/proc/PID/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// utime + stime + cutime + cstime (fields 14 to 17), in clock ticks.
    ticks: u64,
    /// The resident set (field 24), in pages.
    rss_pages: u64,
}

/// Reads a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces, so fields count from the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After `)`, the first field is field 3 (the state).
    let fields: Vec<&str> = rest.split_whitespace().skip(11).take(11).collect();
    if fields.len() < 11 {
        return None;
    }
    let number = |f: &str| f.parse::<i64>().ok().map(|v| v.max(0) as u64);
    let ticks = fields[..4].iter().map(|f| number(f)).sum::<Option<u64>>()?;
    Some(Stat {
        ticks,
        rss_pages: number(fields[10])?,
    })
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A process's command name (`/proc/PID/comm`).
/// The open `/proc` files of one executor's function process, and its last CPU reading.
pub struct Meter {
    stat: Option<File>,
    status: Option<File>,
    /// The CPU time (clock ticks) at the end of the last call, or when the meter was made.
    last_ticks: Option<u64>,
    /// The resident set (pages) when the peak was last read.
    peak_rss_pages: u64,
    /// The peak (bytes) as last read, and the calls since.
    peak: u64,
    calls_since_peak: u32,
    buf: Vec<u8>,
}

impl Meter {
    /// A meter of process `pid`; reads nothing later if its files cannot be opened.
    pub fn open(pid: u32) -> Meter {
        let stat = File::open(format!("/proc/{pid}/stat")).ok();
        let status = File::open(format!("/proc/{pid}/status")).ok();
        let mut meter = Meter {
            stat,
            status,
            last_ticks: None,
            peak_rss_pages: 0,
            peak: 0,
            calls_since_peak: 0,
            buf: Vec::with_capacity(4096),
        };
        meter.last_ticks = meter.read_stat().map(|s| s.ticks);
        meter
    }

    /// A meter that measures nothing (zeros).
    pub fn none() -> Meter {
        Meter {
            stat: None,
            status: None,
            last_ticks: None,
            peak_rss_pages: 0,
            peak: 0,
            calls_since_peak: 0,
            buf: Vec::new(),
        }
    }

    /// What the call that just ended used: its CPU time in microseconds (the change since the
    /// last reading) and the process's peak resident memory in bytes; zeros for what cannot
    /// be read.
    pub fn call_ended(&mut self) -> (u64, u64) {
        let now = self.read_stat();
        let spent = match (self.last_ticks, now) {
            (Some(before), Some(after)) => after.ticks.saturating_sub(before),
            _ => 0,
        };
        self.last_ticks = now.map(|s| s.ticks).or(self.last_ticks);
        self.calls_since_peak += 1;
        let grew = now.is_none_or(|s| s.rss_pages > self.peak_rss_pages);
        if self.peak == 0 || grew || spent > 0 || self.calls_since_peak >= PEAK_EVERY {
            if let Some(peak) = reread(self.status.as_ref(), &mut self.buf).and_then(parse_vm_hwm) {
                self.peak = peak;
                self.calls_since_peak = 0;
                self.peak_rss_pages = now.map_or(0, |s| s.rss_pages);
            }
        }
        (ticks_to_us(spent), self.peak)
    }

    fn read_stat(&mut self) -> Option<Stat> {
        reread(self.stat.as_ref(), &mut self.buf).and_then(parse_stat)
    }
}

/// The whole of `file` from its start, read into `buf` (a `/proc` file is produced anew by
/// each read from offset 0). A read that leaves room in `buf` got the whole file, so the usual
/// case is one `pread`; only a file larger than `buf` takes more (and grows it for next time).
fn reread<'a>(file: Option<&File>, buf: &'a mut Vec<u8>) -> Option<&'a str> {
    let file = file?;
    buf.clear();
    buf.resize(buf.capacity().max(4096), 0);
    let mut filled = 0;
    loop {
        let n = file.read_at(&mut buf[filled..], filled as u64).ok()?;
        filled += n;
        if n == 0 || filled < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(filled);
    std::str::from_utf8(buf).ok()
}

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
    fn a_file_larger_than_the_buffer_is_read_whole_and_the_buffer_grows() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("big");
        let text: String = (0..3000).map(|i| format!("{i}\n")).collect();
        std::fs::write(&path, &text).expect("write");
        let file = File::open(&path).expect("open");
        let mut buf = Vec::with_capacity(16);
        assert_eq!(reread(Some(&file), &mut buf), Some(text.as_str()));
        assert!(buf.capacity() >= text.len());
        // Read again into the grown buffer: one read, the same text.
        assert_eq!(reread(Some(&file), &mut buf), Some(text.as_str()));
    }

    #[test]
    fn a_meter_rereads_the_peak_once_the_resident_set_grows() {
        let mut meter = Meter::open(std::process::id());
        let (_cpu_us, before) = meter.call_ended();
        assert!(before > 0);
        // 256 MiB written and kept: the resident set grows past the last reading, so the next
        // call's peak is read again and shows it.
        let held = std::hint::black_box(vec![1_u8; 256 << 20]);
        let (_cpu_us, after) = meter.call_ended();
        assert!(after >= before + (200 << 20), "{before} -> {after}");
        drop(held);
    }

    #[test]
    fn stat_times_sum_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 5 1000 10";
        let parsed = parse_stat(stat);
        assert_eq!(
            parsed,
            Some(Stat {
                ticks: 13,
                rss_pages: 10
            })
        );
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
    }

    #[test]
    fn vm_hwm_reads_as_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  30000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2 << 20));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }

    /// The CPU time this whole process has used, in µs.
    fn process_cpu_us() -> u64 {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
            .expect("process CPU clock");
        now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
    }

    #[test]
    fn a_meter_reads_the_cpu_a_call_used_and_the_peak() {
        let mut meter = Meter::open(std::process::id());
        // Spins for 50 ms of CPU (not of wall time, which a loaded machine stretches).
        let start = process_cpu_us();
        while process_cpu_us() - start < 50_000 {}
        let (cpu_us, peak) = meter.call_ended();
        let ended = process_cpu_us();
        // Clock ticks are 10 ms on most systems: 50 ms of spinning reads as at least 30.
        assert!(cpu_us >= 30_000, "{cpu_us}");
        assert!(peak > 1 << 20, "{peak}");
        // The next call starts from this one's end: it reads what the process used since (other
        // tests' threads share it), within the ticks' rounding.
        let (idle_us, _) = meter.call_ended();
        let since = process_cpu_us() - ended;
        assert!(idle_us <= since + 30_000, "{idle_us} read, {since} used");
        assert_eq!(Meter::none().call_ended(), (0, 0));
    }
}
