//! Neutron's router list (`sync_routers` payload) parsed and validated into
//! [`crate::model::Router`]s.
//!
//! Unknown fields are ignored, as the agent does. Every rejected value yields
//! an error naming the router, the field and the value; nothing is applied
//! from a list that has any error.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    model::{ExtraRoute, FloatingIp, Gateway, Mac, Port, Role, Router, Subnet, short_id},
    text::{label, quote, tidy},
};

/// Why a router list was rejected. Every value in a message is escaped and
/// cut (see [`crate::text`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("routers file is not valid JSON: {}", tidy(.0))]
    Json(String),
    #[error("routers file must be a JSON list of routers or {{\"routers\": [...]}}, found {0}")]
    Shape(String),
    #[error("router #{index}: field id: {problem}")]
    NoId { index: usize, problem: String },
    #[error("router {}: field {field}: {problem}", label(.router))]
    Field {
        router: String,
        field: String,
        problem: String,
    },
}

fn field_err(router: &str, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        router: router.to_string(),
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Deserialize)]
struct RawRouter {
    id: String,
    #[serde(default = "yes")]
    admin_state_up: bool,
    enable_snat: Option<bool>,
    external_gateway_info: Option<RawGatewayInfo>,
    #[serde(default)]
    routes: Option<Vec<RawRoute>>,
    gw_port: Option<RawPort>,
    #[serde(default, rename = "_interfaces")]
    interfaces: Option<Vec<RawPort>>,
    #[serde(default, rename = "_floatingips")]
    floatingips: Option<Vec<RawFloatingIp>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct RawGatewayInfo {
    enable_snat: Option<bool>,
}

#[derive(Deserialize)]
struct RawRoute {
    destination: String,
    nexthop: String,
}

#[derive(Deserialize)]
struct RawPort {
    id: String,
    mac_address: String,
    mtu: Option<Int>,
    #[serde(default)]
    network_id: String,
    #[serde(default)]
    fixed_ips: Vec<RawFixedIp>,
    #[serde(default)]
    subnets: Vec<RawSubnet>,
    #[serde(default)]
    extra_subnets: Vec<RawSubnet>,
}

#[derive(Deserialize)]
struct RawFixedIp {
    ip_address: String,
    prefixlen: Option<Int>,
    subnet_id: Option<String>,
}

#[derive(Deserialize)]
struct RawSubnet {
    id: Option<String>,
    cidr: String,
    gateway_ip: Option<String>,
}

#[derive(Deserialize)]
struct RawFloatingIp {
    #[serde(default)]
    id: String,
    floating_ip_address: String,
    fixed_ip_address: Option<String>,
}

/// Default MTU when the port dict has none (Neutron's global_physnet_mtu).
pub const DEFAULT_MTU: u32 = 1500;

/// Allowed MTUs: IPv4's minimum to a veth's maximum.
pub const MTU: std::ops::RangeInclusive<i128> = 68..=65535;

/// An integer field, read wide so that a value out of range is reported
/// with the range rather than as a type error, and a string in its place
/// is shown escaped and cut.
#[derive(Clone, Copy, Debug)]
struct Int(i128);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Int, E> {
                Err(E::custom(format!("{v} is not an integer")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Int, E> {
                Err(E::custom(format!("{} is not an integer", quote(v))))
            }
        }
        d.deserialize_any(V)
    }
}

/// `v` if it is in `range`, else an error naming the field, the value and
/// the range.
fn in_range(
    rid: &str,
    field: impl Into<String>,
    v: Int,
    range: std::ops::RangeInclusive<i128>,
) -> Result<i128, ConfigError> {
    if range.contains(&v.0) {
        Ok(v.0)
    } else {
        Err(field_err(
            rid,
            field,
            format!(
                "{} is outside the allowed range {}..={}",
                v.0,
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Parses and validates a routers file. Routers with `admin_state_up: false`
/// are validated, then left out (the agent does not deploy them).
pub fn parse(text: &str) -> Result<Vec<Router>, ConfigError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
    let list = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("routers") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(ConfigError::Shape(format!("\"routers\": {}", kind(&other))));
            }
            None => return Err(ConfigError::Shape("an object without \"routers\"".into())),
        },
        other => return Err(ConfigError::Shape(kind(&other).into())),
    };

    let mut routers = Vec::new();
    let mut seen_routers = HashSet::new();
    // Port IDs and their device-name stems must be unique on the node: the
    // tap devices of all routers share one namespace.
    let mut seen_ports: HashMap<String, String> = HashMap::new();
    for (index, raw) in list.into_iter().enumerate() {
        let id = match raw.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => {
                return Err(ConfigError::NoId {
                    index,
                    problem: "is empty".into(),
                });
            }
            Some(other) => {
                return Err(ConfigError::NoId {
                    index,
                    problem: format!("must be a string, found {}", kind(other)),
                });
            }
            None => {
                return Err(ConfigError::NoId {
                    index,
                    problem: "is missing".into(),
                });
            }
        };
        let raw: RawRouter = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            field_err(
                &id,
                if path == "." { "(router)".into() } else { path },
                tidy(&e.into_inner().to_string()),
            )
        })?;
        let (router, up) = validate(raw)?;
        if !seen_routers.insert(router.id.clone()) {
            return Err(field_err(
                &router.id,
                "id",
                format!("duplicate router id {}", quote(&router.id)),
            ));
        }
        for p in router.ports() {
            let stem = short_id(&p.id).to_string();
            if let Some(owner) = seen_ports.insert(stem.clone(), router.id.clone()) {
                return Err(field_err(
                    &router.id,
                    "port id",
                    format!(
                        "port {} gives device name stem {}, already used by a port of router {}",
                        quote(&p.id),
                        quote(&stem),
                        label(&owner)
                    ),
                ));
            }
        }
        if up {
            routers.push(router);
        }
    }
    Ok(routers)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn validate(raw: RawRouter) -> Result<(Router, bool), ConfigError> {
    let rid = raw.id.clone();
    if !valid_router_id(&rid) {
        return Err(field_err(
            &rid,
            "id",
            format!(
                "{} must be 1-55 characters of letters, digits, '-', '_' or '.'",
                quote(&rid)
            ),
        ));
    }
    let enable_snat = raw
        .enable_snat
        .or(raw
            .external_gateway_info
            .as_ref()
            .and_then(|g| g.enable_snat))
        .unwrap_or(true);

    let gateway = match raw.gw_port {
        Some(p) => {
            let extra = p
                .extra_subnets
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    subnet_cidr(&rid, &format!("gw_port.extra_subnets[{i}].cidr"), &s.cidr)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let port = port(&rid, "gw_port", p, Role::Gateway)?;
            if port.ipv4().is_none() {
                return Err(field_err(
                    &rid,
                    "gw_port.fixed_ips",
                    "the gateway port has no IPv4 address",
                ));
            }
            Some(Gateway {
                port,
                extra_subnets: extra,
            })
        }
        None => None,
    };

    let mut interfaces = Vec::new();
    for (i, p) in raw.interfaces.unwrap_or_default().into_iter().enumerate() {
        interfaces.push(port(&rid, &format!("_interfaces[{i}]"), p, Role::Internal)?);
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.unwrap_or_default().iter().enumerate() {
        let destination = cidr(&rid, &format!("routes[{i}].destination"), &r.destination)?;
        let nexthop = ip(&rid, &format!("routes[{i}].nexthop"), &r.nexthop)?;
        if destination.addr().is_ipv4() != nexthop.is_ipv4() {
            return Err(field_err(
                &rid,
                format!("routes[{i}].nexthop"),
                format!("{nexthop} is not of the same family as destination {destination}"),
            ));
        }
        routes.push(ExtraRoute {
            destination,
            nexthop,
        });
    }

    let mut floating_ips: Vec<FloatingIp> = Vec::new();
    for (i, f) in raw.floatingips.unwrap_or_default().iter().enumerate() {
        let field = format!("_floatingips[{i}].floating_ip_address");
        let fip = match ip(&rid, &field, &f.floating_ip_address)? {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => return Err(field_err(&rid, field, format!("{v6} is not IPv4"))),
        };
        let Some(gw) = &gateway else {
            return Err(field_err(
                &rid,
                field,
                format!("{fip}: the router has no gateway port (gw_port)"),
            ));
        };
        let ext: Vec<IpNet> = gw
            .port
            .subnets
            .iter()
            .map(|s| s.cidr)
            .chain(gw.extra_subnets.iter().copied())
            .collect();
        if !ext.iter().any(|n| n.contains(&IpAddr::V4(fip))) {
            let list: Vec<String> = ext.iter().map(|n| n.to_string()).collect();
            return Err(field_err(
                &rid,
                field,
                format!(
                    "{fip} is outside the external subnets ({})",
                    list.join(", ")
                ),
            ));
        }
        let fixed_field = format!("_floatingips[{i}].fixed_ip_address");
        let Some(fixed) = f.fixed_ip_address.as_deref() else {
            // An unassociated floating IP is not handed to agents; skip it.
            continue;
        };
        let fixed = match ip(&rid, &fixed_field, fixed)? {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => {
                return Err(field_err(&rid, fixed_field, format!("{v6} is not IPv4")));
            }
        };
        if gw.snat_ip() == Some(fip) {
            return Err(field_err(
                &rid,
                field,
                format!("{fip} is the gateway port's own address"),
            ));
        }
        if let Some(o) = floating_ips.iter().find(|o| o.floating_ip == fip) {
            return Err(field_err(
                &rid,
                field,
                format!(
                    "duplicate floating IP {fip} (also floating IP {})",
                    quote(&o.id)
                ),
            ));
        }
        if let Some(o) = floating_ips.iter().find(|o| o.fixed_ip == fixed) {
            return Err(field_err(
                &rid,
                fixed_field,
                format!("fixed IP {fixed} already has floating IP {}", o.floating_ip),
            ));
        }
        floating_ips.push(FloatingIp {
            id: f.id.clone(),
            floating_ip: fip,
            fixed_ip: fixed,
        });
    }

    Ok((
        Router {
            id: rid,
            enable_snat,
            gateway,
            interfaces,
            routes,
            floating_ips,
        },
        raw.admin_state_up,
    ))
}

fn valid_router_id(id: &str) -> bool {
    // The namespace name becomes a file under /run/netns.
    !id.is_empty()
        && id.len() <= 55
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn port(rid: &str, at: &str, p: RawPort, role: Role) -> Result<Port, ConfigError> {
    if p.id.is_empty()
        || !p
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(field_err(
            rid,
            format!("{at}.id"),
            format!("{} is not a usable port id", quote(&p.id)),
        ));
    }
    let mac: Mac = p.mac_address.parse().map_err(|_| {
        field_err(
            rid,
            format!("{at}.mac_address"),
            format!("{} is not a MAC address", quote(&p.mac_address)),
        )
    })?;
    if mac.0[0] & 1 == 1 || mac.0 == [0; 6] {
        return Err(field_err(
            rid,
            format!("{at}.mac_address"),
            format!("{mac} is not a unicast MAC address"),
        ));
    }
    let mtu = match p.mtu {
        Some(m) => in_range(rid, format!("{at}.mtu"), m, MTU)? as u32,
        None => DEFAULT_MTU,
    };
    let mut subnets = Vec::new();
    let mut subnet_ids = HashMap::new();
    for (i, s) in p.subnets.iter().enumerate() {
        let c = subnet_cidr(rid, &format!("{at}.subnets[{i}].cidr"), &s.cidr)?;
        let gateway_ip = match s.gateway_ip.as_deref() {
            Some(g) if !g.is_empty() => Some(ip(rid, &format!("{at}.subnets[{i}].gateway_ip"), g)?),
            _ => None,
        };
        if let Some(id) = &s.id {
            subnet_ids.insert(id.clone(), c);
        }
        subnets.push(Subnet {
            cidr: c,
            gateway_ip,
        });
    }
    if p.fixed_ips.is_empty() {
        return Err(field_err(
            rid,
            format!("{at}.fixed_ips"),
            format!("port {} has no address", quote(&p.id)),
        ));
    }
    let mut addresses = Vec::new();
    for (i, f) in p.fixed_ips.iter().enumerate() {
        let field = format!("{at}.fixed_ips[{i}].ip_address");
        let addr = ip(rid, &field, &f.ip_address)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let plen_field = format!("{at}.fixed_ips[{i}].prefixlen");
        // Neutron's dicts carry prefixlen; older payloads only the subnet,
        // which must then hold the address (a subnet of the other family
        // has prefix lengths this address cannot take).
        let plen = match f.prefixlen {
            Some(l) => in_range(rid, plen_field, l, 1..=max)? as u8,
            None => f
                .subnet_id
                .as_ref()
                .and_then(|id| subnet_ids.get(id))
                .or_else(|| subnets.iter().map(|s| &s.cidr).find(|c| c.contains(&addr)))
                .filter(|c| c.contains(&addr))
                .map(|c| c.prefix_len())
                .ok_or_else(|| {
                    field_err(
                        rid,
                        plen_field,
                        format!("missing for {addr}, and no subnet of the port contains it"),
                    )
                })?,
        };
        let net = IpNet::new(addr, plen).map_err(|_| {
            field_err(
                rid,
                format!("{at}.fixed_ips[{i}].prefixlen"),
                format!("{plen} is not a prefix length of {addr}"),
            )
        })?;
        if addresses.contains(&net) {
            return Err(field_err(rid, field, format!("duplicate address {addr}")));
        }
        addresses.push(net);
    }
    Ok(Port {
        id: p.id,
        role,
        mac,
        mtu,
        network_id: p.network_id,
        addresses,
        subnets,
    })
}

fn ip(rid: &str, field: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse()
        .map_err(|_| field_err(rid, field, format!("{} is not an IP address", quote(s))))
}

/// A subnet's CIDR: as [`cidr`], and not a /0 (an address on a port with
/// a /0 would make every destination on-link).
fn subnet_cidr(rid: &str, field: &str, s: &str) -> Result<IpNet, ConfigError> {
    let net = cidr(rid, field, s)?;
    if net.prefix_len() == 0 {
        return Err(field_err(
            rid,
            field,
            format!("{} is not a subnet (prefix length 0)", quote(s)),
        ));
    }
    Ok(net)
}

fn cidr(rid: &str, field: &str, s: &str) -> Result<IpNet, ConfigError> {
    let net: IpNet = s.parse().map_err(|_| {
        field_err(
            rid,
            field,
            format!("{} is not a CIDR (address/prefix)", quote(s)),
        )
    })?;
    if net.trunc() != net {
        return Err(field_err(
            rid,
            field,
            format!(
                "{} has host bits set (did you mean {}?)",
                quote(s),
                net.trunc()
            ),
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The article's router as Neutron hands it over.
    fn article() -> Value {
        json!({
            "id": "r1", "admin_state_up": true, "enable_snat": true, "ha": false, "distributed": false,
            "routes": [{"destination": "172.16.0.0/16", "nexthop": "81.1.180.50"}],
            "gw_port": {"id": "3c8d6a68-9712-4b", "mac_address": "fa:16:3e:2e:5b:23", "mtu": 1500,
                "network_id": "9c9436d4-2b7c", "device_owner": "network:router_gateway",
                "fixed_ips": [{"ip_address": "192.168.1.110", "prefixlen": 24, "subnet_id": "se"}],
                "subnets": [{"id": "se", "cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1"}],
                "extra_subnets": [{"id": "sx", "cidr": "192.168.9.0/24", "gateway_ip": null}]},
            "_interfaces": [{"id": "a5c6ed86-c1ff", "mac_address": "fa:16:3e:87:40:f3", "mtu": 1450,
                "network_id": "n81", "admin_state_up": true,
                "fixed_ips": [{"ip_address": "81.1.180.1", "prefixlen": 24, "subnet_id": "s81"}],
                "subnets": [{"id": "s81", "cidr": "81.1.180.0/24", "gateway_ip": "81.1.180.1"}]}],
            "_floatingips": [{"id": "f1", "floating_ip_address": "192.168.1.104",
                "fixed_ip_address": "91.1.180.14", "port_id": "p", "status": "DOWN"}]
        })
    }

    fn parse_one(v: Value) -> Result<Vec<Router>, ConfigError> {
        parse(&serde_json::to_string(&json!([v])).unwrap())
    }

    /// Asserts a rejection naming the router, the field and the bad value.
    fn rejects(v: Value, field: &str, value: &str) {
        match parse_one(v) {
            Err(ConfigError::Field {
                router,
                field: f,
                problem,
            }) => {
                assert_eq!(router, "r1");
                assert!(f.contains(field), "field {f:?} should name {field:?}");
                assert!(
                    problem.contains(value),
                    "problem {problem:?} should quote {value:?}"
                );
            }
            other => panic!("expected a field error for {field}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_article_router_and_ignores_unknown_fields() {
        let r = &parse_one(article()).unwrap()[0];
        assert_eq!(r.namespace(), "qrouter-r1");
        let g = r.gateway.as_ref().unwrap();
        assert_eq!(g.port.device(), "qg-3c8d6a68-97");
        assert_eq!(g.port.tap(), "tap3c8d6a68-97");
        assert_eq!(g.snat_ip(), Some("192.168.1.110".parse().unwrap()));
        assert_eq!(
            g.default_gateways(),
            vec!["192.168.1.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            g.extra_subnets,
            vec!["192.168.9.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(r.interfaces[0].device(), "qr-a5c6ed86-c1");
        assert_eq!(r.interfaces[0].mtu, 1450);
        assert_eq!(
            r.interfaces[0].addresses,
            vec!["81.1.180.1/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(r.floating_ips[0].floating_ip.to_string(), "192.168.1.104");
        assert_eq!(r.routes[0].nexthop.to_string(), "81.1.180.50");
        assert!(r.enable_snat);
    }

    #[test]
    fn accepts_the_routers_object_form() {
        let text = serde_json::to_string(&json!({"routers": [article()]})).unwrap();
        assert_eq!(parse(&text).unwrap().len(), 1);
        assert_eq!(parse("[]").unwrap().len(), 0);
    }

    #[test]
    fn enable_snat_from_external_gateway_info_and_default() {
        let mut v = article();
        v.as_object_mut().unwrap().remove("enable_snat");
        assert!(
            parse_one(v.clone()).unwrap()[0].enable_snat,
            "defaults to true"
        );
        v["external_gateway_info"] = json!({"network_id": "x", "enable_snat": false});
        assert!(!parse_one(v).unwrap()[0].enable_snat);
    }

    #[test]
    fn null_gateway_and_missing_lists() {
        let v = json!({"id": "r1", "gw_port": null});
        let r = &parse_one(v).unwrap()[0];
        assert!(r.gateway.is_none() && r.interfaces.is_empty() && r.floating_ips.is_empty());
    }

    #[test]
    fn admin_down_routers_are_validated_but_not_deployed() {
        let mut v = article();
        v["admin_state_up"] = json!(false);
        assert!(parse_one(v.clone()).unwrap().is_empty());
        v["_interfaces"][0]["mac_address"] = json!("zz");
        assert!(parse_one(v).is_err());
    }

    #[test]
    fn prefixlen_falls_back_to_the_subnet() {
        let mut v = article();
        v["_interfaces"][0]["fixed_ips"][0]
            .as_object_mut()
            .unwrap()
            .remove("prefixlen");
        assert_eq!(
            parse_one(v).unwrap()[0].interfaces[0].addresses[0].prefix_len(),
            24
        );
    }

    #[test]
    fn unparseable_json_is_rejected_with_position() {
        let e = parse("[{\"id\": \"r1\",]").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Json(m) if m.contains("line 1")),
            "{e}"
        );
        assert!(matches!(parse("42"), Err(ConfigError::Shape(_))));
        assert!(matches!(parse("{\"x\": []}"), Err(ConfigError::Shape(_))));
    }

    #[test]
    fn bad_values_name_router_field_and_value() {
        let mut v = article();
        v["_interfaces"][0]["subnets"][0]["cidr"] = json!("81.1.180.0/33");
        rejects(v, "_interfaces[0].subnets[0].cidr", "81.1.180.0/33");

        let mut v = article();
        v["routes"][0]["destination"] = json!("172.16.0.1/16");
        rejects(v, "routes[0].destination", "172.16.0.1/16");

        let mut v = article();
        v["gw_port"]["mac_address"] = json!("fa:16:3e:2e:5b");
        rejects(v, "gw_port.mac_address", "fa:16:3e:2e:5b");

        let mut v = article();
        v["_interfaces"][0]["mac_address"] = json!("01:00:5e:00:00:01");
        rejects(v, "_interfaces[0].mac_address", "01:00:5e:00:00:01");

        let mut v = article();
        v["_floatingips"][0]["floating_ip_address"] = json!("10.9.9.9");
        rejects(v, "_floatingips[0].floating_ip_address", "10.9.9.9");

        let mut v = article();
        v["_floatingips"][0]["fixed_ip_address"] = json!("91.1.180");
        rejects(v, "_floatingips[0].fixed_ip_address", "91.1.180");

        let mut v = article();
        v["_interfaces"][0]["fixed_ips"] = json!([]);
        rejects(v, "_interfaces[0].fixed_ips", "a5c6ed86-c1ff");

        let mut v = article();
        v["_interfaces"][0]["mtu"] = json!(40);
        rejects(v, "_interfaces[0].mtu", "40");

        let mut v = article();
        v["_interfaces"][0]["mtu"] = json!("big");
        rejects(v, "_interfaces[0].mtu", "big");

        let mut v = article();
        v["routes"][0]["nexthop"] = json!("fe80::1");
        rejects(v, "routes[0].nexthop", "fe80::1");
    }

    #[test]
    fn floating_ip_in_extra_subnet_is_accepted_and_without_gateway_rejected() {
        let mut v = article();
        v["_floatingips"][0]["floating_ip_address"] = json!("192.168.9.7");
        assert!(parse_one(v.clone()).is_ok());
        v["gw_port"] = Value::Null;
        rejects(v, "_floatingips[0].floating_ip_address", "192.168.9.7");
    }

    #[test]
    fn duplicates_are_rejected() {
        let text = serde_json::to_string(&json!([article(), article()])).unwrap();
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("router r1") && e.contains("duplicate router id"),
            "{e}"
        );

        let mut other = article();
        other["id"] = json!("r2");
        other["_interfaces"][0]["id"] = json!("a5c6ed86-c1ff-different-tail");
        other["gw_port"]["id"] = json!("another-gw");
        let e = parse(&serde_json::to_string(&json!([article(), other])).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("router r2") && e.contains("a5c6ed86-c1"), "{e}");

        let mut v = article();
        v["_floatingips"] = json!([
            {"id": "f1", "floating_ip_address": "192.168.1.104", "fixed_ip_address": "91.1.180.14"},
            {"id": "f2", "floating_ip_address": "192.168.1.104", "fixed_ip_address": "91.1.180.15"}]);
        rejects(v, "_floatingips[1].floating_ip_address", "192.168.1.104");
    }

    /// The message as the CLI prints it: one line, short, whatever the input.
    fn one_short_line(e: &ConfigError) -> String {
        let m = e.to_string();
        assert!(
            !m.contains(['\n', '\r', '\0']),
            "message spans lines: {m:?}"
        );
        assert!(m.len() < 400, "message of {} bytes: {m:.400}", m.len());
        m
    }

    #[test]
    fn values_in_messages_are_escaped_and_cut() {
        // A newline in the router id must not start a second line.
        let mut v = article();
        v["id"] = json!("r1\nrouter r2: field x: forged");
        let m = one_short_line(&parse_one(v).unwrap_err());
        assert!(m.contains(r"r1\nrouter r2"), "{m}");

        // A huge value is cut, with its size.
        let big = "f".repeat(1 << 20);
        let mut v = article();
        v["gw_port"]["mac_address"] = json!(big);
        let m = one_short_line(&parse_one(v).unwrap_err());
        assert!(
            m.contains("gw_port.mac_address") && m.contains("(1048576 bytes)"),
            "{m}"
        );

        // Also where serde reports a value of the wrong type.
        let mut v = article();
        v["_interfaces"][0]["mtu"] = json!(format!("{big}\n"));
        let m = one_short_line(&parse_one(v).unwrap_err());
        assert!(m.contains("mtu") && m.contains("bytes)"), "{m}");
        let mut v = article();
        v["enable_snat"] = json!(big);
        one_short_line(&parse_one(v).unwrap_err());

        // A router id that is not a string is described, not echoed.
        let e = parse(&format!("[{{\"id\": {{\"x\": \"{big}\"}}}}]")).unwrap_err();
        let m = one_short_line(&e);
        assert!(m.contains("an object"), "{m}");

        // Quotes and control characters in a port id.
        let mut v = article();
        v["_interfaces"][0]["id"] = json!("a\"b\u{1b}[2J");
        let m = one_short_line(&parse_one(v).unwrap_err());
        assert!(m.contains(r#""a\"b\u{1b}[2J""#), "{m}");
    }

    #[test]
    fn numbers_have_ranges() {
        for (mtu, shown) in [
            (json!(67), "67"),
            (json!(65536), "65536"),
            (json!(1u64 << 40), "1099511627776"),
            (json!(-1), "-1"),
            (json!(u64::MAX), "18446744073709551615"),
        ] {
            let mut v = article();
            v["_interfaces"][0]["mtu"] = mtu;
            rejects(v.clone(), "_interfaces[0].mtu", shown);
            rejects(v, "_interfaces[0].mtu", "68..=65535");
        }
        let mut v = article();
        v["_interfaces"][0]["mtu"] = json!(1500.5);
        rejects(v, "_interfaces[0].mtu", "1500.5");
        for (plen, shown) in [
            (json!(0), "0"),
            (json!(33), "33"),
            (json!(300), "300"),
            (json!(-24), "-24"),
        ] {
            let mut v = article();
            v["gw_port"]["fixed_ips"][0]["prefixlen"] = plen;
            rejects(v.clone(), "gw_port.fixed_ips[0].prefixlen", shown);
            rejects(v, "gw_port.fixed_ips[0].prefixlen", "1..=32");
        }
        let mut v = article();
        v["_interfaces"][0]["mtu"] = json!(65535);
        v["gw_port"]["fixed_ips"][0]["prefixlen"] = json!(32);
        assert!(parse_one(v).is_ok());
    }

    #[test]
    fn a_prefix_length_is_never_taken_from_a_subnet_that_does_not_hold_the_address() {
        // An IPv6 subnet's /64 for an IPv4 address would not make an IpNet.
        let mut v = article();
        v["_interfaces"][0]["subnets"] = json!([
            {"id": "s6", "cidr": "2001:db8::/64", "gateway_ip": null}]);
        v["_interfaces"][0]["fixed_ips"] = json!([{"ip_address": "81.1.180.1", "subnet_id": "s6"}]);
        rejects(v, "_interfaces[0].fixed_ips[0].prefixlen", "81.1.180.1");
        // A /0 subnet would make every destination on-link.
        let mut v = article();
        v["gw_port"]["extra_subnets"][0]["cidr"] = json!("0.0.0.0/0");
        rejects(v, "gw_port.extra_subnets[0].cidr", "0.0.0.0/0");
        let mut v = article();
        v["_interfaces"][0]["subnets"][0]["cidr"] = json!("0.0.0.0/0");
        rejects(v, "_interfaces[0].subnets[0].cidr", "0.0.0.0/0");
    }

    #[test]
    fn macs_are_hex_digits_only() {
        for bad in [
            "+a:16:3e:00:00:01",
            "fa:+6:3e:00:00:01",
            "fa:16:3e:00:00:-1",
            "fa:16:3e:0 :00:01",
        ] {
            let mut v = article();
            v["gw_port"]["mac_address"] = json!(bad);
            rejects(v, "gw_port.mac_address", bad);
        }
    }

    #[test]
    fn router_ids_that_cannot_name_a_namespace_are_rejected() {
        for bad in ["", "a/b", ".."] {
            let mut v = article();
            v["id"] = json!(bad);
            assert!(parse_one(v).is_err(), "{bad:?} accepted");
        }
        let e = parse("[{\"gw_port\": null}]").unwrap_err();
        assert!(matches!(e, ConfigError::NoId { index: 0, .. }));
    }
}
