//! Per-router settings and the floating IP maps.

/// The single entry (index 0) of the router config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RouterConfig {
    /// Gateway port address used for SNAT (zeros: no gateway).
    pub gw_addr: [u8; 4],
    /// Ifindex of qg- (0: no gateway).
    pub gw_ifindex: u32,
    /// 1 when gateway SNAT is enabled.
    pub enable_snat: u32,
    /// SNAT port range, inclusive, host order.
    pub port_min: u16,
    pub port_max: u16,
    /// Metadata proxy port (host order).
    pub metadata_port: u16,
    /// `CFG_*` bits.
    pub flags: u16,
    /// New connections accepted per second and CPU (0: no limit); the rest
    /// are dropped and counted before they cost a table insert.
    pub new_conn_rate: u32,
}

const _: () = assert!(core::mem::size_of::<RouterConfig>() == 24);

/// [`RouterConfig::flags`]: the router's ports are on XDP, which has
/// weighed the SYNs reaching TC behind it against the new-connection
/// budget (all but those it hands on for their offloaded checksum). TC
/// then does not shed such a SYN before looking it up: XDP shed those
/// over the budget, and one it handed on was admitted (a new connection
/// whose next hop XDP could not send to) or is a known connection's; shed
/// again in TC, once XDP and the packets of its batch had spent the
/// budget, it would be lost.
pub const CFG_XDP: u16 = 1;

/// The packet mark's bits the programs use to tell the kernel how a packet
/// they hand up must be treated (the low 16 bits are Neutron's, untouched).
pub const MARK_MASK: u32 = 0xffff_0000;
/// Already translated by the programs: the kernel must forward it (it
/// fragments it, or processes its IP options) without tracking or
/// translating it again.
pub const MARK_TRANSLATED: u32 = 0x7872_0000;
/// Untranslated, for the kernel to answer with an ICMP error (TTL, no
/// route, fragmentation needed); it must never forward it.
pub const MARK_ANSWER_ONLY: u32 = 0x7865_0000;
/// A packet of a translated connection whose destination the programs have
/// translated back (a reply to a SNATed connection, a packet to a floating
/// IP), for the kernel to answer (TTL, fragmentation needed): untracked, never
/// forwarded. The kernel's ICMP error quotes the translated packet; the
/// egress program translates the quote back on its way out.
pub const MARK_TRANSLATED_ANSWER: u32 = 0x7861_0000;
/// As [`MARK_ANSWER_ONLY`], for a packet whose next hop does not answer
/// ARP: the kernel answers "host unreachable" (its FORWARD rule rejects
/// it so), as its own forwarding does when resolution fails.
pub const MARK_UNREACHABLE: u32 = 0x7868_0000;
/// As [`MARK_TRANSLATED_ANSWER`] (destination translated back, untracked),
/// for a packet whose next hop does not answer ARP: answered "host
/// unreachable", the quote translated back on the way out.
pub const MARK_TRANSLATED_UNREACHABLE: u32 = 0x7875_0000;

/// The mark of a packet handed up for the kernel to answer `why` (TTL,
/// fragmentation needed, a next hop that does not answer ARP),
/// `translated` if its destination was translated back: the answer a mark
/// asks for is chosen by the router's nftables rules.
#[inline(always)]
pub const fn answer_mark(why: crate::counters::Outcome, translated: bool) -> u32 {
    let unreachable = matches!(why, crate::counters::Outcome::KernelNeigh);
    match (translated, unreachable) {
        (false, false) => MARK_ANSWER_ONLY,
        (false, true) => MARK_UNREACHABLE,
        (true, false) => MARK_TRANSLATED_ANSWER,
        (true, true) => MARK_TRANSLATED_UNREACHABLE,
    }
}

/// Per-CPU state of the new-connection budget, index 0 of `XR_RATE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RateWindow {
    /// Start of the current window (bpf_ktime_get_ns).
    pub start_ns: u64,
    /// New connections accepted in it.
    pub count: u64,
}

/// Key and value of both floating IP maps (fixed -> floating and back).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Ipv4 {
    pub addr: [u8; 4],
}

crate::pod!(RouterConfig, Ipv4, RateWindow);
