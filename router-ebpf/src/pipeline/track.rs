//! track + translate: the connection table and the NAT decision of a
//! connection's first packet, in Neutron's order of precedence:
//! DNAT of a floating IP; then, leaving through qg-, the source's floating
//! IP or the gateway IP (if `enable_snat`); hairpin (DNATed, not arrived on
//! qg-) SNAT to the source's floating IP or the gateway IP; nothing
//! east-west. Both directions get an entry, so replies are translated back.
//!
//! A connection starts in the embryonic table `XR_CT_NEW` (LRU: a flood of
//! new connections evicts only embryonic ones) and moves to `XR_CT`, which
//! nothing evicts, once established: TCP when its handshake completes, UDP
//! and ICMP when answered and still used after `ESTABLISH_AFTER_NS`. Lookups
//! try `XR_CT` first. New connections are admitted within a per-CPU budget
//! per second (`RouterConfig::new_conn_rate`); the rest are dropped and
//! counted before they cost an insert.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use router_common::{
    config::{Ipv4, RouterConfig},
    conntrack::{
        CT_F_REPLIED, CT_ORIGINAL, CT_REPLY, CtEntry, CtKey, ESTABLISH_AFTER_NS, FragEntry,
        FragKey, NAT_DNAT, NAT_SNAT, TCP_CLOSED, TCP_ESTABLISHED, TCP_FIN, TCP_NONE, TCP_SYN_SENT,
    },
    counters::{CtEvent, Outcome},
    port::{PortInfo, ROLE_GATEWAY, ROLE_INTERNAL},
};

use super::{
    Verdict,
    parse::{FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, ICMP_ECHO_REPLY, PROTO_ICMP, PROTO_TCP, Pkt},
    route,
};
use crate::maps;

/// Random ports tried before a new SNAT connection is dropped.
const PORT_PROBES: u32 = 16;

/// `CtEntry::flags`: promotion failed (main table full); not retried.
const CT_F_STAY: u8 = 0x80;

/// Length of a window of the new-connection budget.
const RATE_WINDOW_NS: u64 = 100_000_000;

/// A packet's translation and where it goes.
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub egress: u32,
    pub nexthop: u32,
    pub egress_mac: [u8; 6],
    /// MTU of the egress port.
    pub mtu: u32,
}

#[inline(always)]
fn key(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey::new(src.to_ne_bytes(), dst.to_ne_bytes(), sport, dport, proto)
}

#[inline(always)]
fn flow_hash(pkt: &Pkt) -> u32 {
    let h = pkt.src ^ pkt.dst.rotate_left(13) ^ ((pkt.sport as u32) << 16 | pkt.dport as u32);
    h ^ (h >> 16)
}

/// The TCP state after a packet with `flags` in a connection in `state`.
#[inline(always)]
fn tcp_next(state: u8, flags: u8) -> u8 {
    if flags & FLAG_RST != 0 {
        TCP_CLOSED
    } else if flags & FLAG_FIN != 0 {
        TCP_FIN
    } else if flags & FLAG_SYN != 0 && flags & FLAG_ACK == 0 {
        if state == TCP_ESTABLISHED {
            state
        } else {
            TCP_SYN_SENT
        }
    } else if flags & FLAG_ACK != 0 && (state == TCP_SYN_SENT || state == TCP_NONE) {
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

/// The egress port of `dst`. No route: the kernel answers (it has no route
/// either, or the maps are behind it; either way it must not forward).
#[inline(always)]
fn route_to(pkt: &Pkt, dst: u32) -> Result<(u32, u32, PortInfo), Verdict> {
    let Some((egress, nh)) = route::lookup(dst, flow_hash(pkt)) else {
        return Err(Verdict::Answer(Outcome::KernelNoRoute));
    };
    // SAFETY: plain data.
    let Some(port) = (unsafe { maps::XR_PORTS.get(&egress) }) else {
        return Err(Verdict::Answer(Outcome::KernelNoRoute));
    };
    Ok((egress, nh, *port))
}

#[inline(always)]
fn flow_via(src: u32, dst: u32, sport: u16, dport: u16, r: (u32, u32, PortInfo)) -> Flow {
    Flow {
        src,
        dst,
        sport,
        dport,
        egress: r.0,
        nexthop: r.1,
        egress_mac: r.2.mac,
        mtu: r.2.mtu,
    }
}

/// Where a packet goes once its addresses are `src` and `dst` (ports
/// unchanged).
#[inline(always)]
pub fn route_translated(pkt: &Pkt, src: u32, dst: u32) -> Result<Flow, Verdict> {
    let r = route_to(pkt, dst)?;
    Ok(flow_via(src, dst, pkt.sport, pkt.dport, r))
}

/// A source the router itself owns (a port address, a subnet broadcast, a
/// floating IP): the kernel drops such packets as martians (its own
/// addresses, and on the iptables plane the floating IPs, are local), so
/// the programs do too. Only checked where no connection exists: a
/// connection was created by a packet that passed this check.
#[inline(always)]
pub fn check_source(pkt: &Pkt) -> Result<(), Verdict> {
    let a = router_common::port::LocalAddr {
        addr: pkt.src.to_ne_bytes(),
    };
    // SAFETY: plain data.
    if unsafe { maps::XR_LOCAL.get(&a) }.is_some() {
        return Err(Verdict::Drop(Outcome::DropSpoofedSrc));
    }
    Ok(())
}

/// The connection entry for `k`: established, then embryonic (true).
#[inline(always)]
fn lookup(k: &CtKey) -> Option<(*mut CtEntry, bool)> {
    if let Some(e) = maps::XR_CT.get_ptr_mut(k) {
        return Some((e, false));
    }
    maps::XR_CT_NEW.get_ptr_mut(k).map(|e| (e, true))
}

/// The entry of a connection an ICMP error quotes, in either table.
#[inline(always)]
pub fn find(k: &CtKey) -> Option<CtEntry> {
    // SAFETY: plain data, copied out.
    unsafe { lookup(k).map(|(e, _)| *e) }
}

#[inline(always)]
pub fn track(pkt: &Pkt, ingress: &PortInfo) -> Result<Flow, Verdict> {
    // From an inside port, route first: traffic between internal ports is
    // never translated (Neutron's east-west rule), so it needs no state, and
    // a known connection whose destination is not rewritten reuses the route.
    let pre = if ingress.role == ROLE_INTERNAL {
        route_to(pkt, pkt.dst).ok()
    } else {
        None
    };
    if let Some(r) = pre
        && r.2.role == ROLE_INTERNAL
    {
        check_source(pkt)?;
        if let Some(v) = super::classify::for_router(pkt, ingress) {
            return Err(v);
        }
        return Ok(flow_via(pkt.src, pkt.dst, pkt.sport, pkt.dport, r));
    }
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some((e, embryonic)) = lookup(&k) {
        // SAFETY: the entry stays valid while this program runs; concurrent
        // updates of last_seen/state/flags are benign.
        let e = unsafe { &mut *e };
        let new_dst = u32::from_ne_bytes(e.new_dst);
        let r = match pre {
            Some(r) if new_dst == pkt.dst => r,
            _ => route_to(pkt, new_dst)?,
        };
        e.last_seen = now;
        if pkt.proto == PROTO_TCP {
            e.state = tcp_next(e.state, pkt.flags);
        }
        let flow = flow_via(
            u32::from_ne_bytes(e.new_src),
            new_dst,
            e.new_sport,
            e.new_dport,
            r,
        );
        if embryonic {
            maybe_establish(&k, e, pkt, now);
        }
        return Ok(flow);
    }
    check_source(pkt)?;
    if let Some(v) = super::classify::for_router(pkt, ingress) {
        return Err(v);
    }
    new_connection(pkt, ingress, now)
}

/// Moves an embryonic connection to the main table once it is established.
#[inline(always)]
fn maybe_establish(k: &CtKey, e: &mut CtEntry, pkt: &Pkt, now: u64) {
    let reply = e.direction == CT_REPLY;
    if reply && e.flags & CT_F_REPLIED == 0 {
        e.flags |= CT_F_REPLIED;
        // The original direction's entry learns it too (TCP promotes on
        // the handshake's last ACK, which travels that way).
        if let Some(o) = maps::XR_CT_NEW.get_ptr_mut(&e.partner(k)) {
            // SAFETY: as in `track`.
            unsafe { (*o).flags |= CT_F_REPLIED };
        }
    }
    if e.flags & (CT_F_REPLIED | CT_F_STAY) != CT_F_REPLIED {
        return;
    }
    let ready = if pkt.proto == PROTO_TCP {
        !reply && pkt.flags & (FLAG_SYN | FLAG_ACK | FLAG_RST) == FLAG_ACK
    } else {
        now.wrapping_sub(e.created) > ESTABLISH_AFTER_NS
    };
    if !ready {
        return;
    }
    let pk = e.partner(k);
    // SAFETY: plain data, copied out.
    let Some(pe) = (unsafe { maps::XR_CT_NEW.get(&pk) }).copied() else {
        return;
    };
    let me = *e;
    // Main table first, then out of the embryonic one: a concurrent lookup
    // finds the connection in one or the other all along.
    if maps::XR_CT.insert(k, &me, BPF_ANY as u64).is_err() {
        e.flags |= CT_F_STAY;
        maps::event(CtEvent::PromoteFull);
        return;
    }
    if maps::XR_CT.insert(&pk, &pe, BPF_ANY as u64).is_err() {
        let _ = maps::XR_CT.remove(k);
        e.flags |= CT_F_STAY;
        maps::event(CtEvent::PromoteFull);
        return;
    }
    let _ = maps::XR_CT_NEW.remove(k);
    let _ = maps::XR_CT_NEW.remove(&pk);
    maps::event(CtEvent::Promoted);
}

/// Records how a fragmented datagram's first fragment was translated.
#[inline(always)]
pub fn remember_fragments(pkt: &Pkt, flow: &Flow) {
    let k = FragKey {
        src: pkt.src.to_ne_bytes(),
        dst: pkt.dst.to_ne_bytes(),
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    };
    let e = FragEntry {
        new_src: flow.src.to_ne_bytes(),
        new_dst: flow.dst.to_ne_bytes(),
    };
    let _ = maps::XR_FRAG.insert(&k, &e, BPF_ANY as u64);
}

/// A later fragment: the addresses its first fragment got. Unknown (the
/// first has not come through the programs): dropped, since nothing can
/// translate it as the rest of its datagram was (the kernel, reassembling
/// it, would translate it on its own, differently).
#[inline(always)]
pub fn fragment(pkt: &Pkt) -> Result<Flow, Verdict> {
    let k = FragKey {
        src: pkt.src.to_ne_bytes(),
        dst: pkt.dst.to_ne_bytes(),
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    };
    // SAFETY: plain data.
    let Some(e) = (unsafe { maps::XR_FRAG.get(&k) }) else {
        return Err(Verdict::Drop(Outcome::DropFragment));
    };
    route_translated(
        pkt,
        u32::from_ne_bytes(e.new_src),
        u32::from_ne_bytes(e.new_dst),
    )
}

#[inline(always)]
fn floating_of(fixed: u32) -> Option<u32> {
    // SAFETY: plain data.
    unsafe {
        maps::XR_FIP.get(&Ipv4 {
            addr: fixed.to_ne_bytes(),
        })
    }
    .map(|f| u32::from_ne_bytes(f.addr))
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
    let budget = core::cmp::max(cfg.new_conn_rate as u64 / 10, 1);
    if w.count >= budget {
        return false;
    }
    w.count += 1;
    true
}

#[inline(always)]
fn new_connection(pkt: &Pkt, ingress: &PortInfo, now: u64) -> Result<Flow, Verdict> {
    let Some(cfg) = maps::XR_CONFIG.get(0) else {
        return Err(Verdict::Kernel(Outcome::KernelNotPort));
    };
    let cfg: RouterConfig = *cfg;
    // First, so a flood over the budget is shed before it costs more
    // lookups. (The few packets that turn out to need no state, such as an
    // unanswered echo reply, count against it too.)
    if !admit(&cfg, now) {
        return Err(Verdict::Drop(Outcome::DropNewRate));
    }

    // DNAT: a floating IP, from anywhere.
    let mut nat = 0u8;
    let mut dst = pkt.dst;
    // SAFETY: plain data.
    if let Some(fixed) = unsafe {
        maps::XR_FIP_REV.get(&Ipv4 {
            addr: pkt.dst.to_ne_bytes(),
        })
    } {
        dst = u32::from_ne_bytes(fixed.addr);
        nat |= NAT_DNAT;
    }
    // Opaque to the optimiser: it would otherwise derive `nat` from the
    // map lookup's pointer and OR pointers, which the verifier refuses.
    // SAFETY: a local.
    let nat = unsafe { core::ptr::read_volatile(&nat) };
    let (egress, nexthop, port) = route_to(pkt, dst)?;

    // SNAT address, by Neutron's rules.
    let has_gw = cfg.gw_ifindex != 0;
    let gw_addr = u32::from_ne_bytes(cfg.gw_addr);
    let snat_to = if !has_gw {
        None
    } else if nat & NAT_DNAT != 0 {
        match floating_of(pkt.src) {
            Some(f) => Some(f),
            None if ingress.role != ROLE_GATEWAY => Some(gw_addr),
            None => None,
        }
    } else if egress == cfg.gw_ifindex {
        match floating_of(pkt.src) {
            Some(f) => Some(f),
            None if cfg.enable_snat != 0 => Some(gw_addr),
            None => None,
        }
    } else {
        None
    };

    let mut flow = flow_via(pkt.src, dst, pkt.sport, pkt.dport, (egress, nexthop, port));
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

    let state = if pkt.proto == PROTO_TCP {
        tcp_next(TCP_NONE, pkt.flags)
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
        created: now,
    };
    let reply_key = match snat_to {
        Some(addr) => {
            flow.src = addr;
            let span = (cfg.port_max as u32).saturating_sub(cfg.port_min as u32) + 1;
            let mut claimed = None;
            for _ in 0..PORT_PROBES {
                let port = ((cfg.port_min as u32 + unsafe { bpf_get_prandom_u32() } % span) as u16)
                    .to_be();
                let rk = if icmp {
                    key(dst, addr, port, port, pkt.proto)
                } else {
                    key(dst, addr, pkt.dport, port, pkt.proto)
                };
                // SAFETY: plain data.
                if unsafe { maps::XR_CT.get(&rk) }.is_some() {
                    continue;
                }
                // NOEXIST makes the claim atomic across CPUs; the second
                // look at the main table catches a connection promoted
                // from the embryonic one in between.
                if maps::XR_CT_NEW
                    .insert(&rk, &reply, BPF_NOEXIST as u64)
                    .is_ok()
                {
                    // SAFETY: plain data.
                    if unsafe { maps::XR_CT.get(&rk) }.is_some() {
                        let _ = maps::XR_CT_NEW.remove(&rk);
                        continue;
                    }
                    claimed = Some((rk, port));
                    break;
                }
            }
            let Some((rk, port)) = claimed else {
                return Err(Verdict::Drop(Outcome::DropNoPort));
            };
            flow.sport = port;
            if icmp {
                flow.dport = port;
            }
            rk
        }
        None => {
            let rk = key(dst, pkt.src, pkt.dport, pkt.sport, pkt.proto);
            if icmp {
                reply.new_dport = pkt.sport;
            }
            if maps::XR_CT_NEW.insert(&rk, &reply, BPF_ANY as u64).is_err() {
                return Err(Verdict::Drop(Outcome::DropCtFull));
            }
            rk
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
        created: now,
    };
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto);
    if maps::XR_CT_NEW.insert(&k, &orig, BPF_ANY as u64).is_err() {
        let _ = maps::XR_CT_NEW.remove(&reply_key);
        return Err(Verdict::Drop(Outcome::DropCtFull));
    }
    maps::event(CtEvent::Created);
    Ok(flow)
}
