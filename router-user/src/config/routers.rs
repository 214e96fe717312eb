//! Neutron's router list (`sync_routers` payload) parsed and validated into
//! [`crate::model::Router`]s.
//!
//! Unknown fields are ignored, as the agent does. Every rejected value yields
//! an error naming the router, the field and the value. A routers file
//! ([`parse_for`]) is all or nothing: nothing is applied from a file that
//! has any error. Router dicts received over RPC ([`parse_each`]) go through
//! the same checks one router at a time: the good ones are kept, each bad
//! one is refused alone.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    config::node::NodeConfig,
    model::{ExtraRoute, FloatingIp, Gateway, Mac, Port, Role, Router, Subnet, short_id},
    text::{label, quote, tidy},
};

/// Why a router list was rejected. Every value in a message is escaped and
/// cut (see [`crate::text`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("routers file is not valid JSON: {}", tidy(.0))]
    Json(String),
    #[error("routers file must be a JSON list of routers or {{\"routers\": [...]}}, found {0}")]
    Shape(String),
    /// A router that cannot be named by its ID (it has none, or a bad one).
    #[error("router #{index}: {problem}")]
    Index { index: usize, problem: String },
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
enum Int {
    Fits(i128),
    /// A number JSON gives as a float: written with a fraction or an
    /// exponent, or an integer beyond 64 bits. [`in_range`] tells which
    /// from the text.
    Float(f64),
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int::Fits(v.into()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int::Fits(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Int, E> {
                Ok(Int::Float(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Int, E> {
                Err(E::custom(format!("{} is not an integer", quote(v))))
            }
        }
        d.deserialize_any(V)
    }
}

/// A router's values as written, by field path (`_interfaces[0].mtu`):
/// what messages show of a number, where JSON would give `1e3` as 1000
/// and 18446744073709551616 as a float.
enum Written<'a> {
    /// A routers file, and the router's index in its list.
    File { file: &'a str, index: usize },
    /// A router dict as received (over RPC): numbers as it holds them.
    Dict(&'a Value),
}

impl Written<'_> {
    /// The text of the value at `field`, if the router has one there.
    fn at(&self, field: &str) -> Option<String> {
        use serde_json::value::RawValue;
        fn member<'a>(v: &'a RawValue, key: &str) -> Option<&'a RawValue> {
            let m: HashMap<&str, &'a RawValue> = serde_json::from_str(v.get()).ok()?;
            m.get(key).copied()
        }
        fn element(v: &RawValue, i: usize) -> Option<&RawValue> {
            let l: Vec<&RawValue> = serde_json::from_str(v.get()).ok()?;
            l.get(i).copied()
        }
        /// The path's steps: member names and list indices.
        fn steps(field: &str) -> Option<Vec<Result<&str, usize>>> {
            let mut out = Vec::new();
            for part in field.split('.') {
                let (key, indices) = part.split_once('[').unwrap_or((part, ""));
                if !key.is_empty() {
                    out.push(Ok(key));
                }
                for i in indices.split('[') {
                    if let Some(i) = i.strip_suffix(']') {
                        out.push(Err(i.parse().ok()?));
                    }
                }
            }
            Some(out)
        }
        match self {
            Written::File { file, index } => {
                let top: &RawValue = serde_json::from_str(file).ok()?;
                let list = member(top, "routers").unwrap_or(top);
                let mut at = element(list, *index)?;
                for step in steps(field)? {
                    at = match step {
                        Ok(key) => member(at, key)?,
                        Err(i) => element(at, i)?,
                    };
                }
                Some(at.get().to_string())
            }
            Written::Dict(router) => {
                let mut at = *router;
                for step in steps(field)? {
                    at = match step {
                        Ok(key) => at.get(key)?,
                        Err(i) => at.get(i)?,
                    };
                }
                Some(at.to_string())
            }
        }
    }
}

/// `v` if it is in `range`, else an error naming the field, the value as
/// the file writes it and the range; a number with a fraction or an
/// exponent is not an integer (with how to write it when it is whole).
fn in_range(
    rid: &str,
    field: impl Into<String>,
    v: Int,
    range: std::ops::RangeInclusive<i128>,
    written: &Written,
) -> Result<i128, ConfigError> {
    let field = field.into();
    if let Int::Fits(n) = v
        && range.contains(&n)
    {
        return Ok(n);
    }
    let text = written
        .at(&field)
        .filter(|t| t.starts_with(|c: char| c == '-' || c.is_ascii_digit()))
        .unwrap_or_else(|| match v {
            Int::Fits(n) => n.to_string(),
            Int::Float(f) => format!("{f:?}"),
        });
    let shown = crate::text::bare(&text);
    let digits = text.strip_prefix('-').unwrap_or(&text);
    let problem = if digits.bytes().all(|b| b.is_ascii_digit()) {
        format!(
            "{shown} is outside the allowed range {}-{}",
            range.start(),
            range.end()
        )
    } else {
        match v {
            Int::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => {
                format!("{shown} is not an integer (write {f:.0})")
            }
            _ => format!("{shown} is not an integer"),
        }
    };
    Err(field_err(rid, field, problem))
}

/// Parses and validates a routers file with the node's default config
/// (no bridge mappings). Routers with `admin_state_up: false` are
/// validated, then left out (the agent does not deploy them).
pub fn parse(text: &str) -> Result<Vec<Router>, ConfigError> {
    parse_for(text, &NodeConfig::default())
}

/// A validated router with where its external addresses came from, for
/// the checks across routers.
struct Validated {
    router: Router,
    up: bool,
    /// Index in `_floatingips` of each of `router.floating_ips`.
    fip_index: Vec<usize>,
}

/// A list of router dicts sorted out by [`parse_each`].
#[derive(Debug, Default)]
pub struct Checked {
    /// The valid routers to deploy, in list order.
    pub routers: Vec<Router>,
    /// The IDs of valid routers with `admin_state_up: false`: not wanted
    /// on the node (the agent does not deploy them).
    pub down: Vec<String>,
    /// Routers of a kind xrouter does not handle: not built.
    pub unsupported: Vec<Unsupported>,
    /// Routers refused, and why.
    pub rejected: Vec<Rejected>,
}

/// A router xrouter does not handle (HA or distributed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub id: String,
    /// What it is, for "router <id> not handled: <reason>".
    pub reason: &'static str,
    /// The IDs of its floating IPs.
    pub floating_ip_ids: Vec<String>,
}

/// A router refused by [`parse_each`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its ID, if it has a valid one.
    pub id: Option<String>,
    /// Why (names the router, the field and the value).
    pub error: ConfigError,
    /// The (valid) IDs of its floating IPs, which the caller can report as
    /// in error: none of them is set up.
    pub floating_ip_ids: Vec<String>,
}

/// Parses and validates a routers file for a node: a network that
/// `node.bridge_mappings` maps needs no UUID (its ID names no bridge).
/// Any router refused or not handled refuses the whole file: nothing is
/// applied from a file that has an error.
pub fn parse_for(text: &str, node: &NodeConfig) -> Result<Vec<Router>, ConfigError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| ConfigError::Json(tidy(&e.to_string())))?;
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
    let mut seen = Seen::default();
    let mut routers = Vec::new();
    for (index, raw) in list.iter().enumerate() {
        match check_one(
            index,
            raw,
            node,
            &Written::File { file: text, index },
            &mut seen,
        )? {
            One::Valid(v) if v.up => routers.push(v.router),
            One::Valid(_) => {}
            One::Unsupported(u) => {
                let field = if raw.get("ha") == Some(&Value::Bool(true)) {
                    "ha"
                } else {
                    "distributed"
                };
                return Err(field_err(
                    &u.id,
                    field,
                    format!("true: {} are not supported", u.reason),
                ));
            }
        }
    }
    Ok(routers)
}

/// Validates router dicts one by one, as `sync_routers` returns them:
/// the good ones are kept, each bad one is refused alone. A clash with an
/// earlier router (same router ID, port device-name stem or external
/// address) refuses the later router only.
pub fn parse_each(list: Vec<Value>, node: &NodeConfig) -> Checked {
    let mut seen = Seen::default();
    let mut out = Checked::default();
    for (index, raw) in list.iter().enumerate() {
        match check_one(index, raw, node, &Written::Dict(raw), &mut seen) {
            Ok(One::Valid(v)) if v.up => out.routers.push(v.router),
            Ok(One::Valid(v)) => out.down.push(v.router.id),
            Ok(One::Unsupported(u)) => out.unsupported.push(u),
            Err(error) => out.rejected.push(Rejected {
                id: match &error {
                    ConfigError::Field { router, .. } => Some(router.clone()),
                    _ => None,
                },
                error,
                floating_ip_ids: fip_ids(raw),
            }),
        }
    }
    out
}

/// The IDs of a router dict's floating IPs that are UUIDs.
fn fip_ids(raw: &Value) -> Vec<String> {
    raw.get("_floatingips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("id")?.as_str())
        .filter(|id| is_uuid_like(id))
        .map(str::to_string)
        .collect()
}

/// One router dict, checked.
enum One {
    Valid(Box<Validated>),
    Unsupported(Unsupported),
}

/// What the checks across routers know of the routers accepted so far.
#[derive(Default)]
struct Seen {
    routers: HashSet<String>,
    /// Port IDs and their device-name stems must be unique on the node:
    /// the tap devices of all routers share one namespace. Stem -> router.
    ports: HashMap<String, String>,
    /// Addresses on each external network: (network, address) -> (router,
    /// what). Two routers answering ARP for one address break both.
    external: HashMap<(String, IpAddr), (String, &'static str)>,
}

/// Checks router dict `raw`, the `index`th of its list, against the
/// routers accepted before it (`seen`), which it joins if valid.
fn check_one(
    index: usize,
    raw: &Value,
    node: &NodeConfig,
    written: &Written,
    seen: &mut Seen,
) -> Result<One, ConfigError> {
    let bad_id = |problem: String| ConfigError::Index { index, problem };
    let id = match raw.get("id") {
        Some(Value::String(s)) if is_uuid_like(s) => s.clone(),
        Some(Value::String(s)) => {
            return Err(bad_id(format!(
                "field id: {} is not a UUID ({UUID_FORM})",
                quote(s)
            )));
        }
        Some(other) => {
            return Err(bad_id(format!(
                "field id: must be a string, found {}",
                kind(other)
            )));
        }
        None if raw.is_object() => return Err(bad_id("field id: is missing".into())),
        None => {
            return Err(bad_id(format!(
                "must be an object (a router dict), found {}",
                kind(raw)
            )));
        }
    };
    // Neutron's HA routers run keepalived, its distributed ones live on
    // every compute node: xrouter builds neither.
    let reason = if raw.get("ha") == Some(&Value::Bool(true)) {
        Some("HA routers (\"ha\": true)")
    } else if raw.get("distributed") == Some(&Value::Bool(true)) {
        Some("distributed routers (\"distributed\": true)")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Ok(One::Unsupported(Unsupported {
            id,
            reason,
            floating_ip_ids: fip_ids(raw),
        }));
    }
    let parsed: RawRouter = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        field_err(
            &id,
            if path == "." { "(router)".into() } else { path },
            tidy(&e.into_inner().to_string()),
        )
    })?;
    let v = validate(parsed, node, written)?;
    let router = &v.router;
    if seen.routers.contains(&router.id) {
        return Err(field_err(
            &router.id,
            "id",
            format!("duplicate router id {}", quote(&router.id)),
        ));
    }
    // The router's own claims, checked against each other too; kept only
    // if all are free.
    let mut ports: HashMap<String, String> = HashMap::new();
    for p in router.ports() {
        let stem = short_id(&p.id).to_string();
        if let Some(owner) = seen.ports.get(&stem).or(ports.get(&stem)) {
            return Err(field_err(
                &router.id,
                "port id",
                format!(
                    "port {} gives device name stem {}, already used by a port of router {}",
                    quote(&p.id),
                    quote(&stem),
                    label(owner)
                ),
            ));
        }
        ports.insert(stem, router.id.clone());
    }
    let mut external: HashMap<(String, IpAddr), (String, &'static str)> = HashMap::new();
    if let Some(g) = &router.gateway {
        let net = &g.port.network_id;
        let mut claim = |addr: IpAddr, what: &'static str, field: String| {
            let at = (net.clone(), addr);
            match seen.external.get(&at).or(external.get(&at)) {
                Some((owner, theirs)) => Err(field_err(
                    &router.id,
                    field,
                    format!(
                        "{addr} is also the {theirs} of router {} on network {}",
                        label(owner),
                        label(net)
                    ),
                )),
                None => {
                    external.insert(at, (router.id.clone(), what));
                    Ok(())
                }
            }
        };
        for (i, a) in g.port.addresses.iter().enumerate() {
            claim(
                a.addr(),
                "gateway IP",
                format!("gw_port.fixed_ips[{i}].ip_address"),
            )?;
        }
        for (f, i) in router.floating_ips.iter().zip(&v.fip_index) {
            claim(
                IpAddr::V4(f.floating_ip),
                "floating IP",
                format!("_floatingips[{i}].floating_ip_address"),
            )?;
        }
    }
    seen.routers.insert(router.id.clone());
    seen.ports.extend(ports);
    seen.external.extend(external);
    Ok(One::Valid(Box::new(v)))
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

/// What [`is_uuid_like`] accepts, for messages.
const UUID_FORM: &str = "32 hex digits, plain or as 8-4-4-4-12";

/// Whether `s` is a UUID as Neutron writes its IDs: 32 hex digits, plain or
/// in the canonical dashed 8-4-4-4-12 form, either case (oslo's
/// is_uuid_like in spirit, without its braces and urn: prefixes). Router,
/// port and network IDs name namespaces, pin directories and devices, so
/// nothing else (no '/', "..", whitespace, NUL, non-ASCII) may reach them.
pub fn is_uuid_like(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        }),
        _ => false,
    }
}

/// The network and broadcast addresses of the IPv4 subnets in `nets` that
/// contain `a` (a /31 or /32 has neither): Neutron never allocates them.
fn network_or_broadcast<'a>(
    a: std::net::Ipv4Addr,
    nets: impl IntoIterator<Item = &'a IpNet>,
) -> Option<String> {
    nets.into_iter().find_map(|n| match n {
        IpNet::V4(n) if n.prefix_len() < 31 && a == n.network() => {
            Some(format!("the network address of {n}"))
        }
        IpNet::V4(n) if n.prefix_len() < 31 && a == n.broadcast() => {
            Some(format!("the broadcast address of {n}"))
        }
        _ => None,
    })
}

/// Why `a` can be no port's address, if it cannot.
fn unusable(a: IpAddr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("the unspecified address")
    } else if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if a == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        Some("the limited broadcast address")
    } else {
        None
    }
}

/// A subnet a router port is on, and the field of the file that gives it.
struct Attached {
    field: String,
    cidr: IpNet,
}

/// The subnets port `p` (at `at` in the file) is on: those it lists, and
/// for an address on none of them, the one its prefix length makes.
fn attached(p: &Port, at: &str) -> Vec<Attached> {
    let listed = p.subnets.iter().enumerate().map(|(j, s)| Attached {
        field: format!("{at}.subnets[{j}].cidr"),
        cidr: s.cidr,
    });
    let implied = p
        .addresses
        .iter()
        .enumerate()
        .filter(|(_, a)| !p.subnets.iter().any(|s| s.cidr.contains(&a.addr())))
        .map(|(k, a)| Attached {
            field: format!("{at}.fixed_ips[{k}].ip_address"),
            cidr: a.trunc(),
        });
    listed.chain(implied).collect()
}

/// Whether two networks share an address.
fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn validate(raw: RawRouter, node: &NodeConfig, w: &Written) -> Result<Validated, ConfigError> {
    let rid = raw.id.clone();
    let enable_snat = raw
        .enable_snat
        .or(raw
            .external_gateway_info
            .as_ref()
            .and_then(|g| g.enable_snat))
        .unwrap_or(true);

    // The gateway_ip of each external subnet: Neutron never allocates it
    // as a floating IP.
    let mut ext_gateway_ips: HashMap<IpAddr, IpNet> = HashMap::new();
    let gateway = match raw.gw_port {
        Some(p) => {
            let mut extra = Vec::new();
            for (i, s) in p.extra_subnets.iter().enumerate() {
                let c = subnet_cidr(&rid, &format!("gw_port.extra_subnets[{i}].cidr"), &s.cidr)?;
                if let Some(g) = s.gateway_ip.as_deref().filter(|g| !g.is_empty()) {
                    let g = ip(&rid, &format!("gw_port.extra_subnets[{i}].gateway_ip"), g)?;
                    ext_gateway_ips.insert(g, c);
                }
                extra.push(c);
            }
            let port = port(&rid, "gw_port", p, Role::Gateway, node, w)?;
            for s in &port.subnets {
                if let Some(g) = s.gateway_ip {
                    ext_gateway_ips.insert(g, s.cidr);
                }
            }
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
        interfaces.push(port(
            &rid,
            &format!("_interfaces[{i}]"),
            p,
            Role::Internal,
            node,
            w,
        )?);
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

    // The router's own addresses (qr- and qg-), which no floating IP or
    // fixed IP may be, and its internal subnets, one of which a fixed IP
    // must be on: Neutron associates a floating IP only with a port on a
    // subnet attached to the router (l3_db get_router_for_floatingip), not
    // with one merely reachable through an extra route.
    let own: HashMap<IpAddr, String> = interfaces
        .iter()
        .chain(gateway.as_ref().map(|g| &g.port))
        .flat_map(|p| p.addresses.iter().map(move |a| (a.addr(), p.device())))
        .collect();
    let internal: Vec<IpNet> = interfaces
        .iter()
        .flat_map(|p| {
            p.subnets
                .iter()
                .map(|s| s.cidr)
                .chain(p.addresses.iter().map(|a| a.trunc()))
        })
        .collect();
    let external: Vec<IpNet> = gateway
        .iter()
        .flat_map(|g| {
            g.port
                .subnets
                .iter()
                .map(|s| s.cidr)
                .chain(g.port.addresses.iter().map(|a| a.trunc()))
                .chain(g.extra_subnets.iter().copied())
        })
        .collect();

    // The subnets the router's ports are on (Neutron's check of a router
    // interface: its subnet overlaps none of the router's others, the
    // external ones included).
    let on_gateway = gateway
        .as_ref()
        .map(|g| attached(&g.port, "gw_port"))
        .unwrap_or_default();
    let mut connected: Vec<(usize, Attached)> = Vec::new();
    for (i, p) in interfaces.iter().enumerate() {
        for a in attached(p, &format!("_interfaces[{i}]")) {
            if let Some(e) = on_gateway.iter().find(|e| overlap(&e.cidr, &a.cidr)) {
                return Err(field_err(
                    &rid,
                    &a.field,
                    format!(
                        "{} overlaps the external subnet {} ({})",
                        a.cidr, e.cidr, e.field
                    ),
                ));
            }
            // A port may list one subnet twice; two ports may not.
            if let Some((_, o)) = connected
                .iter()
                .find(|(j, o)| overlap(&o.cidr, &a.cidr) && !(*j == i && o.cidr == a.cidr))
            {
                return Err(field_err(
                    &rid,
                    &a.field,
                    format!(
                        "{} overlaps {} ({}), another subnet of the router",
                        a.cidr, o.cidr, o.field
                    ),
                ));
            }
            connected.push((i, a));
        }
    }
    let connected: Vec<IpNet> = connected
        .into_iter()
        .map(|(_, a)| a.cidr)
        .chain(on_gateway.into_iter().map(|a| a.cidr))
        .collect();

    // Neutron's check of extra routes: the next hop is on a subnet of the
    // router's ports, and is not the router itself.
    for (i, r) in routes.iter().enumerate() {
        let field = format!("routes[{i}].nexthop");
        let hop = r.nexthop;
        if let Some(dev) = own.get(&hop) {
            return Err(field_err(
                &rid,
                field,
                format!("{hop} is the router's own address (port {dev})"),
            ));
        }
        if !connected.iter().any(|n| n.contains(&hop)) {
            let mut list: Vec<String> = connected.iter().map(|n| n.to_string()).collect();
            list.dedup();
            return Err(field_err(
                &rid,
                field,
                format!(
                    "{hop} is on none of the router's subnets ({})",
                    if list.is_empty() {
                        "it has none".to_string()
                    } else {
                        list.join(", ")
                    }
                ),
            ));
        }
    }

    let mut floating_ips: Vec<FloatingIp> = Vec::new();
    let mut fip_index = Vec::new();
    let mut by_fip: HashMap<std::net::Ipv4Addr, String> = HashMap::new();
    let mut by_fixed: HashMap<std::net::Ipv4Addr, std::net::Ipv4Addr> = HashMap::new();
    for (i, f) in raw.floatingips.unwrap_or_default().iter().enumerate() {
        let field = format!("_floatingips[{i}].floating_ip_address");
        let fip = match ip(&rid, &field, &f.floating_ip_address)? {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => return Err(field_err(&rid, field, format!("{v6} is not IPv4"))),
        };
        if gateway.is_none() {
            return Err(field_err(
                &rid,
                field,
                format!("{fip}: the router has no gateway port (gw_port)"),
            ));
        }
        if !external.iter().any(|n| n.contains(&IpAddr::V4(fip))) {
            let mut list: Vec<String> = external.iter().map(|n| n.to_string()).collect();
            list.dedup();
            return Err(field_err(
                &rid,
                field,
                format!(
                    "{fip} is outside the external subnets ({})",
                    list.join(", ")
                ),
            ));
        }
        if let Some(what) = network_or_broadcast(fip, &external) {
            return Err(field_err(&rid, field, format!("{fip} is {what}")));
        }
        if let Some(subnet) = ext_gateway_ips.get(&IpAddr::V4(fip)) {
            return Err(field_err(
                &rid,
                field,
                format!("{fip} is the gateway_ip of external subnet {subnet}"),
            ));
        }
        if let Some(dev) = own.get(&IpAddr::V4(fip)) {
            return Err(field_err(
                &rid,
                field,
                format!("{fip} is the router's own address (port {dev})"),
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
        if !internal.iter().any(|n| n.contains(&IpAddr::V4(fixed))) {
            let mut list: Vec<String> = internal.iter().map(|n| n.to_string()).collect();
            list.dedup();
            return Err(field_err(
                &rid,
                fixed_field,
                format!(
                    "{fixed} is on none of the router's internal subnets ({})",
                    if list.is_empty() {
                        "it has none".to_string()
                    } else {
                        list.join(", ")
                    }
                ),
            ));
        }
        if let Some(what) = network_or_broadcast(fixed, &internal) {
            return Err(field_err(&rid, fixed_field, format!("{fixed} is {what}")));
        }
        if let Some(dev) = own.get(&IpAddr::V4(fixed)) {
            return Err(field_err(
                &rid,
                fixed_field,
                format!("{fixed} is the router's own address (port {dev})"),
            ));
        }
        if let Some(other) = by_fip.get(&fip) {
            return Err(field_err(
                &rid,
                field,
                format!(
                    "duplicate floating IP {fip} (also floating IP {})",
                    quote(other)
                ),
            ));
        }
        if let Some(other) = by_fixed.get(&fixed) {
            return Err(field_err(
                &rid,
                fixed_field,
                format!("fixed IP {fixed} already has floating IP {other}"),
            ));
        }
        by_fip.insert(fip, f.id.clone());
        by_fixed.insert(fixed, fip);
        fip_index.push(i);
        floating_ips.push(FloatingIp {
            id: f.id.clone(),
            floating_ip: fip,
            fixed_ip: fixed,
        });
    }

    Ok(Validated {
        router: Router {
            id: rid,
            enable_snat,
            gateway,
            interfaces,
            routes,
            floating_ips,
        },
        up: raw.admin_state_up,
        fip_index,
    })
}

fn port(
    rid: &str,
    at: &str,
    p: RawPort,
    role: Role,
    node: &NodeConfig,
    w: &Written,
) -> Result<Port, ConfigError> {
    // The ID names the devices qr-/qg-/tap<id[:11]>.
    if !is_uuid_like(&p.id) {
        return Err(field_err(
            rid,
            format!("{at}.id"),
            format!("{} is not a UUID ({UUID_FORM})", quote(&p.id)),
        ));
    }
    // The network ID names the bridge <prefix><id[:11]>, unless mapped.
    if !node.bridge_mappings.contains_key(&p.network_id) && !is_uuid_like(&p.network_id) {
        return Err(field_err(
            rid,
            format!("{at}.network_id"),
            format!(
                "{} is not a UUID ({UUID_FORM}) and bridge_mappings does not map it",
                quote(&p.network_id)
            ),
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
        Some(m) => in_range(rid, format!("{at}.mtu"), m, MTU, w)? as u32,
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
            Some(l) => in_range(rid, plen_field, l, 1..=max, w)? as u8,
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
        if let Some(what) = unusable(addr) {
            return Err(field_err(rid, field, format!("{addr} is {what}")));
        }
        // The address lies in its subnet (by subnet_id, else one of the
        // port's subnets of its family; a port that lists none has the
        // one its prefix length makes), and is no network or broadcast
        // address there: Neutron allocates neither.
        let family: Vec<IpNet> = subnets
            .iter()
            .map(|s| s.cidr)
            .filter(|c| c.addr().is_ipv4() == addr.is_ipv4())
            .collect();
        let subnet = match f.subnet_id.as_ref().and_then(|id| subnet_ids.get(id)) {
            Some(c) if c.contains(&addr) => *c,
            Some(c) => {
                return Err(field_err(
                    rid,
                    field,
                    format!("{addr} is outside its subnet {c}"),
                ));
            }
            None if family.is_empty() => net.trunc(),
            None => match family.iter().find(|c| c.contains(&addr)) {
                Some(c) => *c,
                None => {
                    let list: Vec<String> = family.iter().map(|c| c.to_string()).collect();
                    return Err(field_err(
                        rid,
                        field,
                        format!("{addr} is outside the port's subnets ({})", list.join(", ")),
                    ));
                }
            },
        };
        if let IpAddr::V4(a4) = addr
            && let Some(what) = network_or_broadcast(a4, [&subnet])
        {
            return Err(field_err(rid, field, format!("{addr} is {what}")));
        }
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

    const R1: &str = "5c7ef3a1-2d4b-4e8f-9a6c-1b2d3e4f5a6b";
    const R2: &str = "6d8f04b2-3e5c-4f90-8b7d-2c3e4f5a6b7c";
    const EXT_NET: &str = "9c9436d4-2b7c-4a1e-9d8f-0123456789ab";

    /// The article's router as Neutron hands it over.
    fn article() -> Value {
        json!({
            "id": R1, "admin_state_up": true, "enable_snat": true, "ha": false, "distributed": false,
            "routes": [{"destination": "172.16.0.0/16", "nexthop": "81.1.180.50"}],
            "gw_port": {"id": "3c8d6a68-9712-4b5e-8c1d-0a1b2c3d4e5f", "mac_address": "fa:16:3e:2e:5b:23", "mtu": 1500,
                "network_id": EXT_NET, "device_owner": "network:router_gateway",
                "fixed_ips": [{"ip_address": "192.168.1.110", "prefixlen": 24, "subnet_id": "se"}],
                "subnets": [{"id": "se", "cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1"}],
                "extra_subnets": [{"id": "sx", "cidr": "192.168.9.0/24", "gateway_ip": null}]},
            "_interfaces": [{"id": "a5c6ed86-c1ff-4a2b-9c3d-4e5f6a7b8c9d", "mac_address": "fa:16:3e:87:40:f3", "mtu": 1450,
                "network_id": "1e2f3a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b", "admin_state_up": true,
                "fixed_ips": [{"ip_address": "81.1.180.1", "prefixlen": 24, "subnet_id": "s81"}],
                "subnets": [{"id": "s81", "cidr": "81.1.180.0/24", "gateway_ip": "81.1.180.1"}]},
                {"id": "b7d8e9f0-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "mac_address": "fa:16:3e:87:40:f4", "mtu": 1450,
                "network_id": "2f3a4b5c-6d7e-4f80-9bac-1d2e3f4a5b6c", "admin_state_up": true,
                "fixed_ips": [{"ip_address": "91.1.180.1", "prefixlen": 24, "subnet_id": "s91"}],
                "subnets": [{"id": "s91", "cidr": "91.1.180.0/24", "gateway_ip": "91.1.180.1"}]}],
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
                assert_eq!(router, R1);
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
        assert_eq!(r.namespace(), format!("qrouter-{R1}"));
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
        let v = json!({"id": R1, "gw_port": null});
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
            e.contains(&format!("router {R1}")) && e.contains("duplicate router id"),
            "{e}"
        );

        let mut other = article();
        other["id"] = json!(R2);
        other["_interfaces"][0]["id"] = json!("a5c6ed86-c1aa-4b2c-8d3e-5f6a7b8c9d0e");
        other["gw_port"]["id"] = json!("4d9e7b79-a823-4c6f-9d2e-1b2c3d4e5f60");
        let e = parse(&serde_json::to_string(&json!([article(), other])).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("router {R2}")) && e.contains("a5c6ed86-c1"),
            "{e}"
        );

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
            rejects(v, "_interfaces[0].mtu", "68-65535");
        }
        let mut v = article();
        v["_interfaces"][0]["mtu"] = json!(1500.5);
        rejects(v, "_interfaces[0].mtu", "1500.5");
    }

    /// Replaces `"XX"` in the article's file with `number` as written, so
    /// that no JSON library rewrites it.
    fn with_number(field: &[&str], number: &str) -> Result<Vec<Router>, ConfigError> {
        let mut v = article();
        let mut at = &mut v;
        for f in field {
            at = match f.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*f],
            };
        }
        *at = json!("XX");
        let text = serde_json::to_string(&json!([v])).unwrap();
        parse(&text.replacen("\"XX\"", number, 1))
    }

    #[test]
    fn numbers_are_shown_as_written_with_the_right_reason() {
        let mtu = ["_interfaces", "0", "mtu"];
        for (number, problem) in [
            (
                "18446744073709551616",
                "18446744073709551616 is outside the allowed range 68-65535",
            ),
            (
                "-18446744073709551616",
                "-18446744073709551616 is outside the allowed range 68-65535",
            ),
            (
                "100000000000000000000000000000000000000000",
                "100000000000000000000000000000000000000000 is outside the allowed range 68-65535",
            ),
            ("1e3", "1e3 is not an integer (write 1000)"),
            ("1E3", "1E3 is not an integer (write 1000)"),
            ("1500.0", "1500.0 is not an integer (write 1500)"),
            ("15e2", "15e2 is not an integer (write 1500)"),
            ("1500.5", "1500.5 is not an integer"),
            ("1.5e300", "1.5e300 is not an integer"),
            ("1e41", "1e41 is not an integer"),
            ("-2.5E-3", "-2.5E-3 is not an integer"),
        ] {
            match with_number(&mtu, number) {
                Err(ConfigError::Field {
                    router,
                    field,
                    problem: p,
                }) => {
                    assert_eq!(router, R1);
                    assert_eq!(field, "_interfaces[0].mtu", "{number}");
                    assert_eq!(p, problem, "{number}");
                }
                other => panic!("mtu {number}: {other:?}"),
            }
        }
        match with_number(&["gw_port", "fixed_ips", "0", "prefixlen"], "2.4e1") {
            Err(ConfigError::Field { field, problem, .. }) => {
                assert_eq!(field, "gw_port.fixed_ips[0].prefixlen");
                assert_eq!(problem, "2.4e1 is not an integer (write 24)");
            }
            other => panic!("{other:?}"),
        }
        // Integers as written still parse, whatever their size in JSON.
        assert_eq!(
            with_number(&mtu, "1450").unwrap()[0].interfaces[0].mtu,
            1450
        );
        assert_eq!(
            with_number(&mtu, "65535").unwrap()[0].interfaces[0].mtu,
            65535
        );
        // Beyond what a float holds, JSON itself refuses it, saying where.
        match with_number(&mtu, "1e400") {
            Err(ConfigError::Json(m)) => {
                assert!(m.contains("number out of range at line 1"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // A long number is cut, as every value.
        let big = format!("1{}", "0".repeat(299));
        let m = one_short_line(&with_number(&mtu, &big).unwrap_err());
        assert!(
            m.contains("(300 bytes) is outside the allowed range"),
            "{m}"
        );
        for (plen, shown) in [
            (json!(0), "0"),
            (json!(33), "33"),
            (json!(300), "300"),
            (json!(-24), "-24"),
        ] {
            let mut v = article();
            v["gw_port"]["fixed_ips"][0]["prefixlen"] = plen;
            rejects(v.clone(), "gw_port.fixed_ips[0].prefixlen", shown);
            rejects(v, "gw_port.fixed_ips[0].prefixlen", "1-32");
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
    fn ids_that_name_devices_namespaces_or_files_are_uuids() {
        let dashed = "0a1B2c3D-4e5F-6a7b-8C9d-0E1f2A3b4C5d";
        let plain = "0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d";
        for good in [dashed, plain] {
            assert!(is_uuid_like(good), "{good}");
        }
        for bad in [
            "",
            "r1",
            "..",
            "../../etc",
            "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d/x",
            "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5",
            "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5dd",
            "0a1b2c3d4-e5f-6a7b-8c9d-0e1f2a3b4c5d",
            "{0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d}",
            "urn:uuid:0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
            "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5\0",
            "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5 ",
            "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4cü",
            "0a1b2c3d 4e5f-6a7b-8c9d-0e1f2a3b4c5d",
            "0x1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
        ] {
            assert!(!is_uuid_like(bad), "{bad:?}");
            let mut v = article();
            v["id"] = json!(bad);
            match parse_one(v) {
                Err(ConfigError::Index { index: 0, problem }) => {
                    assert!(
                        problem.contains("field id") && problem.contains("UUID"),
                        "{problem}"
                    )
                }
                other => panic!("router id {bad:?}: {other:?}"),
            }
            let mut v = article();
            v["_interfaces"][1]["id"] = json!(bad);
            rejects(v, "_interfaces[1].id", "UUID");
            let mut v = article();
            v["gw_port"]["network_id"] = json!(bad);
            rejects(v, "gw_port.network_id", "UUID");
        }
        let mut v = article();
        v["id"] = json!(plain);
        v["gw_port"]["id"] = json!(dashed);
        assert_eq!(
            parse_one(v).unwrap()[0].namespace(),
            format!("qrouter-{plain}")
        );
        // A mapped network names no bridge by its ID: any ID will do.
        let mut v = article();
        v["gw_port"]["network_id"] = json!("public");
        assert!(parse_one(v.clone()).is_err());
        let mut node = NodeConfig::default();
        node.bridge_mappings.insert("public".into(), "br-ex".into());
        let text = serde_json::to_string(&json!([v])).unwrap();
        assert_eq!(
            parse_for(&text, &node).unwrap()[0]
                .gateway
                .as_ref()
                .unwrap()
                .port
                .network_id,
            "public"
        );
    }

    #[test]
    fn floating_ips_neutron_could_not_allocate_are_rejected() {
        let fip = "_floatingips[0].floating_ip_address";
        for (addr, why) in [
            ("192.168.1.110", "own address"),
            ("192.168.1.0", "network address of 192.168.1.0/24"),
            ("192.168.1.255", "broadcast address of 192.168.1.0/24"),
            ("192.168.9.0", "network address of 192.168.9.0/24"),
            ("192.168.9.255", "broadcast address of 192.168.9.0/24"),
        ] {
            let mut v = article();
            v["_floatingips"][0]["floating_ip_address"] = json!(addr);
            rejects(v.clone(), fip, addr);
            rejects(v, fip, why);
        }
        // A second address of the gateway port is its own too.
        let mut v = article();
        v["gw_port"]["fixed_ips"] = json!([
            {"ip_address": "192.168.1.110", "prefixlen": 24},
            {"ip_address": "192.168.1.111", "prefixlen": 24}]);
        v["_floatingips"][0]["floating_ip_address"] = json!("192.168.1.111");
        rejects(v, fip, "own address");
        // A /31 or /32 has no network or broadcast address to keep free.
        for (cidr, addr) in [
            ("192.168.9.0/31", "192.168.9.0"),
            ("192.168.9.1/32", "192.168.9.1"),
        ] {
            let mut v = article();
            v["gw_port"]["extra_subnets"][0]["cidr"] = json!(cidr);
            v["_floatingips"][0]["floating_ip_address"] = json!(addr);
            assert!(parse_one(v).is_ok(), "{addr} in {cidr}");
        }
    }

    #[test]
    fn fixed_ips_must_be_hosts_of_an_internal_subnet_and_not_the_router() {
        let fixed = "_floatingips[0].fixed_ip_address";
        for (addr, why) in [
            // Reachable through the extra route 172.16.0.0/16 only.
            ("172.16.0.5", "none of the router's internal subnets"),
            ("192.168.1.15", "none of the router's internal subnets"),
            ("81.1.180.1", "own address (port qr-a5c6ed86-c1)"),
            ("91.1.180.1", "own address"),
            ("81.1.180.0", "network address of 81.1.180.0/24"),
            ("91.1.180.255", "broadcast address of 91.1.180.0/24"),
        ] {
            let mut v = article();
            v["_floatingips"][0]["fixed_ip_address"] = json!(addr);
            rejects(v.clone(), fixed, addr);
            rejects(v, fixed, why);
        }
        let mut v = article();
        v["_interfaces"] = json!([]);
        // Its extra route would have no next hop on the router's subnets.
        v["routes"] = json!([]);
        rejects(v, fixed, "it has none");
        let mut v = article();
        v["_floatingips"][0]["fixed_ip_address"] = json!("81.1.180.254");
        assert!(parse_one(v).is_ok());
    }

    #[test]
    fn port_addresses_are_hosts_of_their_subnets() {
        let qr = "_interfaces[0].fixed_ips[0].ip_address";
        for (addr, why) in [
            ("81.1.180.0", "the network address of 81.1.180.0/24"),
            ("81.1.180.255", "the broadcast address of 81.1.180.0/24"),
            ("81.1.181.1", "outside its subnet 81.1.180.0/24"),
            ("127.0.0.1", "a loopback address"),
            ("224.0.0.5", "a multicast address"),
            ("0.0.0.0", "the unspecified address"),
            ("255.255.255.255", "the limited broadcast address"),
        ] {
            let mut v = article();
            v["_interfaces"][0]["fixed_ips"][0]["ip_address"] = json!(addr);
            rejects(v.clone(), qr, addr);
            rejects(v, qr, why);
        }
        // Without subnet_id: one of the port's subnets must hold it.
        let mut v = article();
        v["_interfaces"][0]["fixed_ips"] = json!([{"ip_address": "10.0.0.1", "prefixlen": 24}]);
        rejects(
            v,
            qr,
            "10.0.0.1 is outside the port's subnets (81.1.180.0/24)",
        );
        // A port that lists no subnet: the one its prefix length makes.
        let mut v = article();
        v["gw_port"]["subnets"] = json!([]);
        v["gw_port"]["fixed_ips"][0]["ip_address"] = json!("192.168.1.255");
        rejects(
            v,
            "gw_port.fixed_ips[0].ip_address",
            "192.168.1.255 is the broadcast address of 192.168.1.0/24",
        );
        let mut v = article();
        v["gw_port"]["fixed_ips"][0]["ip_address"] = json!("::1");
        v["gw_port"]["fixed_ips"][0]["prefixlen"] = json!(128);
        rejects(
            v,
            "gw_port.fixed_ips[0].ip_address",
            "::1 is a loopback address",
        );
        // A /31 has no network or broadcast address.
        let mut v = article();
        v["_interfaces"][1]["subnets"][0]["cidr"] = json!("91.1.180.0/31");
        v["_interfaces"][1]["fixed_ips"][0]["ip_address"] = json!("91.1.180.0");
        v["_interfaces"][1]["fixed_ips"][0]["prefixlen"] = json!(31);
        v["_floatingips"][0]["fixed_ip_address"] = json!("81.1.180.14");
        assert!(parse_one(v).is_ok());
    }

    #[test]
    fn floating_ips_are_not_an_external_gateway() {
        let fip = "_floatingips[0].floating_ip_address";
        let mut v = article();
        v["_floatingips"][0]["floating_ip_address"] = json!("192.168.1.1");
        rejects(
            v,
            fip,
            "192.168.1.1 is the gateway_ip of external subnet 192.168.1.0/24",
        );
        let mut v = article();
        v["gw_port"]["extra_subnets"][0]["gateway_ip"] = json!("192.168.9.1");
        v["_floatingips"][0]["floating_ip_address"] = json!("192.168.9.1");
        rejects(
            v.clone(),
            fip,
            "192.168.9.1 is the gateway_ip of external subnet 192.168.9.0/24",
        );
        v["_floatingips"][0]["floating_ip_address"] = json!("192.168.9.2");
        assert!(parse_one(v.clone()).is_ok());
        v["gw_port"]["extra_subnets"][0]["gateway_ip"] = json!("192.168.9.x");
        rejects(v, "gw_port.extra_subnets[0].gateway_ip", "192.168.9.x");
    }

    #[test]
    fn internal_subnets_overlap_nothing_else_of_the_router() {
        let mut v = article();
        v["_interfaces"][1]["subnets"][0]["cidr"] = json!("81.1.0.0/16");
        v["_interfaces"][1]["fixed_ips"][0]["ip_address"] = json!("81.1.1.1");
        v["_interfaces"][1]["fixed_ips"][0]["prefixlen"] = json!(16);
        rejects(
            v,
            "_interfaces[1].subnets[0].cidr",
            "81.1.0.0/16 overlaps 81.1.180.0/24 (_interfaces[0].subnets[0].cidr), another subnet",
        );
        // The same subnet on two ports.
        let mut v = article();
        v["_interfaces"][1]["subnets"][0]["cidr"] = json!("81.1.180.0/24");
        v["_interfaces"][1]["fixed_ips"][0]["ip_address"] = json!("81.1.180.2");
        rejects(
            v,
            "_interfaces[1].subnets[0].cidr",
            "81.1.180.0/24 overlaps",
        );
        // A port without subnets: the one its address makes.
        let mut v = article();
        v["_interfaces"][1]["subnets"] = json!([]);
        v["_interfaces"][1]["fixed_ips"][0]["ip_address"] = json!("81.1.180.7");
        rejects(
            v,
            "_interfaces[1].fixed_ips[0].ip_address",
            "81.1.180.0/24 overlaps 81.1.180.0/24",
        );
        // The external subnet.
        let mut v = article();
        v["_interfaces"][0]["subnets"][0]["cidr"] = json!("192.168.1.128/25");
        v["_interfaces"][0]["fixed_ips"][0]["ip_address"] = json!("192.168.1.129");
        v["_interfaces"][0]["fixed_ips"][0]["prefixlen"] = json!(25);
        rejects(
            v,
            "_interfaces[0].subnets[0].cidr",
            "192.168.1.128/25 overlaps the external subnet 192.168.1.0/24 \
             (gw_port.subnets[0].cidr)",
        );
        // Another router's subnets may overlap (tenants' address spaces do).
        let mut other = article();
        other["id"] = json!(R2);
        other["gw_port"] = Value::Null;
        other["_floatingips"] = json!([]);
        other["_interfaces"][0]["id"] = json!("c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5");
        other["_interfaces"][1]["id"] = json!("d2e3f4a5-b6c7-4d8e-9fa0-b1c2d3e4f5a6");
        let text = serde_json::to_string(&json!([article(), other])).unwrap();
        assert_eq!(parse(&text).unwrap().len(), 2);
    }

    #[test]
    fn extra_routes_go_through_a_neighbour_on_the_routers_subnets() {
        let hop = "routes[0].nexthop";
        for (addr, why) in [
            (
                "10.9.9.9",
                "10.9.9.9 is on none of the router's subnets (81.1.180.0/24, 91.1.180.0/24, \
                 192.168.1.0/24)",
            ),
            // An extra subnet is on-link, but no port of the router is on it.
            ("192.168.9.5", "none of the router's subnets"),
            (
                "81.1.180.1",
                "81.1.180.1 is the router's own address (port qr-a5c6ed86-c1)",
            ),
            ("192.168.1.110", "own address (port qg-3c8d6a68-97)"),
        ] {
            let mut v = article();
            v["routes"][0]["nexthop"] = json!(addr);
            rejects(v.clone(), hop, addr);
            rejects(v, hop, why);
        }
        let mut v = article();
        v["routes"] = json!([
            {"destination": "172.16.0.0/16", "nexthop": "192.168.1.1"},
            {"destination": "172.17.0.0/16", "nexthop": "91.1.180.20"}]);
        assert_eq!(parse_one(v).unwrap()[0].routes.len(), 2);
        let mut v = article();
        v["_interfaces"] = json!([]);
        v["gw_port"] = Value::Null;
        v["_floatingips"] = json!([]);
        rejects(v, hop, "(it has none)");
    }

    #[test]
    fn routers_on_one_external_network_share_no_address() {
        /// A second router on the external network, with other ports.
        fn other(gw_ip: &str, fip: &str) -> Value {
            let mut o = article();
            o["id"] = json!(R2);
            o["gw_port"]["id"] = json!("4d9e7b79-a823-4c6f-9d2e-1b2c3d4e5f60");
            o["gw_port"]["fixed_ips"][0]["ip_address"] = json!(gw_ip);
            o["_interfaces"][0]["id"] = json!("c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5");
            o["_interfaces"][1]["id"] = json!("d2e3f4a5-b6c7-4d8e-9fa0-b1c2d3e4f5a6");
            o["_floatingips"][0]["floating_ip_address"] = json!(fip);
            o
        }
        let two = |o: Value| parse(&serde_json::to_string(&json!([article(), o])).unwrap());
        assert_eq!(
            two(other("192.168.1.111", "192.168.1.105")).unwrap().len(),
            2
        );
        for (o, field, needle) in [
            (
                other("192.168.1.111", "192.168.1.104"),
                "_floatingips[0].floating_ip_address",
                "192.168.1.104 is also the floating IP of router",
            ),
            (
                other("192.168.1.111", "192.168.1.110"),
                "_floatingips[0].floating_ip_address",
                "192.168.1.110 is also the gateway IP of router",
            ),
            (
                other("192.168.1.104", "192.168.1.105"),
                "gw_port.fixed_ips[0].ip_address",
                "192.168.1.104 is also the floating IP of router",
            ),
            (
                other("192.168.1.110", "192.168.1.105"),
                "gw_port.fixed_ips[0].ip_address",
                "192.168.1.110 is also the gateway IP of router",
            ),
        ] {
            match two(o) {
                Err(ConfigError::Field {
                    router,
                    field: f,
                    problem,
                }) => {
                    assert_eq!(router, R2);
                    assert_eq!(f, field);
                    assert!(
                        problem.contains(needle)
                            && problem.contains(R1)
                            && problem.contains(EXT_NET),
                        "{problem}"
                    );
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        // The same addresses on another external network are another L2.
        let mut o = other("192.168.1.110", "192.168.1.104");
        o["gw_port"]["network_id"] = json!("e3f4a5b6-c7d8-4e9f-a0b1-c2d3e4f5a6b7");
        assert_eq!(two(o).unwrap().len(), 2);
    }

    #[test]
    fn router_ids_that_cannot_name_a_namespace_are_rejected() {
        for bad in ["", "a/b", ".."] {
            let mut v = article();
            v["id"] = json!(bad);
            assert!(parse_one(v).is_err(), "{bad:?} accepted");
        }
        let e = parse("[{\"gw_port\": null}]").unwrap_err();
        assert!(matches!(e, ConfigError::Index { index: 0, .. }));
    }

    const R3: &str = "7e9a15c3-4f6d-4a01-9c8e-3d4f5a6b7c8d";
    const FIP1: &str = "0f1e2d3c-4b5a-4968-8776-655443322110";

    /// A router with ports and addresses of its own (on the article's
    /// external network), floating IP `fip` with ID [`FIP1`].
    fn another(id: &str, n: u8, fip: &str) -> Value {
        let mut o = article();
        o["id"] = json!(id);
        o["gw_port"]["id"] = json!(format!("4d9e7b79-a823-4c6f-9d2e-1b2c3d4e5f{n:02}"));
        o["gw_port"]["fixed_ips"][0]["ip_address"] = json!(format!("192.168.1.{}", 120 + n));
        o["_interfaces"][0]["id"] = json!(format!("c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4{n:02}"));
        o["_interfaces"][1]["id"] = json!(format!("d2e3f4a5-b6c7-4d8e-9fa0-b1c2d3e4f5{n:02}"));
        o["_floatingips"][0]["floating_ip_address"] = json!(fip);
        o["_floatingips"][0]["id"] = json!(FIP1);
        o
    }

    fn ids(routers: &[Router]) -> Vec<&str> {
        routers.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn each_router_is_checked_alone() {
        let mut bad = another(R2, 2, "192.168.1.105");
        bad["_interfaces"][1]["mtu"] = json!(1e3);
        let list = vec![article(), bad, another(R3, 3, "192.168.1.106")];
        let c = parse_each(list.clone(), &NodeConfig::default());
        assert_eq!(ids(&c.routers), [R1, R3]);
        assert!(c.down.is_empty() && c.unsupported.is_empty());
        assert_eq!(c.rejected.len(), 1);
        let r = &c.rejected[0];
        assert_eq!(r.id.as_deref(), Some(R2));
        assert_eq!(r.floating_ip_ids, [FIP1]);
        // As over RPC, a number is shown as the dict holds it.
        assert_eq!(
            r.error.to_string(),
            format!("router {R2}: field _interfaces[1].mtu: 1000.0 is not an integer (write 1000)")
        );
        // The file form of the same list is refused whole, with that error.
        let text = serde_json::to_string(&list).unwrap();
        assert_eq!(parse(&text).unwrap_err(), r.error);
    }

    #[test]
    fn a_clash_across_routers_refuses_the_later_router_only() {
        // R2 claims R1's floating IP; R3 reuses R2's ports, which R2's
        // refusal left free.
        let mut r3 = another(R2, 2, "192.168.1.106");
        r3["id"] = json!(R3);
        let list = vec![article(), another(R2, 2, "192.168.1.104"), r3];
        let c = parse_each(list.clone(), &NodeConfig::default());
        assert_eq!(ids(&c.routers), [R1, R3]);
        assert_eq!(c.rejected.len(), 1);
        let r = &c.rejected[0];
        assert_eq!(r.id.as_deref(), Some(R2));
        assert_eq!(r.floating_ip_ids, [FIP1]);
        match &r.error {
            ConfigError::Field {
                router,
                field,
                problem,
            } => {
                assert_eq!(router, R2);
                assert_eq!(field, "_floatingips[0].floating_ip_address");
                assert!(
                    problem.contains("192.168.1.104 is also the floating IP of router"),
                    "{problem}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The file form refuses the list with the same error.
        let text = serde_json::to_string(&list).unwrap();
        assert_eq!(parse(&text).unwrap_err(), r.error);
        // A duplicate router ID and a port stem clash, likewise.
        let mut dup = another(R1, 4, "192.168.1.107");
        dup["_floatingips"][0]["id"] = json!("not-a-uuid");
        let mut stem = another(R3, 5, "192.168.1.108");
        stem["_interfaces"][0]["id"] = article()["_interfaces"][0]["id"].clone();
        let c = parse_each(vec![article(), dup, stem], &NodeConfig::default());
        assert_eq!(ids(&c.routers), [R1]);
        let errors: Vec<String> = c.rejected.iter().map(|r| r.error.to_string()).collect();
        assert!(errors[0].contains("duplicate router id"), "{errors:?}");
        assert!(
            errors[1].contains("already used by a port of router"),
            "{errors:?}"
        );
        // Only IDs that are UUIDs are handed back.
        assert!(c.rejected[0].floating_ip_ids.is_empty());
    }

    #[test]
    fn ha_and_distributed_routers_are_not_handled() {
        let mut ha = another(R2, 2, "192.168.1.105");
        ha["ha"] = json!(true);
        let mut dvr = another(R3, 3, "192.168.1.106");
        dvr["distributed"] = json!(true);
        let c = parse_each(vec![ha.clone(), article(), dvr], &NodeConfig::default());
        assert_eq!(ids(&c.routers), [R1]);
        assert!(c.rejected.is_empty());
        assert_eq!(
            c.unsupported,
            [
                Unsupported {
                    id: R2.into(),
                    reason: "HA routers (\"ha\": true)",
                    floating_ip_ids: vec![FIP1.into()],
                },
                Unsupported {
                    id: R3.into(),
                    reason: "distributed routers (\"distributed\": true)",
                    floating_ip_ids: vec![FIP1.into()],
                },
            ]
        );
        // A routers file with one is refused, naming it.
        let e = parse(&serde_json::to_string(&json!([article(), ha])).unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("router {R2}: field ha: true: HA routers (\"ha\": true) are not supported")
        );
    }

    #[test]
    fn refused_routers_hand_back_their_floating_ips_and_down_ones_their_ids() {
        let mut no_id = another(R2, 2, "192.168.1.105");
        no_id["id"] = json!("r2");
        let mut down = another(R3, 3, "192.168.1.106");
        down["admin_state_up"] = json!(false);
        let c = parse_each(
            vec![no_id, json!(7), down, article()],
            &NodeConfig::default(),
        );
        assert_eq!(ids(&c.routers), [R1]);
        assert_eq!(c.down, [R3]);
        assert_eq!(c.rejected.len(), 2);
        assert_eq!(c.rejected[0].id, None);
        assert_eq!(c.rejected[0].floating_ip_ids, [FIP1]);
        assert!(
            c.rejected[0]
                .error
                .to_string()
                .starts_with("router #0: field id: \"r2\" is not a UUID"),
            "{}",
            c.rejected[0].error
        );
        assert_eq!(c.rejected[1].id, None);
        assert!(c.rejected[1].floating_ip_ids.is_empty());
        assert!(
            c.rejected[1]
                .error
                .to_string()
                .starts_with("router #1: must be an object")
        );
    }
}
