//! The forwarding pipeline shared by the XDP and TC programs:
//! parse → classify → conntrack → nat → route → rewrite → send
//! (fragments and ICMP errors take the place of conntrack for the packets
//! that belong to a connection without carrying its ports).
//!
//! Each stage returns a value to go on with, or a final [`Verdict`]; only the
//! entry points act on verdicts and count them.
//!
//! One owner per flow: a connection the programs track is translated by
//! them, every packet of it. What they cannot send themselves goes to the
//! kernel either already translated and marked so that the kernel forwards
//! it without tracking or translating it again (it fragments it, or
//! processes its IP options), or untranslated and marked so that the kernel
//! only answers it (TTL, no route, fragmentation needed) and never forwards
//! it. Only protocols the programs do not translate are the kernel's whole.

pub mod arp;
pub mod classify;
pub mod conntrack;
pub mod csum;
pub mod fragments;
pub mod icmp_error;
pub mod nat;
pub mod parse;
pub mod rewrite;
pub mod route;
pub mod table;

use router_common::counters::Outcome;

use crate::{ctx::Packet, maps};

/// What to do with a packet.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Rewritten; send it out of `ifindex` towards next hop `nexthop`
    /// (raw network-order address). XDP has set the MACs; TC's redirect
    /// sets them.
    Forward { ifindex: u32, nexthop: u32 },
    /// Hand it to the kernel unchanged, for this reason.
    Kernel(Outcome),
    /// Hand it to the kernel unchanged, marked for the answer
    /// (`answer_mark`): the kernel answers it with an ICMP error and must
    /// not forward it.
    Answer(Outcome),
    /// Translated (addresses and ports, not TTL or MACs); hand it to the
    /// kernel marked `MARK_TRANSLATED`, to be forwarded untracked.
    Translated(Outcome),
    /// Its destination translated back; hand it to the kernel marked for
    /// the answer (`answer_mark`, translated): answered (untracked), never
    /// forwarded.
    TranslatedAnswer(Outcome),
    /// XDP cannot finish it (neighbour unknown, partial checksum, a mark
    /// needed): TC will.
    ToTc,
    /// Drop it, for this reason.
    Drop(Outcome),
    /// Rewritten into an answer: send it back out of the port it came in on.
    Bounce,
}

/// Whether a packet is too big for a port of `mtu`. An aggregated (GSO/GRO)
/// skb is not: what counts is the size of the segments it stands for.
#[inline(always)]
fn too_big<P: Packet>(p: &P, pkt: &parse::Pkt, mtu: u32) -> bool {
    // Most packets fit whole: no need to ask for the segment size.
    pkt.tot_len as u32 > mtu && wire_len(p, pkt) > mtu
}

/// The largest IP packet `pkt` puts on the wire: itself, or the segments
/// of an aggregate (GSO) whole, headers included.
#[inline(always)]
fn wire_len<P: Packet>(p: &P, pkt: &parse::Pkt) -> u32 {
    let len = pkt.tot_len as u32;
    let gso = p.gso_size();
    if gso == 0 {
        return len;
    }
    let hdrs = (pkt.l4_off - parse::IP_OFF) as u32 + pkt.l4_hdr as u32;
    core::cmp::min(len, hdrs + gso)
}

/// A packet the kernel must answer (TTL expired, fragmentation needed,
/// host unreachable).
/// The kernel's ICMP error quotes what it is given and goes to its source:
/// a packet whose destination the programs rewrite (a reply to a SNATed
/// connection, a packet to a floating IP) is handed up with that
/// translated, so the kernel answers for the host behind it, and its error
/// is translated back on the way out (`icmp_error::local`). Anything else
/// goes up as it came.
#[inline(always)]
fn answer<P: Packet>(p: &mut P, pkt: &parse::Pkt, flow: &route::Flow, why: Outcome) -> Verdict {
    let same_source =
        flow.src == pkt.src && (pkt.proto == parse::PROTO_ICMP || flow.sport == pkt.sport);
    if flow.dst == pkt.dst || !same_source || pkt.frag == parse::FRAG_LATER {
        return Verdict::Answer(why);
    }
    // XDP cannot mark a packet.
    if !P::TC {
        return Verdict::ToTc;
    }
    if let Err(v) = rewrite::translate(p, pkt, flow) {
        return v;
    }
    Verdict::TranslatedAnswer(why)
}

/// The router's own ICMP errors on their way out (TC egress): whether one
/// was translated (see [`answer`]).
#[inline(always)]
pub fn local_error<P: Packet>(p: &mut P) -> bool {
    let Ok(pkt) = parse::parse(p) else {
        return false;
    };
    if pkt.proto != parse::PROTO_ICMP
        || !parse::is_icmp_error(pkt.flags)
        || pkt.frag != parse::FRAG_NONE
    {
        return false;
    }
    icmp_error::local(p, &pkt).unwrap_or(false)
}

/// Runs the whole pipeline on a packet.
#[inline(always)]
pub fn process<P: Packet>(p: &mut P) -> Verdict {
    // First: an ARP request with a priority tag is answered untagged, as
    // the kernel answers it.
    if p.pop_priority_tags().is_err() {
        return Verdict::Drop(Outcome::DropMalformed);
    }
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
        match fragments::later(&pkt) {
            Ok(f) => (f, None),
            // XDP runs a batch ahead of TC: the first fragment may be
            // waiting there to be recorded. TC decides.
            Err(Verdict::Drop(Outcome::DropFragment)) if !P::TC => return Verdict::ToTc,
            Err(v) => return v,
        }
    } else if pkt.proto == parse::PROTO_ICMP && parse::is_icmp_error(pkt.flags) {
        match icmp_error::plan(p, &pkt, &ingress) {
            Ok(f) => f,
            Err(v) => return v,
        }
    } else {
        // A SYN TC gets from XDP, which did not hand it on for its
        // checksum: XDP has weighed it against the budget (`CFG_XDP`).
        let screened = P::TC && pkt.is_syn() && !parse::partial_csum(p, &pkt);
        // A DF packet's size, for a new connection that would never carry
        // it (see `conntrack::track`).
        let df_len = if pkt.df { wire_len(p, &pkt) } else { 0 };
        match conntrack::track(&pkt, &ingress, screened, df_len) {
            Ok(f) => (f, None),
            Err(v) => return v,
        }
    };
    if pkt.ttl <= 1 {
        if quoted.is_some() {
            // An error about an error is not sent.
            return Verdict::Answer(Outcome::KernelTtl);
        }
        return answer(p, &pkt, &flow, Outcome::KernelTtl);
    }
    // What the programs cannot send themselves.
    let handoff = if too_big(p, &pkt, flow.mtu) {
        if pkt.df {
            if quoted.is_some() {
                return Verdict::Answer(Outcome::KernelMtu);
            }
            return answer(p, &pkt, &flow, Outcome::KernelMtu);
        }
        Some(Outcome::KernelFragment)
    } else if pkt.options {
        Some(Outcome::KernelOptions)
    } else {
        None
    };
    // A next hop that does not answer ARP (XDP finds no MAC for it and
    // leaves it to TC): the kernel answers "host unreachable", as its own
    // forwarding does; what TC sent there with `bpf_redirect_neigh` would
    // be lost silently. Noted as used: the daemon has the kernel probe it
    // again.
    if P::TC && flow.nexthop_mac.is_none() && route::unresolvable(flow.egress, flow.nexthop) {
        maps::neigh_used(flow.egress, flow.nexthop);
        if quoted.is_some() {
            return Verdict::Answer(Outcome::KernelNeigh);
        }
        return answer(p, &pkt, &flow, Outcome::KernelNeigh);
    }
    if let Some(why) = handoff {
        // XDP cannot mark a packet: TC does all of it.
        if !P::TC {
            return Verdict::ToTc;
        }
        if pkt.frag == parse::FRAG_FIRST {
            fragments::remember(&pkt, &flow);
        }
        if let Some(q) = &quoted
            && let Err(v) = icmp_error::apply(p, &pkt, q)
        {
            return v;
        }
        if let Err(v) = rewrite::translate(p, &pkt, &flow) {
            return v;
        }
        return Verdict::Translated(why);
    }
    // Neighbour (XDP) before anything is written.
    let dst_mac = if P::TC {
        [0u8; 6]
    } else {
        match flow
            .nexthop_mac
            .or_else(|| route::neighbour(flow.egress, flow.nexthop))
        {
            Some(m) => m,
            None => return Verdict::ToTc,
        }
    };
    if pkt.frag == parse::FRAG_FIRST {
        fragments::remember(&pkt, &flow);
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
