//! classify: which router port the packet came in on, whether it can be
//! forwarded at all, and whether it is for the router itself (the kernel's job).

use router_common::{
    counters::Outcome,
    port::{LocalAddr, PortInfo, ROLE_INTERNAL},
};

use super::{
    Verdict,
    parse::{PROTO_TCP, Pkt},
};
use crate::{ctx::Packet, maps};

/// 169.254.169.254, raw network order.
const METADATA_IP: u32 = u32::from_ne_bytes([169, 254, 169, 254]);

#[inline(always)]
pub fn classify<P: Packet>(p: &P, pkt: &Pkt) -> Result<PortInfo, Verdict> {
    let ifindex = p.ifindex();
    // SAFETY: map values are plain data.
    let Some(port) = (unsafe { maps::XR_PORTS.get(&ifindex) }) else {
        return Err(Verdict::Kernel(Outcome::KernelNotPort));
    };
    let port = *port;
    // Multicast, broadcast and loopback are not routed.
    let first = pkt.dst.to_ne_bytes()[0];
    if first >= 224 || first == 127 || first == 0 {
        return Err(Verdict::Kernel(Outcome::KernelLocal));
    }
    if pkt.ttl <= 1 {
        return Err(Verdict::Kernel(Outcome::KernelTtl));
    }
    Ok(port)
}

/// Whether a packet that belongs to no known connection is for the router
/// itself: its own addresses, or metadata (redirected to the local proxy by
/// the kernel). Replies to translated connections are checked before this,
/// since they are addressed to the gateway IP.
#[inline(always)]
pub fn for_router(pkt: &Pkt, ingress: &PortInfo) -> Option<Verdict> {
    let local = LocalAddr {
        addr: pkt.dst.to_ne_bytes(),
    };
    // SAFETY: plain data.
    if unsafe { maps::XR_LOCAL.get(&local) }.is_some() {
        return Some(Verdict::Kernel(Outcome::KernelLocal));
    }
    if ingress.role == ROLE_INTERNAL
        && pkt.proto == PROTO_TCP
        && pkt.dst == METADATA_IP
        && pkt.dport == 80u16.to_be()
    {
        return Some(Verdict::Kernel(Outcome::KernelLocal));
    }
    None
}
