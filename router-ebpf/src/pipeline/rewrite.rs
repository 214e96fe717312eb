//! rewrite: addresses, ports (ICMP echo id) — the translation — then TTL
//! and MACs — the forwarding — with incremental checksum updates through
//! the hook (software in XDP, helpers in TC). A packet handed to the kernel
//! translated gets only the first half: the kernel forwards it.

use router_common::counters::Outcome;

use super::{
    Verdict,
    parse::{ETH_LEN, IP_CSUM, IP_DST, IP_SRC, IP_TTL, PROTO_ICMP, PROTO_UDP, Pkt},
    route::Flow,
};
use crate::ctx::Packet;

const BAD: Verdict = Verdict::Drop(Outcome::DropMalformed);

/// Sets an address of the IPv4 header and fixes the checksums it is in.
#[inline(always)]
pub(super) fn set_addr<P: Packet>(
    p: &mut P,
    pkt: &Pkt,
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
    p.fix_l3(IP_CSUM, old, new, 4).map_err(|_| BAD)?;
    // ICMP has no pseudo-header; a later fragment has no L4 header.
    if pkt.proto != PROTO_ICMP && pkt.l4_csum != 0 {
        p.fix_l4(pkt.l4_csum, old, new, 4, true, pkt.proto == PROTO_UDP)
            .map_err(|_| BAD)?;
    }
    Ok(())
}

#[inline(always)]
fn set_port<P: Packet>(
    p: &mut P,
    pkt: &Pkt,
    off: usize,
    old: u16,
    new: u16,
) -> Result<(), Verdict> {
    if old == new {
        return Ok(());
    }
    let f = p.ptr::<u16>(off).ok_or(BAD)?;
    // SAFETY: bounds checked.
    unsafe { *f = new };
    p.fix_l4(
        pkt.l4_csum,
        old as u32,
        new as u32,
        2,
        false,
        pkt.proto == PROTO_UDP,
    )
    .map_err(|_| BAD)
}

/// Addresses and ports as the connection says.
#[inline(always)]
pub fn translate<P: Packet>(p: &mut P, pkt: &Pkt, flow: &Flow) -> Result<(), Verdict> {
    set_addr(p, pkt, IP_SRC, pkt.src, flow.src)?;
    set_addr(p, pkt, IP_DST, pkt.dst, flow.dst)?;
    if pkt.l4_csum == 0 {
        // A later fragment: addresses only.
    } else if pkt.proto == PROTO_ICMP {
        set_port(p, pkt, pkt.l4_off + 4, pkt.sport, flow.sport)?;
    } else {
        set_port(p, pkt, pkt.l4_off, pkt.sport, flow.sport)?;
        set_port(p, pkt, pkt.l4_off + 2, pkt.dport, flow.dport)?;
    }
    Ok(())
}

/// Translation, then what a router does to a packet it sends: TTL down
/// by one, MACs of the egress port and next hop.
#[inline(always)]
pub fn rewrite<P: Packet>(
    p: &mut P,
    pkt: &Pkt,
    flow: &Flow,
    dst_mac: &[u8; 6],
) -> Result<(), Verdict> {
    translate(p, pkt, flow)?;

    // TTL shares a 16-bit word with the protocol.
    let w = p.ptr::<u16>(IP_TTL).ok_or(BAD)?;
    // SAFETY: bounds checked.
    let (old, new) = unsafe {
        let old = *w;
        let b = old.to_ne_bytes();
        let new = u16::from_ne_bytes([b[0].wrapping_sub(1), b[1]]);
        *w = new;
        (old, new)
    };
    p.fix_l3(IP_CSUM, old as u32, new as u32, 2)
        .map_err(|_| BAD)?;

    if !P::TC {
        // TC's bpf_redirect_neigh fills the MACs itself.
        let eth = p.ptr::<[u8; ETH_LEN]>(0).ok_or(BAD)?;
        // SAFETY: bounds checked.
        let eth = unsafe { &mut *eth };
        eth[0..6].copy_from_slice(dst_mac);
        eth[6..12].copy_from_slice(&flow.egress_mac);
    }
    Ok(())
}
