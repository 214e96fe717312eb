//! route: longest-prefix match in the router's routes trie (ECMP by flow
//! hash), and the next hop's MAC from the neighbours map.

use aya_ebpf::maps::lpm_trie::Key;
use router_common::{port::NeighKey, route::MAX_NEXTHOPS};

use crate::maps;

/// Egress device and next hop (raw network order) for `dst`.
#[inline(always)]
pub fn lookup(dst: u32, hash: u32) -> Option<(u32, u32)> {
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
    Some((ifindex, nh))
}

/// The MAC of a next hop, if the kernel has resolved it.
#[inline(always)]
pub fn neighbour(ifindex: u32, nexthop: u32) -> Option<[u8; 6]> {
    let key = NeighKey {
        ifindex,
        addr: nexthop.to_ne_bytes(),
    };
    // SAFETY: plain data.
    unsafe { maps::XR_NEIGH.get(&key) }.map(|n| n.mac)
}
