//! The worker machine's health as its heartbeats carry it: CPU busy over the last period from
//! `/proc/stat`, memory from `/proc/meminfo` (used = `MemTotal` − `MemAvailable`) and the load
//! averages from `/proc/loadavg`.
//!
//! The figures are of the whole machine, not of the worker process: an operator asks "is this
//! machine busy", and the executors run as processes of their own anyway. The files are small
//! and served from memory by the kernel, so reading them once a heartbeat costs microseconds
//! and is done inline. A file that cannot be read (not Linux, a restricted `/proc`) gives zeros
//! rather than an error: health is advice, and must never stop a worker from heartbeating.

use crate::proto::Health;

/// CPU time counters of the whole machine, in clock ticks, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuTimes {
    /// Ticks spent idle or waiting for I/O.
    idle: u64,
    /// Ticks of every kind.
    total: u64,
}

/// Reads the machine's health each heartbeat, keeping the CPU counters of the last reading so
/// that each CPU figure covers one period.
#[derive(Debug, Default)]
pub struct Sampler {
    last_cpu: Option<CpuTimes>,
}

impl Sampler {
    /// A sampler that has read the CPU counters once, so its first [`Sampler::sample`] covers
    /// the time since now.
    pub fn new() -> Sampler {
        Sampler {
            last_cpu: read("/proc/stat").and_then(|s| parse_cpu(&s)),
        }
    }

    /// The machine's health now; the CPU figure covers the time since the last call.
    pub fn sample(&mut self) -> Health {
        let cpu = read("/proc/stat").and_then(|s| parse_cpu(&s));
        let cpu_percent = match (self.last_cpu, cpu) {
            (Some(before), Some(now)) => busy_percent(before, now),
            _ => 0.0,
        };
        if cpu.is_some() {
            self.last_cpu = cpu;
        }
        let (memory_total_bytes, memory_used_bytes) = read("/proc/meminfo")
            .and_then(|s| parse_meminfo(&s))
            .unwrap_or_default();
        let (load1, load5, load15) = read("/proc/loadavg")
            .and_then(|s| parse_loadavg(&s))
            .unwrap_or_default();
        Health {
            cpu_percent,
            memory_used_bytes,
            memory_total_bytes,
            load1,
            load5,
            load15,
        }
    }
}

/// A `/proc` file's text, or `None` when it cannot be read.
fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The machine-wide counters of the first line of `/proc/stat`
/// (`cpu  user nice system idle iowait irq softirq steal guest guest_nice`). Guest time is
/// already counted in user time, so only the first eight columns are summed.
fn parse_cpu(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    if ticks.len() < 4 {
        return None;
    }
    let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        idle,
        total: ticks.iter().sum(),
    })
}

/// The share of ticks between two readings that were not idle, in percent (0 to 100).
fn busy_percent(before: CpuTimes, now: CpuTimes) -> f64 {
    let total = now.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let idle = now.idle.saturating_sub(before.idle).min(total);
    let busy = (total - idle) as f64 * 100.0 / total as f64;
    (busy * 10.0).round() / 10.0
}

/// `(MemTotal, MemTotal − MemAvailable)` in bytes, from `/proc/meminfo` (whose figures are kB).
fn parse_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total, total.saturating_sub(available)))
}

/// The three load averages, from the first three columns of `/proc/loadavg`.
fn parse_loadavg(loadavg: &str) -> Option<(f64, f64, f64)> {
    let mut columns = loadavg.split_whitespace().map(|c| c.parse::<f64>().ok());
    Some((columns.next()??, columns.next()??, columns.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_busy_is_the_non_idle_share_of_the_ticks_between_readings() {
        let before = parse_cpu("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").expect("cpu");
        let now = parse_cpu("cpu  150 0 150 800 100 0 0 0 0 0\n").expect("cpu");
        assert_eq!(before.total, 1000);
        assert_eq!(busy_percent(before, now), 50.0);
        assert_eq!(busy_percent(now, now), 0.0);
        assert!(parse_cpu("intr 1 2 3\n").is_none());
    }

    #[test]
    fn memory_used_is_total_minus_available() {
        let meminfo = "MemTotal:       16000 kB\nMemFree:  1000 kB\nMemAvailable:   4000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((16000 * 1024, 12000 * 1024)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn load_averages_are_the_first_three_columns() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 1/467 12345\n"),
            Some((0.52, 0.58, 0.59))
        );
        assert_eq!(parse_loadavg("garbage"), None);
    }

    #[test]
    fn a_sample_of_this_machine_has_memory_and_a_cpu_share_in_range() {
        let mut sampler = Sampler::new();
        let health = sampler.sample();
        assert!((0.0..=100.0).contains(&health.cpu_percent), "{health:?}");
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(health.memory_total_bytes > 0, "{health:?}");
            assert!(health.memory_used_bytes <= health.memory_total_bytes);
        }
    }
}
