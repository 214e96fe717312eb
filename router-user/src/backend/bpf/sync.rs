//! The router's desired state as map contents, and writing it: every map
//! is read first and only differing entries are written or deleted.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{Array, Map, MapError, lpm_trie::Key, lpm_trie::LpmTrie},
};
use ipnet::{IpNet, Ipv4Net};
use router_common::{
    config::{Ipv4, RouterConfig},
    port::{
        LOCAL_ADDRESS, LOCAL_BROADCAST, LOCAL_FLOATING, LocalAddr, PortInfo, ROLE_GATEWAY,
        ROLE_INTERNAL,
    },
    route::{MAX_NEXTHOPS, Route},
};

use super::{BpfRouter, XR_CONFIG, XR_FIP, XR_FIP_REV, XR_LOCAL, XR_PORTS, XR_ROUTES};
use crate::{
    backend::netlink::Via,
    config::node::NodeConfig,
    model::{Role, Router},
    reconcile::wanted_routes,
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

fn v4(a: &IpNet) -> Option<Ipv4Net> {
    match a {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

fn ip(a: Ipv4Addr) -> Ipv4 {
    Ipv4 { addr: a.octets() }
}

/// Computes a router's map contents. `ifindex` maps device names inside the
/// router namespace to their ifindex; ports whose device is missing from it
/// are left out (and so is what depends on them). `snat_ports` is the
/// gateway SNAT port range (inclusive).
///
/// Routes: the connected subnet of each port address (on-link), then the
/// IPv4 routes of [`wanted_routes`]: on-link ones through their device,
/// gateway ones through the port whose connected subnet (or, failing that,
/// on-link route) holds each next hop — next hops on no port are skipped
/// (logged at debug), at most [`MAX_NEXTHOPS`] are kept. A connected subnet
/// wins over a wanted route with the same destination.
pub fn desired(
    router: &Router,
    node: &NodeConfig,
    ifindex: &HashMap<String, u32>,
    snat_ports: (u16, u16),
) -> Desired {
    let mut d = Desired::default();
    // (connected subnet, ifindex), in port order.
    let mut connected: Vec<(Ipv4Net, u32)> = Vec::new();
    for port in router.ports() {
        let dev = port.device();
        let Some(&idx) = ifindex.get(&dev) else {
            tracing::debug!("router {}: no ifindex for {dev}; port left out", router.id);
            continue;
        };
        d.ports.insert(
            idx,
            PortInfo {
                addr: port.ipv4().map_or([0; 4], |a| a.octets()),
                mac: port.mac.0,
                role: match port.role {
                    Role::Internal => ROLE_INTERNAL,
                    Role::Gateway => ROLE_GATEWAY,
                },
                _pad: 0,
                mtu: port.mtu,
            },
        );
        for a in port.addresses.iter().filter_map(v4) {
            d.local.insert(
                LocalAddr {
                    addr: a.addr().octets(),
                },
                LOCAL_ADDRESS,
            );
            // A directed broadcast is the kernel's (it does not forward
            // them); /31 and /32 have none.
            if a.prefix_len() < 31 {
                d.local
                    .entry(LocalAddr {
                        addr: a.broadcast().octets(),
                    })
                    .or_insert(LOCAL_BROADCAST);
            }
            connected.push((a.trunc(), idx));
        }
    }
    let on_link = |net: Ipv4Net, idx: u32| {
        let mut r = Route {
            count: 1,
            ..Default::default()
        };
        r.ifindexes[0] = idx;
        keyed(net, r)
    };
    let mut routes: Vec<((u32, [u8; 4]), Route)> =
        connected.iter().map(|&(n, i)| on_link(n, i)).collect();

    let wanted = wanted_routes(router);
    // On-link wanted routes (IPv4) with their device's ifindex, for next
    // hops outside every connected subnet.
    let onlink: Vec<(Ipv4Net, u32)> = wanted
        .iter()
        .filter(|w| w.via == Via::Device)
        .filter_map(|w| Some((v4(&w.dst)?, *ifindex.get(w.dev.as_ref()?)?)))
        .collect();
    let port_of = |hop: Ipv4Addr| -> Option<u32> {
        let best = |set: &[(Ipv4Net, u32)]| {
            set.iter()
                .filter(|(n, _)| n.contains(&hop))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|&(_, i)| i)
        };
        best(&connected).or_else(|| best(&onlink))
    };
    for w in &wanted {
        let Some(dst) = v4(&w.dst) else { continue };
        match &w.via {
            Via::Device => {
                let Some(&idx) = w.dev.as_ref().and_then(|d| ifindex.get(d)) else {
                    tracing::debug!("router {}: route {w}: device unknown; skipped", router.id);
                    continue;
                };
                routes.push(on_link(dst, idx));
            }
            Via::Gateways(hops) => {
                let mut r = Route::default();
                for hop in hops {
                    let IpAddr::V4(hop) = *hop else { continue };
                    let Some(idx) = port_of(hop) else {
                        tracing::debug!(
                            "router {}: route {w}: next hop {hop} is on no port; skipped",
                            router.id
                        );
                        continue;
                    };
                    let n = r.count as usize;
                    if n == MAX_NEXTHOPS {
                        tracing::debug!(
                            "router {}: route {w}: more than {MAX_NEXTHOPS} next hops; {hop} dropped",
                            router.id
                        );
                        continue;
                    }
                    r.gateways[n] = hop.octets();
                    r.ifindexes[n] = idx;
                    r.count += 1;
                }
                if r.count > 0 {
                    routes.push(keyed(dst, r));
                }
            }
        }
    }
    for (k, r) in routes {
        d.routes.entry(k).or_insert(r);
    }

    for f in &router.floating_ips {
        d.fip.insert(ip(f.fixed_ip), ip(f.floating_ip));
        d.fip_rev.insert(ip(f.floating_ip), ip(f.fixed_ip));
        d.local
            .entry(LocalAddr {
                addr: f.floating_ip.octets(),
            })
            .or_insert(LOCAL_FLOATING);
    }

    let gw = router.gateway.as_ref();
    d.config = RouterConfig {
        gw_addr: gw.and_then(|g| g.snat_ip()).map_or([0; 4], |a| a.octets()),
        gw_ifindex: gw
            .and_then(|g| ifindex.get(&g.port.device()).copied())
            .unwrap_or(0),
        enable_snat: u32::from(router.enable_snat && gw.is_some()),
        port_min: snat_ports.0,
        port_max: snat_ports.1,
        metadata_port: node.metadata_port,
        _pad: 0,
        new_conn_rate: node.new_connection_rate,
    };
    d
}

/// A route keyed by its (truncated) destination.
fn keyed(net: Ipv4Net, r: Route) -> ((u32, [u8; 4]), Route) {
    let net = net.trunc();
    ((u32::from(net.prefix_len()), net.network().octets()), r)
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

impl BpfRouter {
    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("the BPF object has no map {name}"))
    }

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
        let mut n = 0;
        // Config and ports first: a route to a port the program does not
        // know yet only sends packets to the kernel.
        {
            let mut cfg: Array<_, RouterConfig> = Array::try_from(self.map_mut(XR_CONFIG)?)?;
            if cfg.get(&0, 0)? != d.config {
                cfg.set(0, d.config, 0)?;
                n += 1;
            }
        }
        n += sync_hash(self.map_mut(XR_PORTS)?, &d.ports).context(XR_PORTS)?;
        n += sync_hash(self.map_mut(XR_LOCAL)?, &d.local).context(XR_LOCAL)?;
        n += sync_hash(self.map_mut(XR_FIP)?, &d.fip).context(XR_FIP)?;
        n += sync_hash(self.map_mut(XR_FIP_REV)?, &d.fip_rev).context(XR_FIP_REV)?;
        n += sync_routes(self.map_mut(XR_ROUTES)?, &d.routes).context(XR_ROUTES)?;
        Ok(n)
    }
}
