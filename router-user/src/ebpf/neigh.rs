//! `XR_NEIGH`: the router namespace's IPv4 neighbour table, mirrored for
//! the XDP path (which cannot resolve a next hop itself; TC can, with
//! `bpf_redirect_neigh`).

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use router_common::port::{Neigh, NeighKey};
use rtnetlink::packet_route::{
    AddressFamily,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};

use super::{BpfRouter, XR_NEIGH, sync::sync_hash};
use crate::netlink::Nl;

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

/// The map entry of one neighbour message, if it is a usable IPv4 one.
fn entry(m: &NeighbourMessage) -> Option<(NeighKey, Neigh)> {
    if m.header.family != AddressFamily::Inet || !usable(m.header.state) {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => addr = Some(*ip),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(l);
                mac = Some(b);
            }
            _ => {}
        }
    }
    let mac = mac?;
    if mac == [0; 6] {
        return None;
    }
    Some((
        NeighKey {
            ifindex: m.header.ifindex,
            addr: addr?.octets(),
        },
        Neigh { mac, _pad: [0; 2] },
    ))
}

/// Dumps the IPv4 neighbour table of namespace `ns` as `XR_NEIGH` entries:
/// (ifindex, address) -> MAC for neighbours in state REACHABLE, STALE,
/// DELAY, PROBE, PERMANENT or NOARP that have a MAC.
pub async fn dump_neighbours(ns: &str) -> Result<HashMap<NeighKey, Neigh>> {
    let nl = Nl::open(Some(ns)).await?;
    let mut out = HashMap::new();
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
        if let Some((k, v)) = entry(&m) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

impl BpfRouter {
    /// Makes `XR_NEIGH` equal the neighbour table of the router namespace
    /// `ns` (see [`dump_neighbours`]). Returns the entries changed.
    ///
    /// Async: it talks rtnetlink on the caller's tokio runtime.
    pub async fn sync_neighbours(&mut self, ns: &str) -> Result<usize> {
        let want = dump_neighbours(ns).await?;
        self.set_neighbours(&want)
    }

    /// Makes `XR_NEIGH` hold exactly `want`; returns the entries changed.
    pub fn set_neighbours(&mut self, want: &HashMap<NeighKey, Neigh>) -> Result<usize> {
        let map = self
            .ebpf
            .map_mut(XR_NEIGH)
            .with_context(|| format!("the BPF object has no map {XR_NEIGH}"))?;
        sync_hash(map, want).with_context(|| format!("router {}: {XR_NEIGH}", self.router_id))
    }
}
