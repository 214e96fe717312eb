//! The forwarding pipeline shared by the XDP and TC programs:
//! parse → classify → track → translate → route → rewrite → send.
//!
//! Each stage returns a value to go on with, or a final [`Verdict`]; only the
//! entry points act on verdicts and count them.

pub mod arp;
pub mod classify;
pub mod csum;
pub mod icmp_error;
pub mod parse;
pub mod rewrite;
pub mod route;
pub mod track;

use router_common::counters::Outcome;

use crate::ctx::Packet;

/// What to do with a packet.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Rewritten; send it out of `ifindex` towards next hop `nexthop`
    /// (raw network-order address). `mac_done`: MACs are already set (XDP).
    Forward { ifindex: u32, nexthop: u32 },
    /// Hand it to the kernel stack unchanged, for this reason.
    Kernel(Outcome),
    /// XDP cannot finish it (neighbour unknown, partial checksum): TC will.
    ToTc,
    /// Drop it, for this reason.
    Drop(Outcome),
    /// Rewritten into an answer: send it back out of the port it came in on.
    Bounce,
}

/// Runs the whole pipeline on a packet.
#[inline(always)]
pub fn process<P: Packet>(p: &mut P) -> Verdict {
    if arp::answer(p) {
        return Verdict::Bounce;
    }
    let pkt = match parse::parse(p) {
        Ok(pkt) => pkt,
        Err(v) => return v,
    };
    let ingress = match classify::classify(p, &pkt) {
        Ok(port) => port,
        Err(v) => return v,
    };
    if !P::TC && parse::partial_csum(p, &pkt) {
        return Verdict::ToTc;
    }
    let (flow, quoted) = if pkt.frag == parse::FRAG_LATER {
        match track::fragment(&pkt) {
            Ok(f) => (f, None),
            Err(v) => return v,
        }
    } else if pkt.proto == parse::PROTO_ICMP && parse::is_icmp_error(pkt.flags) {
        match icmp_error::plan(p, &pkt, &ingress) {
            Ok(f) => f,
            Err(v) => return v,
        }
    } else {
        match track::track(&pkt, &ingress) {
            Ok(f) => (f, None),
            Err(v) => return v,
        }
    };
    // Neighbour (XDP) and MTU checks before anything is written.
    let dst_mac = if P::TC {
        [0u8; 6]
    } else {
        match route::neighbour(flow.egress, flow.nexthop) {
            Some(m) => m,
            None => return Verdict::ToTc,
        }
    };
    if pkt.frag == parse::FRAG_FIRST {
        track::remember_fragments(&pkt, &flow);
    }
    if let Some(q) = &quoted
        && let Err(v) = icmp_error::apply(p, &pkt, q)
    {
        return v;
    }
    if let Err(v) = rewrite::rewrite(p, &pkt, &flow, &dst_mac) {
        return v;
    }
    Verdict::Forward {
        ifindex: flow.egress,
        nexthop: flow.nexthop,
    }
}
