//! route: longest-prefix match in the router's routes trie (ECMP by flow
//! hash), the egress port, and the next hop's MAC from the neighbours map.

use aya_ebpf::maps::lpm_trie::Key;
use router_common::{
    counters::Outcome,
    port::{Neigh, NeighKey, PortInfo},
    route::{self, DstRoute, MAX_NEXTHOPS},
};

use super::{Verdict, parse::Pkt};
use crate::maps;

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
    /// The next hop's MAC, when the connection's entry had it cached (or
    /// it was looked up for the entry); None: not looked up yet.
    pub nexthop_mac: Option<[u8; 6]>,
}

impl Flow {
    /// The flow of a packet whose addresses and ports become these, sent
    /// by way of `r` (an [`egress`] result).
    #[inline(always)]
    pub fn via(src: u32, dst: u32, sport: u16, dport: u16, r: (u32, u32, PortInfo)) -> Flow {
        Flow {
            src,
            dst,
            sport,
            dport,
            egress: r.0,
            nexthop: r.1,
            egress_mac: r.2.mac,
            mtu: r.2.mtu,
            nexthop_mac: None,
        }
    }
}

#[inline(always)]
fn flow_hash(pkt: &Pkt) -> u32 {
    route::flow_hash(pkt.src, pkt.dst, pkt.sport, pkt.dport)
}

/// The egress port of `dst`. No route: the kernel answers (it has no route
/// either, or the maps are behind it; either way it must not forward).
#[inline(always)]
pub fn egress(pkt: &Pkt, dst: u32) -> Result<Egress, Verdict> {
    egress_paths(pkt, dst).map(|(r, _)| r)
}

/// [`egress`], and how many next hops the route has.
#[inline(always)]
fn egress_paths(pkt: &Pkt, dst: u32) -> Result<(Egress, usize), Verdict> {
    let Some((egress, nh, paths)) = lookup(dst, flow_hash(pkt)) else {
        return Err(Verdict::Answer(Outcome::KernelNoRoute));
    };
    let Some(port) = maps::port(egress) else {
        return Err(Verdict::Answer(Outcome::KernelNoRoute));
    };
    Ok(((egress, nh, port), paths))
}

/// A result of [`egress`]: egress ifindex, next hop, the egress port.
pub type Egress = (u32, u32, PortInfo);

/// [`egress`] of a packet's own destination, through this CPU's
/// destination cache (`XR_DST_CACHE`) under generation `g`, with the next
/// hop's MAC when the kernel has resolved it. A miss looks both up and
/// caches them when the route has one next hop. A next hop not resolved is
/// cached as such (a zero MAC): resolving it changes `XR_NEIGH`, which
/// bumps the generation.
#[inline(always)]
pub fn egress_cached(pkt: &Pkt, g: u32) -> Result<(Egress, Option<[u8; 6]>), Verdict> {
    let dst = pkt.dst;
    let key = DstRoute::stamp_key(g, dst);
    let slot = maps::XR_DST_CACHE.get_ptr_mut(DstRoute::slot(dst));
    if let Some(s) = slot {
        // SAFETY: this CPU's slot; nothing else writes it while this runs.
        let s = unsafe { &*s };
        if s.dst == dst
            && let Some((egress, nh, mac)) = s.route.get(key)
            && let Some(port) = maps::port(egress)
        {
            let mac = if mac == [0; 6] { None } else { Some(mac) };
            return Ok(((egress, nh, port), mac));
        }
    }
    let ((egress, nh, port), paths) = egress_paths(pkt, dst)?;
    if paths != 1 || key == 0 {
        return Ok(((egress, nh, port), None));
    }
    let mac = neighbour(egress, nh);
    if let Some(s) = slot {
        // SAFETY: as above.
        let s = unsafe { &mut *s };
        if s.dst != dst {
            s.dst = dst;
        }
        s.route.set(key, egress, nh, mac.unwrap_or([0; 6]));
    }
    Ok(((egress, nh, port), mac))
}

/// Where a packet goes once its addresses are `src` and `dst` (ports
/// unchanged).
#[inline(always)]
pub fn translated(pkt: &Pkt, src: u32, dst: u32) -> Result<Flow, Verdict> {
    let r = egress(pkt, dst)?;
    Ok(Flow::via(src, dst, pkt.sport, pkt.dport, r))
}

/// Egress device and next hop (raw network order) for `dst`, and how many
/// next hops its route has.
#[inline(always)]
fn lookup(dst: u32, hash: u32) -> Option<(u32, u32, usize)> {
    let key = Key::new(32, dst.to_ne_bytes());
    let r = maps::XR_ROUTES.get(&key)?;
    let n = r.count as usize;
    if n == 0 || n > MAX_NEXTHOPS {
        return None;
    }
    // Constant indexes: the verifier cannot bound a modulo by itself.
    let (gw, ifindex) = match (hash as usize) % n {
        0 => (r.gateways[0], r.ifindexes[0]),
        1 => (r.gateways[1], r.ifindexes[1]),
        2 => (r.gateways[2], r.ifindexes[2]),
        _ => (r.gateways[3], r.ifindexes[3]),
    };
    let gw = u32::from_ne_bytes(gw);
    let nh = if gw == 0 { dst } else { gw };
    Some((ifindex, nh, n))
}

/// What the daemon mirrored of a next hop from the kernel's table.
#[inline(always)]
fn next_hop(ifindex: u32, nexthop: u32) -> Option<&'static Neigh> {
    let key = NeighKey {
        ifindex,
        addr: nexthop.to_ne_bytes(),
    };
    // SAFETY: plain data.
    unsafe { maps::XR_NEIGH.get(&key) }
}

/// The MAC of a next hop, if the kernel has resolved it.
#[inline(always)]
pub fn neighbour(ifindex: u32, nexthop: u32) -> Option<[u8; 6]> {
    next_hop(ifindex, nexthop).and_then(Neigh::mac)
}

/// Whether the kernel failed to resolve a next hop (it does not answer
/// ARP).
#[inline(always)]
pub fn unresolvable(ifindex: u32, nexthop: u32) -> bool {
    next_hop(ifindex, nexthop).is_some_and(Neigh::failed)
}
