//! faasd: a self-hosted function-as-a-service platform in one binary.
//!
//! # Layout
//!
//! - [`cmd`]: the command line, one file per subcommand, and the exit codes.
//! - [`client`]: the HTTP client the CLI commands share.
//! - [`api`]: the HTTP routes and their error mapping.
//! - [`broker`]: queues, placement, leases, retries, waiters, and the server side of worker
//!   connections.
//! - [`store`]: the redb file and its group-commit writer.
//! - [`worker`]: the worker agent, the same in `serve` and in `faasd worker`.
//! - [`exec`]: executors: spawning, timeouts, output capture.
//! - [`proto`]: the worker frames and their codec.

pub mod api;
pub mod broker;
pub mod client;
pub mod cmd;
pub mod exec;
pub mod proto;
pub mod store;
pub mod worker;
