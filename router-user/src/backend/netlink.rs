//! Thin rtnetlink operations on one network namespace: links, addresses,
//! routes. Policy (what should exist) lives in `reconcile`.

use std::{collections::BTreeSet, net::IpAddr, os::fd::AsRawFd};

use anyhow::{Context as _, Result, anyhow};

pub use crate::desired::routes::{Via, WantRoute};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder, RouteNextHopBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressMessage},
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    },
};

/// A netlink connection bound to one namespace (None: the daemon's own).
pub struct Nl {
    pub handle: Handle,
    pub ns: String,
}

/// What the control plane cares about of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub controller: Option<u32>,
    pub kind: Option<InfoKind>,
}

impl Nl {
    /// Opens a connection inside namespace `ns` (the socket is created on a
    /// thread that joined it, and stays there).
    pub async fn open(ns: Option<&str>) -> Result<Nl> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = crate::backend::netns::run_in(ns, move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
        })??;
        tokio::spawn(conn);
        Ok(Nl {
            handle,
            ns: ns.unwrap_or("(node)").to_string(),
        })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s
            .try_next()
            .await
            .with_context(|| format!("listing links in {}", self.ns))?
        {
            out.push(link_of(&m));
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(link_of(&m))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up {name} in {}", self.ns)),
        }
    }

    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {name}/{peer} in {}", self.ns))
    }

    pub async fn add_bridge(&self, name: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkBridge::new(name).up().build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name} in {}", self.ns))
    }

    /// Moves a link into the namespace `target`.
    pub async fn move_to(&self, index: u32, target: &str) -> Result<()> {
        let f = crate::backend::netns::open(target)?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(f.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("moving link {index} from {} to {target}", self.ns))
    }

    pub async fn set_mac(&self, index: u32, mac: &[u8]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            "MAC",
        )
        .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(LinkUnspec::new_with_index(index).mtu(mtu).build(), "MTU")
            .await
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(LinkUnspec::new_with_index(index).up().build(), "state up")
            .await
    }

    pub async fn set_controller(&self, index: u32, controller: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(controller)
                .build(),
            "bridge",
        )
        .await
    }

    /// Takes a device out of the bridge it is enslaved to.
    pub async fn set_nomaster(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).nocontroller().build(),
            "no bridge",
        )
        .await
    }

    async fn set(&self, msg: LinkMessage, what: &str) -> Result<()> {
        let index = msg.header.index;
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("setting {what} of link {index} in {}", self.ns))
    }

    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting link {index} in {}", self.ns)),
        }
    }

    /// Addresses of a link (IPv6 link-local ones left out: the kernel owns them).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpNet, AddressMessage)>> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .with_context(|| format!("listing addresses in {}", self.ns))?
        {
            if m.header.index != index {
                continue;
            }
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            let Some(ip) = ip else { continue };
            if let IpAddr::V6(v6) = ip
                && (v6.segments()[0] & 0xffc0) == 0xfe80
            {
                continue;
            }
            if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                out.push((net, m));
            }
        }
        Ok(out)
    }

    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding {net} in {}", self.ns)),
        }
    }

    pub async fn del_address(&self, msg: AddressMessage) -> Result<()> {
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("deleting an address in {}", self.ns))
    }

    /// Routes of the main table that xrouter owns (protocol static).
    pub async fn static_routes(&self) -> Result<Vec<(RouteKey, RouteMessage)>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessageBuilder::<IpAddr>::new().build();
            q.header.address_family = family;
            let mut s = self.handle.route().get(q).execute();
            while let Some(m) = s
                .try_next()
                .await
                .with_context(|| format!("listing routes in {}", self.ns))?
            {
                if m.header.protocol != RouteProtocol::Static || m.header.table != 254 {
                    continue;
                }
                out.push((route_key(&m), m));
            }
        }
        Ok(out)
    }

    /// Installs (replaces) a route.
    pub async fn replace_route(&self, want: &WantRoute, oif: Option<u32>) -> Result<()> {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(want.dst.addr(), want.dst.prefix_len())
            .map_err(|e| anyhow!("{e}"))?;
        let msg = match &want.via {
            Via::Device => {
                let mut b = b.scope(RouteScope::Link);
                if let Some(o) = oif {
                    b = b.output_interface(o);
                }
                b.build()
            }
            Via::Gateways(gws) if gws.len() == 1 => {
                let mut b = b.gateway(gws[0]).map_err(|e| anyhow!("{e}"))?;
                if let Some(o) = oif {
                    b = b.output_interface(o);
                }
                b.build()
            }
            Via::Gateways(gws) => {
                let family = if want.dst.addr().is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                };
                let hops = gws
                    .iter()
                    .map(|g| RouteNextHopBuilder::new(family).via(*g).map(|h| h.build()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow!("{e}"))?;
                b.multipath(hops).build()
            }
        };
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("installing route {} in {}", want, self.ns))
    }

    pub async fn del_route(&self, msg: RouteMessage) -> Result<()> {
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("deleting a route in {}", self.ns))
    }
}

fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        controller: None,
        kind: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(a) => l.mac = a.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Comparable identity of an installed route: destination, gateways (sorted)
/// and, for on-link routes, the output device index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteKey {
    pub dst: IpNet,
    pub gateways: BTreeSet<IpAddr>,
    pub oif: Option<u32>,
}

fn addr_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_key(m: &RouteMessage) -> RouteKey {
    let mut dst = None;
    let mut gateways = BTreeSet::new();
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr_of(d),
            RouteAttribute::Gateway(g) => gateways.extend(addr_of(g)),
            RouteAttribute::Oif(o) => oif = Some(*o),
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    for a in &h.attributes {
                        if let RouteAttribute::Gateway(g) = a {
                            gateways.extend(addr_of(g));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let v4 = m.header.address_family == AddressFamily::Inet;
    let dst = dst.unwrap_or(if v4 {
        IpAddr::V4(0.into())
    } else {
        IpAddr::V6(0.into())
    });
    let dst = IpNet::new(dst, m.header.destination_prefix_length)
        .unwrap_or_else(|_| IpNet::new(dst, 0).unwrap());
    RouteKey {
        oif: if gateways.is_empty() { oif } else { None },
        dst,
        gateways,
    }
}

impl WantRoute {
    /// The key this route has once installed (`oif` resolved by the caller).
    pub fn key(&self, oif: Option<u32>) -> RouteKey {
        match &self.via {
            Via::Device => RouteKey {
                dst: self.dst,
                gateways: BTreeSet::new(),
                oif,
            },
            Via::Gateways(g) => RouteKey {
                dst: self.dst,
                gateways: g.iter().copied().collect(),
                oif: None,
            },
        }
    }
}
