//! Per-CPU outcome counters, indexed by [`Outcome`].

/// What happened to a packet seen by a BPF program. Only entry points count.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded by XDP (redirected to the egress port).
    FwdXdp = 0,
    /// Forwarded by TC.
    FwdTc = 1,
    /// Handed up from XDP to TC (e.g. neighbour unknown).
    ToTc = 2,
    /// To the kernel: not IPv4 (ARP, IPv6, VLAN).
    KernelNotIpv4 = 3,
    /// To the kernel: addressed to the router itself (incl. metadata).
    KernelLocal = 4,
    /// To the kernel: TTL expires here (the kernel sends time exceeded).
    KernelTtl = 5,
    /// To the kernel: IP options or a fragment.
    KernelIpOptions = 6,
    /// To the kernel: no route in the routes map.
    KernelNoRoute = 7,
    /// To the kernel: ingress device is not a router port.
    KernelNotPort = 8,
    /// To the kernel: protocol the fast path does not translate.
    KernelProto = 9,
    /// Dropped: truncated or malformed header.
    DropMalformed = 10,
    /// Dropped: no free SNAT port.
    DropNoPort = 11,
    /// Dropped: direct connection to the metadata proxy port.
    DropMetadata = 12,
    /// Dropped: the connection table refused an entry.
    DropCtFull = 13,
    /// To the kernel: neighbour unknown to TC as well (`bpf_redirect_neigh` failed).
    KernelNeigh = 14,
    /// To the kernel: DF packet over the egress MTU (the kernel answers).
    KernelMtu = 15,
    /// Answered: an ARP request for a floating IP on the gateway port.
    ArpReplied = 16,
}

/// Number of counter slots.
pub const OUTCOME_COUNT: usize = 17;

impl Outcome {
    pub const ALL: [Outcome; OUTCOME_COUNT] = [
        Outcome::FwdXdp,
        Outcome::FwdTc,
        Outcome::ToTc,
        Outcome::KernelNotIpv4,
        Outcome::KernelLocal,
        Outcome::KernelTtl,
        Outcome::KernelIpOptions,
        Outcome::KernelNoRoute,
        Outcome::KernelNotPort,
        Outcome::KernelProto,
        Outcome::DropMalformed,
        Outcome::DropNoPort,
        Outcome::DropMetadata,
        Outcome::DropCtFull,
        Outcome::KernelNeigh,
        Outcome::KernelMtu,
        Outcome::ArpReplied,
    ];

    /// Short name for `xrouter show stats`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::FwdXdp => "forwarded/xdp",
            Outcome::FwdTc => "forwarded/tc",
            Outcome::ToTc => "xdp->tc",
            Outcome::KernelNotIpv4 => "kernel/not-ipv4",
            Outcome::KernelLocal => "kernel/local",
            Outcome::KernelTtl => "kernel/ttl",
            Outcome::KernelIpOptions => "kernel/ip-options-or-fragment",
            Outcome::KernelNoRoute => "kernel/no-route",
            Outcome::KernelNotPort => "kernel/not-a-port",
            Outcome::KernelProto => "kernel/protocol",
            Outcome::DropMalformed => "drop/malformed",
            Outcome::DropNoPort => "drop/no-snat-port",
            Outcome::DropMetadata => "drop/metadata-port",
            Outcome::DropCtFull => "drop/conntrack-full",
            Outcome::KernelNeigh => "kernel/neighbour",
            Outcome::KernelMtu => "kernel/mtu",
            Outcome::ArpReplied => "arp/floating-ip-replied",
        }
    }
}

/// One slot of the per-CPU counters map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::align_of::<Counter>() == 8);
const _: () = assert!(Outcome::ALL.len() == OUTCOME_COUNT);

crate::pod!(Counter);
