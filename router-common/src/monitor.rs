//! `xrouter monitor`: sampled per-packet events from the data path.
//!
//! The programs write a [`MonitorEvent`] to the router's ring buffer
//! (`XR_MON_RING`) only while `XR_MON_CTL[0]` asks for that kind of
//! packet; with its flags at zero (the default) nothing is written and the
//! ring stays untouched. Sampling (1 in `sample_every`) and the count of
//! events the full ring refused are per CPU (`XR_MON_CPU[0]`).

/// Report dropped packets.
pub const MON_DROPS: u32 = 1;
/// Report packets handed to the kernel (with the reason it gets them).
pub const MON_KERNEL: u32 = 2;
/// Report forwarded packets (their tuple as they leave).
pub const MON_FORWARDED: u32 = 4;

/// Bytes of the ring buffer of each router (a power of two and a multiple
/// of the page size, as the kernel requires): about 4,600 events.
pub const MON_RING_BYTES: u32 = 256 * 1024;

/// The single entry (index 0) of `XR_MON_CTL`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MonitorCtl {
    /// `MON_*` bits: what to report (0: monitoring off).
    pub flags: u32,
    /// Report one packet in this many (per CPU); 0 and 1: every packet.
    pub sample_every: u32,
}

/// Per-CPU state (index 0 of `XR_MON_CPU`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MonitorCpu {
    /// Packets still to skip before the next one reported.
    pub skip: u64,
    /// Events lost: the ring was full.
    pub lost: u64,
}

/// Which program saw the packet.
pub const HOOK_XDP: u8 = 1;
pub const HOOK_TC: u8 = 2;

/// [`MonitorEvent::flags`]: the frame is IPv4 (addresses, protocol and TTL
/// are set).
pub const EV_IPV4: u8 = 1;
/// Ports (TCP, UDP) or ICMP type, code and echo id are set.
pub const EV_L4: u8 = 2;
/// A later fragment of a datagram: no L4 header.
pub const EV_FRAGMENT: u8 = 4;
/// The skb carried a VLAN tag outside the frame (TC).
pub const EV_VLAN: u8 = 8;

/// One packet reported. Addresses and ports as on the wire (network
/// order); the tuple is the packet's as the program left it: as it arrived
/// for a drop or an untranslated hand-off, translated for `kernel/fragment`,
/// `kernel/ip-options` and a forwarded packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Ingress device.
    pub ifindex: u32,
    /// Egress device of a forwarded packet, else 0.
    pub egress: u32,
    /// The outcome, numbered as [`crate::counters::Outcome`].
    pub outcome: u32,
    /// Length of the packet.
    pub len: u32,
    /// Ethertype of the frame (host order).
    pub ethertype: u16,
    /// `HOOK_*`.
    pub hook: u8,
    /// `EV_*` bits.
    pub flags: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// TCP/UDP ports; for ICMP echo, `sport` is the echo id.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub ttl: u8,
    /// TCP flags, or the ICMP type.
    pub tcp_flags_or_icmp_type: u8,
    /// The ICMP code.
    pub icmp_code: u8,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<MonitorEvent>() == 48);
const _: () = assert!(core::mem::size_of::<MonitorCtl>() == 8);
const _: () = assert!(core::mem::size_of::<MonitorCpu>() == 16);

crate::pod!(MonitorCtl, MonitorCpu, MonitorEvent);
