//! How much memory pre-warmed executors hold, measured from `/proc`, against the budget the
//! worker gives them (`--max-warm-memory`) and the memory the machine has left.
//!
//! An executor's memory is the resident memory of every process in its process group (the
//! sandbox's init and the function sit under the process the worker started, in its group).

use std::collections::HashSet;

/// Why pre-warming must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The idle executors already hold the budget.
    Budget {
        /// What they hold.
        used_bytes: u64,
        /// The budget.
        max_bytes: u64,
    },
    /// The machine is low on memory, whatever the executors hold.
    Machine {
        /// `MemAvailable`.
        available_bytes: u64,
        /// What pre-warming leaves free.
        reserve_bytes: u64,
    },
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Shortage::Budget {
                used_bytes,
                max_bytes,
            } => write!(
                f,
                "idle warm executors hold {} MiB, at or over the --max-warm-memory budget of {} MiB",
                used_bytes >> 20,
                max_bytes >> 20
            ),
            Shortage::Machine {
                available_bytes,
                reserve_bytes,
            } => write!(
                f,
                "the machine has {} MiB available, under the {} MiB pre-warming leaves free",
                available_bytes >> 20,
                reserve_bytes >> 20
            ),
        }
    }
}

/// The budget used when none is given: a quarter of the machine's memory (1 GiB when
/// `/proc/meminfo` cannot be read).
pub fn default_warm_budget_bytes() -> u64 {
    meminfo("MemTotal").map_or(1 << 30, |total| total / 4)
}

/// Whether another executor may be pre-started, given the process groups of the idle ones
/// and the budget: `None` when it may, else why not.
pub fn shortage(groups: &HashSet<u32>, max_bytes: u64) -> Option<Shortage> {
    let used_bytes = groups_rss_bytes(groups);
    if used_bytes >= max_bytes {
        return Some(Shortage::Budget {
            used_bytes,
            max_bytes,
        });
    }
    // Other programs count too: pre-warming leaves a tenth of the machine free.
    let (Some(total), Some(available_bytes)) = (meminfo("MemTotal"), meminfo("MemAvailable"))
    else {
        return None;
    };
    let reserve_bytes = total / 10;
    (available_bytes < reserve_bytes).then_some(Shortage::Machine {
        available_bytes,
        reserve_bytes,
    })
}

/// A `/proc/meminfo` field, in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_kib_field(&text, field)
}

/// The value of a `Name:   1234 kB` line, in bytes.
fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib = rest
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    })
}

/// The resident memory of every process whose process group is one of `groups`.
pub fn groups_rss_bytes(groups: &HashSet<u32>) -> u64 {
    if groups.is_empty() {
        return 0;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        // A process may end between the listing and the read: it then counts for nothing.
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| group_and_rss(&status))
        .filter(|(group, _)| groups.contains(group))
        .map(|(_, rss)| rss)
        .sum()
}

/// A `/proc/PID/status`'s process group (as this process sees it) and resident memory.
fn group_and_rss(status: &str) -> Option<(u32, u64)> {
    let group = status.lines().find_map(|line| {
        let rest = line.strip_prefix("NSpgid:")?;
        rest.split_whitespace().next()?.parse::<u32>().ok()
    })?;
    // Kernel threads have no VmRSS line.
    let rss = parse_kib_field(status, "VmRSS").unwrap_or(0);
    Some((group, rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kib_field_reads_as_bytes() {
        let text = "MemTotal:       16309004 kB\nMemAvailable:    8000 kB\n";
        assert_eq!(parse_kib_field(text, "MemTotal"), Some(16_309_004 * 1024));
        assert_eq!(parse_kib_field(text, "MemAvailable"), Some(8000 * 1024));
        assert_eq!(parse_kib_field(text, "MemFree"), None);
    }

    #[test]
    fn a_status_gives_its_group_and_rss() {
        let status = "Name:\tpython3\nNSpgid:\t4242\t1\nVmRSS:\t   15360 kB\n";
        assert_eq!(group_and_rss(status), Some((4242, 15360 * 1024)));
        assert_eq!(group_and_rss("Name:\tkthreadd\nNSpgid:\t0\n"), Some((0, 0)));
    }

    #[test]
    fn this_process_group_holds_memory() {
        let group = nix::unistd::getpgrp().as_raw() as u32;
        let used = groups_rss_bytes(&HashSet::from([group]));
        assert!(used > 0, "no resident memory found for group {group}");
        assert_eq!(groups_rss_bytes(&HashSet::new()), 0);
    }

    #[test]
    fn a_zero_budget_is_always_short() {
        assert_eq!(
            shortage(&HashSet::new(), 0),
            Some(Shortage::Budget {
                used_bytes: 0,
                max_bytes: 0
            })
        );
    }
}
