//! The node config (TOML): what Neutron keeps in `l3_agent.ini`.
//!
//! Every key is optional; unknown keys are an error, since a typo in an
//! operator's file should not silently fall back to a default.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::text::{self, label, quote, tidy};

/// Which data plane forwards packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// eBPF where possible, iptables otherwise.
    Auto,
    /// eBPF, XDP hook.
    Xdp,
    /// eBPF, TC (tcx) hook.
    Tc,
    /// Neutron's iptables rule set and the kernel's forwarding.
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
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
    /// Connections the eBPF connection table holds per router (an entry per
    /// direction each). The table is preallocated: about 100 bytes per
    /// connection.
    pub conntrack_size: u32,
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
            conntrack_size: 1_000_000,
        }
    }
}

impl NodeConfig {
    /// Parses a node config, naming the file and the bad key on error.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<NodeConfig> {
        let origin = label(origin);
        let c: NodeConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("node config {origin}: {}", toml_problem(text, &e)))?;
        if c.metadata_port == 0 {
            anyhow::bail!("node config {origin}: metadata_port: 0 is not a usable port");
        }
        if c.bridge_prefix.is_empty() || c.bridge_prefix.len() > 4 {
            anyhow::bail!(
                "node config {origin}: bridge_prefix: {} must be 1-4 characters (bridge names are at most 15)",
                quote(&c.bridge_prefix)
            );
        }
        if c.conntrack_size < 1024 {
            anyhow::bail!(
                "node config {origin}: conntrack_size: {} is below the minimum of 1024",
                c.conntrack_size
            );
        }
        for (net, br) in &c.bridge_mappings {
            if br.is_empty() || br.len() > 15 || br.contains(['/', ' ']) {
                anyhow::bail!(
                    "node config {origin}: bridge_mappings.{}: {} is not a valid interface name",
                    label(net),
                    quote(br)
                );
            }
        }
        Ok(c)
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

    /// The bridge a network's tap devices are enslaved to.
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

/// A TOML error as one line: where, and what (toml's own rendering quotes
/// the whole offending line of the file, whatever its length).
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| text.bytes().take(s.start).filter(|b| *b == b'\n').count() + 1);
    match line {
        Some(l) => format!("line {l}: {}", tidy(e.message())),
        None => tidy(e.message()),
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
}
