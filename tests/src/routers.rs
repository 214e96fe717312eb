//! Router dicts in Neutron's `sync_routers` format, built from typed specs
//! that tests can mutate, with the article's topology as the default.

use serde_json::{Value, json};

use crate::names;

/// A Neutron network with one IPv4 subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The test's name for it ("ext", "net1", ...); not part of the dict.
    pub name: String,
    pub id: String,
    pub subnet_id: String,
    /// e.g. "81.1.180.0/24".
    pub cidr: String,
    /// The subnet's gateway_ip (None: no gateway).
    pub gateway_ip: Option<String>,
}

impl Network {
    pub fn new(name: &str, cidr: &str, gateway_ip: Option<&str>) -> Network {
        Network {
            name: name.to_string(),
            id: names::uuid(),
            subnet_id: names::uuid(),
            cidr: cidr.to_string(),
            gateway_ip: gateway_ip.map(str::to_string),
        }
    }

    pub fn prefixlen(&self) -> u8 {
        self.cidr
            .split_once('/')
            .and_then(|(_, l)| l.parse().ok())
            .expect("cidr has a prefix length")
    }

    /// The Linux bridge of this network: `brq<network id[:11]>`.
    pub fn bridge(&self) -> String {
        format!("brq{}", short(&self.id))
    }

    fn subnet_json(&self) -> Value {
        json!({"id": self.subnet_id, "cidr": self.cidr, "gateway_ip": self.gateway_ip})
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(11)]
}

/// A router port (an element of `_interfaces`, or `gw_port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub id: String,
    pub mac: String,
    pub mtu: u32,
    pub network: Network,
    /// The port's address, without prefix (the prefix is the network's).
    pub ip: String,
}

impl PortSpec {
    pub fn new(network: &Network, ip: &str) -> PortSpec {
        PortSpec {
            id: names::uuid(),
            mac: names::mac(),
            mtu: 1500,
            network: network.clone(),
            ip: ip.to_string(),
        }
    }

    /// `qr-<id[:11]>`.
    pub fn qr(&self) -> String {
        format!("qr-{}", short(&self.id))
    }

    /// `qg-<id[:11]>`.
    pub fn qg(&self) -> String {
        format!("qg-{}", short(&self.id))
    }

    /// `tap<id[:11]>`, the peer in the node namespace.
    pub fn tap(&self) -> String {
        format!("tap{}", short(&self.id))
    }

    pub fn to_json(&self, extra_subnets: &[String]) -> Value {
        json!({
            "id": self.id,
            "mac_address": self.mac,
            "mtu": self.mtu,
            "network_id": self.network.id,
            "admin_state_up": true,
            "device_owner": "network:router_interface",
            "fixed_ips": [{
                "ip_address": self.ip,
                "prefixlen": self.network.prefixlen(),
                "subnet_id": self.network.subnet_id,
            }],
            "subnets": [self.network.subnet_json()],
            "extra_subnets": extra_subnets.iter().map(|c| json!({"id": names::uuid(), "cidr": c, "gateway_ip": null})).collect::<Vec<_>>(),
        })
    }
}

/// A floating IP association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FipSpec {
    pub id: String,
    pub floating_ip: String,
    pub fixed_ip: String,
    pub port_id: String,
}

/// One router, as the test wants it; [`RouterSpec::to_json`] makes the dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSpec {
    pub id: String,
    pub enable_snat: bool,
    pub gateway: Option<PortSpec>,
    /// CIDRs of `gw_port.extra_subnets`.
    pub extra_subnets: Vec<String>,
    pub interfaces: Vec<PortSpec>,
    pub fips: Vec<FipSpec>,
    /// `routes`: (destination, nexthop).
    pub routes: Vec<(String, String)>,
}

/// The article's addresses.
pub mod article {
    pub const QR1: &str = "81.1.180.1";
    pub const QR2: &str = "91.1.180.1";
    pub const NET1: &str = "81.1.180.0/24";
    pub const NET2: &str = "91.1.180.0/24";
    pub const EXT: &str = "192.168.1.0/24";
    pub const EXT_GW: &str = "192.168.1.1";
    /// The router's gateway (SNAT) address.
    pub const QG: &str = "192.168.1.110";
    pub const FIP: &str = "192.168.1.104";
    /// The VM in NET1 (no floating IP).
    pub const VM1: &str = "81.1.180.12";
    /// The VM in NET2 that has floating IP FIP.
    pub const VM2: &str = "91.1.180.14";
    /// The external host.
    pub const EXT_HOST: &str = "192.168.1.15";
}

impl RouterSpec {
    /// A router with no ports; its ID carries the test's tag.
    pub fn empty(tag: &str) -> RouterSpec {
        RouterSpec {
            id: names::uuid_with(tag),
            enable_snat: true,
            gateway: None,
            extra_subnets: vec![],
            interfaces: vec![],
            fips: vec![],
            routes: vec![],
        }
    }

    /// The article's router: qr- ports 81.1.180.1/24 (on `net1`) and
    /// 91.1.180.1/24 (on `net2`), qg- 192.168.1.110/24 (on `ext`, gateway
    /// 192.168.1.1), floating IP 192.168.1.104 -> 91.1.180.14.
    pub fn article(tag: &str, ext: &Network, net1: &Network, net2: &Network) -> RouterSpec {
        let mut r = RouterSpec::empty(tag);
        r.gateway = Some(PortSpec::new(ext, article::QG));
        r.interfaces.push(PortSpec::new(net1, article::QR1));
        r.interfaces.push(PortSpec::new(net2, article::QR2));
        r.add_fip(article::FIP, article::VM2);
        r
    }

    pub fn namespace(&self) -> String {
        format!("qrouter-{}", self.id)
    }

    /// The qg- device name. Panics if the router has no gateway.
    pub fn qg(&self) -> String {
        self.gateway.as_ref().expect("router has a gateway").qg()
    }

    /// The internal port on network `net` (by the test's name).
    pub fn interface(&self, net: &str) -> &PortSpec {
        self.interfaces
            .iter()
            .find(|p| p.network.name == net)
            .unwrap_or_else(|| panic!("router has no interface on {net}"))
    }

    pub fn interface_mut(&mut self, net: &str) -> &mut PortSpec {
        self.interfaces
            .iter_mut()
            .find(|p| p.network.name == net)
            .unwrap_or_else(|| panic!("router has no interface on {net}"))
    }

    /// The qr- device on network `net`.
    pub fn qr(&self, net: &str) -> String {
        self.interface(net).qr()
    }

    /// Adds floating IP `fip` for `fixed`.
    pub fn add_fip(&mut self, fip: &str, fixed: &str) -> &mut Self {
        self.fips.push(FipSpec {
            id: names::uuid(),
            floating_ip: fip.to_string(),
            fixed_ip: fixed.to_string(),
            port_id: names::uuid(),
        });
        self
    }

    /// Removes floating IP `fip`; panics if the router has none such.
    pub fn remove_fip(&mut self, fip: &str) -> &mut Self {
        let before = self.fips.len();
        self.fips.retain(|f| f.floating_ip != fip);
        assert!(self.fips.len() < before, "no floating IP {fip} to remove");
        self
    }

    /// Points floating IP `fip` at another fixed IP.
    pub fn move_fip(&mut self, fip: &str, fixed: &str) -> &mut Self {
        let f = self
            .fips
            .iter_mut()
            .find(|f| f.floating_ip == fip)
            .unwrap_or_else(|| panic!("no floating IP {fip}"));
        f.fixed_ip = fixed.to_string();
        f.port_id = names::uuid();
        self
    }

    pub fn add_route(&mut self, destination: &str, nexthop: &str) -> &mut Self {
        self.routes
            .push((destination.to_string(), nexthop.to_string()));
        self
    }

    /// The router dict.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": format!("router-{}", &self.id[..8]),
            "admin_state_up": true,
            "status": "ACTIVE",
            "distributed": false,
            "ha": false,
            "enable_snat": self.enable_snat,
            "external_gateway_info": self.gateway.as_ref().map(|g| json!({
                "network_id": g.network.id,
                "enable_snat": self.enable_snat,
                "external_fixed_ips": [{"subnet_id": g.network.subnet_id, "ip_address": g.ip}],
            })),
            "gw_port": self.gateway.as_ref().map(|g| g.to_json(&self.extra_subnets)),
            "_interfaces": self.interfaces.iter().map(|p| p.to_json(&[])).collect::<Vec<_>>(),
            "_floatingips": self.fips.iter().map(|f| json!({
                "id": f.id,
                "floating_ip_address": f.floating_ip,
                "fixed_ip_address": f.fixed_ip,
                "port_id": f.port_id,
                "router_id": self.id,
                "status": "DOWN",
            })).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(|(d, n)| json!({"destination": d, "nexthop": n})).collect::<Vec<_>>(),
        })
    }
}

/// A routers file's content: a JSON list of router dicts.
pub fn routers_json(routers: &[RouterSpec]) -> Value {
    Value::Array(routers.iter().map(RouterSpec::to_json).collect())
}
