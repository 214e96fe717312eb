//! Makes the kernel match the desired routers: namespaces, ports, addresses,
//! routes, sysctls and the data plane's rules. Every step reads what is there
//! first and changes only what differs, so applying the same state twice
//! changes nothing and a resync repairs what was removed behind our back.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use rtnetlink::packet_route::link::InfoKind;
use serde::{Deserialize, Serialize};

use crate::{
    backend::{
        conntrack, garp, iptables,
        netlink::{Nl, Via},
        netns, nft,
    },
    config::node::NodeConfig,
    model::{Port, Role, Router},
};

/// Sysctls Neutron sets in a router namespace. The conntrack one exists only
/// once nf_conntrack is loaded, which the iptables rules ensure.
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.arp_ignore", "1"),
    ("net.ipv4.conf.all.arp_announce", "2"),
    ("net.netfilter.nf_conntrack_tcp_be_liberal", "1"),
];

/// What one apply did, for logs and for `reload`'s answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub items: Vec<String>,
}

impl Changes {
    fn note(&mut self, what: impl Into<String>) {
        self.items.push(what.into());
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Context of one apply.
pub struct Reconciler<'a> {
    pub node: &'a NodeConfig,
    /// The daemon's own namespace (taps and bridges), as a netlink connection.
    pub host: Nl,
    /// Bridges this reconciler created (recorded for `cleanup`).
    pub created_bridges: BTreeSet<String>,
    /// The iptables plane: floating IPs are /32s on qg- and Neutron's
    /// per-FIP iptables rules. Otherwise (the eBPF planes) the programs
    /// answer ARP for them and the kernel's copy of their translation is
    /// the `nft` table.
    pub floating_addresses: bool,
    /// Gratuitous ARPs to send once the router is published:
    /// (namespace, device, MAC, address).
    announce: Vec<(String, String, crate::model::Mac, Ipv4Addr)>,
}

impl<'a> Reconciler<'a> {
    pub async fn new(node: &'a NodeConfig) -> Result<Reconciler<'a>> {
        Ok(Reconciler {
            node,
            host: Nl::open(None).await?,
            created_bridges: BTreeSet::new(),
            announce: Vec::new(),
            floating_addresses: true,
        })
    }

    /// Brings one router to its desired state. `before` is what earlier
    /// applies may have left in place (to flush the connections of floating
    /// IPs and gateway addresses that went away).
    pub async fn apply_router(
        &mut self,
        r: &Router,
        before: &NatAddresses,
        ch: &mut Changes,
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        let ns = r.namespace();
        if !netns::exists(&ns) {
            netns::create(&ns)?;
            ch.note(format!("created namespace {ns}"));
        }
        let nl = Nl::open(Some(&ns)).await?;
        if let Some(lo) = nl.link("lo").await?
            && !lo.up
        {
            nl.set_up(lo.index).await?;
        }

        // Ports: remove those no longer wanted, then create/fix the others.
        let wanted: BTreeSet<String> = r.ports().map(|p| p.device()).collect();
        for l in nl.links().await? {
            if (l.name.starts_with("qr-") || l.name.starts_with("qg-")) && !wanted.contains(&l.name)
            {
                nl.del_link(l.index).await?;
                ch.note(format!("{ns}: removed port {}", l.name));
            }
        }
        // New floating IPs are published (their /32, hence proxy ARP) only
        // by `publish_floating_ips`, once the data plane translates them. On
        // the eBPF planes they get no /32 at all (the programs answer ARP).
        for p in r.ports() {
            self.ensure_port(&nl, &ns, p, ch).await?;
            let keep = if p.role == Role::Gateway && self.floating_addresses {
                floating_nets(r)
            } else {
                Vec::new()
            };
            for added in ensure_addresses(&nl, &ns, p, &p.addresses, &keep, ch).await? {
                if let IpAddr::V4(v4) = added {
                    self.announce.push((ns.clone(), p.device(), p.mac, v4));
                }
            }
        }

        tracing::debug!("{ns}: ports and addresses in {:?}", t0.elapsed());
        ensure_routes(&nl, &ns, r, ch).await?;
        tracing::debug!("{ns}: routes in {:?}", t0.elapsed());

        // The iptables plane keeps Neutron's rules as they are; the eBPF
        // planes keep them for what the programs hand to the kernel, with
        // the per-floating-IP rules as nftables maps (see `nft`).
        let (rules_changed, fip_table) = if self.floating_addresses {
            let rules = crate::desired::iptables::ruleset(r, self.node);
            (iptables::apply_text(&ns, &rules)?, nft::clear(&ns)?)
        } else {
            let rules = crate::desired::iptables::ruleset_without_fips(r, self.node);
            (
                iptables::apply_text(&ns, &rules)?,
                nft::apply(&ns, &crate::desired::nft::want(r))?,
            )
        };
        if rules_changed {
            ch.note(format!("{ns}: iptables rules updated"));
        }
        if fip_table {
            ch.note(format!("{ns}: floating-IP table (nft) updated"));
        }
        // The eBPF planes hand the kernel packets they translated already,
        // SNATed to the gateway IP: a local source the kernel must accept
        // from the ports (the programs drop any other packet claiming one).
        let accept_local = if self.floating_addresses { "0" } else { "1" };
        for (k, v) in SYSCTLS
            .iter()
            .copied()
            .chain([("net.ipv4.conf.all.accept_local", accept_local)])
        {
            if let Err(e) = netns::sysctl(&ns, k, v) {
                tracing::warn!("{e:#}");
            }
        }

        // Connections of what went away die with it, as in Neutron (only
        // after the rules changed, so no new packet re-creates them).
        tracing::debug!("{ns}: iptables and sysctls in {:?}", t0.elapsed());
        let gone = before.gone(r);
        if !gone.is_empty() {
            let n = conntrack::flush_ips(&ns, &gone)?;
            ch.note(format!(
                "{ns}: flushed {n} kernel connection entries of {} released addresses",
                gone.len()
            ));
        }

        Ok(())
    }

    /// Adds the /32 of every floating IP not yet on qg- (the last step of a
    /// router's apply: from then on the kernel answers ARP for it, so it
    /// must already be translated), then sends the gratuitous ARPs of
    /// everything added. `prev` is the router as last applied successfully
    /// (whose floating IPs were announced then).
    pub async fn publish_floating_ips(
        &mut self,
        r: &Router,
        prev: Option<&Router>,
        ch: &mut Changes,
    ) -> Result<()> {
        let ns = r.namespace();
        if let Some(g) = &r.gateway
            && !self.floating_addresses
        {
            // The programs answer ARP for them already; announce the new ones.
            for f in &r.floating_ips {
                let known = prev.is_some_and(|p| {
                    p.floating_ips
                        .iter()
                        .any(|o| o.floating_ip == f.floating_ip)
                });
                let rebuilt = ch
                    .items
                    .iter()
                    .any(|c| *c == format!("created namespace {ns}"));
                if !known || rebuilt {
                    self.announce
                        .push((ns.clone(), g.port.device(), g.port.mac, f.floating_ip));
                }
            }
        } else if let Some(g) = &r.gateway {
            let nl = Nl::open(Some(&ns)).await?;
            let mut want = g.port.addresses.clone();
            want.extend(floating_nets(r));
            for added in ensure_addresses(&nl, &ns, &g.port, &want, &[], ch).await? {
                if let IpAddr::V4(v4) = added {
                    self.announce
                        .push((ns.clone(), g.port.device(), g.port.mac, v4));
                }
            }
        }
        let pending = std::mem::take(&mut self.announce);
        if self.node.send_garp {
            for (ns, dev, mac, ip) in pending {
                garp::announce(ns, dev, mac, ip);
            }
        }
        Ok(())
    }

    async fn ensure_port(&mut self, nl: &Nl, ns: &str, p: &Port, ch: &mut Changes) -> Result<()> {
        let dev = p.device();
        let tap = p.tap();
        let bridge = self.ensure_bridge(&p.network_id, ch).await?;
        let mut link = nl.link(&dev).await?;
        if link.is_none() {
            // A tap left from a port whose other end vanished is recreated.
            if let Some(old) = self.host.link(&tap).await? {
                self.host.del_link(old.index).await?;
            }
            self.host.add_veth(&dev, &tap).await?;
            let inner = self
                .host
                .link(&dev)
                .await?
                .with_context(|| format!("veth {dev} vanished after creation"))?;
            self.host.move_to(inner.index, ns).await?;
            ch.note(format!("{ns}: created port {dev} (peer {tap})"));
            link = nl.link(&dev).await?;
        }
        let link = link.with_context(|| format!("port {dev} missing in {ns} after creation"))?;
        if link.mac != p.mac.0 {
            nl.set_mac(link.index, &p.mac.0).await?;
            ch.note(format!("{ns}: {dev} MAC {}", p.mac));
        }
        if link.mtu != p.mtu {
            nl.set_mtu(link.index, p.mtu).await?;
            ch.note(format!("{ns}: {dev} MTU {}", p.mtu));
        }
        if !link.up {
            nl.set_up(link.index).await?;
        }

        let t = self
            .host
            .link(&tap)
            .await?
            .with_context(|| format!("tap {tap} of port {dev} missing"))?;
        if t.mtu != p.mtu {
            self.host.set_mtu(t.index, p.mtu).await?;
        }
        if t.controller != Some(bridge) {
            self.host.set_controller(t.index, bridge).await?;
            ch.note(format!("{tap} enslaved to bridge index {bridge}"));
        }
        if !t.up {
            self.host.set_up(t.index).await?;
        }
        Ok(())
    }

    /// Returns the index of the network's bridge, creating it if missing.
    async fn ensure_bridge(&mut self, network_id: &str, ch: &mut Changes) -> Result<u32> {
        let name = self.node.bridge_for(network_id);
        if let Some(b) = self.host.link(&name).await? {
            // Not ours to remove, and no port can be enslaved to it.
            if !matches!(b.kind, Some(InfoKind::Bridge)) {
                anyhow::bail!(
                    "the bridge of network {} is to be {name}, but a device of that name exists and is not a bridge ({})",
                    crate::text::label(network_id),
                    b.kind
                        .map_or("no kind".to_string(), |k| format!("{k:?}").to_lowercase())
                );
            }
            if !b.up {
                self.host.set_up(b.index).await?;
            }
            return Ok(b.index);
        }
        self.host.add_bridge(&name).await?;
        self.created_bridges.insert(name.clone());
        ch.note(format!("created bridge {name}"));
        let b = self
            .host
            .link(&name)
            .await?
            .with_context(|| format!("bridge {name} vanished"))?;
        Ok(b.index)
    }

    /// Removes a router: its ports (and so their taps), then its namespace.
    pub async fn remove_router(&mut self, id: &str, ch: &mut Changes) -> Result<()> {
        let ns = crate::model::namespace_of(id);
        if netns::exists(&ns) {
            // Deleting the veths first makes the taps vanish synchronously.
            let nl = Nl::open(Some(&ns)).await?;
            for l in nl.links().await? {
                if l.name.starts_with("qr-") || l.name.starts_with("qg-") {
                    nl.del_link(l.index).await?;
                }
            }
            drop(nl);
            netns::delete(&ns)?;
            ch.note(format!("removed router {id}"));
        }
        Ok(())
    }
}

/// The floating IPs of a router as /32s.
fn floating_nets(r: &Router) -> Vec<IpNet> {
    r.floating_ips
        .iter()
        .map(|f| IpNet::new(IpAddr::V4(f.floating_ip), 32).expect("/32"))
        .collect()
}

/// Adds the missing addresses of `want` and removes those in neither `want`
/// nor `keep`; returns those added.
async fn ensure_addresses(
    nl: &Nl,
    ns: &str,
    p: &Port,
    want: &[IpNet],
    keep: &[IpNet],
    ch: &mut Changes,
) -> Result<Vec<IpAddr>> {
    let dev = p.device();
    let link = nl
        .link(&dev)
        .await?
        .with_context(|| format!("port {dev} missing in {ns}"))?;
    let have = nl.addresses(link.index).await?;
    let mut added = Vec::new();
    for (net, msg) in have.iter().cloned() {
        if !want.contains(&net) && !keep.contains(&net) {
            nl.del_address(msg).await?;
            ch.note(format!("{ns}: {dev} removed {net}"));
        }
    }
    for net in want {
        if !have.iter().any(|(h, _)| h == net) {
            nl.add_address(link.index, *net).await?;
            ch.note(format!("{ns}: {dev} added {net}"));
            added.push(net.addr());
        }
    }
    Ok(added)
}

async fn ensure_routes(nl: &Nl, ns: &str, r: &Router, ch: &mut Changes) -> Result<()> {
    let links = nl.links().await?;
    let index_of = |dev: &Option<String>| {
        dev.as_ref()
            .and_then(|d| links.iter().find(|l| &l.name == d).map(|l| l.index))
    };
    let want = crate::desired::routes::wanted_routes(r);
    let want_keys: Vec<_> = want.iter().map(|w| w.key(index_of(&w.dev))).collect();
    let have = nl.static_routes().await?;
    for (key, msg) in &have {
        if !want_keys.contains(key) {
            nl.del_route(msg.clone()).await?;
            ch.note(format!("{ns}: removed route {}", key.dst));
        }
    }
    for (w, key) in want.iter().zip(&want_keys) {
        if have.iter().any(|(k, _)| k == key) {
            continue;
        }
        // Only the default route and on-link routes name a device; extra
        // routes let the kernel find the device of their next hops.
        let oif = match w.via {
            Via::Device => index_of(&w.dev),
            Via::Gateways(_) => index_of(&w.dev),
        };
        match nl.replace_route(w, oif).await {
            Ok(()) => ch.note(format!("{ns}: route {w}")),
            // A next hop not reachable yet is not fatal (Neutron logs it too).
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    Ok(())
}

/// The addresses of a router whose connections die when it releases them:
/// its floating IPs and its gateway (SNAT) address. Kept for a router whose
/// apply failed, as the union of everything it may have in place, so that
/// the next release still flushes what an unfinished apply left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatAddresses {
    pub floating: BTreeSet<Ipv4Addr>,
    pub gateway: BTreeSet<Ipv4Addr>,
}

impl NatAddresses {
    pub fn of(r: &Router) -> NatAddresses {
        NatAddresses {
            floating: r.floating_ips.iter().map(|f| f.floating_ip).collect(),
            gateway: r
                .gateway
                .as_ref()
                .and_then(|g| g.snat_ip())
                .into_iter()
                .collect(),
        }
    }

    /// Adds `other`'s addresses.
    pub fn extend(&mut self, other: &NatAddresses) {
        self.floating.extend(&other.floating);
        self.gateway.extend(&other.gateway);
    }

    /// Of these, the addresses `now` no longer has in the same role: a
    /// floating IP it no longer has, a gateway address that is no longer
    /// its gateway's.
    pub fn gone(&self, now: &Router) -> Vec<Ipv4Addr> {
        let keep = NatAddresses::of(now);
        let mut out: Vec<Ipv4Addr> = self.floating.difference(&keep.floating).copied().collect();
        for g in self.gateway.difference(&keep.gateway) {
            if !out.contains(g) {
                out.push(*g);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FloatingIp, Gateway, Mac, Port, Role, Subnet};

    fn router(gw: &str, fips: &[&str]) -> Router {
        Router {
            id: "5c7ef3a1-2d4b-4e8f-9a6c-1b2d3e4f5a6b".into(),
            enable_snat: true,
            gateway: Some(Gateway {
                port: Port {
                    id: "3c8d6a68-9712-4b5e-8c1d-0a1b2c3d4e5f".into(),
                    role: Role::Gateway,
                    mac: Mac([0xfa, 0x16, 0x3e, 0, 0, 1]),
                    mtu: 1500,
                    network_id: "9c9436d4-2b7c-4a1e-9d8f-0123456789ab".into(),
                    addresses: vec![format!("{gw}/24").parse().unwrap()],
                    subnets: vec![Subnet {
                        cidr: "192.168.1.0/24".parse().unwrap(),
                        gateway_ip: None,
                    }],
                },
                extra_subnets: vec![],
            }),
            interfaces: vec![],
            routes: vec![],
            floating_ips: fips
                .iter()
                .map(|f| FloatingIp {
                    id: String::new(),
                    floating_ip: f.parse().unwrap(),
                    fixed_ip: "10.0.0.5".parse().unwrap(),
                })
                .collect(),
        }
    }

    fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn gone_is_what_was_or_may_be_in_place_and_is_no_longer_wanted() {
        let applied = router("192.168.1.110", &["192.168.1.104", "192.168.1.105"]);
        let now = router("192.168.1.111", &["192.168.1.105"]);
        assert_eq!(
            NatAddresses::of(&applied).gone(&now),
            ips(&["192.168.1.104", "192.168.1.110"])
        );
        // A failed attempt's addresses may be in place too: releasing them
        // later flushes them, though they were never recorded as applied.
        let mut live = NatAddresses::of(&applied);
        live.extend(&NatAddresses::of(&router(
            "192.168.1.110",
            &["192.168.1.104", "192.168.1.106"],
        )));
        assert_eq!(
            live.gone(&now),
            ips(&["192.168.1.104", "192.168.1.106", "192.168.1.110"])
        );
        // A floating IP that becomes the gateway address still changes role.
        let swapped = router("192.168.1.104", &["192.168.1.110"]);
        assert_eq!(
            NatAddresses::of(&applied).gone(&swapped),
            ips(&["192.168.1.104", "192.168.1.105", "192.168.1.110"])
        );
        assert!(NatAddresses::default().gone(&now).is_empty());
    }
}
