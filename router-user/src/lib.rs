//! xrouter's controller: config, control plane, data planes, daemon and CLI.
pub mod bpf;
pub mod config;
pub mod model;
pub mod netns;
