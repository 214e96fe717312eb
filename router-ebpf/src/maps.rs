//! Map statics of the programs: one instance per router (each router loads
//! its own copy of the object), so no router ever sees another's state.
//!
//! Names are the contract with userspace (`router-user/src/ebpf/`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use router_common::{
    config::{Ipv4, RouterConfig},
    conntrack::{CtEntry, CtKey, FragEntry, FragKey},
    counters::{Counter, OUTCOME_COUNT, Outcome},
    port::{LocalAddr, Neigh, NeighKey, PortInfo},
    route::Route,
};

/// ifindex (u32) -> port (qr-/qg-) of this router.
#[btf_map]
pub static XR_PORTS: HashMap<u32, PortInfo, 64> = HashMap::new();

/// Addresses owned by the router itself: traffic to them goes to the kernel.
#[btf_map]
pub static XR_LOCAL: HashMap<LocalAddr, u32, 256> = HashMap::new();

/// IPv4 routes: connected subnets, extra routes (ECMP), default.
#[btf_map]
pub static XR_ROUTES: LpmTrie<[u8; 4], Route, 4096> = LpmTrie::new();

/// Next hop -> MAC, mirrored from the kernel's neighbour table.
#[btf_map]
pub static XR_NEIGH: HashMap<NeighKey, Neigh, 8192> = HashMap::new();

/// Floating IPs: fixed -> floating.
#[btf_map]
pub static XR_FIP: HashMap<Ipv4, Ipv4, 16384> = HashMap::new();

/// Floating IPs: floating -> fixed.
#[btf_map]
pub static XR_FIP_REV: HashMap<Ipv4, Ipv4, 16384> = HashMap::new();

/// The router's settings, index 0.
#[btf_map]
pub static XR_CONFIG: Array<RouterConfig, 1> = Array::new();

/// Connection table, an entry per direction. Userspace sets the real size
/// at load time (default 2 x 1M connections).
#[btf_map]
pub static XR_CT: LruHashMap<CtKey, CtEntry, 65536> = LruHashMap::new();

/// Fragmented datagrams in flight: the translation of their first fragment,
/// for the later ones.
#[btf_map]
pub static XR_FRAG: LruHashMap<FragKey, FragEntry, 8192> = LruHashMap::new();

/// Per-CPU packet and byte counters by outcome.
#[btf_map]
pub static XR_COUNTERS: PerCpuArray<Counter, OUTCOME_COUNT> = PerCpuArray::new();

#[inline(always)]
pub fn count(outcome: Outcome, bytes: u64) {
    if let Some(c) = XR_COUNTERS.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
