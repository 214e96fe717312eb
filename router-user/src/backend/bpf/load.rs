//! Loading a router's copy of the object, with its maps pinned (and reused
//! from an earlier run when they still fit).

use std::{collections::BTreeMap, mem::size_of, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    maps::{MapInfo, MapType},
};
use router_common::{
    config::{Ipv4, RateWindow, RouterConfig},
    conntrack::{CT_FLAGS, CtClaim, CtSlot, FragEntry, FragKey, ct_entries, ct_slots},
    counters::Counter,
    monitor::{MON_RING_BYTES, MonitorCpu, MonitorCtl},
    port::{LocalAddr, LocalHint, Neigh, NeighKey, NeighUsed, PortInfo},
    route::{DstRoute, Route},
};

use super::{
    BpfRouter, DEFAULT_SNAT_PORTS, LINKS_DIR, MAP_NAMES, PROG_PASS, PROG_TC, PROG_TC_OUT, PROG_XDP,
    XR_BUILD, XR_CONFIG, XR_COUNTERS, XR_CT, XR_CT_CLAIM, XR_CT_EVENTS, XR_CT_NEW_OLD,
    XR_DST_CACHE, XR_FIP, XR_FIP_REV, XR_FRAG, XR_GEN, XR_LOCAL, XR_LOCAL_HINT, XR_MON_CPU,
    XR_MON_CTL, XR_MON_RING, XR_NEIGH, XR_NEIGH_USED, XR_PORT_SLOTS, XR_PORTS, XR_RATE, XR_ROUTES,
    carry, remove_file_if_present, router_dir, table::CtTable,
};

/// Entries of `XR_LOCAL` (router-ebpf/src/maps.rs): port addresses, subnet
/// broadcasts and every floating IP.
const LOCAL_ENTRIES: u32 = 20480;

/// The global of the programs holding the connection table's size less
/// one (router-ebpf's `pipeline/table.rs`).
pub const CT_MASK_GLOBAL: &str = "XR_CT_MASK";

/// This build's object, as a number (FNV-1a of its bytes): what `XR_BUILD`
/// holds once a router's maps were loaded with it.
pub fn build_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        crate::backend::bpf::object::OBJECT
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            })
    })
}

/// Whether router `router_id`'s pinned maps are this build's, as
/// [`BpfRouter::load`] would leave them for `ct_connections`: every map
/// pinned and fitting (a connection table of another size does not), and
/// `XR_BUILD` naming this build. If not, the router is loaded again (its
/// connections carried over, [`carry`]) and its programs taken over: a
/// daemon of a new build, or with a new `conntrack_size`, does not adopt
/// what an earlier one left running.
pub fn pins_fit(pin_dir: &Path, router_id: &str, ct_connections: u32) -> bool {
    let Ok(dir) = router_dir(pin_dir, router_id) else {
        return false;
    };
    let slots = ct_slots(ct_connections);
    let fits = MAP_NAMES.iter().all(|name| {
        MapInfo::from_pin(dir.join(name)).is_ok_and(|i| misfit(name, &i, slots).is_none())
    });
    fits && !dir.join(XR_CT_NEW_OLD).exists() && pinned_build(&dir) == Some(build_id())
}

/// The build `XR_BUILD` under `dir` names (None: no such map, or unreadable).
fn pinned_build(dir: &Path) -> Option<u64> {
    let data = aya::maps::MapData::from_pin(dir.join(XR_BUILD)).ok()?;
    let map: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).ok()?;
    map.get(&0, 0).ok()
}

/// What a pinned map must look like to be reused by this build: the key and
/// value types userspace reads it with (router-common), and the map type.
struct Shape {
    kind: MapType,
    key: usize,
    value: usize,
}

fn shape(name: &str) -> Shape {
    let s = |kind, key, value| Shape { kind, key, value };
    match name {
        XR_PORTS => s(MapType::Hash, size_of::<u32>(), size_of::<PortInfo>()),
        XR_PORT_SLOTS => s(MapType::Array, 4, size_of::<PortInfo>()),
        XR_LOCAL => s(MapType::Hash, size_of::<LocalAddr>(), size_of::<u32>()),
        XR_LOCAL_HINT => s(MapType::Array, 4, size_of::<LocalHint>()),
        // LPM key: u32 prefix length + address.
        XR_ROUTES => s(MapType::LpmTrie, 4 + 4, size_of::<Route>()),
        XR_NEIGH => s(MapType::Hash, size_of::<NeighKey>(), size_of::<Neigh>()),
        XR_DST_CACHE => s(MapType::PerCpuArray, 4, size_of::<DstRoute>()),
        XR_NEIGH_USED => s(MapType::PerCpuArray, 4, size_of::<NeighUsed>()),
        XR_FIP | XR_FIP_REV => s(MapType::Hash, size_of::<Ipv4>(), size_of::<Ipv4>()),
        XR_CONFIG => s(MapType::Array, 4, size_of::<RouterConfig>()),
        XR_GEN => s(MapType::Array, 4, size_of::<u32>()),
        XR_BUILD => s(MapType::Array, 4, size_of::<u64>()),
        XR_CT => s(MapType::Array, 4, size_of::<CtSlot>()),
        XR_CT_CLAIM => s(MapType::PerCpuArray, 4, size_of::<CtClaim>()),
        XR_COUNTERS => s(MapType::PerCpuArray, 4, size_of::<Counter>()),
        XR_RATE => s(MapType::PerCpuArray, 4, size_of::<RateWindow>()),
        XR_CT_EVENTS => s(MapType::PerCpuArray, 4, size_of::<u64>()),
        XR_MON_CTL => s(MapType::Array, 4, size_of::<MonitorCtl>()),
        XR_MON_CPU => s(MapType::PerCpuArray, 4, size_of::<MonitorCpu>()),
        // A ring has neither key nor value; its size is its max_entries.
        XR_MON_RING => s(MapType::RingBuf, 0, 0),
        XR_FRAG => s(
            MapType::LruHash,
            size_of::<FragKey>(),
            size_of::<FragEntry>(),
        ),
        _ => unreachable!("unknown map {name}"),
    }
}

/// Maps whose contents matter for no longer than a packet (the programs'
/// scratch) or are rebuilt at once (a cache; the address hint, derived
/// from the other maps and vouching for nothing while new), or hold the
/// fragments of datagrams in flight (lost like a fragment lost on the
/// way): one of an earlier layout is replaced without a warning.
const SCRATCH_MAPS: [&str; 4] = [XR_CT_CLAIM, XR_DST_CACHE, XR_LOCAL_HINT, XR_FRAG];

/// Why a pinned map cannot be reused, or None when it can.
fn misfit(name: &str, info: &MapInfo, ct_slots: u32) -> Option<String> {
    // Sizes that matter: the connection table's (configured) and the local
    // addresses' (which earlier builds made smaller).
    let entries = match name {
        XR_CT => Some(ct_entries(ct_slots)),
        XR_LOCAL => Some(LOCAL_ENTRIES),
        XR_MON_RING => Some(MON_RING_BYTES),
        _ => None,
    };
    let want = shape(name);
    match info.map_type() {
        Ok(t) if t == want.kind => {}
        Ok(t) => return Some(format!("type {t:?}, want {:?}", want.kind)),
        Err(e) => return Some(format!("type: {e}")),
    }
    if info.key_size() as usize != want.key || info.value_size() as usize != want.value {
        return Some(format!(
            "key/value size {}/{}, want {}/{}",
            info.key_size(),
            info.value_size(),
            want.key,
            want.value
        ));
    }
    if let Some(want) = entries
        && info.max_entries() != want
    {
        return Some(format!("{} entries, want {want}", info.max_entries()));
    }
    // XR_CT must be mmapable: the daemon reads it through a mapping.
    if name == XR_CT && info.map_flags() != CT_FLAGS {
        return Some(format!("flags {:#x}, want {CT_FLAGS:#x}", info.map_flags()));
    }
    None
}

impl BpfRouter {
    /// Records in `XR_BUILD` that this build's programs are in place
    /// (after they were attached: [`pins_fit`] is true from then on).
    pub fn record_build(&mut self) -> Result<()> {
        let build = self
            .ebpf
            .map_mut(XR_BUILD)
            .with_context(|| format!("the BPF object has no map {XR_BUILD}"))?;
        aya::maps::Array::<_, u64>::try_from(build)?
            .set(0, build_id(), 0)
            .with_context(|| format!("router {}: writing {XR_BUILD}", self.router_id))
    }

    /// Loads the embedded object ([`crate::backend::bpf::object::OBJECT`]) for router
    /// `router_id`: the connection table sized for `ct_connections`
    /// connections ([`ct_slots`]: four slots each), every map pinned as
    /// `<pin_dir>/<router_id>/<MAP_NAME>`, and the TC programs loaded
    /// (verified) but not attached (the XDP ones are loaded by
    /// [`Self::attach`] when asked for XDP).
    ///
    /// Maps already pinned there by an earlier run are reused, contents and
    /// all, when their type and key/value sizes still match this build (and
    /// for the connection tables and `XR_LOCAL`, their size); a pin that
    /// does not fit is removed and the map created afresh (logged). A
    /// connection table that does not fit (another size, or an earlier
    /// build's shorter entries) has its entries carried into the new one
    /// ([`carry`]). `max_entries` of the other maps is not
    /// compared: they are rewritten by [`Self::sync`] anyway.
    pub fn load(router_id: &str, pin_dir: &Path, ct_connections: u32) -> Result<BpfRouter> {
        let dir = router_dir(pin_dir, router_id)?;
        if ct_connections == 0 {
            bail!("router {router_id}: a connection table of 0 connections");
        }
        let slots = ct_slots(ct_connections);
        std::fs::create_dir_all(dir.join(LINKS_DIR))
            .with_context(|| format!("creating {} (is bpffs mounted?)", dir.display()))?;

        let mut reused = Vec::new();
        let mut carried = Vec::new();
        // An earlier build's embryonic table: its connections are carried,
        // its pin goes.
        let old_new = dir.join(XR_CT_NEW_OLD);
        if old_new.exists() {
            carried.extend(
                MapInfo::from_pin(&old_new)
                    .ok()
                    .and_then(|info| carry::open(XR_CT_NEW_OLD, &old_new, &info)),
            );
            remove_file_if_present(&old_new)
                .with_context(|| format!("removing {}", old_new.display()))?;
        }
        let mut paths = BTreeMap::new();
        for name in MAP_NAMES {
            let path = dir.join(name);
            if path.exists() {
                match MapInfo::from_pin(&path) {
                    Ok(info) => match misfit(name, &info, slots) {
                        None => reused.push(name.to_string()),
                        Some(why) => {
                            let old = (name == XR_CT)
                                .then(|| carry::open(name, &path, &info))
                                .flatten();
                            if let Some(carry::OldTable::Slots(t)) = &old
                                && t.current()
                            {
                                // conntrack_size changed: as asked, not a fault.
                                tracing::info!(
                                    "router {router_id}: connection table resized ({} to \
                                     {slots} slots); carrying its connections over",
                                    t.slots()
                                );
                            } else if let Some(carry::OldTable::Slots(_)) = &old {
                                // An earlier build's layout: not a fault either.
                                tracing::info!(
                                    "router {router_id}: connection table of an earlier \
                                     build's layout replaced; carrying its connections over"
                                );
                            } else if SCRATCH_MAPS.contains(&name) {
                                // Nothing in it outlives a packet or a tick.
                                tracing::info!(
                                    "router {router_id}: pinned map {name} is of an earlier \
                                     build's layout ({why}); a new one"
                                );
                            } else {
                                tracing::warn!(
                                    "router {router_id}: pinned map {name} does not fit \
                                     ({why}); creating a new one{}",
                                    if old.is_some() {
                                        ", its connections carried over"
                                    } else {
                                        ""
                                    }
                                );
                            }
                            carried.extend(old);
                            remove_file_if_present(&path)
                                .with_context(|| format!("removing {}", path.display()))?;
                        }
                    },
                    Err(e) => {
                        tracing::warn!(
                            "router {router_id}: {} is not a usable map ({e}); replacing it",
                            path.display()
                        );
                        remove_file_if_present(&path)
                            .with_context(|| format!("removing {}", path.display()))?;
                    }
                }
            }
            paths.insert(name, path);
        }

        let mut loader = EbpfLoader::new();
        let mask = slots - 1;
        loader.map_max_entries(XR_CT, ct_entries(slots));
        loader.override_global(CT_MASK_GLOBAL, &mask, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(crate::backend::bpf::object::OBJECT)
            .with_context(|| format!("router {router_id}: loading the BPF object"))?;
        for name in MAP_NAMES {
            if ebpf.map(name).is_none() {
                bail!("the BPF object has no map {name}");
            }
        }
        // The XDP programs are loaded when a port is first put on XDP
        // (`attach`): a router on TC never needs them, and `xr_xdp` is half
        // of what the verifier spends on a router.
        for name in [PROG_XDP, PROG_PASS] {
            if ebpf.program(name).is_none() {
                bail!("the BPF object has no program {name}");
            }
        }
        for name in [PROG_TC, PROG_TC_OUT] {
            super::object::load_tc(&mut ebpf, name)
                .with_context(|| format!("router {router_id}"))?;
        }
        if !reused.is_empty() {
            tracing::info!(
                "router {router_id}: reusing pinned maps {}",
                reused.join(",")
            );
        }
        if !carried.is_empty() {
            let new = match ebpf.map(XR_CT) {
                Some(aya::maps::Map::Array(d)) => CtTable::of(d)?,
                _ => bail!("the BPF object has no connection table {XR_CT}"),
            };
            for old in &carried {
                let (copied, lost) = carry::copy(old, &new)
                    .with_context(|| format!("router {router_id}: carrying {} over", old.name()))?;
                tracing::info!(
                    "router {router_id}: {copied} entries of the old {} carried over",
                    old.name()
                );
                if lost > 0 {
                    tracing::warn!(
                        "router {router_id}: {lost} connections of the old {} did not fit in \
                         the new table (established ones and the most recently used went \
                         first); they are lost",
                        old.name()
                    );
                }
            }
        }
        #[cfg(feature = "bpf-log")]
        let log = super::log::Forwarder::start(router_id, &mut ebpf);
        Ok(BpfRouter {
            router_id: router_id.to_string(),
            dir,
            ebpf,
            links: BTreeMap::new(),
            reused,
            snat_ports: DEFAULT_SNAT_PORTS,
            tc_only: Default::default(),
            #[cfg(feature = "bpf-log")]
            _log: log,
        })
    }
}
