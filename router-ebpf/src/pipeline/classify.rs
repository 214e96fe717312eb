//! classify: which router port the packet came in on, whether it was sent
//! to this router at all (its MAC), whether it can be forwarded (martian
//! addresses), and whether it is for the router itself (the kernel's job).
//! What the kernel drops, this drops, counted by reason. (TTL is checked
//! once the connection is known: the kernel's answer depends on it.)

use router_common::{
    counters::Outcome,
    port::{LOCAL_BROADCAST, LOCAL_FLOATING, LocalAddr, PortInfo, ROLE_INTERNAL},
};

use super::{
    Verdict,
    parse::{PROTO_TCP, Pkt},
};
use crate::{ctx::Packet, maps};

/// 169.254.169.254, raw network order.
const METADATA_IP: u32 = u32::from_ne_bytes([169, 254, 169, 254]);
const BROADCAST: u32 = u32::MAX;

#[inline(always)]
pub fn classify<P: Packet>(p: &P, pkt: &Pkt) -> Result<PortInfo, Verdict> {
    let ifindex = p.ifindex();
    let Some(port) = maps::port(ifindex) else {
        return Err(Verdict::Kernel(Outcome::KernelNotPort));
    };
    let mac: *mut [u8; 6] = p.ptr(0).ok_or(Verdict::Drop(Outcome::DropMalformed))?;
    // SAFETY: bounds checked by ptr().
    let mac = unsafe { &*mac };
    if mac[0] & 1 != 0 {
        // Broadcast or multicast frame: never forwarded by a router; the
        // kernel takes what is for it.
        return Err(Verdict::Kernel(Outcome::KernelLocal));
    }
    if *mac != port.mac {
        // Another host's frame (a bridge floods unknown unicast).
        return Err(Verdict::Drop(Outcome::DropOtherHost));
    }
    // Martians, as the kernel's route lookup has them (it routes 0/8 but
    // 0.0.0.0, and 240/4 but 255.255.255.255).
    let [s0, ..] = pkt.src.to_ne_bytes();
    if pkt.src == 0 || s0 == 127 || (224..240).contains(&s0) || pkt.src == BROADCAST {
        return Err(Verdict::Drop(Outcome::DropMartianSrc));
    }
    let [d0, ..] = pkt.dst.to_ne_bytes();
    if pkt.dst == 0 || d0 == 127 {
        return Err(Verdict::Drop(Outcome::DropMartianDst));
    }
    if (224..240).contains(&d0) || pkt.dst == BROADCAST {
        return Err(Verdict::Kernel(Outcome::KernelLocal));
    }
    Ok(port)
}

/// Whether a packet that belongs to no known connection is for the router
/// itself: its own addresses or subnet broadcasts (floating IPs are
/// translated instead), or metadata (redirected to the local proxy by the
/// kernel). Replies to translated connections are checked before this,
/// since they are addressed to the gateway IP.
#[inline(always)]
pub fn for_router(pkt: &Pkt, ingress: &PortInfo) -> Option<Verdict> {
    let local = LocalAddr {
        addr: pkt.dst.to_ne_bytes(),
    };
    // SAFETY: plain data.
    if !maps::surely_not_local(pkt.dst)
        && let Some(kind) = unsafe { maps::XR_LOCAL.get(&local) }
        && *kind != LOCAL_FLOATING
    {
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

/// A source the router itself owns (a port address, a floating IP): the
/// kernel drops such packets as martians (its own addresses, and on the
/// iptables plane the floating IPs, are local), so the programs do too. A
/// subnet's broadcast address as source is not one: the kernel forwards it.
/// Only checked where no connection exists: a connection was created by a
/// packet that passed this check.
#[inline(always)]
pub fn spoofed_source(pkt: &Pkt) -> Result<(), Verdict> {
    if maps::surely_not_local(pkt.src) {
        return Ok(());
    }
    let a = LocalAddr {
        addr: pkt.src.to_ne_bytes(),
    };
    // SAFETY: plain data.
    match unsafe { maps::XR_LOCAL.get(&a) } {
        Some(kind) if *kind != LOCAL_BROADCAST => Err(Verdict::Drop(Outcome::DropSpoofedSrc)),
        _ => Ok(()),
    }
}
