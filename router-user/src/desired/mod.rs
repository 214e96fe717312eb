//! What one router must be on a data plane: a pure function of the router,
//! the node config and the data plane, with no I/O. The plan compares it
//! with what the kernel has; the backends carry the difference out.

pub mod bpf;
pub mod iptables;
pub mod nft;
pub mod routes;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    config::node::{InterfaceDriver, NodeConfig},
    model::{Mac, Role, Router},
};
use routes::WantRoute;

/// Who translates: the kernel with Neutron's rules, or the BPF programs
/// (XDP and TC, or TC alone: the same router otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Plane {
    Iptables,
    Xdp,
    Tc,
}

impl Plane {
    pub fn is_bpf(self) -> bool {
        self != Plane::Iptables
    }
}

/// One router port: the veth's end in the router namespace and its peer
/// (`tap`) on the network's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPort {
    pub dev: String,
    pub tap: String,
    /// The Linux bridge of the network (linuxbridge), or the OVS
    /// integration bridge (openvswitch).
    pub bridge: String,
    /// openvswitch: the tap's Interface `external_ids`, as Neutron's
    /// OVSInterfaceDriver sets them (empty with linuxbridge).
    pub external_ids: Vec<(String, String)>,
    pub network_id: String,
    pub role: Role,
    pub mac: Mac,
    pub mtu: u32,
    /// The port's addresses (floating IPs apart, see
    /// [`DesiredRouter::floating`]).
    pub addresses: Vec<IpNet>,
}

/// Everything one router must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredRouter {
    pub id: String,
    pub plane: Plane,
    /// How its ports are plugged.
    pub driver: InterfaceDriver,
    pub namespace: String,
    /// Internal ports, then the gateway port.
    pub ports: Vec<DesiredPort>,
    /// The floating IPs as /32s on the gateway port, published last (the
    /// iptables plane: the kernel answers ARP for them once they are there,
    /// so they must be translated first). Empty on the eBPF planes, whose
    /// programs answer ARP for them.
    pub floating: Vec<IpNet>,
    /// The floating IPs announced by gratuitous ARP when they are new (the
    /// eBPF planes; on the iptables plane their /32s are announced when
    /// added).
    pub announce_floating: Vec<Ipv4Addr>,
    pub routes: Vec<WantRoute>,
    /// Sysctls of the namespace, in the order they are set.
    pub sysctls: Vec<(&'static str, &'static str)>,
    /// The iptables rule set (`iptables-restore` input).
    pub iptables: String,
    /// The `ip xrouter` nftables table (eBPF planes; None: no table).
    pub nft: Option<nft::Want>,
    /// The BPF maps' contents (eBPF planes).
    pub bpf: Option<bpf::Maps>,
    /// The addresses whose connections die when the router releases them.
    pub nat: NatAddresses,
}

/// Sysctls Neutron sets in a router namespace. The conntrack one exists only
/// once nf_conntrack is loaded, which the iptables rules ensure.
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.arp_ignore", "1"),
    ("net.ipv4.conf.all.arp_announce", "2"),
    ("net.netfilter.nf_conntrack_tcp_be_liberal", "1"),
];

/// What `router` must be on `plane`. `snat_ports` is the gateway SNAT port
/// range of the BPF programs (inclusive).
pub fn desired(
    router: &Router,
    node: &NodeConfig,
    plane: Plane,
    snat_ports: (u16, u16),
) -> DesiredRouter {
    let bpf = plane.is_bpf();
    let ports = router
        .ports()
        .map(|p| DesiredPort {
            dev: p.device(),
            tap: p.tap(),
            bridge: node.plug_bridge_for(&p.network_id),
            external_ids: match node.driver() {
                InterfaceDriver::OpenVSwitch => vec![
                    ("iface-id".into(), p.id.clone()),
                    ("iface-status".into(), "active".into()),
                    ("attached-mac".into(), p.mac.to_string()),
                ],
                InterfaceDriver::LinuxBridge => vec![],
            },
            network_id: p.network_id.clone(),
            role: p.role,
            mac: p.mac,
            mtu: p.mtu,
            addresses: p.addresses.clone(),
        })
        .collect();
    let fips: Vec<Ipv4Addr> = match router.gateway {
        Some(_) => router.floating_ips.iter().map(|f| f.floating_ip).collect(),
        None => Vec::new(),
    };
    let mut sysctls = SYSCTLS.to_vec();
    // The eBPF planes hand the kernel packets they translated already,
    // SNATed to the gateway IP: a local source the kernel must accept from
    // the ports (the programs drop any other packet claiming one).
    sysctls.push((
        "net.ipv4.conf.all.accept_local",
        if bpf { "1" } else { "0" },
    ));
    DesiredRouter {
        id: router.id.clone(),
        plane,
        driver: node.driver(),
        namespace: router.namespace(),
        ports,
        floating: if bpf {
            Vec::new()
        } else {
            fips.iter()
                .map(|f| IpNet::new(IpAddr::V4(*f), 32).expect("/32"))
                .collect()
        },
        announce_floating: if bpf { fips } else { Vec::new() },
        routes: routes::wanted_routes(router),
        sysctls,
        iptables: if bpf {
            iptables::ruleset_without_fips(router, node)
        } else {
            iptables::ruleset(router, node)
        },
        nft: bpf.then(|| nft::want(router)),
        bpf: bpf.then(|| bpf::maps(router, node, snat_ports, plane == Plane::Xdp)),
        nat: NatAddresses::of(router),
    }
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
    pub fn gone(&self, now: &NatAddresses) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self.floating.difference(&now.floating).copied().collect();
        for g in self.gateway.difference(&now.gateway) {
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
    use crate::testing::example;

    fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn with(gw: &str, fips: &[&str]) -> Router {
        let mut r = example();
        r.gateway.as_mut().unwrap().port.addresses = vec![format!("{gw}/24").parse().unwrap()];
        let fixed = r.floating_ips[0].fixed_ip;
        r.floating_ips = fips
            .iter()
            .map(|f| crate::model::FloatingIp {
                id: String::new(),
                floating_ip: f.parse().unwrap(),
                fixed_ip: fixed,
            })
            .collect();
        r
    }

    #[test]
    fn gone_is_what_was_or_may_be_in_place_and_is_no_longer_wanted() {
        let applied = with("192.168.1.110", &["192.168.1.104", "192.168.1.105"]);
        let now = NatAddresses::of(&with("192.168.1.111", &["192.168.1.105"]));
        assert_eq!(
            NatAddresses::of(&applied).gone(&now),
            ips(&["192.168.1.104", "192.168.1.110"])
        );
        // A failed attempt's addresses may be in place too: releasing them
        // later flushes them, though they were never recorded as applied.
        let mut live = NatAddresses::of(&applied);
        live.extend(&NatAddresses::of(&with(
            "192.168.1.110",
            &["192.168.1.104", "192.168.1.106"],
        )));
        assert_eq!(
            live.gone(&now),
            ips(&["192.168.1.104", "192.168.1.106", "192.168.1.110"])
        );
        // A floating IP that becomes the gateway address still changes role.
        let swapped = NatAddresses::of(&with("192.168.1.104", &["192.168.1.110"]));
        assert_eq!(
            NatAddresses::of(&applied).gone(&swapped),
            ips(&["192.168.1.104", "192.168.1.105", "192.168.1.110"])
        );
        assert!(NatAddresses::default().gone(&now).is_empty());
    }

    #[test]
    fn each_plane_states_its_own_kernel_part() {
        let r = example();
        let node = NodeConfig::default();
        let ipt = desired(&r, &node, Plane::Iptables, (1024, 65535));
        assert_eq!(ipt.floating.len(), r.floating_ips.len());
        assert!(ipt.nft.is_none() && ipt.bpf.is_none());
        assert!(ipt.iptables.contains("DNAT --to-destination"));
        assert!(
            ipt.sysctls
                .contains(&("net.ipv4.conf.all.accept_local", "0"))
        );
        let xdp = desired(&r, &node, Plane::Xdp, (1024, 65535));
        assert!(xdp.floating.is_empty() && xdp.nft.is_some() && xdp.bpf.is_some());
        assert!(!xdp.iptables.contains("DNAT --to-destination"));
        assert_eq!(xdp.announce_floating.len(), r.floating_ips.len());
        assert!(
            xdp.sysctls
                .contains(&("net.ipv4.conf.all.accept_local", "1"))
        );
        assert_eq!(desired(&r, &node, Plane::Xdp, (1024, 65535)), xdp, "pure");
    }
}
