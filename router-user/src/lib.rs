//! xrouter's controller: config, control plane, data planes, daemon and CLI.
pub mod bpf;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod ebpf;
pub mod ethtool;
pub mod garp;
pub mod iptables;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod probe;
pub mod reconcile;
pub mod show;
pub mod state;
#[cfg(test)]
mod testing;
pub mod text;
