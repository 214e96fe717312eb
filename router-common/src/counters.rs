//! Per-CPU outcome counters, indexed by [`Outcome`], and connection-table
//! event counters, indexed by [`CtEvent`].

/// What happened to a packet seen by a BPF program. Only entry points count,
/// once per packet and hook (a packet XDP hands to TC counts `ToTc` there and
/// its final outcome in TC).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded by XDP (redirected to the egress port).
    FwdXdp = 0,
    /// Forwarded by TC.
    FwdTc = 1,
    /// Handed up from XDP to TC (e.g. neighbour unknown).
    ToTc = 2,
    /// To the kernel: not IPv4 (ARP, IPv6).
    KernelNotIpv4 = 3,
    /// To the kernel: addressed to the router itself (its addresses, a
    /// subnet broadcast, multicast, metadata).
    KernelLocal = 4,
    /// To the kernel, never to be forwarded by it: TTL expires here (the
    /// kernel answers "time exceeded"). Untranslated, or, when the
    /// programs rewrite only its destination, with that translated.
    KernelTtl = 5,
    /// To the kernel translated, never to be translated by it: IP options
    /// (the kernel processes them while forwarding).
    KernelOptions = 6,
    /// To the kernel, never to be forwarded by it: no route (it answers
    /// "unreachable").
    KernelNoRoute = 7,
    /// To the kernel: ingress device is not a router port.
    KernelNotPort = 8,
    /// To the kernel: a protocol the fast path does not translate (the
    /// kernel owns such flows whole).
    KernelProto = 9,
    /// Dropped: truncated or malformed header.
    DropMalformed = 10,
    /// Dropped: no free SNAT port.
    DropNoPort = 11,
    /// An ICMP error the kernel sent about a packet handed up with its
    /// destination translated (see `KernelTtl`, `KernelMtu`): its quote
    /// translated back on the way out, so it reaches the sender as
    /// the sender expects it.
    KernelErrorTranslated = 12,
    /// Dropped: the connection table refused an entry.
    DropCtFull = 13,
    /// To the kernel, never to be forwarded by it: the next hop does not
    /// answer ARP (the kernel failed to resolve it); it answers "host
    /// unreachable". Translated as `KernelTtl` is.
    KernelNeigh = 14,
    /// To the kernel, never to be forwarded by it: a DF packet over the
    /// egress MTU (it answers "fragmentation needed"). Translated as
    /// `KernelTtl` is.
    KernelMtu = 15,
    /// Answered: an ARP request for a floating IP on the gateway port.
    ArpReplied = 16,
    /// To the kernel translated, never to be translated by it: over the
    /// egress MTU without DF (the kernel fragments it).
    KernelFragment = 17,
    /// To the kernel: 802.1Q/802.1ad tagged with a VLAN id (no VLAN is
    /// routed here; priority tags, VLAN 0, up to eight stacked, are removed
    /// and the frame handled as untagged, as the kernel does).
    KernelVlan = 18,
    /// To the kernel: an ICMP error crossing the gateway port about no
    /// connection the programs track (the kernel's own, or none).
    KernelIcmpUntracked = 19,
    /// Dropped: Ethernet destination is another host's unicast MAC.
    DropOtherHost = 20,
    /// Dropped: impossible source (0.0.0.0, 127/8, multicast, 255.255.255.255).
    DropMartianSrc = 21,
    /// Dropped: source is one of the router's own addresses (a port
    /// address or a floating IP).
    DropSpoofedSrc = 22,
    /// Dropped: impossible destination (0.0.0.0, 127/8).
    DropMartianDst = 23,
    /// Dropped: TCP flags that cannot open a connection (not SYN, not a
    /// picked-up ACK), for which no connection exists.
    DropTcpInvalid = 24,
    /// Dropped: a fragment whose datagram's first fragment was not seen.
    DropFragment = 25,
    /// Dropped: over the router's budget of new connections per second.
    DropNewRate = 26,
}

/// Number of counter slots.
pub const OUTCOME_COUNT: usize = 27;

impl Outcome {
    pub const ALL: [Outcome; OUTCOME_COUNT] = [
        Outcome::FwdXdp,
        Outcome::FwdTc,
        Outcome::ToTc,
        Outcome::KernelNotIpv4,
        Outcome::KernelLocal,
        Outcome::KernelTtl,
        Outcome::KernelOptions,
        Outcome::KernelNoRoute,
        Outcome::KernelNotPort,
        Outcome::KernelProto,
        Outcome::DropMalformed,
        Outcome::DropNoPort,
        Outcome::KernelErrorTranslated,
        Outcome::DropCtFull,
        Outcome::KernelNeigh,
        Outcome::KernelMtu,
        Outcome::ArpReplied,
        Outcome::KernelFragment,
        Outcome::KernelVlan,
        Outcome::KernelIcmpUntracked,
        Outcome::DropOtherHost,
        Outcome::DropMartianSrc,
        Outcome::DropSpoofedSrc,
        Outcome::DropMartianDst,
        Outcome::DropTcpInvalid,
        Outcome::DropFragment,
        Outcome::DropNewRate,
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
            Outcome::KernelOptions => "kernel/ip-options",
            Outcome::KernelNoRoute => "kernel/no-route",
            Outcome::KernelNotPort => "kernel/not-a-port",
            Outcome::KernelProto => "kernel/protocol",
            Outcome::DropMalformed => "drop/malformed",
            Outcome::DropNoPort => "drop/no-snat-port",
            Outcome::KernelErrorTranslated => "kernel/icmp-error-translated",
            Outcome::DropCtFull => "drop/conntrack-full",
            Outcome::KernelNeigh => "kernel/neighbour",
            Outcome::KernelMtu => "kernel/mtu",
            Outcome::ArpReplied => "arp/floating-ip-replied",
            Outcome::KernelFragment => "kernel/fragment",
            Outcome::KernelVlan => "kernel/vlan",
            Outcome::KernelIcmpUntracked => "kernel/icmp-error-untracked",
            Outcome::DropOtherHost => "drop/other-host",
            Outcome::DropMartianSrc => "drop/martian-source",
            Outcome::DropSpoofedSrc => "drop/spoofed-source",
            Outcome::DropMartianDst => "drop/martian-destination",
            Outcome::DropTcpInvalid => "drop/tcp-invalid",
            Outcome::DropFragment => "drop/fragment-out-of-order",
            Outcome::DropNewRate => "drop/new-connection-rate",
        }
    }
}

/// One slot of the per-CPU counters map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::align_of::<Counter>() == 8);
const _: () = assert!(Outcome::ALL.len() == OUTCOME_COUNT);

/// Connection-table events, counted per CPU (a `u64` each) beside the
/// packet outcomes: how connections come and graduate.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtEvent {
    /// A connection was created (embryonic).
    Created = 0,
    /// A connection was established: never evicted from now on.
    Promoted = 1,
    /// A new connection's entry took the slot of an embryonic one (its
    /// window of the table was full).
    Evicted = 2,
}

pub const CT_EVENT_COUNT: usize = 3;

impl CtEvent {
    pub const ALL: [CtEvent; CT_EVENT_COUNT] =
        [CtEvent::Created, CtEvent::Promoted, CtEvent::Evicted];

    pub fn name(self) -> &'static str {
        match self {
            CtEvent::Created => "conntrack/created",
            CtEvent::Promoted => "conntrack/established",
            CtEvent::Evicted => "conntrack/evicted-embryonic",
        }
    }
}

crate::pod!(Counter);
