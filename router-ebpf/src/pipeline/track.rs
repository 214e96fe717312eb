//! track + translate: the connection table and the NAT decision of a
//! connection's first packet, in Neutron's order of precedence:
//! DNAT of a floating IP; then, leaving through qg-, the source's floating
//! IP or the gateway IP (if `enable_snat`); hairpin (DNATed, not arrived on
//! qg-) SNAT to the source's floating IP or the gateway IP; nothing
//! east-west. Both directions get an entry, so replies are translated back.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use router_common::{
    config::{Ipv4, RouterConfig},
    conntrack::{
        CT_ORIGINAL, CT_REPLY, CtEntry, CtKey, FragEntry, FragKey, NAT_DNAT, NAT_SNAT, TCP_CLOSED,
        TCP_ESTABLISHED, TCP_FIN, TCP_NONE, TCP_SYN_SENT,
    },
    counters::Outcome,
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
}

#[inline(always)]
fn key(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        src: src.to_ne_bytes(),
        dst: dst.to_ne_bytes(),
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
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

/// Route `dst`, returning the egress port; the kernel gets what has no route
/// and what would need fragmenting (it answers DF packets as the iptables
/// data plane does).
#[inline(always)]
fn route_to(pkt: &Pkt, dst: u32) -> Result<(u32, u32, PortInfo), Verdict> {
    let Some((egress, nh)) = route::lookup(dst, flow_hash(pkt)) else {
        return Err(Verdict::Kernel(Outcome::KernelNoRoute));
    };
    // SAFETY: plain data.
    let Some(port) = (unsafe { maps::XR_PORTS.get(&egress) }) else {
        return Err(Verdict::Kernel(Outcome::KernelNoRoute));
    };
    if pkt.tot_len as u32 > port.mtu {
        return Err(Verdict::Kernel(Outcome::KernelMtu));
    }
    Ok((egress, nh, *port))
}

/// Where a packet goes once its addresses are `src` and `dst` (ports
/// unchanged).
#[inline(always)]
pub fn route_translated(pkt: &Pkt, src: u32, dst: u32) -> Result<Flow, Verdict> {
    let (egress, nexthop, port) = route_to(pkt, dst)?;
    Ok(Flow {
        src,
        dst,
        sport: pkt.sport,
        dport: pkt.dport,
        egress,
        nexthop,
        egress_mac: port.mac,
    })
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
    if let Some((egress, nexthop, port)) = pre
        && port.role == ROLE_INTERNAL
    {
        if let Some(v) = super::classify::for_router(pkt, ingress) {
            return Err(v);
        }
        return Ok(Flow {
            src: pkt.src,
            dst: pkt.dst,
            sport: pkt.sport,
            dport: pkt.dport,
            egress,
            nexthop,
            egress_mac: port.mac,
        });
    }
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(e) = maps::XR_CT.get_ptr_mut(&k) {
        // SAFETY: the entry stays valid while this program runs; concurrent
        // updates of last_seen/state are benign.
        let e = unsafe { &mut *e };
        let new_dst = u32::from_ne_bytes(e.new_dst);
        let (egress, nexthop, port) = match pre {
            Some(r) if new_dst == pkt.dst => r,
            _ => route_to(pkt, new_dst)?,
        };
        e.last_seen = now;
        if pkt.proto == PROTO_TCP {
            e.state = tcp_next(e.state, pkt.flags);
        }
        return Ok(Flow {
            src: u32::from_ne_bytes(e.new_src),
            dst: new_dst,
            sport: e.new_sport,
            dport: e.new_dport,
            egress,
            nexthop,
            egress_mac: port.mac,
        });
    }
    if let Some(v) = super::classify::for_router(pkt, ingress) {
        return Err(v);
    }
    new_connection(pkt, ingress, now)
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
/// first went to the kernel, or has not arrived): the kernel reassembles.
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
        return Err(Verdict::Kernel(Outcome::KernelIpOptions));
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

#[inline(always)]
fn new_connection(pkt: &Pkt, ingress: &PortInfo, now: u64) -> Result<Flow, Verdict> {
    let Some(cfg) = maps::XR_CONFIG.get(0) else {
        return Err(Verdict::Kernel(Outcome::KernelNotPort));
    };
    let cfg: RouterConfig = *cfg;

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

    let mut flow = Flow {
        src: pkt.src,
        dst,
        sport: pkt.sport,
        dport: pkt.dport,
        egress,
        nexthop,
        egress_mac: port.mac,
    };
    let touches_gw = ingress.role == ROLE_GATEWAY || port.role == ROLE_GATEWAY;
    if nat == 0 && snat_to.is_none() && !touches_gw {
        // East-west: routed, never translated, nothing to remember.
        return Ok(flow);
    }
    // An echo reply with no request on record is not a connection.
    if pkt.proto == PROTO_ICMP && pkt.flags == ICMP_ECHO_REPLY && nat == 0 && snat_to.is_none() {
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
        _pad: 0,
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
                // NOEXIST makes the claim atomic across CPUs.
                if maps::XR_CT.insert(&rk, &reply, BPF_NOEXIST as u64).is_ok() {
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
            if maps::XR_CT.insert(&rk, &reply, BPF_ANY as u64).is_err() {
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
        _pad: 0,
        last_seen: now,
        created: now,
    };
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto);
    if maps::XR_CT.insert(&k, &orig, BPF_ANY as u64).is_err() {
        let _ = maps::XR_CT.remove(&reply_key);
        return Err(Verdict::Drop(Outcome::DropCtFull));
    }
    Ok(flow)
}
