//! Writing a router's map contents (`desired::bpf`) into its maps, devices
//! resolved to ifindexes: every map is read first and only differing
//! entries are written or deleted.

use std::{collections::HashMap, hash::Hash};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, Pod,
    maps::{Array, Map, MapError, lpm_trie::Key, lpm_trie::LpmTrie},
};
use router_common::{
    config::{Ipv4, RouterConfig},
    port::{LocalAddr, LocalHint, PORT_SLOTS, PortInfo},
    route::{MAX_NEXTHOPS, Route},
};

use super::{
    BpfRouter, XR_CONFIG, XR_FIP, XR_FIP_REV, XR_GEN, XR_LOCAL, XR_LOCAL_HINT, XR_PORT_SLOTS,
    XR_PORTS, XR_ROUTES,
};
use crate::{
    config::node::NodeConfig,
    desired::bpf::{Maps, maps},
    model::Router,
};

/// What the maps of a router should hold (all addresses network order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// `XR_PORTS`: ifindex -> port.
    pub ports: HashMap<u32, PortInfo>,
    /// `XR_LOCAL`: every IPv4 address of every port, every subnet
    /// broadcast of them, every floating IP -> its kind (`LOCAL_*`).
    pub local: HashMap<LocalAddr, u32>,
    /// `XR_ROUTES`: (prefix length, network address) -> next hops.
    pub routes: HashMap<(u32, [u8; 4]), Route>,
    /// `XR_FIP`: fixed -> floating.
    pub fip: HashMap<Ipv4, Ipv4>,
    /// `XR_FIP_REV`: floating -> fixed.
    pub fip_rev: HashMap<Ipv4, Ipv4>,
    /// `XR_CONFIG[0]`.
    pub config: RouterConfig,
}

/// The maps' contents with devices resolved: `ifindex` maps device names
/// inside the router namespace to their ifindex. A port whose device is
/// missing is left out, and so are the next hops through it (a route left
/// without one goes too).
pub fn resolve(m: &Maps, ifindex: &HashMap<String, u32>) -> Desired {
    let mut d = Desired {
        local: m.local.clone(),
        fip: m.fip.clone(),
        fip_rev: m.fip_rev.clone(),
        config: m.config,
        ..Default::default()
    };
    for (dev, info) in &m.ports {
        match ifindex.get(dev) {
            Some(&i) => {
                d.ports.insert(i, *info);
            }
            None => tracing::debug!("no ifindex for {dev}; port left out"),
        }
    }
    for (key, hops) in &m.routes {
        if d.routes.contains_key(key) {
            continue;
        }
        let mut r = Route::default();
        for (gw, dev) in hops {
            let Some(&i) = ifindex.get(dev) else { continue };
            let n = r.count as usize;
            if n == MAX_NEXTHOPS {
                break;
            }
            r.gateways[n] = *gw;
            r.ifindexes[n] = i;
            r.count += 1;
        }
        if r.count > 0 {
            d.routes.insert(*key, r);
        }
    }
    d.config.gw_ifindex = m
        .gw_dev
        .as_ref()
        .and_then(|g| ifindex.get(g).copied())
        .unwrap_or(0);
    d
}

/// A router's map contents for the devices of `ifindex` (see
/// [`crate::desired::bpf::maps`] and [`resolve`]), on XDP if `node` says
/// `xdp`.
pub fn desired(
    router: &Router,
    node: &NodeConfig,
    ifindex: &HashMap<String, u32>,
    snat_ports: (u16, u16),
) -> Desired {
    let xdp = node.dataplane == crate::config::node::Dataplane::Xdp;
    resolve(&maps(router, node, snat_ports, xdp), ifindex)
}

/// Whether a map error is "no such entry" (a delete racing another).
pub(super) fn is_enoent(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// Makes a hash map hold exactly `want`; returns the entries changed.
pub(super) fn sync_hash<K, V>(map: &mut Map, want: &HashMap<K, V>) -> Result<usize>
where
    K: Pod + Eq + Hash,
    V: Pod + PartialEq,
{
    let mut m: aya::maps::HashMap<_, K, V> = aya::maps::HashMap::try_from(map)?;
    let have: HashMap<K, V> = m.iter().collect::<Result<_, _>>()?;
    let mut n = 0;
    // Deletes first: they make room for the inserts.
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        match m.remove(k) {
            Ok(()) => n += 1,
            Err(e) if is_enoent(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            m.insert(k, v, 0)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Makes `XR_PORT_SLOTS` hold the ports of `want` whose ifindex is below
/// `PORT_SLOTS`, at their ifindex, and empties the slots of ports gone
/// (those `XR_PORTS` still holds: it is synced after this).
fn sync_slots(ebpf: &mut Ebpf, want: &HashMap<u32, PortInfo>) -> Result<usize> {
    let had: Vec<u32> = {
        let m: aya::maps::HashMap<_, u32, PortInfo> =
            aya::maps::HashMap::try_from(map_mut(ebpf, XR_PORTS)?)?;
        m.keys().collect::<Result<_, _>>()?
    };
    let mut slots: Array<_, PortInfo> = Array::try_from(map_mut(ebpf, XR_PORT_SLOTS)?)?;
    let mut n = 0;
    let gone = had.iter().filter(|i| !want.contains_key(i));
    let empty = PortInfo::default();
    for (&i, v) in want.iter().chain(gone.map(|i| (i, &empty))) {
        if i < PORT_SLOTS && slots.get(&i, 0)? != *v {
            slots.set(i, *v, 0)?;
            n += 1;
        }
    }
    Ok(n)
}

fn sync_routes(map: &mut Map, want: &HashMap<(u32, [u8; 4]), Route>) -> Result<usize> {
    let mut m: LpmTrie<_, [u8; 4], Route> = LpmTrie::try_from(map)?;
    let mut have: HashMap<(u32, [u8; 4]), Route> = HashMap::new();
    for kv in m.iter() {
        let (k, v) = kv?;
        have.insert((k.prefix_len(), k.data()), v);
    }
    let mut n = 0;
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        match m.remove(&Key::new(k.0, k.1)) {
            Ok(()) => n += 1,
            Err(e) if is_enoent(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            m.insert(&Key::new(k.0, k.1), v, 0)?;
            n += 1;
        }
    }
    Ok(n)
}

/// What a hash map holds.
fn read_hash<K, V>(map: &Map) -> Result<HashMap<K, V>>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let m: aya::maps::HashMap<_, K, V> = aya::maps::HashMap::try_from(map)?;
    Ok(m.iter().collect::<Result<_, _>>()?)
}

/// What a router's maps hold, read through their pins (read-only: for the
/// plan, beside a running daemon or none).
pub fn read_pinned(pin_dir: &std::path::Path, router_id: &str) -> Result<Desired> {
    use aya::maps::MapData;
    let open = |name: &str| -> Result<MapData> {
        let p = pin_dir.join(router_id).join(name);
        MapData::from_pin(&p).with_context(|| format!("opening pinned map {}", p.display()))
    };
    let mut d = Desired {
        ports: read_hash(&Map::HashMap(open(XR_PORTS)?))?,
        local: read_hash(&Map::HashMap(open(XR_LOCAL)?))?,
        fip: read_hash(&Map::HashMap(open(XR_FIP)?))?,
        fip_rev: read_hash(&Map::HashMap(open(XR_FIP_REV)?))?,
        ..Default::default()
    };
    let routes = Map::LpmTrie(open(XR_ROUTES)?);
    let m: LpmTrie<_, [u8; 4], Route> = LpmTrie::try_from(&routes)?;
    for kv in m.iter() {
        let (k, v) = kv?;
        d.routes.insert((k.prefix_len(), k.data()), v);
    }
    let cfg = Map::Array(open(XR_CONFIG)?);
    let a: Array<_, RouterConfig> = Array::try_from(&cfg)?;
    d.config = a.get(&0, 0)?;
    Ok(d)
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("the BPF object has no map {name}"))
}

/// Makes the maps of a loaded object hold `d` (stale entries deleted);
/// returns the entries changed. [`BpfRouter::write`] for a router's object;
/// also what the packet tests and the microbenchmark seed their own
/// instances with, so they run on the maps a router gets.
///
/// When anything was written (or a write failed part way), the maps'
/// generation is bumped after the last write ([`bump_generation`]).
pub fn write_maps(ebpf: &mut Ebpf, d: &Desired) -> Result<usize> {
    let mut n = 0;
    let res = write_all(ebpf, d, &mut n);
    if n != 0 || res.is_err() {
        let bumped = bump_generation(map_mut(ebpf, XR_GEN)?).context(XR_GEN);
        res?;
        bumped?;
    }
    Ok(n)
}

/// The writes of [`write_maps`], counted into `n` as they are made.
fn write_all(ebpf: &mut Ebpf, d: &Desired, n: &mut usize) -> Result<()> {
    // Config and ports first: a route to a port the program does not
    // know yet only sends packets to the kernel.
    {
        let mut cfg: Array<_, RouterConfig> = Array::try_from(map_mut(ebpf, XR_CONFIG)?)?;
        if cfg.get(&0, 0)? != d.config {
            cfg.set(0, d.config, 0)?;
            *n += 1;
        }
    }
    *n += sync_slots(ebpf, &d.ports).context(XR_PORT_SLOTS)?;
    *n += sync_hash(map_mut(ebpf, XR_PORTS)?, &d.ports).context(XR_PORTS)?;
    // The hint stops vouching for the addresses to come before they come,
    // and vouches for those gone once they are gone (`LocalHint`). Derived
    // from the maps, it is not counted as a change of its own.
    let hint = hint_of(d);
    let before = read_hint(ebpf)?;
    write_hint(ebpf, &before.and(&hint)).context(XR_LOCAL_HINT)?;
    *n += sync_hash(map_mut(ebpf, XR_LOCAL)?, &d.local).context(XR_LOCAL)?;
    *n += sync_hash(map_mut(ebpf, XR_FIP)?, &d.fip).context(XR_FIP)?;
    *n += sync_hash(map_mut(ebpf, XR_FIP_REV)?, &d.fip_rev).context(XR_FIP_REV)?;
    write_hint(ebpf, &hint).context(XR_LOCAL_HINT)?;
    *n += sync_routes(map_mut(ebpf, XR_ROUTES)?, &d.routes).context(XR_ROUTES)?;
    Ok(())
}

/// `XR_LOCAL_HINT[0]` for `d`: from `XR_LOCAL` (which holds the floating
/// IPs, `XR_FIP_REV`'s keys) and `XR_FIP`'s fixed addresses.
pub fn hint_of(d: &Desired) -> LocalHint {
    LocalHint::of(d.local.keys().map(|a| a.addr), d.fip.keys().map(|a| a.addr))
}

fn read_hint(ebpf: &mut Ebpf) -> Result<LocalHint> {
    let a: Array<_, LocalHint> = Array::try_from(map_mut(ebpf, XR_LOCAL_HINT)?)?;
    Ok(a.get(&0, 0)?)
}

/// Writes `XR_LOCAL_HINT[0]` if it differs.
fn write_hint(ebpf: &mut Ebpf, want: &LocalHint) -> Result<()> {
    let mut a: Array<_, LocalHint> = Array::try_from(map_mut(ebpf, XR_LOCAL_HINT)?)?;
    if a.get(&0, 0)? != *want {
        a.set(0, *want, 0)?;
    }
    Ok(())
}

/// Bumps the maps' generation (`XR_GEN[0]`) after a write to the maps a
/// packet's route depends on (routes, ports, addresses, floating IPs,
/// settings, neighbours): the programs then look up afresh the routes and
/// next hops' MACs they had cached in connection entries under an older
/// one. It must follow the write: a packet that read the generation
/// before it caches its result under the old one. From 0 (a new map) it
/// starts at a random value, so that entries cached under an earlier
/// instance's generations (reused connection tables, copies of them) do
/// not match; it never goes back to 0 (nothing cached).
pub fn bump_generation(map: &mut Map) -> Result<u32> {
    let mut a: Array<_, u32> = Array::try_from(map)?;
    let g = a.get(&0, 0)?;
    let next = if g == 0 {
        use std::hash::{BuildHasher as _, Hasher as _};
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        (r as u32) | 1
    } else {
        match g.wrapping_add(1) {
            0 => 1,
            n => n,
        }
    };
    a.set(0, next, 0)?;
    Ok(next)
}

impl BpfRouter {
    /// Makes the maps hold `router`'s desired state (see [`desired`]):
    /// `XR_PORTS`, `XR_LOCAL`, `XR_ROUTES`, `XR_FIP`, `XR_FIP_REV` and
    /// `XR_CONFIG`. Stale entries are deleted. Returns the number of map
    /// entries written or deleted: 0 when the maps already matched.
    ///
    /// `ifindex`: device name -> ifindex inside the router namespace.
    /// The SNAT port range is the one of [`Self::set_snat_ports`].
    pub fn sync(
        &mut self,
        router: &Router,
        node: &NodeConfig,
        ifindex: &HashMap<String, u32>,
    ) -> Result<usize> {
        let d = desired(router, node, ifindex, self.snat_ports);
        self.write(&d)
            .with_context(|| format!("router {}: writing BPF maps", self.router_id))
    }

    /// Makes the maps hold `d`; returns the entries changed.
    pub fn write(&mut self, d: &Desired) -> Result<usize> {
        write_maps(&mut self.ebpf, d)
    }
}
