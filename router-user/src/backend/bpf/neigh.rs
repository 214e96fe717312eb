//! `XR_NEIGH`: the router namespace's IPv4 neighbour table, mirrored for
//! the XDP path (which cannot resolve a next hop itself; TC can, with
//! `bpf_redirect_neigh`).

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, PerCpuValues},
};
use futures::{StreamExt as _, TryStreamExt as _};
use router_common::port::{Neigh, NeighKey, NeighUsed};
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
    },
};

use super::{
    BpfRouter, XR_GEN, XR_NEIGH, XR_NEIGH_USED,
    sync::{bump_generation, sync_hash},
};
use crate::backend::netlink::Nl;

/// Whether a neighbour in `state` has a MAC worth forwarding to.
fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

/// The map key of an IPv4 neighbour message.
fn key(m: &NeighbourMessage) -> Option<NeighKey> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(NeighKey {
            ifindex: m.header.ifindex,
            addr: ip.octets(),
        }),
        _ => None,
    })
}

/// What one IPv4 neighbour message tells `XR_NEIGH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Resolved: forward to this MAC.
    Mac(Neigh),
    /// The kernel failed to resolve it: packets to it are answered "host
    /// unreachable". Unless the map has its MAC (or had, see below): then
    /// it stopped answering at that MAC (a VM given another), and is
    /// `Neigh::RETRY`: the next packet goes through TC, whose
    /// `bpf_redirect_neigh` has the kernel resolve it afresh, as the
    /// kernel's own next packet would.
    Failed,
    /// Being resolved: a next hop held as failed stays so while the
    /// kernel probes it again (packets to it are still answered); any
    /// other is not in the map (TC sends through the kernel's resolution;
    /// should that fail, it is failed).
    Resolving,
    /// Not in the map.
    Gone,
}

impl Seen {
    /// The entry `XR_NEIGH` holds for it, given what it holds now.
    fn entry(self, now: Option<Neigh>) -> Option<Neigh> {
        match self {
            Seen::Mac(n) => Some(n),
            Seen::Failed => match now {
                Some(n) if n.mac().is_some() || n == Neigh::RETRY => Some(Neigh::RETRY),
                _ => Some(Neigh::FAILED),
            },
            Seen::Resolving => now.filter(|n| *n == Neigh::FAILED),
            Seen::Gone => None,
        }
    }
}

/// What an IPv4 neighbour message tells `XR_NEIGH` (None: not IPv4).
fn seen(m: &NeighbourMessage) -> Option<(NeighKey, Seen)> {
    let k = key(m)?;
    let s = match m.header.state {
        NeighbourState::Failed => Seen::Failed,
        NeighbourState::Incomplete => Seen::Resolving,
        st if usable(st) => m
            .attributes
            .iter()
            .find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l)
                    if l.len() == 6 && l.iter().any(|b| *b != 0) =>
                {
                    let mut b = [0u8; 6];
                    b.copy_from_slice(l);
                    Some(Seen::Mac(Neigh::at(b)))
                }
                _ => None,
            })
            .unwrap_or(Seen::Gone),
        _ => Seen::Gone,
    };
    Some((k, s))
}

/// Dumps the IPv4 neighbour table of namespace `ns` as `XR_NEIGH` entries:
/// (ifindex, address) -> MAC for neighbours in state REACHABLE, STALE,
/// DELAY, PROBE, PERMANENT or NOARP that have a MAC; failed for those in
/// state FAILED (see [`Seen`] for how what the map holds now changes that).
pub async fn dump_neighbours(ns: &str) -> Result<HashMap<NeighKey, Neigh>> {
    let nl = Nl::open(Some(ns)).await?;
    Ok(dump(&nl, ns, &HashMap::new()).await?.0)
}

/// [`dump_neighbours`] through `nl`, given what `XR_NEIGH` holds `now`, and
/// which of them are STALE.
async fn dump(
    nl: &Nl,
    ns: &str,
    now: &HashMap<NeighKey, Neigh>,
) -> Result<(HashMap<NeighKey, Neigh>, HashSet<NeighKey>)> {
    let mut out = HashMap::new();
    let mut stale = HashSet::new();
    let mut s = nl
        .handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(m) = s
        .try_next()
        .await
        .with_context(|| format!("listing neighbours in {ns}"))?
    {
        let Some((k, seen)) = seen(&m) else { continue };
        if let Some(v) = seen.entry(now.get(&k).copied()) {
            if m.header.state == NeighbourState::Stale {
                stale.insert(k);
            }
            out.insert(k, v);
        }
    }
    Ok((out, stale))
}

/// Makes a router's `XR_NEIGH` equal the neighbour table of its namespace
/// `ns` and has the kernel check the STALE neighbours XDP sent packets to
/// (see [`BpfRouter::sync_neighbours`]), through `maps`: a loaded object's
/// or the pinned ones of a router adopted from an earlier run.
async fn sync_into(maps: &mut impl NeighMaps, ns: &str) -> Result<usize> {
    let nl = Nl::open(Some(ns)).await?;
    let now = maps.current()?;
    let (want, stale) = dump(&nl, ns, &now).await?;
    let n = maps.set(&want)?;
    let used = take_used(maps.used()?)?;
    // A failed next hop packets went to is probed again, as the kernel
    // does when a packet goes to one through it: a VM back at that
    // address answers and is forwarded to.
    let failed = want
        .iter()
        .filter(|(_, v)| **v == Neigh::FAILED)
        .map(|(k, _)| k);
    for k in stale.iter().chain(failed).filter(|k| used.has(k)) {
        let addr = std::net::IpAddr::V4(std::net::Ipv4Addr::from(k.addr));
        // NTF_USE: the kernel takes it as a packet to that neighbour.
        if let Err(e) = nl
            .handle
            .neighbours()
            .add(k.ifindex, addr)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
        {
            tracing::debug!("{ns}: neighbour {addr} not checked: {e}");
        }
    }
    Ok(n)
}

/// The maps the neighbour mirroring writes.
pub(super) trait NeighMaps {
    /// Makes `XR_NEIGH` hold exactly `want` (see [`write_neighbours`]).
    fn set(&mut self, want: &HashMap<NeighKey, Neigh>) -> Result<usize>;
    /// What `XR_NEIGH` holds.
    fn current(&self) -> Result<HashMap<NeighKey, Neigh>>;
    /// `XR_NEIGH_USED`.
    fn used(&mut self) -> Result<&mut Map>;
}

impl NeighMaps for BpfRouter {
    fn set(&mut self, want: &HashMap<NeighKey, Neigh>) -> Result<usize> {
        self.set_neighbours(want)
    }

    fn current(&self) -> Result<HashMap<NeighKey, Neigh>> {
        let map = self
            .ebpf
            .map(XR_NEIGH)
            .with_context(|| format!("the BPF object has no map {XR_NEIGH}"))?;
        entries(map)
    }

    fn used(&mut self) -> Result<&mut Map> {
        self.ebpf
            .map_mut(XR_NEIGH_USED)
            .with_context(|| format!("the BPF object has no map {XR_NEIGH_USED}"))
    }
}

/// The entries of `XR_NEIGH` (`map`).
fn entries(map: &Map) -> Result<HashMap<NeighKey, Neigh>> {
    let m: aya::maps::HashMap<_, NeighKey, Neigh> = aya::maps::HashMap::try_from(map)?;
    m.iter().collect::<Result<_, _>>().context(XR_NEIGH)
}

/// The next hops XDP sent to (or TC found failed) since the last call,
/// over all CPUs; cleared.
/// (A bit set between the read and the clear is lost: its traffic sets it
/// again.)
fn take_used(map: &mut Map) -> Result<NeighUsed> {
    let mut a: PerCpuArray<_, NeighUsed> = PerCpuArray::try_from(map)?;
    let per_cpu = a.get(&0, 0)?;
    let used = per_cpu
        .iter()
        .fold(NeighUsed::default(), |acc, u| acc.or(u));
    if used != NeighUsed::default() {
        let zero = PerCpuValues::try_from(vec![NeighUsed::default(); per_cpu.len()])?;
        a.set(0, zero, 0)?;
    }
    Ok(used)
}

impl BpfRouter {
    /// Makes `XR_NEIGH` equal the neighbour table of the router namespace
    /// `ns` (see [`dump_neighbours`]), and has the kernel check the STALE
    /// neighbours XDP sent packets to since the last call (see
    /// `NeighUsed`): it sends them a probe, as it would had those packets
    /// gone through it, and a neighbour that no longer answers at its MAC
    /// (a VM given another) fails, leaves `XR_NEIGH`, and is resolved
    /// afresh by the next packet (through TC). Returns the entries changed.
    ///
    /// Async: it talks rtnetlink on the caller's tokio runtime.
    pub async fn sync_neighbours(&mut self, ns: &str) -> Result<usize> {
        sync_into(self, ns).await
    }

    /// Makes `XR_NEIGH` hold exactly `want`; returns the entries changed
    /// (see [`write_neighbours`]).
    pub fn set_neighbours(&mut self, want: &HashMap<NeighKey, Neigh>) -> Result<usize> {
        write_neighbours(&mut self.ebpf, want)
            .with_context(|| format!("router {}: {XR_NEIGH}", self.router_id))
    }
}

/// The neighbour maps of a router whose programs and maps an earlier run
/// left in place (pinned) and this run adopted without loading them: the
/// daemon mirrors its neighbours all the same.
pub struct PinnedNeighbours {
    router_id: String,
    neigh: Map,
    generation: Map,
    used: Map,
}

impl PinnedNeighbours {
    /// Opens router `router_id`'s pinned neighbour maps under `pin_dir`.
    pub fn open(pin_dir: &Path, router_id: &str) -> Result<PinnedNeighbours> {
        let open = |name: &str| {
            let path = pin_dir.join(router_id).join(name);
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
        };
        Ok(PinnedNeighbours {
            router_id: router_id.to_string(),
            neigh: Map::HashMap(open(XR_NEIGH)?),
            generation: Map::Array(open(XR_GEN)?),
            used: Map::PerCpuArray(open(XR_NEIGH_USED)?),
        })
    }

    /// [`BpfRouter::sync_neighbours`] through the pins.
    pub async fn sync(&mut self, ns: &str) -> Result<usize> {
        sync_into(self, ns).await
    }
}

impl NeighMaps for PinnedNeighbours {
    fn current(&self) -> Result<HashMap<NeighKey, Neigh>> {
        entries(&self.neigh)
    }

    fn set(&mut self, want: &HashMap<NeighKey, Neigh>) -> Result<usize> {
        let res = sync_hash(&mut self.neigh, want);
        if !matches!(res, Ok(0)) {
            bump_generation(&mut self.generation).context(XR_GEN)?;
        }
        res.with_context(|| format!("router {}: {XR_NEIGH}", self.router_id))
    }

    fn used(&mut self) -> Result<&mut Map> {
        Ok(&mut self.used)
    }
}

/// Makes `XR_NEIGH` of a loaded object hold exactly `want`; returns the
/// entries changed. The maps' generation is bumped when anything changed
/// (or a write failed part way): next hops' MACs cached in connection
/// entries are looked up afresh. [`BpfRouter::set_neighbours`] for a
/// router's object; the packet tests fill theirs with it too.
pub fn write_neighbours(ebpf: &mut Ebpf, want: &HashMap<NeighKey, Neigh>) -> Result<usize> {
    let map = ebpf
        .map_mut(XR_NEIGH)
        .with_context(|| format!("the BPF object has no map {XR_NEIGH}"))?;
    let res = sync_hash(map, want);
    if !matches!(res, Ok(0)) {
        let map = ebpf
            .map_mut(XR_GEN)
            .with_context(|| format!("the BPF object has no map {XR_GEN}"))?;
        bump_generation(map).context(XR_GEN)?;
    }
    res.context(XR_NEIGH)
}

/// Makes `k` map to `v` (None: to nothing) in `XR_NEIGH`; whether that
/// changed it (a neighbour's state changing between REACHABLE, STALE, ...
/// with its MAC the same writes nothing).
fn set(
    map: &mut aya::maps::HashMap<MapData, NeighKey, Neigh>,
    k: NeighKey,
    v: Option<Neigh>,
) -> Result<bool, aya::maps::MapError> {
    let old = map.get(&k, 0).ok();
    match v {
        Some(v) if old == Some(v) => Ok(false),
        Some(v) => map.insert(k, v, 0).map(|()| true),
        None if old.is_none() => Ok(false),
        // Gone meanwhile: changed all the same.
        None => map.remove(&k).map(|()| true).or(Ok(true)),
    }
}

/// Follows the neighbour events of namespace `ns` and applies each to the
/// router's pinned `XR_NEIGH` at once, so XDP takes over a flow as soon as
/// the kernel has resolved its next hop (the periodic sync stays as a
/// safety net for lost events). Aborting the returned task closes the
/// netlink socket.
pub async fn watch(
    ns: &str,
    pin_dir: &Path,
    router_id: &str,
) -> Result<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Handle::current();
    let (conn, _handle, mut events) = crate::backend::netns::run_in(Some(ns), move || {
        let _guard = rt.enter();
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh])
    })?
    .with_context(|| format!("subscribing to neighbour events in {ns}"))?;
    let PinnedNeighbours {
        neigh,
        mut generation,
        ..
    } = PinnedNeighbours::open(pin_dir, router_id)?;
    let mut map: aya::maps::HashMap<MapData, NeighKey, Neigh> =
        aya::maps::HashMap::try_from(neigh)?;
    let ns = ns.to_string();
    let follow = async move {
        while let Some((msg, _)) = events.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let res = match m {
                RouteNetlinkMessage::NewNeighbour(n) => match seen(&n) {
                    Some((k, seen)) => {
                        let now = map.get(&k, 0).ok();
                        set(&mut map, k, seen.entry(now))
                    }
                    None => Ok(false),
                },
                RouteNetlinkMessage::DelNeighbour(n) => {
                    key(&n).map_or(Ok(false), |k| set(&mut map, k, None))
                }
                _ => Ok(false),
            };
            // After the write (or a failed one): MACs cached in connection
            // entries are looked up afresh.
            let changed = !matches!(res, Ok(false));
            if let Err(e) = res {
                tracing::debug!("{ns}: neighbour event not applied: {e}");
            }
            if changed && let Err(e) = bump_generation(&mut generation) {
                tracing::debug!("{ns}: {XR_GEN} not bumped: {e}");
            }
        }
    };
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = conn => {}
            _ = follow => {}
        }
    }))
}
