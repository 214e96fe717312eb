//! Map statics of the programs: one instance per router (each router loads
//! its own copy of the object), so no router ever sees another's state.
//!
//! Names are the contract with userspace (`router-user/src/ebpf/`).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use router_common::{
    config::{Ipv4, RateWindow, RouterConfig},
    conntrack::{CT_FLAGS, CtClaim, CtSlot, FragEntry, FragKey, ct_entries},
    counters::{CT_EVENT_COUNT, Counter, CtEvent, OUTCOME_COUNT, Outcome},
    monitor::{MON_RING_BYTES, MonitorCpu, MonitorCtl, MonitorEvent},
    port::{LocalAddr, LocalHint, Neigh, NeighKey, NeighUsed, PORT_SLOTS, PortInfo},
    route::{DST_CACHE_SLOTS, DstRoute, Route},
};

/// ifindex (u32) -> port (qr-/qg-) of this router.
#[btf_map]
pub static XR_PORTS: HashMap<u32, PortInfo, 64> = HashMap::new();

/// The same ports at their ifindex, for ifindexes below `PORT_SLOTS`
/// (role 0: no port); see [`port`].
#[btf_map]
pub static XR_PORT_SLOTS: Array<PortInfo, { PORT_SLOTS as usize }> = Array::new();

/// Addresses owned by the router, with their kind (`LOCAL_*`): traffic to a
/// port address or subnet broadcast goes to the kernel; none of them is a
/// valid source. Size: router-user/src/ebpf/load.rs `LOCAL_ENTRIES`.
#[btf_map]
pub static XR_LOCAL: HashMap<LocalAddr, u32, 20480> = HashMap::new();

/// Which addresses are surely not in `XR_LOCAL`, and which surely not in
/// `XR_FIP` (index 0; see [`LocalHint`]): an array lookup the verifier
/// inlines, in front of those hash lookups.
#[btf_map]
pub static XR_LOCAL_HINT: Array<LocalHint, 1> = Array::new();

/// IPv4 routes: connected subnets, extra routes (ECMP), default.
#[btf_map]
pub static XR_ROUTES: LpmTrie<[u8; 4], Route, 4096> = LpmTrie::new();

/// Per CPU, the route and next hop's MAC of recent destinations
/// ([`DstRoute`]): a packet from an internal port finds its route here
/// with an inlined array lookup instead of a trie and a hash lookup.
#[btf_map]
pub static XR_DST_CACHE: PerCpuArray<DstRoute, { DST_CACHE_SLOTS as usize }> = PerCpuArray::new();

/// Next hop -> MAC, mirrored from the kernel's neighbour table.
#[btf_map]
pub static XR_NEIGH: HashMap<NeighKey, Neigh, 8192> = HashMap::new();

/// Per CPU, the next hops XDP sent packets to (index 0; see [`NeighUsed`]).
#[btf_map]
pub static XR_NEIGH_USED: PerCpuArray<NeighUsed, 1> = PerCpuArray::new();

/// Floating IPs: fixed -> floating.
#[btf_map]
pub static XR_FIP: HashMap<Ipv4, Ipv4, 16384> = HashMap::new();

/// Floating IPs: floating -> fixed.
#[btf_map]
pub static XR_FIP_REV: HashMap<Ipv4, Ipv4, 16384> = HashMap::new();

/// The router's settings, index 0.
#[btf_map]
pub static XR_CONFIG: Array<RouterConfig, 1> = Array::new();

/// The generation of the maps above (index 0): bumped by the daemon after
/// every write to them that could change where a packet goes, so a route
/// cached in a connection entry (`CtEntry::route`) is known to be current.
/// 0: never written, nothing is cached.
#[btf_map]
pub static XR_GEN: Array<u32, 1> = Array::new();

/// The build of the object these maps were last loaded with (written by
/// the daemon, never read here): a daemon of another build, or with
/// another connection table size, loads the router again and takes its
/// programs over rather than adopting programs of another build.
#[btf_map]
pub static XR_BUILD: Array<u64, 1> = Array::new();

/// The connection table: a slot per direction of a connection (see
/// [`CtSlot`] and `pipeline::table`), embryonic and established ones
/// alike, then a line of its own ([`CtMeta`], [`ct_entries`]: how full
/// it is). Userspace sets its size
/// at load time (`ct_slots`; default 1M slots, 64 MiB, for 256k
/// connections) and reads and writes it through a shared mapping
/// ([`CT_FLAGS`]: mmapable).
#[btf_map]
pub static XR_CT: Array<CtSlot, { ct_entries(1024) as usize }, { CT_FLAGS as usize }> =
    Array::new();

/// Per CPU, the slot an insert into `XR_CT` is choosing (index 0; see
/// `pipeline::table`).
#[btf_map]
pub static XR_CT_CLAIM: PerCpuArray<CtClaim, 1> = PerCpuArray::new();

/// Per-CPU window of the new-connection budget (index 0).
#[btf_map]
pub static XR_RATE: PerCpuArray<RateWindow, 1> = PerCpuArray::new();

/// Per-CPU connection-table event counters, by [`CtEvent`].
#[btf_map]
pub static XR_CT_EVENTS: PerCpuArray<u64, CT_EVENT_COUNT> = PerCpuArray::new();

/// Fragmented datagrams in flight: the translation of their first fragment,
/// for the later ones.
#[btf_map]
pub static XR_FRAG: LruHashMap<FragKey, FragEntry, 8192> = LruHashMap::new();

/// Per-CPU packet and byte counters by outcome.
#[btf_map]
pub static XR_COUNTERS: PerCpuArray<Counter, OUTCOME_COUNT> = PerCpuArray::new();

/// `xrouter monitor`'s switch (index 0): all zero, nothing is reported.
#[btf_map]
pub static XR_MON_CTL: Array<MonitorCtl, 1> = Array::new();

/// Events for `xrouter monitor` (see [`crate::monitor`]).
#[btf_map]
pub static XR_MON_RING: RingBuf<MonitorEvent, { MON_RING_BYTES as usize }> = RingBuf::new();

/// Per-CPU sampling state and lost events of the monitor (index 0).
#[btf_map]
pub static XR_MON_CPU: PerCpuArray<MonitorCpu, 1> = PerCpuArray::new();

/// The router's port on device `ifindex`: from the array when the
/// ifindex is small (inlined by the verifier, no hash), else the hash.
#[inline(always)]
pub fn port(ifindex: u32) -> Option<PortInfo> {
    if ifindex < PORT_SLOTS {
        let p = XR_PORT_SLOTS.get(ifindex).copied()?;
        return if p.role != 0 { Some(p) } else { None };
    }
    // SAFETY: plain data, copied out.
    unsafe { XR_PORTS.get(&ifindex) }.copied()
}

/// Whether `addr` (raw network order) is surely none of the router's
/// addresses (see [`LocalHint`]); false: look it up in `XR_LOCAL`.
#[inline(always)]
pub fn surely_not_local(addr: u32) -> bool {
    match XR_LOCAL_HINT.get(0) {
        Some(h) => h.surely_not_local(addr),
        None => false,
    }
}

/// Whether `addr` (raw network order) surely has no floating IP (see
/// [`LocalHint`]); false: look it up in `XR_FIP`.
#[inline(always)]
pub fn surely_no_floating(addr: u32) -> bool {
    match XR_LOCAL_HINT.get(0) {
        Some(h) => h.surely_no_floating(addr),
        None => false,
    }
}

/// Notes that XDP sent a packet to next hop `nexthop` on `ifindex`, or TC
/// found it failed (see [`NeighUsed`]).
#[inline(always)]
pub fn neigh_used(ifindex: u32, nexthop: u32) {
    if let Some(u) = XR_NEIGH_USED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            // Through memory: the verifier then bounds the word's index by
            // itself, without tracking the next hop back through every
            // path that chose it (which exceeds its budget).
            let scratch = core::ptr::addr_of_mut!((*u).scratch);
            scratch.write_volatile(NeighKey::used_hash(ifindex, nexthop) as u64);
            let (w, b) = NeighKey::used_bit(scratch.read_volatile());
            (*u).words[w] |= b;
        }
    }
}

/// The current generation of the maps (see [`XR_GEN`]).
#[inline(always)]
pub fn generation() -> u32 {
    match XR_GEN.get_ptr(0) {
        // SAFETY: a map value; volatile so that it is read before the
        // lookups it vouches for.
        Some(g) => unsafe { core::ptr::read_volatile(g) },
        None => 0,
    }
}

#[inline(always)]
pub fn event(ev: CtEvent) {
    if let Some(c) = XR_CT_EVENTS.get_ptr_mut(ev as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

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
