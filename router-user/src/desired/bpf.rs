//! What a router's BPF maps must hold, by device name: the backend resolves
//! the names to the ifindexes the programs key on (`backend::bpf::sync`).
//! All addresses in network order, as the programs read them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};
use router_common::{
    config::{CFG_XDP, Ipv4, RouterConfig},
    port::{
        LOCAL_ADDRESS, LOCAL_BROADCAST, LOCAL_FLOATING, LocalAddr, PortInfo, ROLE_GATEWAY,
        ROLE_INTERNAL,
    },
    route::MAX_NEXTHOPS,
};

use super::routes::{Via, wanted_routes};
use crate::{
    config::node::NodeConfig,
    model::{Role, Router},
};

/// A route's destination: (prefix length, network address).
pub type Prefix = (u32, [u8; 4]);

/// One next hop: gateway (zeros: on-link) and egress device.
pub type Hop = ([u8; 4], String);

/// A router's map contents, devices by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps {
    /// `XR_PORTS`: device -> port.
    pub ports: Vec<(String, PortInfo)>,
    /// `XR_LOCAL`: every IPv4 address of every port, every subnet
    /// broadcast of them, every floating IP -> its kind (`LOCAL_*`).
    pub local: HashMap<LocalAddr, u32>,
    /// `XR_ROUTES`: destination -> next hops (at most [`MAX_NEXTHOPS`]); the
    /// first entry of a destination wins (connected subnets come first).
    pub routes: Vec<(Prefix, Vec<Hop>)>,
    /// `XR_FIP`: fixed -> floating.
    pub fip: HashMap<Ipv4, Ipv4>,
    /// `XR_FIP_REV`: floating -> fixed.
    pub fip_rev: HashMap<Ipv4, Ipv4>,
    /// `XR_CONFIG[0]`, but for `gw_ifindex`: the device `gw_dev`'s.
    pub config: RouterConfig,
    pub gw_dev: Option<String>,
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

/// A route keyed by its (truncated) destination.
fn prefix(net: Ipv4Net) -> Prefix {
    let net = net.trunc();
    (u32::from(net.prefix_len()), net.network().octets())
}

/// A router's map contents. `snat_ports` is the gateway SNAT port range
/// (inclusive).
///
/// Routes: the connected subnet of each port address (on-link), then the
/// IPv4 routes of [`wanted_routes`]: on-link ones through their device,
/// gateway ones through the port whose connected subnet (or, failing that,
/// on-link route) holds each next hop — next hops on no port are skipped,
/// at most [`MAX_NEXTHOPS`] are kept. A connected subnet wins over a wanted
/// route with the same destination. `xdp`: the router's ports are on XDP
/// (`CFG_XDP`).
pub fn maps(router: &Router, node: &NodeConfig, snat_ports: (u16, u16), xdp: bool) -> Maps {
    let mut m = Maps::default();
    // (connected subnet, device), in port order.
    let mut connected: Vec<(Ipv4Net, String)> = Vec::new();
    for port in router.ports() {
        let dev = port.device();
        m.ports.push((
            dev.clone(),
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
        ));
        for a in port.addresses.iter().filter_map(v4) {
            m.local.insert(
                LocalAddr {
                    addr: a.addr().octets(),
                },
                LOCAL_ADDRESS,
            );
            // A directed broadcast is the kernel's (it does not forward
            // them); /31 and /32 have none.
            if a.prefix_len() < 31 {
                m.local
                    .entry(LocalAddr {
                        addr: a.broadcast().octets(),
                    })
                    .or_insert(LOCAL_BROADCAST);
            }
            connected.push((a.trunc(), dev.clone()));
        }
    }
    for (net, dev) in &connected {
        m.routes.push((prefix(*net), vec![([0; 4], dev.clone())]));
    }

    let wanted = wanted_routes(router);
    // On-link wanted routes (IPv4) with their device, for next hops outside
    // every connected subnet.
    let onlink: Vec<(Ipv4Net, String)> = wanted
        .iter()
        .filter(|w| w.via == Via::Device)
        .filter_map(|w| Some((v4(&w.dst)?, w.dev.clone()?)))
        .collect();
    let port_of = |hop: Ipv4Addr| -> Option<String> {
        let best = |set: &[(Ipv4Net, String)]| {
            set.iter()
                .filter(|(n, _)| n.contains(&hop))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, d)| d.clone())
        };
        best(&connected).or_else(|| best(&onlink))
    };
    for w in &wanted {
        let Some(dst) = v4(&w.dst) else { continue };
        let hops: Vec<Hop> = match &w.via {
            Via::Device => w.dev.iter().map(|d| ([0; 4], d.clone())).collect(),
            Via::Gateways(gws) => gws
                .iter()
                .filter_map(|g| match g {
                    IpAddr::V4(g) => Some(*g),
                    IpAddr::V6(_) => None,
                })
                .filter_map(|g| Some((g.octets(), port_of(g)?)))
                .take(MAX_NEXTHOPS)
                .collect(),
        };
        if !hops.is_empty() {
            m.routes.push((prefix(dst), hops));
        }
    }

    for f in &router.floating_ips {
        m.fip.insert(ip(f.fixed_ip), ip(f.floating_ip));
        m.fip_rev.insert(ip(f.floating_ip), ip(f.fixed_ip));
        m.local
            .entry(LocalAddr {
                addr: f.floating_ip.octets(),
            })
            .or_insert(LOCAL_FLOATING);
    }

    let gw = router.gateway.as_ref();
    m.gw_dev = gw.map(|g| g.port.device());
    m.config = RouterConfig {
        gw_addr: gw.and_then(|g| g.snat_ip()).map_or([0; 4], |a| a.octets()),
        gw_ifindex: 0,
        enable_snat: u32::from(router.enable_snat && gw.is_some()),
        port_min: snat_ports.0,
        port_max: snat_ports.1,
        metadata_port: node.metadata_port,
        flags: if xdp { CFG_XDP } else { 0 },
        new_conn_rate: node.new_connection_rate,
    };
    m
}
