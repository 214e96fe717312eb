//! The settings of agent mode (`xrouter agent --config-file neutron.conf
//! --config-file l3_agent.ini`): what Neutron's L3 agent reads from its
//! oslo.config files, and the node config, read from an `[xrouter]`
//! section of the same files on top of an optional node TOML.
//!
//! As oslo does, sections and options xrouter does not read are ignored,
//! and an option it reads with a malformed value is an error, naming the
//! file, the section, the key, the value and what is allowed. The
//! `[xrouter]` section is xrouter's own: an unknown key there is an error,
//! as in the node TOML, and every key is checked by the same code as the
//! TOML's ([`NodeConfig::set_ini`]).

use std::{
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    ini::{self, DEFAULT, Entry, Ini},
    node::{self, NodeConfig},
};
use crate::text::{self, quote};

/// Everything agent mode is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// The node config: the node TOML if given, `[DEFAULT] metadata_port`
    /// and the `[xrouter]` section on top.
    pub node: NodeConfig,
    /// What Neutron's agent reads: how to reach the server, how to report.
    pub neutron: NeutronSettings,
}

/// A value not to be shown in logs or messages (the transport URL holds
/// the RabbitMQ password).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the code that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// The L3 agent's working mode (`[DEFAULT] agent_mode`), as Neutron
/// names it. xrouter itself routes legacy routers only; the agent loop
/// decides what to do with another mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    Legacy,
    Dvr,
    DvrSnat,
    DvrNoExternal,
}

impl AgentMode {
    const ALL: [AgentMode; 4] = [
        AgentMode::Legacy,
        AgentMode::Dvr,
        AgentMode::DvrSnat,
        AgentMode::DvrNoExternal,
    ];

    /// The name Neutron gives it (and the agent reports).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Legacy => "legacy",
            AgentMode::Dvr => "dvr",
            AgentMode::DvrSnat => "dvr_snat",
            AgentMode::DvrNoExternal => "dvr_no_external",
        }
    }
}

/// Options of Neutron and oslo.messaging the agent reads, with oslo's
/// names, defaults and meaning.
#[derive(Clone, Debug, PartialEq)]
pub struct NeutronSettings {
    /// The config files read, in order.
    pub files: Vec<PathBuf>,
    /// The file each option checked after reading comes from, by
    /// "section key" (those a file sets).
    pub origins: std::collections::BTreeMap<String, PathBuf>,
    /// `[DEFAULT] transport_url`: the RabbitMQ URL(s). Required.
    pub transport_url: Secret,
    /// `[DEFAULT] host`: the agent's host name (RPC topics, agent
    /// reports); default the machine's host name.
    pub host: String,
    /// `[DEFAULT] control_exchange`: default `neutron` (Neutron sets it).
    pub control_exchange: String,
    /// `[DEFAULT] rpc_response_timeout`: seconds to wait for an RPC reply.
    pub rpc_response_timeout: u32,
    /// `[DEFAULT] interface_driver`: reported to the server only
    /// (Neutron's default `openvswitch`).
    pub interface_driver: String,
    /// `[DEFAULT] state_path`: default `/var/lib/neutron`.
    pub state_path: PathBuf,
    /// `[DEFAULT] metadata_proxy_socket`: the metadata agent's socket,
    /// default `$state_path/metadata_proxy`.
    pub metadata_proxy_socket: PathBuf,
    /// `[DEFAULT] agent_mode`: default legacy.
    pub agent_mode: AgentMode,
    /// `[DEFAULT] handle_internal_only_routers`: default true.
    pub handle_internal_only_routers: bool,
    /// `[DEFAULT] debug`: default false.
    pub debug: bool,
    /// `[AGENT] report_interval`: between state reports; None when 0 or
    /// empty (Neutron then reports no state). Default 30 s.
    pub report_interval: Option<Duration>,
    /// `[AGENT] availability_zone`: default `nova`.
    pub availability_zone: String,
    /// `[AGENT] log_agent_heartbeats`: default false.
    pub log_agent_heartbeats: bool,
    /// `[oslo_messaging_rabbit]`.
    pub rabbit: RabbitSettings,
}

/// `[oslo_messaging_rabbit]` options (oslo.messaging's names and
/// defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RabbitSettings {
    pub rabbit_quorum_queue: bool,
    pub rabbit_transient_quorum_queue: bool,
    pub rabbit_stream_fanout: bool,
    pub amqp_durable_queues: bool,
    pub amqp_auto_delete: bool,
    /// Seconds an unused transient queue lives (x-expires); default 1800.
    pub rabbit_transient_queues_ttl: u32,
    /// Unacknowledged messages the server may send; 0 (default): no limit.
    pub rabbit_qos_prefetch_count: u16,
    /// Seconds without heartbeat before the connection is dead; 0
    /// disables heartbeats. Default 60.
    pub heartbeat_timeout_threshold: u16,
    pub ssl: bool,
    /// None when unset or empty (oslo's default is empty).
    pub ssl_ca_file: Option<PathBuf>,
    pub ssl_cert_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    /// Seconds before the first reconnection; default 1.
    pub rabbit_retry_interval: u32,
    /// Seconds added to the wait at each further attempt; default 2.
    pub rabbit_retry_backoff: u32,
    /// Most seconds between reconnection attempts; default 30.
    pub rabbit_interval_max: u32,
}

const AGENT: &str = "AGENT";
const RABBIT: &str = "oslo_messaging_rabbit";
const XROUTER: &str = "xrouter";
const HAPROXY: &str = "metadata_haproxy";
const RATE: &str = "metadata_rate_limiting";
const OVS: &str = "OVS";

/// Defaults of the options read, as oslo has them (`$name` substituted
/// at use); `host` is the machine's host name.
const DEFAULTS: &[(&str, &str, &str)] = &[
    (DEFAULT, "control_exchange", "neutron"),
    (DEFAULT, "rpc_response_timeout", "60"),
    (DEFAULT, "interface_driver", "openvswitch"),
    (DEFAULT, "metadata_port", "9697"),
    (DEFAULT, "state_path", "/var/lib/neutron"),
    (
        DEFAULT,
        "metadata_proxy_socket",
        "$state_path/metadata_proxy",
    ),
    (DEFAULT, "agent_mode", "legacy"),
    (DEFAULT, "handle_internal_only_routers", "true"),
    (DEFAULT, "debug", "false"),
    (AGENT, "report_interval", "30"),
    (AGENT, "availability_zone", "nova"),
    (AGENT, "log_agent_heartbeats", "false"),
    (RABBIT, "rabbit_quorum_queue", "false"),
    (RABBIT, "rabbit_transient_quorum_queue", "false"),
    (RABBIT, "rabbit_stream_fanout", "false"),
    (RABBIT, "amqp_durable_queues", "false"),
    (RABBIT, "amqp_auto_delete", "false"),
    (RABBIT, "rabbit_transient_queues_ttl", "1800"),
    (RABBIT, "rabbit_qos_prefetch_count", "0"),
    (RABBIT, "heartbeat_timeout_threshold", "60"),
    (RABBIT, "ssl", "false"),
    (RABBIT, "ssl_ca_file", ""),
    (RABBIT, "ssl_cert_file", ""),
    (RABBIT, "ssl_key_file", ""),
    (RABBIT, "rabbit_retry_interval", "1"),
    (RABBIT, "rabbit_retry_backoff", "2"),
    (RABBIT, "rabbit_interval_max", "30"),
];

/// The options [`NeutronSettings::origins`] remembers the file of: those
/// checked after reading (by `AgentSettings::from_config`).
const ORIGINS: &[(&str, &str)] = &[
    (DEFAULT, "transport_url"),
    (DEFAULT, "agent_mode"),
    (RABBIT, "ssl_ca_file"),
    (RABBIT, "ssl_cert_file"),
    (RABBIT, "ssl_key_file"),
];

impl NeutronSettings {
    /// The file that sets `key` of `section` (one of [`ORIGINS`]); all
    /// the files when none does (a default).
    pub fn file_of(&self, section: &str, key: &str) -> String {
        match self.origins.get(&format!("{section} {key}")) {
            Some(f) => text::path(f),
            None => {
                let files: Vec<String> = self.files.iter().map(|f| text::path(f)).collect();
                files.join(", ")
            }
        }
    }
}

/// Reads the agent's oslo.config `files` (later ones override earlier
/// ones key by key) and the node TOML `node_toml`, if any, under their
/// `[xrouter]` sections.
pub fn load(files: &[PathBuf], node_toml: Option<&Path>) -> anyhow::Result<AgentConfig> {
    let ini = Ini::read(files)?;
    from_ini(&ini, NodeConfig::load(node_toml)?, &hostname())
}

/// The settings `ini` gives on top of `node` (the node TOML's, or the
/// defaults); `host` is the default of `[DEFAULT] host`.
pub fn from_ini(ini: &Ini, mut node: NodeConfig, host: &str) -> anyhow::Result<AgentConfig> {
    let r = Reader { ini, host };

    let Some(url) = r.string(DEFAULT, "transport_url")? else {
        let files: Vec<String> = ini.files().iter().map(|f| text::path(f)).collect();
        anyhow::bail!(
            "no [DEFAULT] transport_url in {}: the agent needs the RabbitMQ URL \
             (e.g. rabbit://user:password@controller:5672/)",
            if files.is_empty() {
                "any config file (none given)".to_string()
            } else {
                files.join(", ")
            }
        );
    };
    if url.trim().is_empty() {
        return Err(r.bad(DEFAULT, "transport_url", "is empty (the RabbitMQ URL)"));
    }

    let host = r.string_or(DEFAULT, "host")?;
    if let Some(why) = hostname_problem(&host) {
        return Err(r.bad(DEFAULT, "host", &format!("{} {why}", quote(&host))));
    }
    let agent_mode = {
        let m = r.string_or(DEFAULT, "agent_mode")?;
        match AgentMode::ALL.into_iter().find(|a| a.as_str() == m) {
            Some(a) => a,
            None => {
                let names: Vec<&str> = AgentMode::ALL.iter().map(|a| a.as_str()).collect();
                return Err(r.bad(
                    DEFAULT,
                    "agent_mode",
                    &format!("{} is not one of {}", quote(&m), names.join(", ")),
                ));
            }
        }
    };
    let availability_zone = r.string_or(AGENT, "availability_zone")?;
    if availability_zone.len() > 255 {
        return Err(r.bad(
            AGENT,
            "availability_zone",
            &format!("{} is longer than 255 bytes", quote(&availability_zone)),
        ));
    }
    let report_interval = match r.value(AGENT, "report_interval")? {
        Some(v) if v.trim().is_empty() => None,
        Some(v) => {
            let secs = python_float(&v)
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
                .ok_or_else(|| {
                    r.bad(
                        AGENT,
                        "report_interval",
                        &format!(
                            "{} is not a number of seconds from 0 to 86400 (0 disables state reports)",
                            quote(&v)
                        ),
                    )
                })?;
            (secs > 0.0).then(|| Duration::from_secs_f64(secs))
        }
        None => Some(Duration::from_secs(30)),
    };

    let rabbit = RabbitSettings {
        rabbit_quorum_queue: r.bool(RABBIT, "rabbit_quorum_queue")?,
        rabbit_transient_quorum_queue: r.bool(RABBIT, "rabbit_transient_quorum_queue")?,
        rabbit_stream_fanout: r.bool(RABBIT, "rabbit_stream_fanout")?,
        amqp_durable_queues: r.bool(RABBIT, "amqp_durable_queues")?,
        amqp_auto_delete: r.bool(RABBIT, "amqp_auto_delete")?,
        // x-expires is milliseconds in a signed 32-bit field.
        rabbit_transient_queues_ttl: r.int(
            RABBIT,
            "rabbit_transient_queues_ttl",
            0..=2_147_483,
            "seconds",
        )? as u32,
        rabbit_qos_prefetch_count: r.int(
            RABBIT,
            "rabbit_qos_prefetch_count",
            0..=65_535,
            "messages; 0 means no limit",
        )? as u16,
        heartbeat_timeout_threshold: r.int(
            RABBIT,
            "heartbeat_timeout_threshold",
            0..=65_535,
            "seconds; 0 disables heartbeats",
        )? as u16,
        ssl: r.bool(RABBIT, "ssl")?,
        ssl_ca_file: r.path(RABBIT, "ssl_ca_file")?,
        ssl_cert_file: r.path(RABBIT, "ssl_cert_file")?,
        ssl_key_file: r.path(RABBIT, "ssl_key_file")?,
        rabbit_retry_interval: r.int(RABBIT, "rabbit_retry_interval", 1..=3600, "seconds")? as u32,
        rabbit_retry_backoff: r.int(RABBIT, "rabbit_retry_backoff", 0..=3600, "seconds")? as u32,
        rabbit_interval_max: r.int(RABBIT, "rabbit_interval_max", 1..=3600, "seconds")? as u32,
    };

    let neutron = NeutronSettings {
        files: ini.files().to_vec(),
        origins: ORIGINS
            .iter()
            .filter_map(|(sect, key)| {
                let e = ini.get(sect, key)?;
                Some((format!("{sect} {key}"), e.file.to_path_buf()))
            })
            .collect(),
        transport_url: Secret(url),
        host,
        control_exchange: {
            let x = r.string_or(DEFAULT, "control_exchange")?;
            if x.trim().is_empty() {
                return Err(r.bad(
                    DEFAULT,
                    "control_exchange",
                    "is empty (the exchange of neutron-server's RPC: neutron unless set)",
                ));
            }
            x
        },
        rpc_response_timeout: r.int(DEFAULT, "rpc_response_timeout", 1..=86_400, "seconds")? as u32,
        interface_driver: r.string_or(DEFAULT, "interface_driver")?,
        state_path: r.string_or(DEFAULT, "state_path")?.into(),
        metadata_proxy_socket: r.string_or(DEFAULT, "metadata_proxy_socket")?.into(),
        agent_mode,
        handle_internal_only_routers: r.bool(DEFAULT, "handle_internal_only_routers")?,
        debug: r.bool(DEFAULT, "debug")?,
        report_interval,
        availability_zone,
        log_agent_heartbeats: r.bool(AGENT, "log_agent_heartbeats")?,
        rabbit,
    };

    node_settings(&r, &mut node)?;
    Ok(AgentConfig { node, neutron })
}

/// The node config alone from the files (what `show`, `reload` and
/// `cleanup` need to find an agent's state): no Neutron option is required.
pub fn load_node(files: &[PathBuf], node_toml: Option<&Path>) -> anyhow::Result<NodeConfig> {
    let ini = Ini::read(files)?;
    let mut node = NodeConfig::load(node_toml)?;
    let host = hostname();
    node_settings(
        &Reader {
            ini: &ini,
            host: &host,
        },
        &mut node,
    )?;
    Ok(node)
}

/// Neutron's options that are node settings (as node keys), read when a
/// file sets them.
const NEUTRON_NODE_OPTIONS: &[(&str, &str, &str)] = &[
    (DEFAULT, "metadata_port", "metadata_port"),
    (DEFAULT, "enable_metadata_proxy", "enable_metadata_proxy"),
    (HAPROXY, "timeout_connect", "metadata_timeout_connect"),
    (HAPROXY, "timeout_client", "metadata_timeout_client"),
    (HAPROXY, "timeout_server", "metadata_timeout_server"),
    (
        HAPROXY,
        "timeout_http_request",
        "metadata_timeout_http_request",
    ),
    (
        HAPROXY,
        "timeout_http_keep_alive",
        "metadata_timeout_http_keep_alive",
    ),
    (RATE, "rate_limit_enabled", "metadata_rate_limit"),
    (RATE, "base_window_duration", "metadata_base_window"),
    (RATE, "base_query_rate_limit", "metadata_base_rate_limit"),
    (RATE, "burst_window_duration", "metadata_burst_window"),
    (RATE, "burst_query_rate_limit", "metadata_burst_rate_limit"),
];

/// Neutron's options xrouter's node config has too (the metadata proxy's,
/// `interface_driver`, the OVS integration bridge and OVSDB connection),
/// then `[xrouter]`, which may set each of them as well. With no
/// interface driver anywhere, Neutron's default: openvswitch.
fn node_settings(r: &Reader<'_>, node: &mut NodeConfig) -> anyhow::Result<()> {
    for (section, key, node_key) in NEUTRON_NODE_OPTIONS {
        if let Some(v) = r.value(section, key)? {
            node.set_ini(node_key, &v)
                .map_err(|p| r.bad(section, key, &p.problem))?;
        }
    }
    // The limit applies to the IP versions listed; the proxy serves IPv4.
    if let Some(v) = r.value(RATE, "ip_versions")? {
        let versions: Vec<&str> = v.split(',').map(str::trim).collect();
        if !versions.iter().all(|x| *x == "4" || *x == "6") {
            return Err(r.bad(
                RATE,
                "ip_versions",
                &format!("{} is not a list of 4 and 6", quote(&v)),
            ));
        }
        if !versions.contains(&"4") {
            node.metadata.rate_limit = false;
        }
    }
    // The socket follows `state_path` unless set itself, as in Neutron:
    // a relative state_path is named as such, not through the socket.
    if let Some(sp) = r.value(DEFAULT, "state_path")?
        && !sp.starts_with('/')
    {
        return Err(r.bad(
            DEFAULT,
            "state_path",
            &format!("{} is not an absolute path", quote(&sp)),
        ));
    }
    if r.ini.get(DEFAULT, "metadata_proxy_socket").is_some()
        || r.ini.get(DEFAULT, "state_path").is_some()
    {
        let v = r.value_or_default(DEFAULT, "metadata_proxy_socket")?;
        node.set_ini("metadata_proxy_socket", &v)
            .map_err(|p| r.bad(DEFAULT, "metadata_proxy_socket", &p.problem))?;
    }
    if let Some(d) = r.value(DEFAULT, "interface_driver")? {
        node.interface_driver = Some(node::InterfaceDriver::from_neutron(&d).ok_or_else(|| {
            r.bad(
                DEFAULT,
                "interface_driver",
                &format!(
                    "{} is not a driver xrouter plugs with (openvswitch, linuxbridge, \
                     neutron.agent.linux.interface.OVSInterfaceDriver, \
                     neutron.agent.linux.interface.BridgeInterfaceDriver)",
                    quote(&d)
                ),
            )
        })?);
    }
    // `[DEFAULT] ovs_integration_bridge` is the deprecated name of
    // `[OVS] integration_bridge`.
    let bridge = match r.value(OVS, "integration_bridge")? {
        Some(b) => Some((OVS, "integration_bridge", b)),
        None => r
            .value(DEFAULT, "ovs_integration_bridge")?
            .map(|b| (DEFAULT, "ovs_integration_bridge", b)),
    };
    if let Some((section, key, b)) = bridge {
        node.set_ini("ovs_integration_bridge", &b)
            .map_err(|p| r.bad(section, key, &p.problem))?;
    }
    if let Some(c) = r.value(OVS, "ovsdb_connection")? {
        node.set_ini("ovsdb_connection", &c)
            .map_err(|p| r.bad(OVS, "ovsdb_connection", &p.problem))?;
    }
    for (key, e) in r.ini.section(XROUTER) {
        let v = r.substituted(XROUTER, key, e)?;
        node.set_ini(key, &v)
            .map_err(|p| anyhow::anyhow!("{}: [{XROUTER}] {p}", text::path(&e.file)))?;
    }
    if node.interface_driver.is_none() {
        node.interface_driver = Some(node::InterfaceDriver::OpenVSwitch);
    }
    Ok(())
}

/// Reads typed options from the files, naming file, section, key and
/// value on error.
struct Reader<'a> {
    ini: &'a Ini,
    host: &'a str,
}

impl Reader<'_> {
    /// The default of an option read, if it has one.
    fn default(&self, section: &str, key: &str) -> Option<String> {
        if section == DEFAULT && key == "host" {
            return Some(self.host.to_string());
        }
        let section = ini::normalize_section(section);
        DEFAULTS
            .iter()
            .find(|(s, k, _)| ini::normalize_section(s) == section && *k == key)
            .map(|(_, _, d)| d.to_string())
    }

    /// An error for `key`: the file that set it (or the files read, for
    /// a default), the section, the key and the problem.
    fn bad(&self, section: &str, key: &str, problem: &str) -> anyhow::Error {
        let whence = match self.ini.get(section, key) {
            Some(e) => text::path(&e.file),
            None => "default".to_string(),
        };
        anyhow::anyhow!("{whence}: [{section}] {key}: {problem}")
    }

    /// `e`, the value of `key`, substituted.
    fn substituted(&self, section: &str, key: &str, e: &Entry) -> anyhow::Result<String> {
        let defaults = |s: &str, k: &str| self.default(s, k);
        self.ini
            .substitute(section, key, &e.value, &defaults)
            .map_err(|p| {
                // The transport URL holds a password: not shown.
                let shown = if key == "transport_url" {
                    "(value not shown)".to_string()
                } else {
                    quote(&e.value)
                };
                anyhow::anyhow!("{}: [{section}] {key}: {shown}: {p}", text::path(&e.file))
            })
    }

    /// The substituted value a file gives `key`, if one does.
    fn value(&self, section: &str, key: &str) -> anyhow::Result<Option<String>> {
        match self.ini.get(section, key) {
            Some(e) => self.substituted(section, key, e).map(Some),
            None => Ok(None),
        }
    }

    /// The value of `key`: a file's, else its default, substituted.
    fn value_or_default(&self, section: &str, key: &str) -> anyhow::Result<String> {
        if let Some(v) = self.value(section, key)? {
            return Ok(v);
        }
        let d = self.default(section, key).unwrap_or_default();
        let defaults = |s: &str, k: &str| self.default(s, k);
        self.ini
            .substitute(section, key, &d, &defaults)
            .map_err(|p| self.bad(section, key, &format!("default {}: {p}", quote(&d))))
    }

    fn string(&self, section: &str, key: &str) -> anyhow::Result<Option<String>> {
        self.value(section, key)
    }

    fn string_or(&self, section: &str, key: &str) -> anyhow::Result<String> {
        self.value_or_default(section, key)
    }

    /// A path, None when empty.
    /// A file's path, absolute (a relative one would be read from
    /// wherever the agent was started); None when unset or empty.
    fn path(&self, section: &str, key: &str) -> anyhow::Result<Option<PathBuf>> {
        let v = self.value_or_default(section, key)?;
        if !v.is_empty() && !v.starts_with('/') {
            return Err(self.bad(
                section,
                key,
                &format!("{} is not an absolute path", quote(&v)),
            ));
        }
        Ok((!v.is_empty()).then(|| v.into()))
    }

    fn bool(&self, section: &str, key: &str) -> anyhow::Result<bool> {
        let v = self.value_or_default(section, key)?;
        node::oslo_bool(&v).ok_or_else(|| {
            self.bad(
                section,
                key,
                &format!(
                    "{} is not a boolean (true/false, yes/no, on/off, 1/0)",
                    quote(&v)
                ),
            )
        })
    }

    /// An integer in `range`; `unit` says what it counts.
    fn int(
        &self,
        section: &str,
        key: &str,
        range: RangeInclusive<i64>,
        unit: &str,
    ) -> anyhow::Result<i64> {
        let v = self.value_or_default(section, key)?;
        match node::python_int(&v) {
            Some(Ok(n)) if range.contains(&n) => Ok(n),
            Some(_) => Err(self.bad(
                section,
                key,
                &format!(
                    "{} is outside the allowed range {}-{} ({unit})",
                    text::bare(v.trim()),
                    range.start(),
                    range.end()
                ),
            )),
            None => Err(self.bad(
                section,
                key,
                &format!("{} is not a number ({unit})", quote(&v)),
            )),
        }
    }
}

/// A number as Python's `float()` reads one: surrounding whitespace, and
/// underscores between digits.
fn python_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        return None;
    }
    let t = t.replace('_', "");
    // Rust reads "inf" and "nan" too: the caller refuses what is not finite.
    t.parse().ok()
}

/// Why `host` cannot be the agent's host name (oslo's HostAddressOpt:
/// an IP address or a host name of letters, digits, '-' and '_'
/// labels), if it cannot. It names the agent's RPC queues.
fn hostname_problem(host: &str) -> Option<&'static str> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Some("is not a host name (1-253 characters)");
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Some(
            "is not a host name (dot-separated labels of 1-63 letters, digits, '-' or '_', \
             not starting or ending with '-')",
        );
    }
    None
}

/// The machine's host name, as Neutron's default of `host` is.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "[DEFAULT]\ntransport_url = rabbit://neutron:s3cret@ctl:5672/\n";

    /// The settings files `(name, content)` give, with host name "node-1".
    fn load_str(files: &[(&str, &str)]) -> anyhow::Result<AgentConfig> {
        load_on(files, NodeConfig::default())
    }

    fn load_on(files: &[(&str, &str)], node: NodeConfig) -> anyhow::Result<AgentConfig> {
        let mut ini = Ini::default();
        for (name, content) in files {
            ini.add(content, Path::new(name))?;
        }
        from_ini(&ini, node, "node-1")
    }

    fn error(files: &[(&str, &str)]) -> String {
        match load_str(files) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn neutrons_metadata_options_set_the_proxy() {
        let c = load_str(&[
            ("neutron.conf", URL),
            (
                "l3_agent.ini",
                "[DEFAULT]\nstate_path = /srv/neutron\nmetadata_port = 9698\n\
                 [metadata_haproxy]\ntimeout_server = 64\ntimeout_connect = 5\n\
                 [metadata_rate_limiting]\nrate_limit_enabled = True\n\
                 base_query_rate_limit = 20\nburst_window_duration = 2\n",
            ),
        ])
        .unwrap();
        let m = &c.node.metadata;
        assert_eq!(c.node.metadata_port, 9698);
        assert_eq!(m.socket, Path::new("/srv/neutron/metadata_proxy"));
        assert_eq!((m.timeout_server, m.timeout_connect), (64, 5));
        assert!(m.rate_limit);
        assert_eq!(
            (m.rate.base_limit, m.rate.burst_window, m.rate.base_window),
            (20, 2, 10)
        );
        let e = error(&[
            ("neutron.conf", URL),
            (
                "l3_agent.ini",
                "[metadata_haproxy]\ntimeout_client = soon\n",
            ),
        ]);
        for needle in [
            "l3_agent.ini",
            "[metadata_haproxy] timeout_client",
            "\"soon\"",
        ] {
            assert!(e.contains(needle), "{e:?} does not name {needle:?}");
        }
    }

    #[test]
    fn a_rate_limit_for_ipv6_alone_leaves_ipv4_unlimited() {
        let c = load_str(&[
            ("neutron.conf", URL),
            (
                "l3_agent.ini",
                "[metadata_rate_limiting]\nrate_limit_enabled = true\nip_versions = 6\n",
            ),
        ])
        .unwrap();
        assert!(!c.node.metadata.rate_limit);
        let e = error(&[
            ("neutron.conf", URL),
            (
                "l3_agent.ini",
                "[metadata_rate_limiting]\nip_versions = 4,5\n",
            ),
        ]);
        assert!(e.contains("ip_versions") && e.contains("\"4,5\""), "{e}");
    }

    #[test]
    fn defaults_are_oslos() {
        let c = load_str(&[("neutron.conf", URL)]).unwrap();
        let n = &c.neutron;
        assert_eq!(
            n.transport_url.expose(),
            "rabbit://neutron:s3cret@ctl:5672/"
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password is not shown"
        );
        assert_eq!(n.host, "node-1");
        assert_eq!(n.control_exchange, "neutron");
        assert_eq!(n.rpc_response_timeout, 60);
        assert_eq!(n.interface_driver, "openvswitch");
        assert_eq!(n.state_path, Path::new("/var/lib/neutron"));
        assert_eq!(
            n.metadata_proxy_socket,
            Path::new("/var/lib/neutron/metadata_proxy")
        );
        assert_eq!(n.agent_mode, AgentMode::Legacy);
        assert!(n.handle_internal_only_routers && !n.debug && !n.log_agent_heartbeats);
        assert_eq!(n.report_interval, Some(Duration::from_secs(30)));
        assert_eq!(n.availability_zone, "nova");
        assert_eq!(
            n.rabbit,
            RabbitSettings {
                rabbit_quorum_queue: false,
                rabbit_transient_quorum_queue: false,
                rabbit_stream_fanout: false,
                amqp_durable_queues: false,
                amqp_auto_delete: false,
                rabbit_transient_queues_ttl: 1800,
                rabbit_qos_prefetch_count: 0,
                heartbeat_timeout_threshold: 60,
                ssl: false,
                ssl_ca_file: None,
                ssl_cert_file: None,
                ssl_key_file: None,
                rabbit_retry_interval: 1,
                rabbit_retry_backoff: 2,
                rabbit_interval_max: 30,
            }
        );
        // Neutron's default interface driver: openvswitch.
        assert_eq!(
            c.node,
            NodeConfig {
                interface_driver: Some(node::InterfaceDriver::OpenVSwitch),
                ..NodeConfig::default()
            }
        );
        assert_eq!(n.files, [PathBuf::from("neutron.conf")]);
    }

    #[test]
    fn later_files_override_and_unknown_options_are_ignored() {
        let c = load_str(&[
            (
                "neutron.conf",
                "[DEFAULT]\ntransport_url = rabbit://a@h1//\nhost = net1\ndebug = True\n\
                 core_plugin = ml2\nstate_path = /srv/neutron\n[database]\nconnection = x\n\
                 [oslo_messaging_rabbit]\nrabbit_quorum_queue = yes\nssl = on\n\
                 ssl_ca_file = /etc/ssl/ca.pem\nrabbit_qos_prefetch_count = 10\n",
            ),
            (
                "l3_agent.ini",
                "[DEFAULT]\ninterface_driver = linuxbridge\nhost = net2\n\
                 external_network_bridge =\n[AGENT]\nreport_interval = 7.5\n\
                 availability_zone = az1\nextensions = port_forwarding\n\
                 [OSLO_MESSAGING_RABBIT]\nrabbit_quorum_queue = No\n\
                 [ovs]\nintegration_bridge = br-int\n",
            ),
        ])
        .unwrap();
        let n = &c.neutron;
        assert_eq!(n.transport_url.expose(), "rabbit://a@h1//");
        assert_eq!(n.host, "net2");
        assert!(n.debug);
        assert_eq!(n.interface_driver, "linuxbridge");
        assert_eq!(
            n.metadata_proxy_socket,
            Path::new("/srv/neutron/metadata_proxy")
        );
        assert_eq!(n.report_interval, Some(Duration::from_secs_f64(7.5)));
        assert_eq!(n.availability_zone, "az1");
        assert!(!n.rabbit.rabbit_quorum_queue && n.rabbit.ssl);
        assert_eq!(
            n.rabbit.ssl_ca_file.as_deref(),
            Some(Path::new("/etc/ssl/ca.pem"))
        );
        assert_eq!(n.rabbit.rabbit_qos_prefetch_count, 10);
        assert_eq!(
            n.files,
            [PathBuf::from("neutron.conf"), PathBuf::from("l3_agent.ini")]
        );
    }

    #[test]
    fn report_interval_zero_or_empty_disables_reports() {
        for v in ["0", "0.0", ""] {
            let c = load_str(&[("f", &format!("{URL}[AGENT]\nreport_interval = {v}\n"))]).unwrap();
            assert_eq!(c.neutron.report_interval, None, "{v:?}");
        }
    }

    #[test]
    fn substitution_in_values_read() {
        let c = load_str(&[(
            "f",
            &format!(
                "{URL}host = $my_host\nmy_host = n7\nstate_path = /s\n\
                 metadata_proxy_socket = ${{state_path}}/mp\n\
                 [xrouter]\nstate_dir = $state_path/xrouter\n"
            ),
        )])
        .unwrap();
        assert_eq!(c.neutron.host, "n7");
        assert_eq!(c.neutron.metadata_proxy_socket, Path::new("/s/mp"));
        assert_eq!(c.node.state_dir, Path::new("/s/xrouter"));
        let e = error(&[(
            "l3_agent.ini",
            &format!("{URL}[AGENT]\navailability_zone = $zone\n"),
        )]);
        assert_eq!(
            e,
            "l3_agent.ini: [AGENT] availability_zone: \"$zone\": $zone names no option \
             the files set or xrouter knows (write $$ for a $)"
        );
        // The password is never shown, even when it is what is wrong.
        let e = error(&[(
            "n.conf",
            "[DEFAULT]\ntransport_url = rabbit://u:pa$word@h/\n",
        )]);
        assert!(
            e.starts_with("n.conf: [DEFAULT] transport_url: (value not shown): $word")
                && !e.contains("pa$"),
            "{e}"
        );
    }

    #[test]
    fn malformed_values_name_file_section_key_value_and_what_is_allowed() {
        for (section, line, expected) in [
            (
                "AGENT",
                "report_interval = abc",
                "l3_agent.ini: [AGENT] report_interval: \"abc\" is not a number of seconds",
            ),
            (
                "AGENT",
                "report_interval = -1",
                "l3_agent.ini: [AGENT] report_interval: \"-1\" is not a number of seconds from 0",
            ),
            (
                "DEFAULT",
                "rpc_response_timeout = 1m",
                "l3_agent.ini: [DEFAULT] rpc_response_timeout: \"1m\" is not a number (seconds)",
            ),
            (
                "DEFAULT",
                "rpc_response_timeout = 0",
                "l3_agent.ini: [DEFAULT] rpc_response_timeout: 0 is outside the allowed range 1-86400",
            ),
            (
                "oslo_messaging_rabbit",
                "ssl_ca_file = certs/ca.pem",
                "l3_agent.ini: [oslo_messaging_rabbit] ssl_ca_file: \"certs/ca.pem\" is not an \
                 absolute path",
            ),
            (
                "DEFAULT",
                "control_exchange =",
                "l3_agent.ini: [DEFAULT] control_exchange: is empty",
            ),
            (
                "DEFAULT",
                "state_path = relative",
                "l3_agent.ini: [DEFAULT] state_path: \"relative\" is not an absolute path",
            ),
            (
                "DEFAULT",
                "handle_internal_only_routers = maybe",
                "l3_agent.ini: [DEFAULT] handle_internal_only_routers: \"maybe\" is not a boolean \
                 (true/false, yes/no, on/off, 1/0)",
            ),
            (
                "DEFAULT",
                "agent_mode = dvr-snat",
                "l3_agent.ini: [DEFAULT] agent_mode: \"dvr-snat\" is not one of legacy, dvr, \
                 dvr_snat, dvr_no_external",
            ),
            (
                "DEFAULT",
                "host = my host",
                "l3_agent.ini: [DEFAULT] host: \"my host\" is not a host name",
            ),
            (
                "DEFAULT",
                "metadata_port = 0",
                "l3_agent.ini: [DEFAULT] metadata_port: 0 is outside the allowed range 1-65535",
            ),
            (
                "DEFAULT",
                "metadata_port = http",
                "l3_agent.ini: [DEFAULT] metadata_port: \"http\" is not an integer",
            ),
            (
                "oslo_messaging_rabbit",
                "rabbit_qos_prefetch_count = 99999999999999999999",
                "l3_agent.ini: [oslo_messaging_rabbit] rabbit_qos_prefetch_count: \
                 99999999999999999999 is outside the allowed range 0-65535",
            ),
            (
                "oslo_messaging_rabbit",
                "rabbit_retry_interval = 0",
                "l3_agent.ini: [oslo_messaging_rabbit] rabbit_retry_interval: 0 is outside",
            ),
            (
                "oslo_messaging_rabbit",
                "ssl = 2",
                "l3_agent.ini: [oslo_messaging_rabbit] ssl: \"2\" is not a boolean",
            ),
        ] {
            let e = error(&[
                ("neutron.conf", URL),
                ("l3_agent.ini", &format!("[{section}]\n{line}\n")),
            ]);
            assert!(e.starts_with(expected), "{line}:\n{e}\n{expected}");
        }
        let e = error(&[(
            "a.ini",
            &format!("{URL}[agent]\navailability_zone = {}\n", "z".repeat(256)),
        )]);
        assert!(
            e.starts_with("a.ini: [AGENT] availability_zone: \"zzz") && e.contains("255 bytes"),
            "{e}"
        );
    }

    #[test]
    fn booleans_as_oslo_accepts_them() {
        for (v, b) in [
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("on", true),
            ("1", true),
            ("false", false),
            ("No", false),
            ("OFF", false),
            ("0", false),
            ("\"yes\"", true),
        ] {
            let c = load_str(&[("f", &format!("{URL}debug = {v}\n"))]).unwrap();
            assert_eq!(c.neutron.debug, b, "{v}");
        }
    }

    #[test]
    fn transport_url_is_required() {
        let e = error(&[
            ("/etc/neutron/neutron.conf", "[DEFAULT]\nhost = x\n"),
            ("/etc/neutron/l3_agent.ini", "[DEFAULT]\n"),
        ]);
        assert!(
            e.starts_with(
                "no [DEFAULT] transport_url in /etc/neutron/neutron.conf, /etc/neutron/l3_agent.ini:"
            ),
            "{e}"
        );
        assert!(error(&[]).contains("none given"));
        let e = error(&[("n.conf", "[DEFAULT]\ntransport_url =\n")]);
        assert!(
            e.starts_with("n.conf: [DEFAULT] transport_url: is empty"),
            "{e}"
        );
    }

    #[test]
    fn xrouter_section_is_checked_like_the_node_toml() {
        let c = load_str(&[
            (
                "neutron.conf",
                &format!("{URL}[xrouter]\ndataplane = tc\nconntrack_size = 2048\n"),
            ),
            (
                "l3_agent.ini",
                "[DEFAULT]\nmetadata_port = 8775\n[XROUTER]\nconntrack_size = 4096\n\
                 send_garp = off\nbridge_mappings = 9c9436d4-2b7c-4a1e-9d8f-0123456789ab:br-ex, \
                 physnet-x : br-x\nresync_interval = 1_0\n",
            ),
        ])
        .unwrap();
        let n = &c.node;
        assert_eq!(n.dataplane, node::Dataplane::Tc);
        assert_eq!(n.conntrack_size, 4096);
        assert!(!n.send_garp);
        assert_eq!(n.metadata_port, 8775);
        assert_eq!(n.resync_interval, 10);
        assert_eq!(
            n.bridge_for("9c9436d4-2b7c-4a1e-9d8f-0123456789ab"),
            "br-ex"
        );
        assert_eq!(n.bridge_for("physnet-x"), "br-x");
        assert_eq!(n.bridge_mappings.len(), 2);

        for (line, expected) in [
            (
                "conntrack_size = 5",
                "l3_agent.ini: [xrouter] conntrack_size: 5 is outside the allowed range \
                 1024-16777216 (connections per router)",
            ),
            (
                "conntrack_size = lots",
                "l3_agent.ini: [xrouter] conntrack_size: \"lots\" is not an integer",
            ),
            (
                "conntrack_size = 99999999999999999999999",
                "l3_agent.ini: [xrouter] conntrack_size: 99999999999999999999999 is outside",
            ),
            (
                "conntrack_size = 1e6",
                "l3_agent.ini: [xrouter] conntrack_size: 1e6 is not an integer (write 1000000)",
            ),
            (
                "conntrack_size = 1e400",
                "l3_agent.ini: [xrouter] conntrack_size: 1e400 is outside the allowed range \
                 1024-16777216",
            ),
            (
                "conntrack_size = 2.5e9",
                "l3_agent.ini: [xrouter] conntrack_size: 2.5e9 is not an integer \
                 (allowed: 1024-16777216; connections per router)",
            ),
            (
                "speed = 10",
                "l3_agent.ini: [xrouter] speed: unknown key (known: metadata_port,",
            ),
            (
                "send_garp = maybe",
                "l3_agent.ini: [xrouter] send_garp: \"maybe\" is not a boolean (true/false, yes/no, \
                 on/off, 1/0)",
            ),
            (
                "dataplane = dpdk",
                "l3_agent.ini: [xrouter] dataplane: \"dpdk\" is not one of auto, xdp, tc, iptables",
            ),
            (
                "pin_dir = bpf/x",
                "l3_agent.ini: [xrouter] pin_dir: \"bpf/x\" is not an absolute path",
            ),
            (
                "bridge_mappings = net1",
                "l3_agent.ini: [xrouter] bridge_mappings: \"net1\" has no ':' \
                 (write network-id:bridge pairs separated by commas)",
            ),
            (
                "bridge_mappings = a:br-a,a:br-b",
                "l3_agent.ini: [xrouter] bridge_mappings: \"a:br-a,a:br-b\": \"a:br-b\" names \"a\" \
                 twice",
            ),
            (
                "bridge_mappings = :br-a",
                "l3_agent.ini: [xrouter] bridge_mappings: \":br-a\" has an empty key",
            ),
            (
                "bridge_mappings = net:a-very-long-bridge-name",
                "l3_agent.ini: [xrouter] bridge_mappings.net: \"a-very-long-bridge-name\" is not \
                 a valid interface name",
            ),
        ] {
            let e = error(&[
                ("neutron.conf", URL),
                ("l3_agent.ini", &format!("[xrouter]\n{line}\n")),
            ]);
            assert!(e.starts_with(expected), "{line}:\n{e}\n{expected}");
        }
        // An empty dict is no mapping.
        let c = load_str(&[("f", &format!("{URL}[xrouter]\nbridge_mappings =\n"))]).unwrap();
        assert!(c.node.bridge_mappings.is_empty());
    }

    #[test]
    fn plugging_comes_from_neutron_s_options() {
        use node::InterfaceDriver::*;
        let driver = |files: &[(&str, &str)], base: NodeConfig| {
            load_on(files, base).map(|c| {
                (
                    c.node.driver(),
                    c.node.ovs_integration_bridge,
                    c.node.ovsdb_connection,
                )
            })
        };
        let d = NodeConfig::default;
        let sock = "unix:/var/run/openvswitch/db.sock".to_string();
        // Neutron's default is openvswitch, into br-int.
        assert_eq!(
            driver(&[("f", URL)], d()).unwrap(),
            (OpenVSwitch, "br-int".into(), sock.clone())
        );
        for (v, want) in [
            ("openvswitch", OpenVSwitch),
            (
                "neutron.agent.linux.interface.OVSInterfaceDriver",
                OpenVSwitch,
            ),
            ("linuxbridge", LinuxBridge),
            (
                " neutron.agent.linux.interface.BridgeInterfaceDriver",
                LinuxBridge,
            ),
        ] {
            let f = format!("{URL}interface_driver = {v}\n");
            assert_eq!(driver(&[("f", &f)], d()).unwrap().0, want, "{v}");
        }
        // [OVS] (any case), the deprecated [DEFAULT] name, [xrouter] last.
        let f = format!(
            "{URL}ovs_integration_bridge = br-old\n[ovs]\nintegration_bridge = br-new\n\
             ovsdb_connection = tcp:127.0.0.1:6640\n"
        );
        assert_eq!(
            driver(&[("f", &f)], d()).unwrap(),
            (OpenVSwitch, "br-new".into(), "tcp:127.0.0.1:6640".into())
        );
        let f = format!("{URL}ovs_integration_bridge = br-old\n");
        assert_eq!(driver(&[("f", &f)], d()).unwrap().1, "br-old");
        let f = format!(
            "{URL}interface_driver = openvswitch\n[OVS]\nintegration_bridge = br-new\n\
             [xrouter]\ninterface_driver = linuxbridge\novs_integration_bridge = br-x\n\
             ovsdb_connection = unix:/run/ovs.sock\n"
        );
        assert_eq!(
            driver(&[("f", &f)], d()).unwrap(),
            (LinuxBridge, "br-x".into(), "unix:/run/ovs.sock".into())
        );
        // A node TOML's driver holds unless the files name one.
        let lb = NodeConfig::parse("interface_driver = \"linuxbridge\"", "node.toml").unwrap();
        assert_eq!(driver(&[("f", URL)], lb.clone()).unwrap().0, LinuxBridge);
        let f = format!("{URL}interface_driver = openvswitch\n");
        assert_eq!(driver(&[("f", &f)], lb).unwrap().0, OpenVSwitch);

        for (file, expected) in [
            (
                "[DEFAULT]\ninterface_driver = ovs\n",
                "l3_agent.ini: [DEFAULT] interface_driver: \"ovs\" is not a driver xrouter \
                 plugs with (openvswitch, linuxbridge, neutron.agent.linux.interface.OVSInterfaceDriver, \
                 neutron.agent.linux.interface.BridgeInterfaceDriver)",
            ),
            (
                "[DEFAULT]\ninterface_driver = neutron.agent.linux.interface.NullDriver\n",
                "l3_agent.ini: [DEFAULT] interface_driver: \"neutron.agent.linux.interface.NullDriver\" \
                 is not a driver",
            ),
            (
                "[OVS]\nintegration_bridge = br-integration-x\n",
                "l3_agent.ini: [OVS] integration_bridge: \"br-integration-x\" is not a valid \
                 bridge name: it must be 1-15 bytes",
            ),
            (
                "[DEFAULT]\novs_integration_bridge = br int\n",
                "l3_agent.ini: [DEFAULT] ovs_integration_bridge: \"br int\" is not a valid",
            ),
            (
                "[ovs]\novsdb_connection = ssl:10.0.0.1:6640\n",
                "l3_agent.ini: [OVS] ovsdb_connection: \"ssl:10.0.0.1:6640\" is an ssl: connection",
            ),
            (
                "[xrouter]\ninterface_driver = neutron.agent.linux.interface.OVSInterfaceDriver\n",
                "l3_agent.ini: [xrouter] interface_driver: \"neutron.agent.linux.interface.\
                 OVSInterfaceDriver\" is not one of linuxbridge, openvswitch",
            ),
        ] {
            let e = error(&[("neutron.conf", URL), ("l3_agent.ini", file)]);
            assert!(e.starts_with(expected), "{file}:\n{e}\n{expected}");
        }
    }

    #[test]
    fn the_node_toml_is_the_base() {
        let base = NodeConfig::parse(
            "conntrack_size = 2048\nmetadata_port = 1000\nbridge_prefix = \"br-\"\n",
            "node.toml",
        )
        .unwrap();
        let c = load_on(&[("f", URL)], base.clone()).unwrap();
        assert_eq!(
            c.node,
            NodeConfig {
                interface_driver: Some(node::InterfaceDriver::OpenVSwitch),
                ..base.clone()
            }
        );
        let c = load_on(
            &[(
                "f",
                &format!("{URL}metadata_port = 2000\n[xrouter]\nconntrack_size = 4096\n"),
            )],
            base.clone(),
        )
        .unwrap();
        assert_eq!(
            (
                c.node.conntrack_size,
                c.node.metadata_port,
                c.node.bridge_prefix.as_str()
            ),
            (4096, 2000, "br-")
        );
        // [xrouter] wins over [DEFAULT].
        let c = load_on(
            &[(
                "f",
                &format!("{URL}metadata_port = 2000\n[xrouter]\nmetadata_port = 3000\n"),
            )],
            base,
        )
        .unwrap();
        assert_eq!(c.node.metadata_port, 3000);
    }

    #[test]
    fn load_reads_files_and_names_the_bad_one() {
        let dir = std::env::temp_dir().join(format!("xrouter-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("neutron.conf");
        let b = dir.join("l3_agent.ini");
        let t = dir.join("node.toml");
        std::fs::write(&a, URL).unwrap();
        std::fs::write(&b, "[xrouter]\nconntrack_size = 4096\n").unwrap();
        std::fs::write(&t, "send_garp = false\n").unwrap();
        let c = load(&[a.clone(), b.clone()], Some(&t)).unwrap();
        assert_eq!((c.node.conntrack_size, c.node.send_garp), (4096, false));
        assert!(!c.neutron.host.is_empty());
        std::fs::write(&b, "[xrouter\n").unwrap();
        let e = load(&[a, b.clone()], None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: line 1: ", b.display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
