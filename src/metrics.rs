//! The Prometheus metrics of a server (`GET /metrics`), kept with the `prometheus-client` crate.
//!
//! A leaf: the store (commit latency and batch size), the broker (task ends) and the API (HTTP
//! requests, the scrape itself) all record into one [`Metrics`] handle, and this module knows
//! none of them. What is counted as it happens lives in atomics (counters and histograms, in
//! `Family`s keyed by label structs), so recording costs a hash lookup and a few atomic adds,
//! never a lock shared with the broker. What is a level rather than an event (queued and
//! running tasks per function, worker slots, CPU and memory) is not kept here at all: the scrape
//! hands a [`Live`] snapshot, which the broker takes in one hold of its lock, and it is encoded
//! into a registry made for that scrape, so a function removed or a worker gone disappears
//! from the next scrape instead of lingering at its last value.
//!
//! Labels are named `function` and `worker` (and `method`, `route`, `status` for HTTP). The
//! text is OpenMetrics 1.0 ([`CONTENT_TYPE`]), which Prometheus scrapes natively; counters end
//! in `_total`. `docs/metrics.md` lists every metric.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The HTTP path the metrics are served on.
pub const PATH: &str = "/metrics";

/// The `Content-Type` of the text [`Metrics::encode`] writes (OpenMetrics 1.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this (`faasd_tasks_total`, ...).
const PREFIX: &str = "faasd";

/// Buckets of task run and queue-wait times, in seconds: 1 ms to 10 min.
const TASK_SECONDS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// Buckets of store commit times, in seconds: 50 µs to 5 s.
const COMMIT_SECONDS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Buckets of the number of writes in one store commit: 1 to 4,096 (the writer's largest batch,
/// which only a group goes past) in powers of two.
const COMMIT_WRITES: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// A family of histograms sharing one set of buckets.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Labels of a metric per function.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

/// Labels of the task counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskLabels {
    function: String,
    /// `completed` or `failed`.
    status: &'static str,
}

/// Labels of a metric per worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

/// Labels of the HTTP request counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    /// The method if it is a standard one, else `OTHER` (a client must not grow the label set).
    method: &'static str,
    /// The matched route pattern (`/v1/tasks/{id}`), or `unmatched`.
    route: String,
    /// The answer's status code.
    status: u16,
}

/// Labels of the counter of requests to HTTP-service functions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServiceLabels {
    function: String,
    /// The answer's status class: `1xx` to `5xx`.
    class: &'static str,
}

/// A cheap, cloneable handle on the server's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The registry and handles on what it holds (each family shares its storage with the copy the
/// registry encodes).
struct Inner {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    cold_starts: Family<FunctionLabels, Counter>,
    run_seconds: Histograms<FunctionLabels>,
    queue_wait_seconds: Histograms<FunctionLabels>,
    commit_seconds: Histogram,
    commit_writes: Histogram,
    http_requests: Family<HttpLabels, Counter>,
    service_requests: Family<ServiceLabels, Counter>,
}

impl Default for Inner {
    fn default() -> Self {
        let task_seconds: fn() -> Histogram = || Histogram::new(TASK_SECONDS);
        let inner = Inner {
            registry: Registry::with_prefix(PREFIX),
            tasks: Family::default(),
            cold_starts: Family::default(),
            run_seconds: Family::new_with_constructor(task_seconds),
            queue_wait_seconds: Family::new_with_constructor(task_seconds),
            commit_seconds: Histogram::new(COMMIT_SECONDS),
            commit_writes: Histogram::new(COMMIT_WRITES),
            http_requests: Family::default(),
            service_requests: Family::default(),
        };
        inner.registered()
    }
}

impl Inner {
    /// Registers every metric with its help text.
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "tasks",
            "Tasks that ended, by function and final status (completed or failed)",
            self.tasks.clone(),
        );
        r.register(
            "task_run_seconds",
            "Run time of the tasks a worker ran, as the worker measured it",
            self.run_seconds.clone(),
        );
        r.register(
            "task_queue_wait_seconds",
            "Time from a task's arrival to its (last) start",
            self.queue_wait_seconds.clone(),
        );
        r.register(
            "cold_starts",
            "Tasks that started a new executor rather than using a warm one",
            self.cold_starts.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time of one store commit (one transaction for a batch of writes)",
            self.commit_seconds.clone(),
        );
        r.register(
            "store_commit_writes",
            "Writes in one store commit (the group commit's batch size)",
            self.commit_writes.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered, by method, matched route and status code",
            self.http_requests.clone(),
        );
        r.register(
            "function_http_requests",
            "Requests proxied to HTTP-service functions, by function and status class",
            self.service_requests.clone(),
        );
        self
    }
}

/// A task at its end, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct TaskEnd<'a> {
    /// The function's name.
    pub function: &'a str,
    /// Whether it completed (else it failed).
    pub completed: bool,
    /// Its run time as the worker measured it, if a worker reported it.
    pub run: Option<Duration>,
    /// Its wait from arrival to its last start, if it started.
    pub queue_wait: Option<Duration>,
    /// Whether it started a new executor.
    pub cold_start: bool,
}

/// The levels of one scrape, taken by the broker in one hold of its lock.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Every live function.
    pub functions: Vec<FunctionLevel>,
    /// Every connected worker.
    pub workers: Vec<WorkerLevel>,
}

/// One function's tasks now.
#[derive(Debug, Clone)]
pub struct FunctionLevel {
    /// The function's name.
    pub name: String,
    /// Its owner (who may see these levels outside `/metrics`).
    pub owner: u32,
    /// Tasks waiting in its queue.
    pub queued: u64,
    /// Tasks leased to workers.
    pub running: u64,
}

/// One worker now.
#[derive(Debug, Clone)]
pub struct WorkerLevel {
    /// The worker's name.
    pub name: String,
    /// Its slots.
    pub slots: u64,
    /// Tasks it runs now.
    pub running: u64,
    /// CPU use of its machine, 0 to 100, once it reported its health.
    pub cpu_percent: Option<f64>,
    /// Memory in use on its machine (total − available), once reported.
    pub memory_used_bytes: Option<u64>,
    /// Memory of its machine, once reported.
    pub memory_total_bytes: Option<u64>,
}

impl Metrics {
    /// A fresh set of metrics, every counter at zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts a task's end (once per task, when its end is committed).
    pub fn task_ended(&self, end: TaskEnd<'_>) {
        let m = &self.inner;
        let status = if end.completed { "completed" } else { "failed" };
        let function = FunctionLabels {
            function: end.function.to_owned(),
        };
        m.tasks
            .get_or_create(&TaskLabels {
                function: function.function.clone(),
                status,
            })
            .inc();
        if let Some(run) = end.run {
            m.run_seconds
                .get_or_create(&function)
                .observe(run.as_secs_f64());
        }
        if let Some(wait) = end.queue_wait {
            m.queue_wait_seconds
                .get_or_create(&function)
                .observe(wait.as_secs_f64());
        }
        if end.cold_start {
            m.cold_starts.get_or_create(&function).inc();
        }
    }

    /// Records one store commit of `writes` writes that took `took`.
    pub fn store_committed(&self, took: Duration, writes: usize) {
        self.inner.commit_seconds.observe(took.as_secs_f64());
        self.inner.commit_writes.observe(writes as f64);
    }

    /// Counts one HTTP request: its method, its matched route pattern (`None` when no route
    /// matched) and its answer's status code.
    pub fn http_answered(&self, method: &str, route: Option<&str>, status: u16) {
        let labels = HttpLabels {
            method: standard_method(method),
            route: route.unwrap_or("unmatched").to_owned(),
            status,
        };
        self.inner.http_requests.get_or_create(&labels).inc();
    }

    /// Counts one request to HTTP-service function `function`, answered with `status` (the
    /// service's, or faasd's own 502 or 503 when the service could not answer).
    pub fn service_answered(&self, function: &str, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let labels = ServiceLabels {
            function: function.to_owned(),
            class,
        };
        self.inner.service_requests.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text of every metric, with the levels of `live`.
    pub fn encode(&self, live: &Live) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        encode_registry(&mut text, &self.inner.registry)?;
        encode_registry(&mut text, &live_registry(live))?;
        encode_eof(&mut text)?;
        Ok(text)
    }
}

/// `method` if it is one of the standard methods, else `OTHER`.
fn standard_method(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("OTHER")
}

/// A registry of this scrape's levels. Workers that share a name add up their slots and
/// running tasks; their machine figures are the last one's.
fn live_registry(live: &Live) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let queued = Family::<FunctionLabels, Gauge>::default();
    let running = Family::<FunctionLabels, Gauge>::default();
    for f in &live.functions {
        let labels = FunctionLabels {
            function: f.name.clone(),
        };
        queued.get_or_create(&labels).set(saturating_i64(f.queued));
        running
            .get_or_create(&labels)
            .set(saturating_i64(f.running));
    }
    r.register(
        "tasks_queued",
        "Tasks waiting in a function's queue",
        queued,
    );
    r.register(
        "tasks_running",
        "Tasks of a function leased to workers",
        running,
    );
    let slots = Family::<WorkerLabels, Gauge>::default();
    let used = Family::<WorkerLabels, Gauge>::default();
    let cpu = Family::<WorkerLabels, Gauge<f64, AtomicU64>>::default();
    let mem_used = Family::<WorkerLabels, Gauge>::default();
    let mem_total = Family::<WorkerLabels, Gauge>::default();
    for w in &live.workers {
        let labels = WorkerLabels {
            worker: w.name.clone(),
        };
        slots.get_or_create(&labels).inc_by(saturating_i64(w.slots));
        used.get_or_create(&labels)
            .inc_by(saturating_i64(w.running));
        if let Some(p) = w.cpu_percent {
            cpu.get_or_create(&labels).set(p);
        }
        if let Some(b) = w.memory_used_bytes {
            mem_used.get_or_create(&labels).set(saturating_i64(b));
        }
        if let Some(b) = w.memory_total_bytes {
            mem_total.get_or_create(&labels).set(saturating_i64(b));
        }
    }
    r.register("worker_slots", "A worker's task slots", slots);
    r.register(
        "worker_slots_used",
        "A worker's slots running a task now",
        used,
    );
    r.register(
        "worker_cpu_percent",
        "CPU use of a worker's machine, 0 to 100, from its last heartbeat",
        cpu,
    );
    r.register(
        "worker_memory_used_bytes",
        "Memory in use on a worker's machine (total minus available), from its last heartbeat",
        mem_used,
    );
    r.register(
        "worker_memory_total_bytes",
        "Memory of a worker's machine, from its last heartbeat",
        mem_total,
    );
    r
}

/// `v` as a gauge value (gauges are signed).
fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Live {
        Live {
            functions: vec![FunctionLevel {
                name: "f".into(),
                owner: 1,
                queued: 3,
                running: 1,
            }],
            workers: vec![WorkerLevel {
                name: "w1".into(),
                slots: 4,
                running: 1,
                cpu_percent: Some(12.5),
                memory_used_bytes: Some(1024),
                memory_total_bytes: None,
            }],
        }
    }

    #[test]
    fn task_ends_are_counted_by_function_and_status() {
        let m = Metrics::new();
        for completed in [true, true, false] {
            m.task_ended(TaskEnd {
                function: "f",
                completed,
                run: Some(Duration::from_millis(3)),
                queue_wait: Some(Duration::from_millis(1)),
                cold_start: !completed,
            });
        }
        let text = m.encode(&Live::default()).expect("encode");
        assert!(text.contains("faasd_tasks_total{function=\"f\",status=\"completed\"} 2\n"));
        assert!(text.contains("faasd_tasks_total{function=\"f\",status=\"failed\"} 1\n"));
        assert!(text.contains("faasd_cold_starts_total{function=\"f\"} 1\n"));
        assert!(text.contains("faasd_task_run_seconds_count{function=\"f\"} 3\n"));
        assert!(text.contains("faasd_task_run_seconds_bucket{le=\"0.005\",function=\"f\"} 3\n"));
        assert!(text.ends_with("# EOF\n"), "one EOF, at the end: {text}");
    }

    #[test]
    fn levels_come_from_the_snapshot_and_unreported_health_is_left_out() {
        let text = Metrics::new().encode(&live()).expect("encode");
        assert!(text.contains("faasd_tasks_queued{function=\"f\"} 3\n"));
        assert!(text.contains("faasd_tasks_running{function=\"f\"} 1\n"));
        assert!(text.contains("faasd_worker_slots{worker=\"w1\"} 4\n"));
        assert!(text.contains("faasd_worker_slots_used{worker=\"w1\"} 1\n"));
        assert!(text.contains("faasd_worker_cpu_percent{worker=\"w1\"} 12.5\n"));
        assert!(text.contains("faasd_worker_memory_used_bytes{worker=\"w1\"} 1024\n"));
        assert!(!text.contains("faasd_worker_memory_total_bytes{"));
        // A function gone from the snapshot is gone from the next scrape.
        let text = Metrics::new().encode(&Live::default()).expect("encode");
        assert!(!text.contains("faasd_tasks_queued{"));
    }

    #[test]
    fn http_methods_outside_the_standard_set_share_one_label() {
        let m = Metrics::new();
        m.http_answered("GET", Some("/v1/tasks/{id}"), 200);
        m.http_answered("BREW", None, 404);
        let text = m.encode(&Live::default()).expect("encode");
        assert!(text.contains(
            "faasd_http_requests_total{method=\"GET\",route=\"/v1/tasks/{id}\",status=\"200\"} 1\n"
        ));
        assert!(text.contains(
            "faasd_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"404\"} 1\n"
        ));
    }

    #[test]
    fn store_commits_are_timed_and_sized() {
        let m = Metrics::new();
        m.store_committed(Duration::from_micros(700), 5);
        let text = m.encode(&Live::default()).expect("encode");
        assert!(text.contains("faasd_store_commit_seconds_count 1\n"));
        assert!(text.contains("faasd_store_commit_writes_bucket{le=\"8.0\"} 1\n"));
        assert!(text.contains("faasd_store_commit_writes_bucket{le=\"4.0\"} 0\n"));
    }
}
