//! xrouter's controller, in layers:
//!
//! - `config` reads the routers file and the node config into `model`
//!   (validated routers);
//! - `desired` states what one router must be, on a data plane (pure);
//! - `plan` compares that with what the kernel has and lists the actions
//!   (pure);
//! - `backend` carries actions out and reads the kernel back;
//! - `engine` runs observe → plan → execute per router and records what was
//!   applied; `daemon` drives it (reloads, resyncs, the control socket);
//! - `metadata` is the metadata proxy every router namespace listens with;
//! - `show`, `explain`, `monitor`, `control`, `demo` and the CLI (`cli`)
//!   serve the operator; `notify` tells systemd the daemon's state,
//!   `metrics` serves Prometheus and `logs` sends the log to the terminal
//!   or the journal.
pub mod agent;
pub mod backend;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod desired;
pub mod engine;
pub mod explain;
pub mod fixtures;
pub mod logs;
pub mod metadata;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod notify;
pub mod plan;
pub mod probe;
pub mod show;
pub mod source;
pub mod state;
#[cfg(test)]
mod testing;
pub mod text;
