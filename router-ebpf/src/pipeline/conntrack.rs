//! conntrack: the connection table. Both directions of a translated
//! connection (or one that crosses the gateway port) get an entry, so
//! replies are translated back; a known connection is translated as its
//! first packet was, by [`super::nat`].
//!
//! A connection starts embryonic: a new connection whose window of the
//! table (`super::table`) is full takes the slot of the least recently
//! seen of the first embryonic entries there, so a flood of new
//! connections evicts only its own kind. Once established — TCP when its
//! handshake completes, UDP and ICMP when answered and still used after
//! `ESTABLISH_AFTER_NS` — both entries are marked `CT_F_ASSURED` in place, and only the daemon's GC
//! ends them, when idle. New connections are admitted within a per-CPU
//! budget per second (`RouterConfig::new_conn_rate`); the rest are dropped
//! and counted before they cost an insert.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use router_common::{
    config::{CFG_XDP, RouterConfig},
    conntrack::{
        CT_F_ASSURED, CT_F_REPLIED, CT_ORIGINAL, CT_REPLY, CT_TICK_SHIFT, CtEntry, CtKey,
        ESTABLISH_AFTER_NS, NAT_SNAT, RouteCache, TCP_CLOSED, TCP_ESTABLISHED, TCP_FIN, TCP_NONE,
        TCP_SYN_SENT,
    },
    counters::{CtEvent, Outcome},
    port::{PortInfo, ROLE_GATEWAY, ROLE_INTERNAL},
};

use super::{
    Verdict, classify, nat,
    parse::{FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, ICMP_ECHO_REPLY, PROTO_ICMP, PROTO_TCP, Pkt},
    route::{self, Flow},
    table::{self, Found, Refused},
};
use crate::maps;

/// Length of a window of the new-connection budget.
const RATE_WINDOW_NS: u64 = 100_000_000;

#[inline(always)]
pub fn key(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey::new(src.to_ne_bytes(), dst.to_ne_bytes(), sport, dport, proto)
}

/// The TCP state after a packet with `flags` in a connection in `state`.
/// `opener_acks`: the packet is the opener's and the other side has
/// answered (or a connection is picked up mid-stream): only then does an
/// ACK complete the handshake. The answering side's ACK (a challenge ACK
/// to a second SYN, say) and the opener's ACK to nothing do not, as the
/// kernel keeps such a connection half open.
#[inline(always)]
fn tcp_next(state: u8, flags: u8, opener_acks: bool) -> u8 {
    if flags & FLAG_RST != 0 {
        TCP_CLOSED
    } else if flags & FLAG_FIN != 0 {
        TCP_FIN
    } else if flags & FLAG_SYN != 0 {
        // A SYN, or the SYN-ACK answering it: the handshake is not done
        // until the opener's ACK (a SYN-ACK to a spoofed SYN never gets
        // one, and must expire as an unanswered handshake does, not as an
        // established connection). In an established or closing
        // connection it changes nothing, as the kernel ignores it there:
        // a stray SYN must not make a half-closed connection forget its
        // FIN (the SYN that ends a connection both sides closed never gets
        // here: `table::lookup_syn`). After a reset it starts the
        // handshake again (a refused connection retried).
        if state == TCP_ESTABLISHED || state == TCP_FIN {
            state
        } else {
            TCP_SYN_SENT
        }
    } else if flags & FLAG_ACK != 0 && (state == TCP_SYN_SENT || state == TCP_NONE) && opener_acks {
        TCP_ESTABLISHED
    } else {
        state
    }
}

/// Whether a TCP segment may open a connection: a SYN, or a plain ACK of a
/// connection picked up mid-stream (as the kernel's conntrack, loose, does).
/// Anything else without a connection is INVALID to the kernel, which lets
/// it through untranslated; the programs drop it instead when NAT applies.
#[inline(always)]
fn tcp_opens(flags: u8) -> bool {
    let f = flags & (FLAG_SYN | FLAG_ACK | FLAG_RST | FLAG_FIN);
    f == FLAG_SYN || f == FLAG_ACK
}

/// The entry of a connection an ICMP error quotes.
#[inline(always)]
pub fn find(k: &CtKey) -> Option<CtEntry> {
    let f = table::lookup(k)?;
    // SAFETY: plain data, copied out.
    let e = unsafe { *f.entry() };
    f.still().then_some(e)
}

/// `screened`: a SYN in TC that XDP, if on the port, has weighed against
/// the budget already (`CFG_XDP`). `df_len`: the size a DF packet puts on
/// the wire (0: not DF).
#[inline(always)]
pub fn track(pkt: &Pkt, ingress: &PortInfo, screened: bool, df_len: u32) -> Result<Flow, Verdict> {
    // From an inside port, route first: traffic between internal ports is
    // never translated (Neutron's east-west rule), so it needs no state, and
    // a known connection whose destination is not rewritten reuses the route.
    // The maps' generation first, before any lookup: a change made while
    // this packet is looked up leaves the cache it writes a stale stamp,
    // never a stale result under a current one.
    let g = maps::generation();
    let pre = if ingress.role == ROLE_INTERNAL {
        route::egress_cached(pkt, g).ok()
    } else {
        None
    };
    if let Some((r, mac)) = pre
        && r.2.role == ROLE_INTERNAL
    {
        classify::spoofed_source(pkt)?;
        if let Some(v) = classify::for_router(pkt, ingress) {
            return Err(v);
        }
        let mut flow = Flow::via(pkt.src, pkt.dst, pkt.sport, pkt.dport, r);
        flow.nexthop_mac = mac;
        return Ok(flow);
    }
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto);
    // The coarse clock (CLOCK_MONOTONIC_COARSE, one tick behind at most):
    // the timeouts it serves are seconds, and it costs a fraction of the
    // precise one, which reads the TSC.
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // A SYN while this CPU's budget is spent would open a connection (or
    // retry one not answered yet): it is shed before the table lookups a
    // flood's SYNs all miss in, which are what a shed packet costs. (Not
    // in TC behind XDP, which has done it: `CFG_XDP`.)
    if pkt.is_syn() && spent(now, screened) {
        no_connection(pkt, ingress)?;
        return Err(Verdict::Drop(Outcome::DropNewRate));
    }
    // A packet that will probably open a connection has its reply's slot
    // read ahead, so that the two misses of a new connection overlap: a
    // SYN (but for a retransmission); a UDP or ICMP packet while this
    // CPU's lookups of them mostly miss (a flood of new flows). TCP's
    // other packets never pay for the guess, even during a flood.
    let tcp = pkt.proto == PROTO_TCP;
    // Worked out again, not kept from the shed above: held across its
    // calls, it took the pipeline's stack past the verifier's 512 bytes.
    let syn = pkt.is_syn();
    if syn || (!tcp && table::flooded()) {
        nat::foresee(pkt, ingress);
    }
    // A SYN in a connection both sides have closed opens a new one
    // (`table::lookup_syn`).
    let found = if syn {
        table::lookup_syn(&k)
    } else {
        table::lookup(&k)
    };
    if !tcp {
        table::note_lookup(found.is_some());
    }
    if let Some(found) = found {
        // SAFETY: the slot stays valid while this program runs (an array's);
        // concurrent updates of last_seen/state/flags are benign. What is
        // read here is checked by `still` below before anything is written:
        // a slot freed and reused meanwhile is another connection's.
        let e = unsafe { &mut *found.entry() };
        let new_dst = u32::from_ne_bytes(e.new_dst);
        // The route and next hop's MAC cached in the entry, if the maps
        // have not changed since (`RouteCache`): no route lookup, no
        // neighbour lookup. Stamped under the key too, so that a cache
        // written into a slot just reused by another connection is not
        // taken for that connection's.
        let gk = k.stamp_key(g);
        let cached = e.route.get(gk);
        let (r, mac) = match pre {
            Some((r, pre_mac)) if new_dst == pkt.dst => {
                // Looked up already (for the east-west test), with its MAC
                // when the destination cache had it; else the MAC is the
                // entry's if the entry's cache is of this route.
                let mac = match (pre_mac, cached) {
                    (Some(m), _) => Some(m),
                    (None, Some((egress, nexthop, mac))) if egress == r.0 && nexthop == r.1 => {
                        Some(mac)
                    }
                    _ => None,
                };
                (r, mac)
            }
            _ => match cached {
                Some((egress, nexthop, mac)) => {
                    let Some(port) = maps::port(egress) else {
                        return Err(Verdict::Answer(Outcome::KernelNoRoute));
                    };
                    ((egress, nexthop, port), Some(mac))
                }
                None => (route::egress(pkt, new_dst)?, None),
            },
        };
        // Not cached: looked up, and cached below if the kernel has
        // resolved the next hop (else the packet goes as it went without a
        // cache).
        let (mac, fresh) = match mac {
            Some(m) => (Some(m), false),
            None => (route::neighbour(r.0, r.1), true),
        };
        let mut flow = Flow::via(
            u32::from_ne_bytes(e.new_src),
            new_dst,
            e.new_sport,
            e.new_dport,
            r,
        );
        flow.nexthop_mac = mac;
        // Freed and reused while it was read: the connection is gone (the
        // GC expired it), and the packet opens a new one. Checked before
        // the writes, which would otherwise land in the other connection's
        // entry.
        if found.still() {
            if fresh && let Some(m) = mac {
                e.route.set(gk, r.0, r.1, m);
            }
            // Written only when changed: the entry's cache line stays
            // clean (and shared by the CPUs of a flow) between clock
            // ticks.
            if e.last_seen != now {
                e.last_seen = now;
            }
            if pkt.proto == PROTO_TCP {
                let opener_acks = e.direction != CT_REPLY && e.flags & CT_F_REPLIED != 0;
                let state = tcp_next(e.state, pkt.flags, opener_acks);
                if state != e.state {
                    e.state = state;
                }
            }
            if e.flags & CT_F_ASSURED == 0 {
                maybe_establish(&k, e, pkt, now);
            }
            return Ok(flow);
        }
    }
    no_connection(pkt, ingress)?;
    new_connection(pkt, ingress, now, pre.map(|(r, _)| r), df_len)
}

/// What becomes of a packet of no connection before one is opened for it:
/// a spoofed source is dropped, what is for the router goes to the kernel,
/// and so does an expiring TTL (to be answered; not forwarded, so nothing
/// to track). Ok: a new connection (or none needed).
#[inline(always)]
fn no_connection(pkt: &Pkt, ingress: &PortInfo) -> Result<(), Verdict> {
    classify::spoofed_source(pkt)?;
    if let Some(v) = classify::for_router(pkt, ingress) {
        return Err(v);
    }
    if pkt.ttl <= 1 {
        return Err(Verdict::Answer(Outcome::KernelTtl));
    }
    Ok(())
}

/// Marks a connection established (both entries) once it is.
#[inline(always)]
fn maybe_establish(k: &CtKey, e: &mut CtEntry, pkt: &Pkt, now: u64) {
    let reply = e.direction == CT_REPLY;
    let partner = if reply && e.flags & CT_F_REPLIED == 0 {
        e.flags |= CT_F_REPLIED;
        // The original direction's entry learns it too (TCP establishes
        // on the handshake's last ACK, which travels that way).
        let p = table::lookup(&e.partner(k));
        if let Some(p) = p {
            // SAFETY: as in `track`.
            unsafe { (*p.entry()).flags |= CT_F_REPLIED };
        }
        p
    } else {
        None
    };
    if e.flags & CT_F_REPLIED == 0 {
        return;
    }
    let ready = if pkt.proto == PROTO_TCP {
        !reply && pkt.flags & (FLAG_SYN | FLAG_ACK | FLAG_RST) == FLAG_ACK
    } else {
        ((now >> CT_TICK_SHIFT) as u32).wrapping_sub(e.created)
            > (ESTABLISH_AFTER_NS >> CT_TICK_SHIFT) as u32
    };
    if !ready {
        return;
    }
    let Some(p) = partner.or_else(|| table::lookup(&e.partner(k))) else {
        return;
    };
    // Both entries: from now on no new connection evicts either.
    // SAFETY: as in `track`.
    unsafe { (*p.entry()).flags |= CT_F_ASSURED };
    e.flags |= CT_F_ASSURED;
    maps::event(CtEvent::Promoted);
}

/// Whether this CPU's budget of new connections is spent for the current
/// window (without taking from it), for a SYN to be shed before its
/// lookup; never for a SYN XDP has `screened` (`CFG_XDP`).
#[inline(always)]
fn spent(now: u64, screened: bool) -> bool {
    let Some(cfg) = maps::XR_CONFIG.get(0) else {
        return false;
    };
    if cfg.new_conn_rate == 0 || (screened && cfg.flags & CFG_XDP != 0) {
        return false;
    }
    let Some(w) = maps::XR_RATE.get(0) else {
        return false;
    };
    now.wrapping_sub(w.start_ns) < RATE_WINDOW_NS && w.count >= budget(cfg)
}

/// New connections a window admits on one CPU.
#[inline(always)]
fn budget(cfg: &RouterConfig) -> u64 {
    core::cmp::max(cfg.new_conn_rate as u64 / 10, 1)
}

/// Whether one more new connection fits this CPU's budget.
#[inline(always)]
fn admit(cfg: &RouterConfig, now: u64) -> bool {
    if cfg.new_conn_rate == 0 {
        return true;
    }
    let Some(w) = maps::XR_RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w.start_ns) >= RATE_WINDOW_NS {
        w.start_ns = now;
        w.count = 0;
    }
    if w.count >= budget(cfg) {
        return false;
    }
    w.count += 1;
    true
}

/// Gives back what [`admit`] took, in the same window: a global function,
/// checked once by the verifier.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_rate_give_back() -> u32 {
    if let Some(w) = maps::XR_RATE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let w = unsafe { &mut *w };
        if w.count != 0 {
            w.count -= 1;
        }
    }
    0
}

/// Opens a connection for `pkt`. `pre`: the route of its own destination,
/// when `track` looked it up already. (Not the next hop's MAC it came
/// with: carried on, that Option doubled what the verifier walks after.)
#[inline(always)]
fn new_connection(
    pkt: &Pkt,
    ingress: &PortInfo,
    now: u64,
    pre: Option<route::Egress>,
    df_len: u32,
) -> Result<Flow, Verdict> {
    let Some(cfg) = maps::XR_CONFIG.get(0) else {
        return Err(Verdict::Kernel(Outcome::KernelNotPort));
    };
    let cfg: RouterConfig = *cfg;
    // First, so a flood over the budget is shed before it costs more
    // lookups. (The few packets that turn out to need no state, such as an
    // unanswered echo reply, count against it too; those the kernel is to
    // answer give it back: XDP hands them on to TC, which would count them
    // again, and shed them once XDP had taken the window's last one.)
    if !admit(&cfg, now) {
        return Err(Verdict::Drop(Outcome::DropNewRate));
    }

    let (dst, nat) = nat::destination(pkt);
    // Not DNATed: its route is the one `track` looked up (not twice).
    let r = match pre {
        Some(r) if dst == pkt.dst => r,
        _ => match route::egress(pkt, dst) {
            Ok(r) => r,
            Err(v) => {
                // The kernel's to answer: it opens nothing.
                xr_rate_give_back();
                return Err(v);
            }
        },
    };
    let (egress, _, port) = r;
    let snat_to = nat::source(pkt, ingress, &cfg, egress, nat);

    let mut flow = Flow::via(pkt.src, dst, pkt.sport, pkt.dport, r);
    let translated = nat != 0 || snat_to.is_some();
    let touches_gw = ingress.role == ROLE_GATEWAY || port.role == ROLE_GATEWAY;
    if !translated && !touches_gw {
        // East-west: routed, never translated, nothing to remember.
        return Ok(flow);
    }
    // An echo reply with no request on record is not a connection.
    if pkt.proto == PROTO_ICMP && pkt.flags == ICMP_ECHO_REPLY && !translated {
        return Ok(flow);
    }
    if pkt.proto == PROTO_TCP && !tcp_opens(pkt.flags) {
        // No connection to put it in: untranslated it would leak the
        // tenant's address (the kernel's NAT lets such INVALID packets
        // through); untranslated and unNATed it is routed like the kernel
        // routes it, without state.
        if translated {
            return Err(Verdict::Drop(Outcome::DropTcpInvalid));
        }
        return Ok(flow);
    }

    // DF and over the egress MTU: the kernel answers it ("fragmentation
    // needed", as `process` would have it), and it never leaves. Its
    // connection would hold a translation (a SNAT port) no packet used;
    // the kernel's conntrack drops such an unconfirmed entry too. Not when
    // its destination is translated: the answer, about the host behind a
    // floating IP, is translated back through the connection.
    if df_len > port.mtu && nat == 0 {
        xr_rate_give_back();
        return Err(Verdict::Answer(Outcome::KernelMtu));
    }
    let state = if pkt.proto == PROTO_TCP {
        // A plain ACK opening a connection picks it up mid-stream,
        // established, as the kernel's loose conntrack does.
        tcp_next(TCP_NONE, pkt.flags, true)
    } else {
        TCP_NONE
    };
    let icmp = pkt.proto == PROTO_ICMP;
    let mut reply = CtEntry {
        new_src: pkt.dst.to_ne_bytes(),
        new_dst: pkt.src.to_ne_bytes(),
        new_sport: pkt.dport,
        new_dport: pkt.sport,
        direction: CT_REPLY,
        nat: nat | if snat_to.is_some() { NAT_SNAT } else { 0 },
        state,
        flags: 0,
        last_seen: now,
        created: (now >> CT_TICK_SHIFT) as u32,
        route: RouteCache::default(),
    };
    let reply_slot = match snat_to {
        Some(addr) => {
            flow.src = addr;
            let (slot, port) =
                nat::claim_port(&cfg, pkt, dst, addr, &reply).map_err(Verdict::Drop)?;
            flow.sport = port;
            if icmp {
                flow.dport = port;
            }
            slot
        }
        None => {
            let rk = key(dst, pkt.src, pkt.dport, pkt.sport, pkt.proto);
            if icmp {
                reply.new_dport = pkt.sport;
            }
            inserted(table::insert(&rk, &reply, None))?
        }
    };
    let orig = CtEntry {
        new_src: flow.src.to_ne_bytes(),
        new_dst: flow.dst.to_ne_bytes(),
        new_sport: flow.sport,
        new_dport: flow.dport,
        direction: CT_ORIGINAL,
        nat: reply.nat,
        state,
        flags: 0,
        last_seen: now,
        created: reply.created,
        route: RouteCache::default(),
    };
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto);
    if let Err(v) = inserted(table::insert(&k, &orig, Some(&reply_slot))) {
        table::release(&reply_slot);
        return Err(v);
    }
    maps::event(CtEvent::Created);
    Ok(flow)
}

/// An insert's slot, the eviction it took counted; a refusal drops the
/// packet.
#[inline(always)]
pub fn inserted(r: Result<(Found, bool), Refused>) -> Result<Found, Verdict> {
    match r {
        Ok((f, evicted)) => {
            if evicted {
                maps::event(CtEvent::Evicted);
            }
            Ok(f)
        }
        Err(_) => Err(Verdict::Drop(Outcome::DropCtFull)),
    }
}
