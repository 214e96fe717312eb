//! ICMP errors (unreachable, time exceeded, parameter problem) about a
//! translated connection: found through the quoted header, whose addresses
//! and ports are translated back, as are the outer addresses that match
//! them, so the error reaches the real sender. Errors about no connection
//! the programs track are routed unchanged between internal ports; across
//! the gateway port they go to the kernel, which translates them if the
//! connection is its own (a protocol the programs leave to it) and otherwise
//! finds them INVALID (the eBPF planes' nftables guard then keeps a tenant
//! address from leaving through qg-).
//!
//! The router's own errors (the kernel's answer to a packet handed up with
//! its destination translated back, see `MARK_TRANSLATED_ANSWER`) quote
//! that translated packet; [`local`] translates the quote on the way out
//! (and the source of a "host unreachable", see `MARK_UNREACHABLE`).

use network_types::ip::Ipv4Hdr;
use router_common::{
    conntrack::{CtEntry, CtKey},
    counters::Outcome,
    port::{PortInfo, ROLE_GATEWAY},
};

use super::{
    Verdict, conntrack,
    parse::{
        ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_HOST_UNREACH, IP_SRC,
        PROTO_ICMP, PROTO_TCP, PROTO_UDP, Pkt,
    },
    route::{self, Flow},
};
use crate::{ctx::Packet, maps};

const BAD: Verdict = Verdict::Drop(Outcome::DropMalformed);

/// The quoted packet's tuple, and where its IP and L4 headers sit.
struct Inner {
    ip: usize,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    l4: usize,
}

impl Inner {
    /// The quoted packet went out translated: its reverse is the key of
    /// the connection's other direction.
    #[inline(always)]
    fn reverse_key(&self) -> CtKey {
        conntrack::key(self.dst, self.src, self.dport, self.sport, self.proto)
    }

    /// The quoted packet as its sender sent it: the key of its direction.
    #[inline(always)]
    fn key(&self) -> CtKey {
        conntrack::key(self.src, self.dst, self.sport, self.dport, self.proto)
    }
}

#[inline(always)]
fn inner<P: Packet>(p: &P, pkt: &Pkt) -> Result<Inner, Verdict> {
    // After the ICMP header; the outer header may have options (an error
    // echoes those of the packet it is about).
    let ip = pkt.l4_off + 8;
    let h: *mut Ipv4Hdr = p.ptr(ip).ok_or(Verdict::Kernel(Outcome::KernelProto))?;
    // SAFETY: bounds checked by ptr().
    let h = unsafe { &*h };
    let ihl = (h.vihl & 0x0f) as usize;
    if h.vihl >> 4 != 4 || ihl < 5 {
        return Err(BAD);
    }
    // The quoted header keeps its options (a packet the programs
    // translated and the kernel forwarded with them).
    let l4_off = ip + ihl * 4;
    // The 8 bytes every error quotes: ports (TCP, UDP) or type and id.
    let l4: *mut [u8; 8] = p.ptr(l4_off).ok_or(Verdict::Kernel(Outcome::KernelProto))?;
    // SAFETY: as above.
    let l4 = unsafe { &*l4 };
    let (sport, dport) = match h.proto {
        PROTO_TCP | PROTO_UDP => (
            u16::from_ne_bytes([l4[0], l4[1]]),
            u16::from_ne_bytes([l4[2], l4[3]]),
        ),
        PROTO_ICMP if l4[0] == ICMP_ECHO_REQUEST || l4[0] == ICMP_ECHO_REPLY => {
            let id = u16::from_ne_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => return Err(Verdict::Kernel(Outcome::KernelProto)),
    };
    Ok(Inner {
        ip,
        src: u32::from_ne_bytes(h.src_addr),
        dst: u32::from_ne_bytes(h.dst_addr),
        sport,
        dport,
        proto: h.proto,
        l4: l4_off,
    })
}

/// Changes a quoted field and keeps the outer ICMP checksum right.
#[inline(always)]
fn set32<P: Packet>(
    p: &mut P,
    icmp_csum: usize,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), Verdict> {
    if old == new {
        return Ok(());
    }
    let f = p.ptr::<u32>(off).ok_or(BAD)?;
    // SAFETY: bounds checked.
    unsafe { *f = new };
    p.fix_l4(icmp_csum, old, new, 4, false, false)
        .map_err(|_| BAD)
}

#[inline(always)]
fn set16<P: Packet>(p: &mut P, icmp_csum: usize, off: usize, new: u16) -> Result<(), Verdict> {
    let f = p.ptr::<u16>(off).ok_or(BAD)?;
    // SAFETY: bounds checked.
    let old = unsafe { *f };
    if old == new {
        return Ok(());
    }
    // SAFETY: bounds checked.
    unsafe { *f = new };
    p.fix_l4(icmp_csum, old as u32, new as u32, 2, false, false)
        .map_err(|_| BAD)
}

/// Software update of a checksum inside the quoted packet (the hooks'
/// helpers only know the outer headers).
#[inline(always)]
fn inner_csum<P: Packet>(
    p: &mut P,
    icmp_csum: usize,
    off: usize,
    old: u32,
    new: u32,
    size: u64,
) -> Result<(), Verdict> {
    let f = p.ptr::<u16>(off).ok_or(BAD)?;
    // SAFETY: bounds checked.
    let c = unsafe { *f };
    let n = super::csum::replace(c, old, new, size);
    set16(p, icmp_csum, off, n)
}

/// How to translate the quoted packet of an ICMP error.
pub struct Plan {
    q: Inner,
    e: CtEntry,
}

/// Finds the connection an ICMP error is about, and where the error goes.
/// Writes nothing, so XDP can still hand the packet to TC untouched.
#[inline(always)]
pub fn plan<P: Packet>(
    p: &P,
    pkt: &Pkt,
    ingress: &PortInfo,
) -> Result<(Flow, Option<Plan>), Verdict> {
    let q = inner(p, pkt)?;
    let Some(e) = conntrack::find(&q.reverse_key()) else {
        // Not about a connection of ours: routed as it is between internal
        // ports; across the gateway, the kernel's.
        if let Some(v) = super::classify::for_router(pkt, ingress) {
            return Err(v);
        }
        let flow = route::translated(pkt, pkt.src, pkt.dst)?;
        if ingress.role == ROLE_GATEWAY || egress_is_gateway(flow.egress) {
            return Err(Verdict::Kernel(Outcome::KernelIcmpUntracked));
        }
        return Ok((flow, None));
    };
    let (orig_src, orig_dst) = (u32::from_ne_bytes(e.new_dst), u32::from_ne_bytes(e.new_src));
    // The outer header: to the real sender, from what it talked to.
    let src = if pkt.src == q.dst { orig_dst } else { pkt.src };
    let dst = if pkt.dst == q.src { orig_src } else { pkt.dst };
    Ok((route::translated(pkt, src, dst)?, Some(Plan { q, e })))
}

#[inline(always)]
fn egress_is_gateway(ifindex: u32) -> bool {
    maps::port(ifindex).is_some_and(|p| p.role == ROLE_GATEWAY)
}

/// Rewrites the quoted packet back to what its sender sent.
#[inline(always)]
pub fn apply<P: Packet>(p: &mut P, pkt: &Pkt, plan: &Plan) -> Result<(), Verdict> {
    let (q, e) = (&plan.q, &plan.e);
    let (new_src, new_dst) = (u32::from_ne_bytes(e.new_dst), u32::from_ne_bytes(e.new_src));
    let csum = pkt.l4_csum;

    // Quoted addresses (inner IP checksum, and UDP's pseudo-header).
    set32(p, csum, q.ip + 12, q.src, new_src)?;
    if q.src != new_src {
        inner_csum(p, csum, q.ip + 10, q.src, new_src, 4)?;
    }
    set32(p, csum, q.ip + 16, q.dst, new_dst)?;
    if q.dst != new_dst {
        inner_csum(p, csum, q.ip + 10, q.dst, new_dst, 4)?;
    }
    match q.proto {
        PROTO_ICMP => {
            if q.sport != e.new_dport {
                set16(p, csum, q.l4 + 4, e.new_dport)?;
                inner_csum(p, csum, q.l4 + 2, q.sport as u32, e.new_dport as u32, 2)?;
            }
        }
        _ => {
            set16(p, csum, q.l4, e.new_dport)?;
            set16(p, csum, q.l4 + 2, e.new_sport)?;
            // UDP's checksum is in the 8 quoted bytes; TCP's is not.
            if q.proto == PROTO_UDP {
                let c = p.ptr::<u16>(q.l4 + 6).ok_or(BAD)?;
                // SAFETY: bounds checked.
                if unsafe { *c } != 0 {
                    inner_csum(p, csum, q.l4 + 6, q.src, new_src, 4)?;
                    inner_csum(p, csum, q.l4 + 6, q.dst, new_dst, 4)?;
                    inner_csum(p, csum, q.l4 + 6, q.sport as u32, e.new_dport as u32, 2)?;
                    inner_csum(p, csum, q.l4 + 6, q.dport as u32, e.new_sport as u32, 2)?;
                }
            }
        }
    }
    Ok(())
}

/// An ICMP error the router itself sends (TC egress): if it quotes a packet
/// whose destination the programs translated back, the quote becomes what
/// the sender sent and the error comes from the address the sender talked
/// to, as the kernel's NAT does on the iptables plane (see also
/// `unreachable_source`). Whether it did.
#[inline(always)]
pub fn local<P: Packet>(p: &mut P, pkt: &Pkt) -> Result<bool, Verdict> {
    let q = inner(p, pkt)?;
    let Some(e) = conntrack::find(&q.reverse_key()) else {
        return unreachable_source(p, pkt, &q);
    };
    let talked_to = u32::from_ne_bytes(e.new_src);
    // Only a destination translated back: the sender's own address is in
    // the quote as it sent it (the kernel answers it there).
    if talked_to == q.dst || u32::from_ne_bytes(e.new_dst) != q.src {
        return Ok(false);
    }
    apply(p, pkt, &Plan { q, e })?;
    super::rewrite::set_addr(p, pkt, IP_SRC, pkt.src, talked_to)?;
    Ok(true)
}

/// "Host unreachable" about a packet handed up untranslated because its
/// next hop does not answer ARP (`MARK_UNREACHABLE`): the quote is what the
/// sender sent, but on the iptables plane the kernel answers the packet
/// translated and its NAT then gives the error the source the sender
/// expects of a translated connection: the floating IP it talked to if
/// the destination was translated (hairpin), else the address the source
/// was translated to (the gateway IP, the sender's floating IP). Whether
/// it changed. (A reject rule of the kernel's own would look the same;
/// the programs add none.)
#[inline(always)]
fn unreachable_source<P: Packet>(p: &mut P, pkt: &Pkt, q: &Inner) -> Result<bool, Verdict> {
    let code: *const u8 = p.ptr(pkt.l4_off + 1).ok_or(BAD)?;
    // SAFETY: bounds checked by ptr().
    if pkt.flags != ICMP_DEST_UNREACH || unsafe { *code } != ICMP_HOST_UNREACH || pkt.dst != q.src {
        return Ok(false);
    }
    let Some(e) = conntrack::find(&q.key()) else {
        return Ok(false);
    };
    let from = if u32::from_ne_bytes(e.new_dst) != q.dst {
        q.dst
    } else if u32::from_ne_bytes(e.new_src) != q.src {
        u32::from_ne_bytes(e.new_src)
    } else {
        return Ok(false);
    };
    super::rewrite::set_addr(p, pkt, IP_SRC, pkt.src, from)?;
    Ok(true)
}
