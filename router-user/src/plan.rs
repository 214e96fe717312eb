//! What to change: a pure comparison of what the kernel has for one router
//! ([`Observed`], read by the backends) with what the router must be
//! ([`DesiredRouter`]), as an ordered list of [`Action`]s the backends carry
//! out. The same input twice gives an empty plan; every action prints as
//! one line (`xrouter check --plan`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;

use crate::{
    backend::{bpf, iptables, nft, ovs},
    config::node::InterfaceDriver,
    desired::{DesiredRouter, NatAddresses, routes::Via, routes::WantRoute},
    model::Mac,
};

/// A device in the router namespace, as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dev {
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<IpNet>,
    /// Some checksum or segmentation offload is on (read only for a port
    /// on a userspace-datapath OVS bridge; false otherwise).
    pub tx_offload: bool,
}

/// A device in the node namespace (a tap or a bridge).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostDev {
    /// `bridge`, `veth`, ... (None: no kind reported).
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    /// The bridge it is enslaved to, by name.
    pub controller: Option<String>,
}

/// A route xrouter installed (protocol static, main table), by names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteId {
    pub dst: IpNet,
    pub gateways: BTreeSet<IpAddr>,
    /// The output device of an on-link route.
    pub dev: Option<String>,
}

impl RouteId {
    /// The identity `w` has once installed.
    pub fn of(w: &WantRoute) -> RouteId {
        match &w.via {
            Via::Device => RouteId {
                dst: w.dst,
                gateways: BTreeSet::new(),
                dev: w.dev.clone(),
            },
            Via::Gateways(g) => RouteId {
                dst: w.dst,
                gateways: g.iter().copied().collect(),
                dev: None,
            },
        }
    }
}

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        for g in &self.gateways {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        Ok(())
    }
}

/// What the kernel has of one router.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The namespace exists.
    pub namespace: bool,
    /// `lo` is up in it.
    pub lo_up: bool,
    /// Its `qr-`/`qg-` devices, by name.
    pub ports: BTreeMap<String, Dev>,
    /// The node namespace's devices this router's ports use (taps,
    /// bridges), by name; a name absent is a device that does not exist.
    pub host: BTreeMap<String, HostDev>,
    pub routes: BTreeSet<RouteId>,
    /// `iptables-save` of the namespace.
    pub iptables: String,
    /// The `ip xrouter` table, if any.
    pub nft: Option<nft::Have>,
    /// The sysctls the router sets, as they are.
    pub sysctls: BTreeMap<String, String>,
    /// The router namespace's devices by name: their ifindexes (what the
    /// BPF maps key on).
    pub ifindex: HashMap<String, u32>,
    /// The BPF data path, through its pins (None: none there).
    pub bpf: Option<bpf::BpfState>,
    /// openvswitch plugging: the bridges and what OVSDB has of the
    /// router's taps (None with linuxbridge).
    pub ovs: Option<ovs::Have>,
}

/// What the engine knows beyond the kernel: what the router was before.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The addresses whose connections die when released, as they may be
    /// in place now (the last applied router's, and a failed attempt's).
    pub nat: NatAddresses,
    /// The floating IPs announced already (the last applied router's).
    pub announced: BTreeSet<Ipv4Addr>,
}

/// One change, carried out by a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Creates the router's namespace and sets `lo` up.
    CreateNamespace,
    /// Sets `lo` up.
    LoUp,
    /// Removes a `qr-`/`qg-` port no longer wanted.
    DeletePort(String),
    /// Creates a bridge in the node namespace.
    CreateBridge(String),
    /// Removes a tap left from a port whose other end vanished.
    DeleteTap(String),
    /// Creates a veth pair: `dev` moved into the router namespace, `tap`
    /// left in the node namespace.
    CreatePort {
        dev: String,
        tap: String,
    },
    SetMac {
        dev: String,
        mac: Mac,
    },
    SetMtu {
        dev: String,
        mtu: u32,
    },
    SetUp {
        dev: String,
    },
    /// Turns the port's checksum and segmentation offloads off (a
    /// userspace-datapath OVS bridge reads its peer).
    SoftwareTx {
        dev: String,
    },
    /// In the node namespace.
    SetHostMtu {
        dev: String,
        mtu: u32,
    },
    SetHostUp {
        dev: String,
    },
    Enslave {
        tap: String,
        bridge: String,
    },
    /// Takes a tap out of the Linux bridge it is enslaved to (its port
    /// moves to OVS).
    Release {
        tap: String,
        bridge: String,
    },
    /// Makes the tap a port of the OVS bridge anew, with these Interface
    /// `external_ids` (on the dead VLAN until the OVS agent binds it).
    OvsAddPort {
        tap: String,
        bridge: String,
        external_ids: Vec<(String, String)>,
    },
    /// Sets these `external_ids` of the tap's OVS Interface.
    OvsSetIds {
        tap: String,
        external_ids: Vec<(String, String)>,
    },
    /// Removes the tap's port from OVS (if there).
    OvsDelPort(String),
    DelAddress {
        dev: String,
        net: IpNet,
    },
    AddAddress {
        dev: String,
        net: IpNet,
    },
    DelRoute(RouteId),
    AddRoute(WantRoute),
    /// Loads the whole iptables rule set (it differs).
    LoadIptables,
    /// Loads this nft script into the `ip xrouter` table.
    Nft(String),
    /// Removes the `ip xrouter` table.
    NftClear,
    Sysctl {
        key: String,
        value: String,
    },
    /// Deletes the kernel's connections of released addresses.
    FlushConntrack(Vec<Ipv4Addr>),
    /// The BPF object of the router: loads it (or adopts its pins), makes
    /// its maps hold the desired contents, attaches it to the ports and
    /// their taps (VLAN tags inserted in software), mirrors the neighbours,
    /// and deletes the connections of released addresses.
    Bpf {
        flush: Vec<Ipv4Addr>,
    },
    /// Gratuitous ARP for an address (after everything else).
    Announce {
        dev: String,
        mac: Mac,
        ip: Ipv4Addr,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Action::*;
        match self {
            CreateNamespace => write!(f, "create the namespace"),
            LoUp => write!(f, "set lo up"),
            DeletePort(d) => write!(f, "delete port {d}"),
            CreateBridge(b) => write!(f, "create bridge {b}"),
            DeleteTap(t) => write!(f, "delete stale tap {t}"),
            CreatePort { dev, tap } => write!(f, "create port {dev} (peer {tap})"),
            SetMac { dev, mac } => write!(f, "{dev}: MAC {mac}"),
            SetMtu { dev, mtu } => write!(f, "{dev}: MTU {mtu}"),
            SetUp { dev } => write!(f, "{dev}: up"),
            SoftwareTx { dev } => write!(
                f,
                "{dev}: checksums and segmentation in software (OVS userspace datapath)"
            ),
            SetHostMtu { dev, mtu } => write!(f, "{dev}: MTU {mtu}"),
            SetHostUp { dev } => write!(f, "{dev}: up"),
            Enslave { tap, bridge } => write!(f, "{tap}: into bridge {bridge}"),
            Release { tap, bridge } => write!(f, "{tap}: out of bridge {bridge}"),
            OvsAddPort {
                tap,
                bridge,
                external_ids,
            } => write!(
                f,
                "{tap}: add to OVS bridge {bridge} ({})",
                ids(external_ids)
            ),
            OvsSetIds { tap, external_ids } => {
                write!(f, "{tap}: set OVS external_ids {}", ids(external_ids))
            }
            OvsDelPort(tap) => write!(f, "{tap}: delete from OVS"),
            DelAddress { dev, net } => write!(f, "{dev}: remove address {net}"),
            AddAddress { dev, net } => write!(f, "{dev}: add address {net}"),
            DelRoute(r) => write!(f, "remove route {r}"),
            AddRoute(r) => write!(f, "add route {r}"),
            LoadIptables => write!(f, "load the iptables rules"),
            Nft(s) => {
                // An element change shows itself; a whole table is long.
                let lines: Vec<&str> = s.lines().collect();
                if lines.len() <= 2 && s.len() <= 200 {
                    write!(f, "nft: {}", lines.join("; "))
                } else {
                    write!(f, "nft: load the xrouter table ({} lines)", lines.len())
                }
            }
            NftClear => write!(f, "remove the nftables table"),
            Sysctl { key, value } => write!(f, "sysctl {key}={value}"),
            FlushConntrack(ips) => write!(f, "flush kernel connections of {}", list(ips)),
            Bpf { flush } if flush.is_empty() => write!(f, "BPF: maps, programs, neighbours"),
            Bpf { flush } => write!(
                f,
                "BPF: maps, programs, neighbours; flush connections of {}",
                list(flush)
            ),
            Announce { dev, ip, .. } => write!(f, "{dev}: gratuitous ARP for {ip}"),
        }
    }
}

fn ids(ids: &[(String, String)]) -> String {
    ids.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn list(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a router cannot be planned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the bridge of network {network} is to be {bridge}, but a device of that name exists and is not a bridge ({kind})"
    )]
    NotABridge {
        network: String,
        bridge: String,
        kind: String,
    },
    #[error(
        "the Open vSwitch integration bridge {bridge} does not exist (the OVS agent creates it; \
         ovs_integration_bridge names it)"
    )]
    NoIntegrationBridge { bridge: String },
}

/// The actions that bring `o` to `d`, in the order they must run: the
/// namespace, ports and addresses, routes, rules, sysctls, flushed
/// connections, the BPF programs, then the floating IPs published and
/// everything new announced. `h` is what the router was (released
/// addresses are flushed, new floating IPs announced).
pub fn plan(o: &Observed, d: &DesiredRouter, h: &History) -> Result<Vec<Action>, PlanError> {
    let mut out = Vec::new();
    let mut announce = Vec::new();
    if !o.namespace {
        out.push(Action::CreateNamespace);
    } else if !o.lo_up {
        out.push(Action::LoUp);
    }
    let on_ovs = d.driver == InterfaceDriver::OpenVSwitch;
    let no_ovs = ovs::Have::default();
    let ovs_have = o.ovs.as_ref().unwrap_or(&no_ovs);
    if on_ovs {
        // One bridge for every port; the OVS agent owns it.
        if let Some(p) = d.ports.first()
            && !ovs_have.bridges.contains_key(&p.bridge)
        {
            return Err(PlanError::NoIntegrationBridge {
                bridge: p.bridge.clone(),
            });
        }
    }
    let wanted: BTreeSet<&str> = d.ports.iter().map(|p| p.dev.as_str()).collect();
    for dev in o.ports.keys() {
        if !wanted.contains(dev.as_str()) {
            out.push(Action::DeletePort(dev.clone()));
            if on_ovs {
                // Its tap went with it; its Port row stays unless removed.
                out.push(Action::OvsDelPort(format!("tap{}", &dev[3..])));
            }
        }
    }
    let mut bridges_made = BTreeSet::new();
    for p in &d.ports {
        match o.host.get(&p.bridge) {
            _ if on_ovs => {}
            Some(b) if b.kind.as_deref() != Some("bridge") => {
                return Err(PlanError::NotABridge {
                    network: crate::text::label(&p.network_id),
                    bridge: p.bridge.clone(),
                    kind: b.kind.clone().unwrap_or_else(|| "no kind".into()),
                });
            }
            Some(b) if !b.up => out.push(Action::SetHostUp {
                dev: p.bridge.clone(),
            }),
            Some(_) => {}
            None if bridges_made.insert(p.bridge.clone()) => {
                out.push(Action::CreateBridge(p.bridge.clone()))
            }
            None => {}
        }
        // A port made anew has the kernel's defaults for everything.
        let have = match o.ports.get(&p.dev) {
            Some(dev) => Some(dev),
            None => {
                if o.host.contains_key(&p.tap) {
                    out.push(Action::DeleteTap(p.tap.clone()));
                }
                out.push(Action::CreatePort {
                    dev: p.dev.clone(),
                    tap: p.tap.clone(),
                });
                None
            }
        };
        if have.is_none_or(|h| h.mac != p.mac.0) {
            out.push(Action::SetMac {
                dev: p.dev.clone(),
                mac: p.mac,
            });
        }
        if have.is_none_or(|h| h.mtu != p.mtu) {
            out.push(Action::SetMtu {
                dev: p.dev.clone(),
                mtu: p.mtu,
            });
        }
        if have.is_none_or(|h| !h.up) {
            out.push(Action::SetUp { dev: p.dev.clone() });
        }
        let userspace = on_ovs
            && ovs_have
                .bridges
                .get(&p.bridge)
                .is_some_and(|t| t == "netdev");
        if userspace && have.is_none_or(|h| h.tx_offload) {
            out.push(Action::SoftwareTx { dev: p.dev.clone() });
        }
        let tap = have.and_then(|_| o.host.get(&p.tap));
        if tap.is_none_or(|t| t.mtu != p.mtu) {
            out.push(Action::SetHostMtu {
                dev: p.tap.clone(),
                mtu: p.mtu,
            });
        }
        if on_ovs {
            // A Linux bridge's tap (the router was plugged by linuxbridge)
            // leaves it; `ovs-system` is the kernel datapath's own.
            if let Some(b) = tap
                .and_then(|t| t.controller.as_deref())
                .filter(|c| *c != "ovs-system")
            {
                out.push(Action::Release {
                    tap: p.tap.clone(),
                    bridge: b.to_string(),
                });
            }
            // A tap made anew is plugged anew, as Neutron's replace_port.
            let state = if tap.is_none() {
                ovs::PortState::Missing
            } else {
                ovs::differ(ovs_have, &p.tap, &p.bridge, &p.external_ids)
            };
            match state {
                ovs::PortState::Missing => out.push(Action::OvsAddPort {
                    tap: p.tap.clone(),
                    bridge: p.bridge.clone(),
                    external_ids: p.external_ids.clone(),
                }),
                ovs::PortState::WrongIds => out.push(Action::OvsSetIds {
                    tap: p.tap.clone(),
                    external_ids: p.external_ids.clone(),
                }),
                ovs::PortState::Right => {}
            }
        } else if tap.is_none_or(|t| t.controller.as_deref() != Some(p.bridge.as_str())) {
            out.push(Action::Enslave {
                tap: p.tap.clone(),
                bridge: p.bridge.clone(),
            });
        }
        if tap.is_none_or(|t| !t.up) {
            out.push(Action::SetHostUp { dev: p.tap.clone() });
        }
        // Addresses: the floating IPs' /32s are published last (below).
        let has: &[IpNet] = have.map_or(&[], |h| &h.addresses);
        let keep: &[IpNet] = if p.role == crate::model::Role::Gateway {
            &d.floating
        } else {
            &[]
        };
        for net in has {
            if !p.addresses.contains(net) && !keep.contains(net) {
                out.push(Action::DelAddress {
                    dev: p.dev.clone(),
                    net: *net,
                });
            }
        }
        for net in &p.addresses {
            if !has.contains(net) {
                out.push(Action::AddAddress {
                    dev: p.dev.clone(),
                    net: *net,
                });
                if let IpAddr::V4(ip) = net.addr() {
                    announce.push(Action::Announce {
                        dev: p.dev.clone(),
                        mac: p.mac,
                        ip,
                    });
                }
            }
        }
    }

    let want_routes: BTreeMap<RouteId, &WantRoute> =
        d.routes.iter().map(|w| (RouteId::of(w), w)).collect();
    for r in &o.routes {
        if !want_routes.contains_key(r) {
            out.push(Action::DelRoute(r.clone()));
        }
    }
    for (id, w) in &want_routes {
        if !o.routes.contains(id) {
            out.push(Action::AddRoute((*w).clone()));
        }
    }

    if !iptables::equivalent(&o.iptables, &d.iptables) {
        out.push(Action::LoadIptables);
    }
    match &d.nft {
        Some(w) => {
            let s = nft::script(o.nft.as_ref(), w);
            if !s.is_empty() {
                out.push(Action::Nft(s));
            }
        }
        None if o.nft.is_some() => out.push(Action::NftClear),
        None => {}
    }
    for (k, v) in &d.sysctls {
        if o.sysctls.get(*k).map(String::as_str) != Some(*v) {
            out.push(Action::Sysctl {
                key: k.to_string(),
                value: v.to_string(),
            });
        }
    }

    // Connections of what went away die with it, as in Neutron (after the
    // rules changed, so no new packet re-creates them).
    let gone = h.nat.gone(&d.nat);
    if !gone.is_empty() {
        out.push(Action::FlushConntrack(gone.clone()));
    }
    if let Some(maps) = &d.bpf {
        let want = bpf::resolve(maps, &o.ifindex);
        let in_place = o.bpf.as_ref().is_some_and(|b| b.in_place && b.maps == want);
        if !in_place || !gone.is_empty() {
            out.push(Action::Bpf { flush: gone });
        }
    }

    // Floating IPs last: from then on the kernel (iptables plane) or the
    // programs answer ARP for them, so they must be translated already.
    if let Some(g) = d
        .ports
        .iter()
        .find(|p| p.role == crate::model::Role::Gateway)
    {
        let has: &[IpNet] = o.ports.get(&g.dev).map_or(&[], |h| &h.addresses);
        for net in &d.floating {
            if !has.contains(net) {
                out.push(Action::AddAddress {
                    dev: g.dev.clone(),
                    net: *net,
                });
                if let IpAddr::V4(ip) = net.addr() {
                    announce.push(Action::Announce {
                        dev: g.dev.clone(),
                        mac: g.mac,
                        ip,
                    });
                }
            }
        }
        for ip in &d.announce_floating {
            // New, or everything is new in a namespace made anew.
            if !h.announced.contains(ip) || !o.namespace {
                announce.push(Action::Announce {
                    dev: g.dev.clone(),
                    mac: g.mac,
                    ip: *ip,
                });
            }
        }
    }
    out.extend(announce);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        backend::bpf::{BpfState, DEFAULT_SNAT_PORTS},
        config::node::NodeConfig,
        desired::{Plane, desired},
        model::{FloatingIp, Router},
        testing::example,
    };

    fn want(r: &Router, plane: Plane) -> DesiredRouter {
        desired(r, &NodeConfig::default(), plane, DEFAULT_SNAT_PORTS)
    }

    /// What the kernel holds once `d` is applied.
    fn applied(d: &DesiredRouter) -> Observed {
        let mut o = Observed {
            namespace: true,
            lo_up: true,
            ..Default::default()
        };
        for (i, p) in d.ports.iter().enumerate() {
            let mut addresses = p.addresses.clone();
            if p.role == crate::model::Role::Gateway {
                addresses.extend(d.floating.iter().copied());
            }
            o.ports.insert(
                p.dev.clone(),
                Dev {
                    mac: p.mac.0.to_vec(),
                    mtu: p.mtu,
                    up: true,
                    addresses,
                    tx_offload: false,
                },
            );
            o.ifindex.insert(p.dev.clone(), 10 + i as u32);
            o.host.insert(
                p.tap.clone(),
                HostDev {
                    kind: Some("veth".into()),
                    mtu: p.mtu,
                    up: true,
                    controller: Some(p.bridge.clone()),
                },
            );
            o.host.insert(
                p.bridge.clone(),
                HostDev {
                    kind: Some("bridge".into()),
                    mtu: 1500,
                    up: true,
                    controller: None,
                },
            );
        }
        o.routes = d.routes.iter().map(RouteId::of).collect();
        o.iptables = d.iptables.clone();
        o.nft = d.nft.as_ref().map(nft::Have::of);
        o.sysctls = d
            .sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        o.bpf = d.bpf.as_ref().map(|m| BpfState {
            maps: bpf::resolve(m, &o.ifindex),
            in_place: true,
        });
        if d.driver == InterfaceDriver::OpenVSwitch {
            let mut have = ovs::Have::default();
            for p in &d.ports {
                // OVS reads the tap itself: no kernel bridge (netdev).
                o.host.get_mut(&p.tap).unwrap().controller = None;
                o.host.remove(&p.bridge);
                have.bridges.insert(p.bridge.clone(), "netdev".into());
                have.ports.insert(
                    p.tap.clone(),
                    ovs::Port {
                        bridge: Some(p.bridge.clone()),
                        external_ids: p
                            .external_ids
                            .iter()
                            .cloned()
                            .chain([("other".to_string(), "kept".to_string())])
                            .collect(),
                    },
                );
            }
            o.ovs = Some(have);
        }
        o
    }

    fn ovs_node() -> NodeConfig {
        NodeConfig::parse("interface_driver = \"openvswitch\"", "t").unwrap()
    }

    fn want_ovs(r: &Router, plane: Plane) -> DesiredRouter {
        desired(r, &ovs_node(), plane, DEFAULT_SNAT_PORTS)
    }

    #[test]
    fn ovs_plugging_is_idempotent_and_plugs_each_tap_with_neutron_s_ids() {
        let r = example();
        for plane in PLANES {
            let d = want_ovs(&r, plane);
            assert!(d.ports.iter().all(|p| p.bridge == "br-int"));
            let a = plan(&applied(&d), &d, &history(&r)).unwrap();
            assert!(a.is_empty(), "{plane:?}: {a:?}");
            // A new router: its taps on br-int, no Linux bridge made.
            let mut o = Observed {
                ovs: applied(&d).ovs,
                ..Default::default()
            };
            o.ovs.as_mut().unwrap().ports.clear();
            let a = plan(&o, &d, &History::default()).unwrap();
            assert!(
                !a.iter()
                    .any(|x| matches!(x, Action::CreateBridge(_) | Action::Enslave { .. })),
                "{a:?}"
            );
            let adds: Vec<&Action> = a
                .iter()
                .filter(|x| matches!(x, Action::OvsAddPort { .. }))
                .collect();
            assert_eq!(adds.len(), d.ports.len(), "{a:?}");
            let g = r.gateway.as_ref().unwrap();
            assert!(a.contains(&Action::OvsAddPort {
                tap: g.port.tap(),
                bridge: "br-int".into(),
                external_ids: vec![
                    ("iface-id".into(), g.port.id.clone()),
                    ("iface-status".into(), "active".into()),
                    ("attached-mac".into(), g.port.mac.to_string()),
                ],
            }));
            let line = adds[0].to_string();
            assert!(
                line.starts_with("tap")
                    && line.contains(": add to OVS bridge br-int (iface-id=")
                    && line.contains("iface-status=active attached-mac=")
                    && !line.contains('\n'),
                "{line}"
            );
            // The tap must be made before it is plugged and then set up.
            let pos = |f: &dyn Fn(&Action) -> bool| a.iter().position(f).unwrap();
            let made = pos(&|x| matches!(x, Action::CreatePort { .. }));
            let plugged = pos(&|x| matches!(x, Action::OvsAddPort { .. }));
            assert!(made < plugged);
            // A netdev bridge: every port finishes its checksums itself.
            let soft = a
                .iter()
                .filter(|x| matches!(x, Action::SoftwareTx { .. }))
                .count();
            assert_eq!(soft, d.ports.len(), "{a:?}");
        }
    }

    #[test]
    fn an_ovs_port_changed_behind_our_back_is_repaired() {
        let r = example();
        let d = want_ovs(&r, Plane::Xdp);
        let tap = d.ports[0].tap.clone();
        // Deleted from the bridge.
        let mut o = applied(&d);
        o.ovs.as_mut().unwrap().ports.remove(&tap);
        let a = plan(&o, &d, &history(&r)).unwrap();
        assert!(
            matches!(a.as_slice(), [Action::OvsAddPort { tap: t, .. }] if *t == tap),
            "{a:?}"
        );
        // Its offloads turned on again.
        let mut o = applied(&d);
        o.ports.get_mut(&d.ports[0].dev).unwrap().tx_offload = true;
        let a = plan(&o, &d, &history(&r)).unwrap();
        assert_eq!(
            a,
            [Action::SoftwareTx {
                dev: d.ports[0].dev.clone()
            }]
        );
        // On the kernel datapath, they stay.
        o.ovs
            .as_mut()
            .unwrap()
            .bridges
            .insert("br-int".into(), "system".into());
        assert!(plan(&o, &d, &history(&r)).unwrap().is_empty());
        // Moved to another bridge.
        let mut o = applied(&d);
        o.ovs.as_mut().unwrap().ports.get_mut(&tap).unwrap().bridge = Some("br-ex".into());
        let a = plan(&o, &d, &history(&r)).unwrap();
        assert!(matches!(a.as_slice(), [Action::OvsAddPort { .. }]), "{a:?}");
        // Its external_ids changed: set, the port stays (its VLAN tag too).
        let mut o = applied(&d);
        let ids = &mut o
            .ovs
            .as_mut()
            .unwrap()
            .ports
            .get_mut(&tap)
            .unwrap()
            .external_ids;
        ids.insert("iface-status".into(), "down".into());
        let a = plan(&o, &d, &history(&r)).unwrap();
        assert_eq!(
            a,
            [Action::OvsSetIds {
                tap: tap.clone(),
                external_ids: d.ports[0].external_ids.clone()
            }]
        );
        // A tap made anew is plugged anew.
        let mut o = applied(&d);
        o.ports.remove(&d.ports[0].dev);
        o.host.remove(&tap);
        let a = plan(&o, &d, &history(&r)).unwrap();
        assert!(
            a.iter()
                .any(|x| matches!(x, Action::OvsAddPort { tap: t, .. } if *t == tap)),
            "{a:?}"
        );
        // A port the router no longer has leaves OVS with its device.
        let mut r2 = r.clone();
        let gone = r2.interfaces.remove(0);
        let a = plan(&applied(&d), &want_ovs(&r2, Plane::Xdp), &history(&r)).unwrap();
        let i = a
            .iter()
            .position(|x| *x == Action::DeletePort(gone.device()))
            .unwrap();
        assert_eq!(a[i + 1], Action::OvsDelPort(gone.tap()), "{a:?}");
        assert_eq!(
            a[i + 1].to_string(),
            format!("{}: delete from OVS", gone.tap())
        );
    }

    #[test]
    fn a_missing_integration_bridge_stops_the_plan_naming_it() {
        let r = example();
        let d = want_ovs(&r, Plane::Iptables);
        let mut o = applied(&d);
        o.ovs.as_mut().unwrap().bridges.clear();
        let e = plan(&o, &d, &history(&r)).unwrap_err().to_string();
        assert!(
            e.contains("integration bridge br-int does not exist"),
            "{e}"
        );
        assert!(plan(&Observed::default(), &d, &History::default()).is_err());
    }

    #[test]
    fn a_router_moves_from_linux_bridges_to_ovs() {
        let r = example();
        let lb = want(&r, Plane::Tc);
        let mut o = applied(&lb);
        let d = want_ovs(&r, Plane::Tc);
        let mut have = ovs::Have::default();
        have.bridges.insert("br-int".into(), String::new());
        o.ovs = Some(have);
        let a = plan(&o, &d, &history(&r)).unwrap();
        for p in &lb.ports {
            let rel = a
                .iter()
                .position(|x| {
                    *x == Action::Release {
                        tap: p.tap.clone(),
                        bridge: p.bridge.clone(),
                    }
                })
                .unwrap_or_else(|| panic!("{a:?}"));
            let add = a
                .iter()
                .position(|x| matches!(x, Action::OvsAddPort { tap, .. } if *tap == p.tap))
                .unwrap();
            assert!(rel < add);
        }
        assert_eq!(
            a.len(),
            2 * lb.ports.len(),
            "only the plugging changes: {a:?}"
        );
    }

    fn history(r: &Router) -> History {
        History {
            nat: NatAddresses::of(r),
            announced: r.floating_ips.iter().map(|f| f.floating_ip).collect(),
        }
    }

    const PLANES: [Plane; 3] = [Plane::Iptables, Plane::Xdp, Plane::Tc];

    #[test]
    fn a_new_router_is_built_in_order() {
        let mut r = example();
        r.routes.push(crate::model::ExtraRoute {
            destination: "172.16.0.0/16".parse().unwrap(),
            nexthop: "10.0.1.50".parse().unwrap(),
        });
        let d = want(&r, Plane::Iptables);
        let a = plan(&Observed::default(), &d, &History::default()).unwrap();
        let pos = |f: &dyn Fn(&Action) -> bool| a.iter().position(f).expect("present");
        assert_eq!(a[0], Action::CreateNamespace);
        let port = pos(&|x| matches!(x, Action::CreatePort { .. }));
        let addr = pos(&|x| matches!(x, Action::AddAddress { .. }));
        let route = pos(&|x| matches!(x, Action::AddRoute(_)));
        let rules = pos(&|x| *x == Action::LoadIptables);
        let fip = pos(&|x| matches!(x, Action::AddAddress { net, .. } if net.prefix_len() == 32));
        let garp = pos(&|x| matches!(x, Action::Announce { .. }));
        assert!(port < addr && addr < route && route < rules && rules < fip && fip < garp);
        // Every port address and the floating IP are announced.
        let announced = a
            .iter()
            .filter(|x| matches!(x, Action::Announce { .. }))
            .count();
        assert_eq!(announced, 3 + r.floating_ips.len());
        assert!(!a.iter().any(|x| matches!(x, Action::FlushConntrack(_))));
    }

    #[test]
    fn the_same_router_twice_is_an_empty_plan() {
        let r = example();
        for plane in PLANES {
            let d = want(&r, plane);
            let a = plan(&applied(&d), &d, &history(&r)).unwrap();
            assert!(a.is_empty(), "{plane:?}: {a:?}");
        }
    }

    #[test]
    fn a_floating_ip_added_is_translated_then_published_and_announced() {
        let r = example();
        let mut r2 = r.clone();
        r2.floating_ips.push(FloatingIp {
            id: "f2".into(),
            floating_ip: "192.168.1.112".parse().unwrap(),
            fixed_ip: "10.0.2.10".parse().unwrap(),
        });
        let new: Ipv4Addr = "192.168.1.112".parse().unwrap();
        // iptables: the rules, then the /32 on qg-, announced.
        let a = plan(
            &applied(&want(&r, Plane::Iptables)),
            &want(&r2, Plane::Iptables),
            &history(&r),
        )
        .unwrap();
        assert_eq!(a[0], Action::LoadIptables);
        assert!(matches!(&a[1], Action::AddAddress { net, .. } if net.addr() == new));
        assert!(matches!(&a[2], Action::Announce { ip, .. } if *ip == new));
        assert_eq!(a.len(), 3, "{a:?}");
        // eBPF: the nft elements, the maps, an announcement; no /32.
        for plane in [Plane::Xdp, Plane::Tc] {
            let a = plan(&applied(&want(&r, plane)), &want(&r2, plane), &history(&r)).unwrap();
            assert!(
                matches!(&a[0], Action::Nft(s) if s.starts_with("add element")),
                "{a:?}"
            );
            assert_eq!(a[1], Action::Bpf { flush: vec![] });
            assert!(matches!(&a[2], Action::Announce { ip, .. } if *ip == new));
            assert_eq!(a.len(), 3, "{plane:?}: {a:?}");
        }
    }

    #[test]
    fn a_floating_ip_moved_keeps_its_connections_one_released_loses_them() {
        let r = example();
        let fip = r.floating_ips[0].floating_ip;
        let mut moved = r.clone();
        moved.floating_ips[0].fixed_ip = "10.0.2.77".parse().unwrap();
        let mut released = r.clone();
        released.floating_ips.clear();
        for plane in PLANES {
            let before = applied(&want(&r, plane));
            let a = plan(&before, &want(&moved, plane), &history(&r)).unwrap();
            assert!(
                !a.iter().any(|x| matches!(x, Action::FlushConntrack(_))),
                "{plane:?}: moving flushes nothing: {a:?}"
            );
            let a = plan(&before, &want(&released, plane), &history(&r)).unwrap();
            assert!(
                a.contains(&Action::FlushConntrack(vec![fip])),
                "{plane:?}: {a:?}"
            );
            if plane.is_bpf() {
                assert!(a.contains(&Action::Bpf { flush: vec![fip] }), "{a:?}");
            } else {
                let qg = r.gateway.as_ref().unwrap().port.device();
                assert!(a.contains(&Action::DelAddress {
                    dev: qg,
                    net: format!("{fip}/32").parse().unwrap()
                }));
            }
        }
    }

    #[test]
    fn a_gateway_changed_flushes_the_old_address() {
        let r = example();
        let mut r2 = r.clone();
        let g = r2.gateway.as_mut().unwrap();
        g.port.addresses = vec!["192.168.1.120/24".parse().unwrap()];
        let old: Ipv4Addr = "192.168.1.110".parse().unwrap();
        for plane in PLANES {
            let a = plan(&applied(&want(&r, plane)), &want(&r2, plane), &history(&r)).unwrap();
            assert!(
                a.contains(&Action::FlushConntrack(vec![old])),
                "{plane:?}: {a:?}"
            );
            assert!(a.iter().any(|x| matches!(x, Action::AddAddress { net, .. } if net.addr().to_string() == "192.168.1.120")));
        }
    }

    #[test]
    fn a_device_in_the_bridge_s_place_stops_the_plan() {
        let r = example();
        let d = want(&r, Plane::Iptables);
        let mut o = applied(&d);
        let br = d.ports[0].bridge.clone();
        o.host.get_mut(&br).unwrap().kind = Some("veth".into());
        let e = plan(&o, &d, &history(&r)).unwrap_err();
        assert!(
            e.to_string().contains(&br) && e.to_string().contains("veth"),
            "{e}"
        );
    }

    #[test]
    fn what_changed_behind_our_back_is_repaired() {
        let r = example();
        for plane in PLANES {
            let d = want(&r, plane);
            let mut o = applied(&d);
            let qr = d.ports[0].dev.clone();
            o.ports.get_mut(&qr).unwrap().addresses.clear();
            o.routes.clear();
            o.iptables.clear();
            o.sysctls.clear();
            if let Some(b) = o.bpf.as_mut() {
                b.in_place = false;
            }
            let a = plan(&o, &d, &history(&r)).unwrap();
            assert!(
                a.iter()
                    .any(|x| matches!(x, Action::AddAddress { dev, .. } if *dev == qr))
            );
            assert!(a.contains(&Action::LoadIptables));
            assert!(a.iter().any(|x| matches!(x, Action::Sysctl { .. })));
            assert_eq!(plane.is_bpf(), a.contains(&Action::Bpf { flush: vec![] }));
        }
    }
}
