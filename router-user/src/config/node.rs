//! The node config (TOML): what Neutron keeps in `l3_agent.ini`.
//!
//! Every key is optional; unknown keys are an error, since a typo in an
//! operator's file should not silently fall back to a default.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::text::{self, label, quote, tidy};

/// Which data plane forwards packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// tc where the BPF programs load on this kernel, iptables otherwise
    /// (not xdp: on veth ports fed by a bridge, XDP copies every packet and
    /// turns TSO off; see docs/dataplane.md).
    Auto,
    /// eBPF programs at the XDP hook of every router port, TC behind them.
    Xdp,
    /// eBPF programs at the TC (tcx) hook alone.
    Tc,
    /// The kernel forwards, with Neutron's iptables rule set.
    Iptables,
}

impl std::fmt::Display for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dataplane::Auto => "auto",
            Dataplane::Xdp => "xdp",
            Dataplane::Tc => "tc",
            Dataplane::Iptables => "iptables",
        })
    }
}

/// How router ports are plugged into the node's networks (Neutron's
/// `interface_driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceDriver {
    /// The tap is enslaved to the Linux bridge of its network
    /// (`brq<network[:11]>` or `bridge_mappings`), created if missing.
    LinuxBridge,
    /// The tap is a port of the Open vSwitch integration bridge, with the
    /// Interface `external_ids` Neutron sets; the OVS agent tags it.
    OpenVSwitch,
}

impl InterfaceDriver {
    /// The names a node config accepts.
    pub const NAMES: [&str; 2] = ["linuxbridge", "openvswitch"];

    /// The driver Neutron's `interface_driver` option names: its alias
    /// or its class path. None for anything else.
    pub fn from_neutron(s: &str) -> Option<InterfaceDriver> {
        match s.trim() {
            "linuxbridge" | "neutron.agent.linux.interface.BridgeInterfaceDriver" => {
                Some(InterfaceDriver::LinuxBridge)
            }
            "openvswitch" | "neutron.agent.linux.interface.OVSInterfaceDriver" => {
                Some(InterfaceDriver::OpenVSwitch)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for InterfaceDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InterfaceDriver::LinuxBridge => "linuxbridge",
            InterfaceDriver::OpenVSwitch => "openvswitch",
        })
    }
}

/// Default of `ovs_integration_bridge` (Neutron's `[OVS] integration_bridge`).
pub const DEFAULT_OVS_INTEGRATION_BRIDGE: &str = "br-int";
/// Default of `ovsdb_connection`: the local ovsdb-server's socket.
pub const DEFAULT_OVSDB_CONNECTION: &str = "unix:/var/run/openvswitch/db.sock";

/// Default of `new_connection_rate`.
pub const DEFAULT_NEW_CONNECTION_RATE: u32 = 100_000;

/// Parsed only by [`NodeConfig::parse`], which checks every key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeConfig {
    /// Port of the metadata proxy inside each router namespace.
    pub metadata_port: u16,
    /// Prefix of a network's bridge name (`<prefix><network id[:11]>`).
    pub bridge_prefix: String,
    /// Network ID -> bridge name, overriding the naming rule.
    pub bridge_mappings: BTreeMap<String, String>,
    /// Data plane to use.
    pub dataplane: Dataplane,
    /// Where BPF objects are pinned.
    pub pin_dir: PathBuf,
    /// Where the daemon keeps its state file and control socket.
    pub state_dir: PathBuf,
    /// Seconds between periodic resyncs that repair what changed behind
    /// xrouter's back (0 disables them).
    pub resync_interval: u64,
    /// Send gratuitous ARP for new addresses.
    pub send_garp: bool,
    /// Connections the eBPF connection table holds per router (a slot per
    /// direction each, at most half the slots used: 256 bytes per
    /// connection, reserved when the router is loaded, the size rounded up
    /// to a power of two). Embryonic and established connections share it;
    /// a new connection whose part of the table is full takes an embryonic
    /// one's slot, never an established one's.
    pub conntrack_size: u32,
    /// New connections each router accepts per second on each CPU (0: no
    /// limit, else at least 10), a tenth of it per 100 ms; beyond it they
    /// are dropped and counted (`drop/new-connection-rate`) before they
    /// cost anything more, so a flood is shed cheaply.
    pub new_connection_rate: u32,
    /// How router ports are plugged. None: not set, which is linuxbridge
    /// for `xrouter run` and, in agent mode, `[DEFAULT] interface_driver`
    /// (Neutron's default openvswitch); see [`NodeConfig::driver`].
    pub interface_driver: Option<InterfaceDriver>,
    /// The OVS bridge router ports are added to (openvswitch plugging).
    pub ovs_integration_bridge: String,
    /// How `ovs-vsctl` reaches ovsdb-server (`unix:PATH` or
    /// `tcp:HOST:PORT`).
    pub ovsdb_connection: String,
    /// The metadata proxy the daemon runs in every router namespace.
    pub metadata: MetadataConfig,
    /// Where the Prometheus endpoint (`/metrics`) listens; None: nowhere
    /// (the default).
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// The metadata proxy: what Neutron's per-router haproxy does, with
/// Neutron's option names and defaults (`[metadata_haproxy]`,
/// `[metadata_rate_limiting]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MetadataConfig {
    /// Listen on `metadata_port` in every router namespace.
    pub enabled: bool,
    /// The metadata agent's unix socket requests are forwarded to.
    pub socket: PathBuf,
    /// Seconds to connect to the metadata agent's socket.
    pub timeout_connect: u64,
    /// Seconds a VM may stay silent in the middle of a request.
    pub timeout_client: u64,
    /// Seconds the metadata agent may take to answer.
    pub timeout_server: u64,
    /// Seconds a VM has to send a whole request head.
    pub timeout_http_request: u64,
    /// Seconds an idle keep-alive connection is kept.
    pub timeout_http_keep_alive: u64,
    /// Limit each source address's request rate (off: Neutron's default).
    pub rate_limit: bool,
    /// The limit, when on.
    pub rate: RateLimit,
}

/// Requests one source address may make: at most `base_limit` in any
/// `base_window` seconds and `burst_limit` in any `burst_window` seconds;
/// beyond, 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub base_window: u64,
    pub base_limit: u64,
    pub burst_window: u64,
    pub burst_limit: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            base_window: 10,
            base_limit: 10,
            burst_window: 10,
            burst_limit: 10,
        }
    }
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            enabled: true,
            socket: "/var/lib/neutron/metadata_proxy".into(),
            timeout_connect: 30,
            timeout_client: 32,
            timeout_server: 32,
            timeout_http_request: 30,
            timeout_http_keep_alive: 30,
            rate_limit: false,
            rate: RateLimit::default(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            metadata_port: 9697,
            bridge_prefix: "brq".into(),
            bridge_mappings: BTreeMap::new(),
            dataplane: Dataplane::Auto,
            pin_dir: "/sys/fs/bpf/xrouter".into(),
            state_dir: "/run/xrouter".into(),
            resync_interval: 10,
            send_garp: true,
            conntrack_size: 262_144,
            new_connection_rate: DEFAULT_NEW_CONNECTION_RATE,
            interface_driver: None,
            ovs_integration_bridge: DEFAULT_OVS_INTEGRATION_BRIDGE.into(),
            ovsdb_connection: DEFAULT_OVSDB_CONNECTION.into(),
            metadata: MetadataConfig::default(),
            metrics_address: None,
        }
    }
}

/// Allowed values of the numeric keys. Wide enough for any real node,
/// narrow enough that nothing derived from them overflows.
pub mod range {
    use std::ops::RangeInclusive;
    /// A TCP port.
    pub const METADATA_PORT: RangeInclusive<i64> = 1..=65535;
    /// Seconds; 0 disables the periodic resync, at most a day.
    pub const RESYNC_INTERVAL: RangeInclusive<i64> = 0..=86_400;
    /// Connections per router: 16M is a table of 4 GiB per router.
    pub const CONNTRACK_SIZE: RangeInclusive<i64> = 1024..=16_777_216;
    /// New connections a second per router and CPU; 0: no limit.
    pub const NEW_CONNECTION_RATE: RangeInclusive<i64> = 0..=100_000_000;
    /// The smallest limit (0 aside): a tenth of it is admitted per 100 ms.
    pub const NEW_CONNECTION_RATE_MIN: i64 = 10;
    /// Seconds, for the metadata proxy's timeouts and rate windows.
    pub const METADATA_SECONDS: RangeInclusive<i64> = 1..=86_400;
    /// Requests per rate window.
    pub const METADATA_RATE: RangeInclusive<i64> = 1..=1_000_000;
}

/// The keys a node config may hold.
const KEYS: &[&str] = &[
    "metadata_port",
    "bridge_prefix",
    "bridge_mappings",
    "dataplane",
    "pin_dir",
    "state_dir",
    "resync_interval",
    "send_garp",
    "conntrack_size",
    "new_connection_rate",
    "interface_driver",
    "ovs_integration_bridge",
    "ovsdb_connection",
    "enable_metadata_proxy",
    "metadata_proxy_socket",
    "metadata_timeout_connect",
    "metadata_timeout_client",
    "metadata_timeout_server",
    "metadata_timeout_http_request",
    "metadata_timeout_http_keep_alive",
    "metadata_rate_limit",
    "metadata_base_window",
    "metadata_base_rate_limit",
    "metadata_burst_window",
    "metadata_burst_rate_limit",
    "metrics_address",
];

/// The integer keys of the metadata proxy (seconds or requests).
const METADATA_INTS: &[&str] = &[
    "metadata_timeout_connect",
    "metadata_timeout_client",
    "metadata_timeout_server",
    "metadata_timeout_http_request",
    "metadata_timeout_http_keep_alive",
    "metadata_base_window",
    "metadata_base_rate_limit",
    "metadata_burst_window",
    "metadata_burst_rate_limit",
];

/// What is wrong with one key of a node config: the key as messages name
/// it (`bridge_mappings.<network>` for one mapping) and the problem, which
/// names the value and what is allowed. The caller adds where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// A value of the file: as TOML read it, or an integer too large for
/// TOML's 64 bits, as written (the TOML parser refuses the whole file for
/// one; [`NodeConfig::parse`] puts a marker in its place to learn its key).
#[derive(Clone, Copy)]
enum Val<'a> {
    Toml(&'a toml::Value),
    TooBig(&'a str),
    /// A number in an INI file that is no integer (oslo's `int()` refuses
    /// it too), as written and as read.
    IniFloat(&'a str, f64),
}

/// What stands in for an integer too large for TOML while its key is
/// looked for.
const TOO_BIG: &str = "xrouter:integer-too-large:5f3e0c9a";

impl<'a> Val<'a> {
    /// `v`, or the integer too large `too_big` if `v` is its marker.
    fn of(v: &'a toml::Value, too_big: Option<&'a str>) -> Val<'a> {
        match (v, too_big) {
            (toml::Value::String(s), Some(n)) if s == TOO_BIG => Val::TooBig(n),
            _ => Val::Toml(v),
        }
    }

    fn toml(self) -> Option<&'a toml::Value> {
        match self {
            Val::Toml(v) => Some(v),
            Val::TooBig(_) | Val::IniFloat(..) => None,
        }
    }
}

/// A value as messages show it.
fn shown(v: Val) -> String {
    match v {
        Val::Toml(toml::Value::String(s)) => quote(s),
        Val::Toml(toml::Value::Array(_)) => "a list".into(),
        Val::Toml(toml::Value::Table(_)) => "a table".into(),
        Val::Toml(other) => text::bare(&other.to_string()),
        Val::TooBig(n) | Val::IniFloat(n, _) => text::bare(n),
    }
}

/// An integer in `range`, or why not.
/// Problem `p` with `note` (a unit, what the value means) added, so as
/// not to chain two parentheses: into "(allowed: ...)", left out after
/// "(write N)" (which says the fix), else in its own.
fn noted(p: String, note: &str) -> String {
    match p.strip_suffix(')') {
        Some(head) if head.contains("(allowed: ") => format!("{head}; {note})"),
        Some(_) => p,
        None => format!("{p} ({note})"),
    }
}

fn int(v: Val, range: std::ops::RangeInclusive<i64>) -> Result<i64, String> {
    match v {
        Val::Toml(toml::Value::Integer(n)) if range.contains(n) => Ok(*n),
        Val::Toml(toml::Value::Integer(_)) | Val::TooBig(_) => Err(format!(
            "{} is outside the allowed range {}-{}",
            shown(v),
            range.start(),
            range.end()
        )),
        // TOML reads 1e6 and 1000000.0 as floats: say how to write it, or
        // what is allowed when it would not be.
        Val::Toml(&toml::Value::Float(f)) | Val::IniFloat(_, f) => Err(
            if f.fract() == 0.0 && f >= *range.start() as f64 && f <= *range.end() as f64 {
                format!("{} is not an integer (write {f:.0})", shown(v))
            } else {
                format!(
                    "{} is not an integer (allowed: {}-{})",
                    shown(v),
                    range.start(),
                    range.end()
                )
            },
        ),
        other => Err(format!("{} is not an integer", shown(other))),
    }
}

fn string(v: Val<'_>) -> Result<&str, String> {
    v.toml()
        .and_then(toml::Value::as_str)
        .ok_or_else(|| format!("{} is not a string", shown(v)))
}

impl NodeConfig {
    /// Parses a node config, naming the file, the key, the value and what
    /// is allowed on error. Every key is checked here, so `check` refuses
    /// what `run` would refuse.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<NodeConfig> {
        let origin = label(origin);
        match text.parse::<toml::Table>() {
            Ok(table) => Self::from_table(&table, &origin, None),
            Err(e) => Err(too_big(text, &e, &origin).unwrap_or_else(|| {
                anyhow::anyhow!("node config {origin}: {}", toml_problem(text, &e))
            })),
        }
    }

    /// The config a parsed file gives, or the first problem of its keys.
    /// `too_big`: the integer that [`TOO_BIG`] stands for.
    fn from_table(
        table: &toml::Table,
        origin: &str,
        too_big: Option<&str>,
    ) -> anyhow::Result<NodeConfig> {
        let mut c = NodeConfig::default();
        for (key, v) in table {
            c.set(key, Val::of(v, too_big), too_big)
                .map_err(|p| anyhow::anyhow!("node config {origin}: {p}"))?;
        }
        Ok(c)
    }

    /// Sets `key` from a value of oslo.config's INI syntax (an
    /// `[xrouter]` section of an agent's config files), checked exactly as
    /// the TOML value it stands for: `123` an integer, oslo's booleans
    /// (`true`/`yes`/`on`/`1` and their opposites, any case) true or false,
    /// `bridge_mappings` a dict `net-id:bridge,net2:bridge2`, anything else
    /// a string.
    pub fn set_ini(&mut self, key: &str, value: &str) -> Result<(), KeyProblem> {
        let is_int = matches!(
            key,
            "metadata_port" | "resync_interval" | "conntrack_size" | "new_connection_rate"
        ) || METADATA_INTS.contains(&key);
        let v = if is_int {
            match python_int(value) {
                Some(Ok(n)) => toml::Value::Integer(n),
                Some(Err(())) => return self.set(key, Val::TooBig(value.trim()), None),
                None => match value.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => {
                        return self.set(key, Val::IniFloat(value.trim(), f), None);
                    }
                    // 1e400: a number, too large for any key, as in TOML.
                    Ok(f)
                        if f.is_infinite() && value.trim().bytes().any(|b| b.is_ascii_digit()) =>
                    {
                        return self.set(key, Val::TooBig(value.trim()), None);
                    }
                    _ => toml::Value::String(value.into()),
                },
            }
        } else {
            match key {
                "send_garp" | "enable_metadata_proxy" | "metadata_rate_limit" => {
                    match oslo_bool(value) {
                        Some(b) => toml::Value::Boolean(b),
                        // The forms an ini file may write, as Neutron's
                        // own booleans' messages say.
                        None => {
                            return Err(KeyProblem {
                                key: key.into(),
                                problem: format!(
                                    "{} is not a boolean (true/false, yes/no, on/off, 1/0)",
                                    quote(value)
                                ),
                            });
                        }
                    }
                }
                "bridge_mappings" => {
                    toml::Value::Table(oslo_dict(value).map_err(|(pair, problem)| {
                        // The pair named only when the value has others.
                        let whole = if pair == value.trim() {
                            quote(value)
                        } else {
                            format!("{}: {}", quote(value), quote(pair))
                        };
                        KeyProblem {
                            key: key.into(),
                            problem: format!(
                                "{whole} {problem} (write network-id:bridge pairs separated by \
                                 commas)"
                            ),
                        }
                    })?)
                }
                _ => toml::Value::String(value.into()),
            }
        };
        self.set(key, Val::Toml(&v), None)
    }

    /// Sets one key, checking its value; both the TOML and the INI form
    /// of the node config come through here. `too_big`: as in
    /// [`NodeConfig::from_table`].
    fn set(&mut self, key: &str, v: Val, too_big: Option<&str>) -> Result<(), KeyProblem> {
        let bad = |problem: String| KeyProblem {
            key: label(key),
            problem,
        };
        match key {
            "metadata_port" => {
                self.metadata_port = int(v, range::METADATA_PORT).map_err(bad)? as u16;
            }
            "resync_interval" => {
                self.resync_interval = int(v, range::RESYNC_INTERVAL)
                    .map_err(|p| bad(noted(p, "seconds; 0 disables resyncs")))?
                    as u64;
            }
            "conntrack_size" => {
                self.conntrack_size = int(v, range::CONNTRACK_SIZE)
                    .map_err(|p| bad(noted(p, "connections per router")))?
                    as u32;
            }
            "new_connection_rate" => {
                let n = int(v, range::NEW_CONNECTION_RATE)
                    .map_err(|p| bad(noted(p, "per router and CPU, a second; 0 means no limit")))?;
                // Admitted a tenth at a time, per 100 ms: below 10 a
                // second the budget would be one per 100 ms, 10 a second,
                // more than asked.
                if (1..range::NEW_CONNECTION_RATE_MIN).contains(&n) {
                    return Err(bad(format!(
                        "{} is below {} (allowed: 0 for no limit, or {}-{}: the budget is \
                         counted a tenth at a time, per 100 ms)",
                        shown(v),
                        range::NEW_CONNECTION_RATE_MIN,
                        range::NEW_CONNECTION_RATE_MIN,
                        range::NEW_CONNECTION_RATE.end()
                    )));
                }
                self.new_connection_rate = n as u32;
            }
            "send_garp" | "enable_metadata_proxy" | "metadata_rate_limit" => {
                let b = v
                    .toml()
                    .and_then(toml::Value::as_bool)
                    .ok_or_else(|| bad(format!("{} is not true or false", shown(v))))?;
                match key {
                    "send_garp" => self.send_garp = b,
                    "enable_metadata_proxy" => self.metadata.enabled = b,
                    _ => self.metadata.rate_limit = b,
                }
            }
            k if METADATA_INTS.contains(&k) => {
                let is_rate = k.ends_with("_rate_limit");
                let (r, what) = if is_rate {
                    (range::METADATA_RATE, "requests")
                } else {
                    (range::METADATA_SECONDS, "seconds")
                };
                let n = int(v, r).map_err(|p| bad(noted(p, what)))? as u64;
                let m = &mut self.metadata;
                match k {
                    "metadata_timeout_connect" => m.timeout_connect = n,
                    "metadata_timeout_client" => m.timeout_client = n,
                    "metadata_timeout_server" => m.timeout_server = n,
                    "metadata_timeout_http_request" => m.timeout_http_request = n,
                    "metadata_timeout_http_keep_alive" => m.timeout_http_keep_alive = n,
                    "metadata_base_window" => m.rate.base_window = n,
                    "metadata_base_rate_limit" => m.rate.base_limit = n,
                    "metadata_burst_window" => m.rate.burst_window = n,
                    _ => m.rate.burst_limit = n,
                }
            }
            "metadata_proxy_socket" => {
                let d = string(v).map_err(bad)?;
                if let Some(why) = dir_problem(Path::new(d)) {
                    return Err(bad(format!("{} {why}", quote(d))));
                }
                self.metadata.socket = d.into();
            }
            "dataplane" => {
                self.dataplane = match string(v).map_err(bad)? {
                    "auto" => Dataplane::Auto,
                    "xdp" => Dataplane::Xdp,
                    "tc" => Dataplane::Tc,
                    "iptables" => Dataplane::Iptables,
                    other => {
                        return Err(bad(format!(
                            "{} is not one of auto, xdp, tc, iptables",
                            quote(other)
                        )));
                    }
                };
            }
            "interface_driver" => {
                let d = string(v).map_err(bad)?;
                self.interface_driver = Some(match d {
                    "linuxbridge" => InterfaceDriver::LinuxBridge,
                    "openvswitch" => InterfaceDriver::OpenVSwitch,
                    other => {
                        return Err(bad(format!(
                            "{} is not one of {}",
                            quote(other),
                            InterfaceDriver::NAMES.join(", ")
                        )));
                    }
                });
            }
            "ovs_integration_bridge" => {
                let b = string(v).map_err(bad)?;
                if let Some(why) = ifname_problem(b) {
                    return Err(bad(format!(
                        "{} is not a valid bridge name: {why}",
                        quote(b)
                    )));
                }
                self.ovs_integration_bridge = b.to_string();
            }
            "metrics_address" => {
                let a = string(v).map_err(bad)?;
                self.metrics_address =
                    Some(metrics_address(a).map_err(|why| bad(format!("{} {why}", quote(a))))?);
            }
            "ovsdb_connection" => {
                let c = string(v).map_err(bad)?;
                if let Some(why) = ovsdb_connection_problem(c) {
                    return Err(bad(format!("{} {why}", quote(c))));
                }
                self.ovsdb_connection = c.to_string();
            }
            "bridge_prefix" => {
                let p = string(v).map_err(bad)?;
                if let Some(why) = prefix_problem(p) {
                    return Err(bad(format!("{} {why}", quote(p))));
                }
                self.bridge_prefix = p.to_string();
            }
            "pin_dir" | "state_dir" => {
                let d = string(v).map_err(bad)?;
                if let Some(why) = dir_problem(Path::new(d)) {
                    return Err(bad(format!("{} {why}", quote(d))));
                }
                if key == "pin_dir" {
                    self.pin_dir = d.into();
                } else {
                    self.state_dir = d.into();
                }
            }
            "bridge_mappings" => {
                let Some(map) = v.toml().and_then(toml::Value::as_table) else {
                    return Err(bad(format!(
                        "{} is not a table of network id = bridge",
                        shown(v)
                    )));
                };
                for (net, br) in map {
                    let bad = |problem: String| KeyProblem {
                        key: format!("bridge_mappings.{}", label(net)),
                        problem,
                    };
                    if net.is_empty() {
                        return Err(bad("a network id must not be empty".into()));
                    }
                    let br = string(Val::of(br, too_big)).map_err(bad)?;
                    if let Some(why) = ifname_problem(br) {
                        return Err(bad(format!(
                            "{} is not a valid interface name: {why}",
                            quote(br)
                        )));
                    }
                    self.bridge_mappings.insert(net.clone(), br.to_string());
                }
            }
            _ => {
                return Err(bad(format!("unknown key (known: {})", KEYS.join(", "))));
            }
        }
        Ok(())
    }

    /// The settings (as the file names them) that differ between `self`
    /// and `other`.
    pub fn changed_keys(&self, other: &NodeConfig) -> Vec<String> {
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(other));
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else {
            return vec![];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Reads a node config file, or the defaults when `path` is None.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<NodeConfig> {
        match path {
            None => Ok(NodeConfig::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("node config {}: {e}", text::path(p)))?;
                NodeConfig::parse(&text, &p.to_string_lossy())
            }
        }
    }

    /// How router ports are plugged: `interface_driver`, linuxbridge
    /// when not set.
    pub fn driver(&self) -> InterfaceDriver {
        self.interface_driver
            .unwrap_or(InterfaceDriver::LinuxBridge)
    }

    /// The bridge a network's tap devices are plugged into: the
    /// integration bridge (openvswitch), else the network's Linux bridge.
    pub fn plug_bridge_for(&self, network_id: &str) -> String {
        match self.driver() {
            InterfaceDriver::OpenVSwitch => self.ovs_integration_bridge.clone(),
            InterfaceDriver::LinuxBridge => self.bridge_for(network_id),
        }
    }

    /// The Linux bridge of a network (linuxbridge plugging).
    pub fn bridge_for(&self, network_id: &str) -> String {
        if let Some(b) = self.bridge_mappings.get(network_id) {
            return b.clone();
        }
        format!(
            "{}{}",
            self.bridge_prefix,
            crate::model::short_id(network_id)
        )
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("xrouter.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

/// An integer as oslo.config reads one (Python's `int()`): surrounding
/// whitespace, an optional sign, decimal digits with single underscores
/// between them. None if `s` is not one; `Some(Err)` if it is one too
/// large for 64 bits.
pub fn python_int(s: &str) -> Option<Result<i64, ()>> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    let ok = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__")
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if !ok {
        return None;
    }
    Some(t.replace('_', "").parse::<i64>().map_err(|_| ()))
}

/// A boolean as oslo.config reads one: true/yes/on/1 or false/no/off/0,
/// any case.
pub fn oslo_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A dict as oslo.config writes one: `key:value` pairs separated by
/// commas, each side stripped; empty text is an empty dict. The values
/// are strings, checked by the caller.
fn oslo_dict(s: &str) -> Result<toml::Table, (&str, String)> {
    let mut t = toml::Table::new();
    if s.trim().is_empty() {
        return Ok(t);
    }
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once(':') else {
            return Err((pair.trim(), "has no ':'".into()));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err((pair.trim(), "has an empty key".into()));
        }
        if t.insert(k.to_string(), toml::Value::String(v.trim().into()))
            .is_some()
        {
            return Err((pair.trim(), format!("names {} twice", quote(k))));
        }
    }
    Ok(t)
}

/// Why `name` cannot name a network device, if it cannot. Linux takes 1-15
/// bytes other than "." and "..", without '/', ':' or whitespace; printable
/// ASCII only, so that every tool (and iptables rule) shows it as it is.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        Some("it must be 1-15 bytes")
    } else if name == "." || name == ".." {
        Some("it must not be \".\" or \"..\"")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
    {
        Some("it must be printable ASCII without '/', ':' or whitespace")
    } else {
        None
    }
}

/// Why `c` cannot be an OVSDB connection string for `ovs-vsctl --db`:
/// `unix:PATH` (absolute) or `tcp:HOST:PORT` (`ssl:` needs certificates
/// xrouter does not take).
pub fn ovsdb_connection_problem(c: &str) -> Option<&'static str> {
    if c.is_empty() || c.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
        return Some("must be non-empty, without whitespace or control characters");
    }
    if let Some(path) = c.strip_prefix("unix:") {
        return (!path.starts_with('/'))
            .then_some("must be unix:<absolute path of ovsdb-server's socket>");
    }
    if let Some(hp) = c.strip_prefix("tcp:") {
        let Some((h, p)) = hp.rsplit_once(':') else {
            return Some("must be tcp:<host>:<port>");
        };
        if h.is_empty() {
            return Some("must be tcp:<host>:<port> (the host is empty)");
        }
        // OVS writes an IPv6 address in brackets: tcp:[::1]:6640.
        if h.contains(':') && !(h.starts_with('[') && h.ends_with(']')) {
            return Some("must be tcp:<host>:<port>, an IPv6 host in brackets (tcp:[::1]:6640)");
        }
        if !p.parse::<u16>().is_ok_and(|p| p > 0) {
            return Some("must be tcp:<host>:<port> with a port of 1-65535");
        }
        return None;
    }
    if c.starts_with("ssl:") {
        return Some(
            "is an ssl: connection, which xrouter does not support (use unix:<socket> or tcp:<host>:<port>)",
        );
    }
    Some("is not unix:<socket path> or tcp:<host>:<port>")
}

/// Why `prefix` cannot start bridge names `<prefix><network id[:11]>`.
fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() || prefix.len() > 4 {
        return Some(
            "must be 1-4 bytes (with 11 characters of the network id, bridge names are at most 15)",
        );
    }
    if ifname_problem(prefix).is_some() {
        return Some("must be printable ASCII without '/', ':' or whitespace");
    }
    // Those name xrouter's own devices, which it creates and deletes.
    if ["tap", "qr-", "qg-"].contains(&prefix) {
        return Some("is a prefix of xrouter's own devices (tap, qr-, qg-)");
    }
    None
}

/// Why `dir` cannot be the pin or state directory, if it cannot: it must be
/// an absolute path below the root, without ".." or control characters
/// (a newline would break every message naming it).
pub fn dir_problem(dir: &Path) -> Option<&'static str> {
    let text = dir.to_string_lossy();
    if !dir.is_absolute() {
        Some("is not an absolute path")
    } else if text.chars().any(char::is_control) {
        Some("holds a control character")
    } else if dir
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        Some("has a '..' component")
    } else if dir.parent().is_none() {
        Some("is the root directory")
    } else {
        None
    }
}

/// The error for a file that TOML refuses because an integer in it does
/// not fit in 64 bits, naming the key, the value as written and what the
/// key allows (TOML's own message names neither): the file is read again
/// with a marker in the integer's place, and the key holding it is checked.
fn too_big(text: &str, e: &toml::de::Error, origin: &str) -> Option<anyhow::Error> {
    let m = e.message();
    let integer = m.starts_with("number too large") || m.starts_with("number too small");
    if !integer && !m.starts_with("invalid floating-point number") {
        return None;
    }
    // The error's span starts at the number (and may cover no more).
    let start = e.span()?.start;
    let len = text
        .get(start..)?
        .find(|c: char| !(c.is_ascii_alphanumeric() || "_+-.".contains(c)))
        .unwrap_or(text.len() - start);
    let number = &text[start..start + len];
    // A float TOML refuses for its size (1e400), not its spelling.
    if !integer
        && !number
            .replace('_', "")
            .parse::<f64>()
            .is_ok_and(f64::is_infinite)
    {
        return None;
    }
    let marked = format!("{}\"{TOO_BIG}\"{}", &text[..start], &text[start + len..]);
    let table: toml::Table = marked.parse().ok()?;
    // Only the key that holds the marker: its problem is the one to name.
    let holds = |v: &toml::Value| v.to_string().contains(TOO_BIG);
    let only: toml::Table = table.into_iter().filter(|(_, v)| holds(v)).collect();
    NodeConfig::from_table(&only, origin, Some(number)).err()
}

/// The address of the metrics endpoint `text` names, or why it names
/// none: an IP address and a port, as written (a wildcard only when
/// written so); no host names (the endpoint is bound exactly there).
pub fn metrics_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = text.parse().map_err(|_| {
        "is not an IP address and port (e.g. \"127.0.0.1:9793\" or \"[::1]:9793\")".to_string()
    })?;
    if a.port() == 0 {
        return Err("has port 0: the endpoint needs a port of its own (1-65535)".into());
    }
    Ok(a)
}

/// toml's message, whose parts it puts on lines of their own, on one line.
fn one_line(m: &str) -> String {
    m.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A TOML error as one line: where, and what (toml's own rendering quotes
/// the whole offending line of the file, whatever its length).
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| text.bytes().take(s.start).filter(|b| *b == b'\n').count() + 1);
    match line {
        Some(l) => format!("line {l}: {}", tidy(&one_line(e.message()))),
        None => tidy(&one_line(e.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_neutron_defaults() {
        let c = NodeConfig::parse("", "t").unwrap();
        assert_eq!(c, NodeConfig::default());
        assert_eq!(c.metadata_port, 9697);
        assert_eq!(c.bridge_for("9c9436d4-2b7c-4a"), "brq9c9436d4-2b");
    }

    #[test]
    fn mappings_override_bridge_naming() {
        let c = NodeConfig::parse(
            "dataplane = \"iptables\"\n[bridge_mappings]\next-net = \"br-ex\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.bridge_for("ext-net"), "br-ex");
        assert_eq!(c.dataplane, Dataplane::Iptables);
    }

    #[test]
    fn typos_and_bad_values_are_errors_naming_the_key() {
        let e = NodeConfig::parse("metdata_port = 1", "node.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.toml") && e.contains("metdata_port"), "{e}");
        let e = NodeConfig::parse("dataplane = \"dpdk\"", "node.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dpdk"), "{e}");
        let e = NodeConfig::parse("[bridge_mappings]\nx = \"a-very-long-bridge-name\"", "n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bridge_mappings.x"), "{e}");
    }

    /// Asserts `text` is refused with a message naming the file, the key,
    /// the value and what is allowed.
    #[test]
    fn metadata_keys_are_checked() {
        let c = NodeConfig::parse(
            "metadata_proxy_socket = \"/run/neutron/md.sock\"\nmetadata_rate_limit = true\n\
             metadata_base_rate_limit = 5\nmetadata_timeout_client = 3\nenable_metadata_proxy = false\n",
            "t",
        )
        .unwrap();
        let m = &c.metadata;
        assert_eq!(m.socket, Path::new("/run/neutron/md.sock"));
        assert!(m.rate_limit && !m.enabled);
        assert_eq!((m.rate.base_limit, m.timeout_client), (5, 3));
        refused(
            "metadata_timeout_server = 0",
            "metadata_timeout_server",
            "0",
            "1-86400",
        );
        refused(
            "metadata_proxy_socket = \"relative/sock\"",
            "metadata_proxy_socket",
            "relative/sock",
            "absolute",
        );
        refused(
            "metadata_rate_limit = \"yes please\"",
            "metadata_rate_limit",
            "yes please",
            "true or false",
        );
    }

    fn refused(text: &str, key: &str, value: &str, allowed: &str) {
        let e = match NodeConfig::parse(text, "/etc/xrouter/node.toml") {
            Ok(c) => panic!("{text:?} accepted: {c:?}"),
            Err(e) => e.to_string(),
        };
        for needle in ["node config /etc/xrouter/node.toml", key, value, allowed] {
            assert!(
                e.contains(needle),
                "{text:?}: {e:?} does not name {needle:?}"
            );
        }
    }

    #[test]
    fn every_number_has_a_range() {
        // An interval that overflows a Duration once added to now.
        refused(
            "resync_interval = 9223372036854775807",
            "resync_interval",
            "9223372036854775807",
            "0-86400",
        );
        refused("resync_interval = -1", "resync_interval", "-1", "0-86400");
        refused(
            "resync_interval = 86401",
            "resync_interval",
            "86401",
            "0-86400",
        );
        refused("resync_interval = 1.5", "resync_interval", "1.5", "integer");
        refused(
            "resync_interval = \"10\"",
            "resync_interval",
            "\"10\"",
            "integer",
        );
        refused("metadata_port = 0", "metadata_port", "0", "1-65535");
        refused("metadata_port = 65536", "metadata_port", "65536", "1-65535");
        refused("metadata_port = -9697", "metadata_port", "-9697", "1-65535");
        refused(
            "conntrack_size = 1023",
            "conntrack_size",
            "1023",
            "1024-16777216",
        );
        refused(
            "conntrack_size = 4294967296",
            "conntrack_size",
            "4294967296",
            "1024-16777216",
        );
        refused(
            "new_connection_rate = 100000001",
            "new_connection_rate",
            "100000001",
            "0-100000000",
        );
        refused(
            "new_connection_rate = -1",
            "new_connection_rate",
            "-1",
            "0-100000000",
        );
        refused(
            "new_connection_rate = 5",
            "new_connection_rate",
            "5",
            "0 for no limit, or 10-100000000",
        );
        assert_eq!(
            NodeConfig::parse("new_connection_rate = 10", "n")
                .unwrap()
                .new_connection_rate,
            10
        );
        assert_eq!(
            NodeConfig::parse("new_connection_rate = 0", "n")
                .unwrap()
                .new_connection_rate,
            0,
            "0: no limit"
        );
        refused("send_garp = 1", "send_garp", "1", "true or false");
        refused("dataplane = 3", "dataplane", "3", "string");
        let edges = "metadata_port = 65535\nresync_interval = 86400\nconntrack_size = 16777216\n";
        let c = NodeConfig::parse(edges, "n").unwrap();
        assert_eq!(
            (c.metadata_port, c.resync_interval, c.conntrack_size),
            (65535, 86400, 16_777_216)
        );
        let c = NodeConfig::parse(
            "metadata_port = 1\nresync_interval = 0\nconntrack_size = 1024",
            "n",
        )
        .unwrap();
        assert_eq!(
            (c.metadata_port, c.resync_interval, c.conntrack_size),
            (1, 0, 1024)
        );
    }

    #[test]
    fn integers_too_large_for_toml_name_their_key_and_range() {
        let big = "99999999999999999999999";
        refused(
            &format!("conntrack_size = {big}"),
            "conntrack_size",
            big,
            "1024-16777216",
        );
        refused(
            &format!("send_garp = true\nmetadata_port = -{big}\n"),
            "metadata_port",
            &format!("-{big}"),
            "1-65535",
        );
        // As written: underscores, hex.
        refused(
            "resync_interval = 1_000_000_000_000_000_000_000",
            "resync_interval",
            "1_000_000_000_000_000_000_000",
            "0-86400",
        );
        refused(
            "x = 1\nnew_connection_rate = 0x7FFFFFFFFFFFFFFFFF",
            "new_connection_rate",
            "0x7FFFFFFFFFFFFFFFFF",
            "0-100000000",
        );
        // Quoted keys, and the other keys of the file do not get in first.
        refused(
            &format!("bridge_prefix = \"\"\n\"conntrack_size\" = {big}"),
            "conntrack_size",
            big,
            "1024-16777216",
        );
        // Keys that take no integer say what they take.
        refused(
            &format!("send_garp = {big}"),
            "send_garp",
            big,
            "true or false",
        );
        refused(
            &format!("dataplane = {big}"),
            "dataplane",
            big,
            "not a string",
        );
        refused(
            &format!("[bridge_mappings]\nnet = {big}"),
            "bridge_mappings.net",
            big,
            "not a string",
        );
        refused(
            &format!("bridge_mappings = {{ net = {big} }}"),
            "bridge_mappings.net",
            big,
            "not a string",
        );
        refused(
            &format!("metadata_port = [1, {big}]"),
            "metadata_port",
            "a list",
            "not an integer",
        );
        refused(&format!("speed = {big}"), "speed", "speed", "unknown key");
        // TOML's floats, whole or not.
        refused(
            "conntrack_size = 1e6",
            "conntrack_size",
            "1000000.0",
            "not an integer (write 1000000)",
        );
        refused(
            "conntrack_size = 1.5",
            "conntrack_size",
            "1.5",
            "not an integer",
        );
        // Not suggested where the integer would be refused too.
        refused(
            "conntrack_size = 1e8",
            "conntrack_size",
            "100000000.0",
            "not an integer (allowed: 1024-16777216; connections per router)",
        );
        refused(
            "metadata_port = 1e30",
            "metadata_port",
            "not an integer",
            "(allowed: 1-65535)",
        );
        // Written out, a huge float is cut like any value.
        let e = NodeConfig::parse("conntrack_size = 1.7e308", "n")
            .unwrap_err()
            .to_string();
        assert!(
            e.len() < 250 && e.contains("bytes)") && e.contains("allowed"),
            "{e}"
        );
        // A float too large for TOML is named with its key, as an integer is.
        refused(
            "conntrack_size = 1e400",
            "conntrack_size",
            "1e400",
            "is outside the allowed range 1024-16777216",
        );
        // A float TOML refuses for its spelling keeps TOML's message, on
        // one line.
        let e = NodeConfig::parse("conntrack_size = 1.e5", "n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: invalid floating-point number; "), "{e}");
        assert!(!e.contains('\\') && !e.contains('\n'), "{e}");
        // A huge number is cut, as every value in a message.
        let e = NodeConfig::parse(&format!("conntrack_size = {}", "9".repeat(100_000)), "n")
            .unwrap_err()
            .to_string();
        assert!(e.len() < 300 && e.contains("(100000 bytes)"), "{e}");
    }

    #[test]
    fn names_and_directories_are_usable() {
        for bad in [
            "", "brqxy", "b/", "a:", "b q", "b\\tq", "tap", "qr-", "qg-", "é", ".",
        ] {
            let text = format!("bridge_prefix = \"{bad}\"");
            let e = NodeConfig::parse(&text, "n").unwrap_err().to_string();
            assert!(e.contains("bridge_prefix"), "{bad:?}: {e}");
        }
        assert_eq!(
            NodeConfig::parse("bridge_prefix = \"br-\"", "n")
                .unwrap()
                .bridge_for("9c9436d4-2b7c-4a1e"),
            "br-9c9436d4-2b"
        );
        for bad in [
            "",
            "br ex",
            "br:1",
            ".",
            "..",
            "a/b",
            "sixteen-bytes-xx",
            "bré",
            "br\\n",
        ] {
            let text = format!("[bridge_mappings]\nnet = \"{bad}\"");
            let e = NodeConfig::parse(&text, "n").unwrap_err().to_string();
            assert!(
                e.contains("bridge_mappings.net") && e.contains("interface name"),
                "{bad:?}: {e}"
            );
        }
        let e = NodeConfig::parse("[bridge_mappings]\n\"\" = \"br-ex\"", "n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not be empty"), "{e}");
        assert!(NodeConfig::parse("[bridge_mappings]\nnet = \"fifteen-bytes-x\"", "n").is_ok());
        for key in ["pin_dir", "state_dir"] {
            for (bad, why) in [
                ("run/xrouter", "absolute"),
                ("", "absolute"),
                ("/", "root"),
                ("/run/../etc", ".."),
                ("/run/x\\nrouter", "control"),
                ("/run/x\\u0000y", "control"),
            ] {
                let text = format!("{key} = \"{bad}\"");
                let e = NodeConfig::parse(&text, "n").unwrap_err().to_string();
                assert!(e.contains(key) && e.contains(why), "{key} = {bad:?}: {e}");
            }
            assert!(NodeConfig::parse(&format!("{key} = \"/var/lib/x r\""), "n").is_ok());
        }
    }

    #[test]
    fn plugging_settings_are_checked() {
        let c = NodeConfig::parse("", "n").unwrap();
        assert_eq!(
            c.driver(),
            InterfaceDriver::LinuxBridge,
            "default linuxbridge"
        );
        assert_eq!(c.interface_driver, None);
        assert_eq!(c.ovs_integration_bridge, "br-int");
        assert_eq!(c.ovsdb_connection, "unix:/var/run/openvswitch/db.sock");
        assert_eq!(c.plug_bridge_for("9c9436d4-2b7c-4a"), "brq9c9436d4-2b");
        let c = NodeConfig::parse(
            "interface_driver = \"openvswitch\"\novs_integration_bridge = \"br-int2\"\n\
             ovsdb_connection = \"tcp:127.0.0.1:6640\"\n",
            "n",
        )
        .unwrap();
        assert_eq!(c.driver(), InterfaceDriver::OpenVSwitch);
        assert_eq!(c.plug_bridge_for("9c9436d4-2b7c-4a"), "br-int2");
        assert_eq!(c.ovsdb_connection, "tcp:127.0.0.1:6640");
        let c = NodeConfig::parse("interface_driver = \"linuxbridge\"", "n").unwrap();
        assert_eq!(c.interface_driver, Some(InterfaceDriver::LinuxBridge));
        refused(
            "interface_driver = \"ovs\"",
            "interface_driver",
            "\"ovs\"",
            "is not one of linuxbridge, openvswitch",
        );
        // Class paths are Neutron's ini syntax, not the node config's.
        refused(
            "interface_driver = \"neutron.agent.linux.interface.OVSInterfaceDriver\"",
            "interface_driver",
            "OVSInterfaceDriver",
            "linuxbridge, openvswitch",
        );
        refused("interface_driver = 1", "interface_driver", "1", "string");
        refused(
            "ovs_integration_bridge = \"br-integration-x\"",
            "ovs_integration_bridge",
            "br-integration-x",
            "1-15 bytes",
        );
        refused(
            "ovs_integration_bridge = \"\"",
            "ovs_integration_bridge",
            "\"\"",
            "not a valid bridge name",
        );
        refused(
            "ovs_integration_bridge = \"br int\"",
            "ovs_integration_bridge",
            "br int",
            "whitespace",
        );
        assert!(NodeConfig::parse("ovs_integration_bridge = \"fifteen-bytes-x\"", "n").is_ok());
        for (bad, why) in [
            ("", "non-empty"),
            ("/run/openvswitch/db.sock", "not unix:<socket path> or tcp:"),
            ("unix:db.sock", "absolute path"),
            ("tcp:127.0.0.1", "tcp:<host>:<port>"),
            ("tcp:127.0.0.1:0", "with a port of 1-65535"),
            ("tcp::6640", "the host is empty"),
            ("tcp:::1:6640", "an IPv6 host in brackets"),
            ("ssl:127.0.0.1:6640", "does not support"),
            ("unix:/run/a b", "whitespace"),
        ] {
            refused(
                &format!("ovsdb_connection = \"{bad}\""),
                "ovsdb_connection",
                &format!("\"{bad}"),
                why,
            );
        }
        assert!(NodeConfig::parse("ovsdb_connection = \"tcp:[::1]:6640\"", "n").is_ok());
    }

    #[test]
    fn the_metrics_address_is_an_address_and_a_port() {
        assert_eq!(NodeConfig::parse("", "n").unwrap().metrics_address, None);
        let c = NodeConfig::parse("metrics_address = \"127.0.0.1:9793\"", "n").unwrap();
        assert_eq!(c.metrics_address, Some("127.0.0.1:9793".parse().unwrap()));
        let c = NodeConfig::parse("metrics_address = \"[::1]:9793\"", "n").unwrap();
        assert_eq!(c.metrics_address, Some("[::1]:9793".parse().unwrap()));
        // A wildcard when written so.
        let c = NodeConfig::parse("metrics_address = \"0.0.0.0:9793\"", "n").unwrap();
        assert_eq!(c.metrics_address, Some("0.0.0.0:9793".parse().unwrap()));
        for bad in [
            "localhost:9793",
            "127.0.0.1",
            "9793",
            "::1:9793",
            "127.0.0.1:99999",
            "",
        ] {
            refused(
                &format!("metrics_address = \"{bad}\""),
                "metrics_address",
                &format!("\"{bad}\""),
                "not an IP address and port",
            );
        }
        refused(
            "metrics_address = \"127.0.0.1:0\"",
            "metrics_address",
            "127.0.0.1:0",
            "port 0",
        );
        refused(
            "metrics_address = 9793",
            "metrics_address",
            "9793",
            "not a string",
        );
    }

    #[test]
    fn messages_are_one_short_line_whatever_the_file_holds() {
        let big = "b".repeat(1 << 20);
        for text in [
            format!("bridge_prefix = \"{big}\""),
            format!("metadata_port = \"{big}\""),
            format!("\"a\\nb{big}\" = 1"),
            format!("[bridge_mappings]\n\"x\\ny\" = \"{big}\""),
            format!("resync_interval = 1 {big}"),
        ] {
            let e = NodeConfig::parse(&text, "node\n.toml")
                .unwrap_err()
                .to_string();
            assert!(!e.contains(['\n', '\r']), "message spans lines: {e:.300}");
            assert!(e.len() < 800, "message of {} bytes: {e:.300}", e.len());
            assert!(e.starts_with(r#"node config "node\n.toml": "#), "{e:.300}");
        }
    }

    /// The package's /etc/xrouter/node.toml shows every key, commented out
    /// at its default: uncommented, it is the default config.
    #[test]
    fn the_packaged_node_config_shows_every_key_at_its_default() {
        let text = include_str!("../../../packaging/node.toml");
        fn key(l: &str) -> Option<(&str, &str)> {
            let l = l.strip_prefix("# ")?;
            let (k, _) = l.split_once(" = ")?;
            KEYS.contains(&k).then_some((k, l))
        }
        let shown: Vec<&str> = text.lines().filter_map(key).map(|(k, _)| k).collect();
        for k in KEYS {
            let table = format!("# [{k}]");
            assert!(
                shown.contains(k) || text.lines().any(|l| l.starts_with(&table)),
                "packaging/node.toml does not show {k}"
            );
        }
        // metrics_address has no default (off): shown with an example.
        let active: String = text
            .lines()
            .filter_map(key)
            .filter(|(k, _)| *k != "metrics_address")
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        let mut shown = NodeConfig::parse(&active, "node.toml").unwrap();
        // interface_driver unset means Neutron's own for the agent, and
        // linuxbridge, as shown, otherwise.
        assert_eq!(shown.interface_driver, Some(InterfaceDriver::LinuxBridge));
        shown.interface_driver = None;
        assert_eq!(shown, NodeConfig::parse("", "node.toml").unwrap());
    }

    #[test]
    fn changed_keys_names_the_settings_that_differ() {
        let a = NodeConfig::parse("resync_interval = 5\nsend_garp = true\n", "a").unwrap();
        let b = NodeConfig::parse("resync_interval = 6\nsend_garp = false\n", "b").unwrap();
        assert_eq!(a.changed_keys(&b), ["resync_interval", "send_garp"]);
        assert!(a.changed_keys(&a.clone()).is_empty());
    }
}
