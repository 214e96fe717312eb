//! nat: Neutron's translation of a connection's first packet, in its order
//! of precedence: DNAT of a floating IP (from anywhere); then, leaving
//! through qg-, SNAT to the source's floating IP or to the gateway IP (if
//! `enable_snat`); hairpin (DNATed, not arrived on qg-) SNAT to the
//! source's floating IP or the gateway IP; nothing east-west. Gateway SNAT
//! picks a random free port in the configured range.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use router_common::{
    config::{Ipv4, RouterConfig},
    conntrack::{CtEntry, NAT_DNAT},
    counters::Outcome,
    port::{PortInfo, ROLE_GATEWAY},
};

use super::{
    conntrack::{inserted, key},
    parse::Pkt,
    table::{self, Found, Refused},
};
use crate::maps;

/// Random ports tried before a new SNAT connection is dropped.
const PORT_PROBES: u32 = 16;

#[inline(always)]
fn floating_of(fixed: u32) -> Option<u32> {
    // Most sources have none: a flood's random ones would each cost a
    // cache miss in the hash.
    if maps::surely_no_floating(fixed) {
        return None;
    }
    // SAFETY: plain data.
    unsafe {
        maps::XR_FIP.get(&Ipv4 {
            addr: fixed.to_ne_bytes(),
        })
    }
    .map(|f| u32::from_ne_bytes(f.addr))
}

/// The destination after DNAT, and `NAT_DNAT` if a floating IP applied.
#[inline(always)]
pub fn destination(pkt: &Pkt) -> (u32, u8) {
    let mut nat = 0u8;
    let mut dst = pkt.dst;
    // Floating IPs are the router's addresses (`XR_LOCAL`) too.
    // SAFETY: plain data.
    if !maps::surely_not_local(pkt.dst)
        && let Some(fixed) = unsafe {
            maps::XR_FIP_REV.get(&Ipv4 {
                addr: pkt.dst.to_ne_bytes(),
            })
        }
    {
        dst = u32::from_ne_bytes(fixed.addr);
        nat |= NAT_DNAT;
    }
    // Opaque to the optimiser: it would otherwise derive `nat` from the
    // map lookup's pointer and OR pointers, which the verifier refuses.
    // SAFETY: a local.
    (dst, unsafe { core::ptr::read_volatile(&nat) })
}

/// The address to SNAT to, by Neutron's rules, for a connection leaving by
/// `egress` with DNAT flags `nat`; None: the source stays.
#[inline(always)]
pub fn source(
    pkt: &Pkt,
    ingress: &PortInfo,
    cfg: &RouterConfig,
    egress: u32,
    nat: u8,
) -> Option<u32> {
    if cfg.gw_ifindex == 0 {
        return None;
    }
    let gw_addr = u32::from_ne_bytes(cfg.gw_addr);
    if nat & NAT_DNAT != 0 {
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
    }
}

/// A random port of the configured range (network order).
#[inline(always)]
fn draw(cfg: &RouterConfig) -> u16 {
    let span = (cfg.port_max as u32).saturating_sub(cfg.port_min as u32) + 1;
    // SAFETY: helper without arguments.
    ((cfg.port_min as u32 + unsafe { bpf_get_prandom_u32() } % span) as u16).to_be()
}

/// For a packet that will probably open a connection (a SYN, or a UDP
/// datagram during a flood of new flows: see `conntrack::track`),
/// starts reading the slot where the reply key of that connection goes,
/// before the lookup of its own key, so that the two misses overlap: for
/// gateway SNAT its port is drawn now and kept for [`claim_port`]. A
/// guess (a floating IP of the source, or hairpin, is not looked for): a
/// wrong one costs a line read and nothing else.
#[inline(always)]
pub fn foresee(pkt: &Pkt, ingress: &PortInfo) {
    if pkt.proto == super::parse::PROTO_ICMP {
        return;
    }
    let Some(cfg) = maps::XR_CONFIG.get(0) else {
        return;
    };
    let rk = if ingress.role == ROLE_GATEWAY {
        let (dst, _) = destination(pkt);
        key(dst, pkt.src, pkt.dport, pkt.sport, pkt.proto)
    } else if cfg.gw_ifindex != 0 && cfg.enable_snat != 0 {
        let port = draw(cfg);
        table::foresee_port(port);
        key(
            pkt.dst,
            u32::from_ne_bytes(cfg.gw_addr),
            pkt.dport,
            port,
            pkt.proto,
        )
    } else {
        return;
    };
    table::foresee(&rk);
}

/// Claims a free source port for a connection to `dst` SNATed to `addr`
/// by inserting its reply entry `reply` into the connection table (unique:
/// two CPUs claiming one port at once cannot both have it): the reply's
/// slot and the port (network order). ICMP uses the echo id as both
/// ports. Else why not: no free port within `PORT_PROBES` tries, or no
/// room in the table for the ports tried.
#[inline(always)]
pub fn claim_port(
    cfg: &RouterConfig,
    pkt: &Pkt,
    dst: u32,
    addr: u32,
    reply: &CtEntry,
) -> Result<(Found, u16), Outcome> {
    let icmp = pkt.proto == super::parse::PROTO_ICMP;
    table::note_full(false);
    // Drawn ahead by `foresee` (if the range has not changed since).
    let first = table::take_foreseen()
        .filter(|p| (cfg.port_min..=cfg.port_max).contains(&u16::from_be(*p)));
    for i in 0..PORT_PROBES {
        let port = match first {
            Some(p) if i == 0 => p,
            _ => draw(cfg),
        };
        let rk = if icmp {
            key(dst, addr, port, port, pkt.proto)
        } else {
            key(dst, addr, pkt.dport, port, pkt.proto)
        };
        if table::lookup(&rk).is_some() {
            continue;
        }
        match table::insert(&rk, reply, None) {
            Ok(r) => {
                return inserted(Ok(r))
                    .map(|f| (f, port))
                    .map_err(|_| Outcome::DropCtFull);
            }
            Err(Refused::Full) => table::note_full(true),
            Err(Refused::Taken) => {}
        }
    }
    Err(if table::noted_full() {
        Outcome::DropCtFull
    } else {
        Outcome::DropNoPort
    })
}
