//! The validated desired state of a router: what the control plane builds.
//!
//! Produced only by [`crate::config::routers::parse_for`], so every value here has
//! been checked: addresses parse, floating IPs sit in an external subnet, IDs
//! are unique.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A port's role on the router, which decides its device prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Internal (tenant subnet) port, `qr-`.
    Internal,
    /// External gateway port, `qg-`.
    Gateway,
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in out.iter_mut() {
            let p = parts.next().ok_or(())?;
            // Hex digits only: from_str_radix alone would take a sign ("+a").
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!("bad MAC address {}", crate::text::quote(&s)))
        })
    }
}

/// A subnet a port is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub cidr: IpNet,
    pub gateway_ip: Option<IpAddr>,
}

/// A router port (qr- or qg-) and its veth peer outside the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub role: Role,
    pub mac: Mac,
    pub mtu: u32,
    pub network_id: String,
    /// The port's own addresses with their prefix lengths.
    pub addresses: Vec<IpNet>,
    pub subnets: Vec<Subnet>,
}

impl Port {
    /// Device name inside the router namespace: `qr-`/`qg-` + 11 chars of the ID.
    pub fn device(&self) -> String {
        let prefix = match self.role {
            Role::Internal => "qr-",
            Role::Gateway => "qg-",
        };
        format!("{prefix}{}", short_id(&self.id))
    }

    /// Name of the veth peer in the node namespace: `tap` + 11 chars of the ID.
    pub fn tap(&self) -> String {
        format!("tap{}", short_id(&self.id))
    }

    /// First IPv4 address of the port, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }
}

/// The 11-character ID prefix Neutron uses in device names.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(11) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// The router's external gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub port: Port,
    /// Extra external subnets reachable on-link through qg-.
    pub extra_subnets: Vec<IpNet>,
}

impl Gateway {
    /// The gateway IPv4 address used for SNAT (the first IPv4 fixed IP).
    pub fn snat_ip(&self) -> Option<Ipv4Addr> {
        self.port.ipv4()
    }

    /// The next hop of the default route(s): gateway IP of each external subnet.
    pub fn default_gateways(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for s in &self.port.subnets {
            if let Some(gw) = s.gateway_ip
                && !out.iter().any(|o: &IpAddr| o.is_ipv4() == gw.is_ipv4())
            {
                out.push(gw);
            }
        }
        out
    }
}

/// An extra route (`routes` of the router dict).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraRoute {
    pub destination: IpNet,
    pub nexthop: IpAddr,
}

/// A floating IP: 1:1 NAT between an external and a fixed address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    pub id: String,
    pub floating_ip: Ipv4Addr,
    pub fixed_ip: Ipv4Addr,
}

/// One Neutron router, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    pub id: String,
    pub enable_snat: bool,
    pub gateway: Option<Gateway>,
    pub interfaces: Vec<Port>,
    pub routes: Vec<ExtraRoute>,
    pub floating_ips: Vec<FloatingIp>,
}

impl Router {
    /// The router's network namespace.
    pub fn namespace(&self) -> String {
        namespace_of(&self.id)
    }

    /// Every port: internal ones, then the gateway port.
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.interfaces
            .iter()
            .chain(self.gateway.as_ref().map(|g| &g.port))
    }
}

/// Namespace name of a router ID.
pub fn namespace_of(router_id: &str) -> String {
    format!("qrouter-{router_id}")
}

/// Prefix of every router namespace.
pub const NAMESPACE_PREFIX: &str = "qrouter-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_hex_pairs_only() {
        assert_eq!(
            "fa:16:3e:2e:5b:23".parse::<Mac>(),
            Ok(Mac([0xfa, 0x16, 0x3e, 0x2e, 0x5b, 0x23]))
        );
        assert_eq!(
            "FA-16-3E-2E-5B-2".parse::<Mac>(),
            Ok(Mac([0xfa, 0x16, 0x3e, 0x2e, 0x5b, 0x02]))
        );
        for bad in [
            "+a:16:3e:00:00:01",
            "-0:16:3e:00:00:01",
            "fa:16:3e:00:00",
            "fa:16:3e:00:00:01:02",
            "fa:16:3e:00::01",
            "fa:16:3e:00:00:1g",
        ] {
            assert_eq!(bad.parse::<Mac>(), Err(()), "{bad} accepted");
        }
    }
}
