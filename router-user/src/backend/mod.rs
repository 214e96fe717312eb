//! Backends: each carries out actions on one part of the kernel and reads
//! back what is there; none decides what a router should be (that is
//! `desired`) or what to change (that is `plan`).
//!
//! - `netns`: network namespaces, and running code or tools inside them.
//! - `netlink`: devices, addresses and routes (rtnetlink).
//! - `iptables`: loading and reading back a namespace's iptables rules.
//! - `nft`: the `ip xrouter` nftables table (maps and rules).
//! - `bpf`: the BPF object, its pinned maps and links, neighbours, flows.
//! - `conntrack`: flushing the kernel's connections of an address.
//! - `garp`: gratuitous ARP on a packet socket.
//! - `ethtool`: device offload features.
//! - `ovs`: the taps as ports of the Open vSwitch integration bridge.

pub mod bpf;
pub mod conntrack;
pub mod ethtool;
pub mod garp;
pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod ovs;
