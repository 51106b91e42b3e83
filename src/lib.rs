//! faasd: a self-hosted function-as-a-service platform in one binary.
//!
//! # Layout
//!
//! Dependencies run one way, top to bottom:
//! `main → cmd → {api, client, worker} → {auth, broker, exec} → {store, sandbox} → proto`, with
//! [`units`] and [`metrics`] leaves that any of them may use.
//!
//! - [`cmd`]: the command line, one file per subcommand, and the exit codes.
//! - [`client`]: the HTTP client the CLI commands share, with a typed error.
//! - [`api`]: the HTTP routes and their error mapping.
//! - [`auth`]: users, roles, tokens and grants: who is calling and what they may do.
//! - [`worker`]: the worker agent, the same in `serve` and in `faasd worker`.
//! - [`broker`]: queues, placement, leases, retries, waiters, and the server side of worker
//!   connections.
//! - [`exec`]: running calls: runtimes, cold calls, warm executors and their pools.
//! - [`store`]: the redb file, its typed records and its group-commit writer.
//! - [`sandbox`]: isolation: layers and their negotiation, raw system calls, the shim, the
//!   zygote, cgroups, seccomp.
//! - [`oci`]: container images: archives read and checked, layers unpacked into a cached root.
//! - [`proto`]: the worker frames and their codec.
//! - [`tls`]: PEM certificates and keys, and the rustls configurations of servers and clients.
//! - [`metrics`]: the Prometheus metrics of `GET /metrics`: counters and histograms recorded
//!   by the store, the broker and the API, and the scrape's levels.
//! - [`units`]: byte sizes, durations and timestamps, parsed and printed.

pub mod api;
pub mod auth;
pub mod broker;
pub mod client;
pub mod cmd;
pub mod exec;
pub mod metrics;
pub mod oci;
pub mod proto;
pub mod sandbox;
pub mod store;
pub mod tls;
pub mod units;
pub mod worker;
