//! The routes a router wants, as Neutron builds them: the gateway's default
//! route (with an on-link host route first when the gateway is outside the
//! port's subnets), on-link `extra_subnets`, and the extra routes (one ECMP
//! route per destination).

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use crate::model::Router;

/// How a route reaches its destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// On-link through the route's device.
    Device,
    /// Through one or more (ECMP) gateways.
    Gateways(Vec<IpAddr>),
}

/// A route as the control plane wants it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WantRoute {
    pub dst: IpNet,
    pub via: Via,
    /// Device name for on-link routes and the default route.
    pub dev: Option<String>,
}

impl std::fmt::Display for WantRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Via::Gateways(g) = &self.via {
            for g in g {
                write!(f, " via {g}")?;
            }
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        Ok(())
    }
}

/// The routes a router wants, as Neutron builds them.
pub fn wanted_routes(r: &Router) -> Vec<WantRoute> {
    let mut out = Vec::new();
    if let Some(g) = &r.gateway {
        let qg = g.port.device();
        let connected: Vec<IpNet> = g.port.addresses.iter().map(|a| a.trunc()).collect();
        for net in &g.extra_subnets {
            out.push(WantRoute {
                dst: *net,
                via: Via::Device,
                dev: Some(qg.clone()),
            });
        }
        for gw in g.default_gateways() {
            // A gateway outside the port's subnets gets an on-link host route.
            if !connected.iter().any(|c| c.contains(&gw))
                && !g.extra_subnets.iter().any(|c| c.contains(&gw))
            {
                let host =
                    IpNet::new(gw, if gw.is_ipv4() { 32 } else { 128 }).expect("host prefix");
                out.push(WantRoute {
                    dst: host,
                    via: Via::Device,
                    dev: Some(qg.clone()),
                });
            }
            let any = if gw.is_ipv4() {
                IpNet::V4(Default::default())
            } else {
                IpNet::V6(Default::default())
            };
            out.push(WantRoute {
                dst: any,
                via: Via::Gateways(vec![gw]),
                dev: Some(qg.clone()),
            });
        }
    }
    // Extra routes sharing a destination become one ECMP route.
    let mut by_dst: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
    for e in &r.routes {
        let hops = by_dst.entry(e.destination).or_default();
        if !hops.contains(&e.nexthop) {
            hops.push(e.nexthop);
        }
    }
    for (dst, mut hops) in by_dst {
        hops.sort();
        // An extra route for the default destination would fight the
        // gateway's; Neutron lets the extra route win, and so do we.
        out.retain(|w| w.dst != dst);
        out.push(WantRoute {
            dst,
            via: Via::Gateways(hops),
            dev: None,
        });
    }
    out
}
