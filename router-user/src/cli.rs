//! The command line: its commands and options (with the help they show),
//! and how commands print.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::node::Dataplane;

/// Neutron-compatible virtual routers with an eBPF data plane.
///
/// xrouter reads the routers Neutron's server hands an L3 agent (the
/// `sync_routers` payload, as JSON) and builds each as Neutron's legacy agent
/// does: a `qrouter-<id>` namespace, `qr-`/`qg-` ports, addresses, routes,
/// floating IPs and NAT. It needs root.
///
/// A first look: `xrouter check --routers routers.json` validates a file;
/// `xrouter run --config node.toml --routers routers.json` runs the daemon;
/// `xrouter show` lists what it built. `xrouter help COMMAND` explains each
/// command.
#[derive(Parser)]
#[command(name = "xrouter", version, propagate_version = true)]
pub struct Cli {
    /// Node config file (TOML): data plane, bridges, directories, limits.
    ///
    /// Every key is optional. Without this option every key has its default:
    /// data plane auto, state and control socket in /run/xrouter, BPF pins
    /// in /sys/fs/bpf/xrouter. Give every command the daemon's file, so that
    /// they find its state.
    ///
    /// Example: --config /etc/xrouter/node.toml
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the state file and the control socket.
    ///
    /// Overrides the node config's state_dir (default: /run/xrouter). An
    /// absolute path. `reload`, `show` and `cleanup` must be given the
    /// daemon's.
    ///
    /// Example: --state-dir /run/xrouter-lab
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// An oslo.config file of Neutron's (neutron.conf, l3_agent.ini...),
    /// as `neutron-l3-agent` takes them; repeat it, later files override
    /// earlier ones.
    ///
    /// `agent` reads Neutron's options from them (`check` checks them as
    /// `agent` would), and every command the node settings of their
    /// `[xrouter]` section (same keys as the node config, which --config
    /// may still give as the base). Give `show`,
    /// `reload` and `cleanup` the agent's files so that they find its
    /// state. Default: none (the node config alone; `agent` needs them).
    ///
    /// Example: --config-file /etc/neutron/neutron.conf --config-file /etc/neutron/l3_agent.ini
    #[arg(long = "config-file", global = true, value_name = "FILE")]
    pub config_files: Vec<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `--metrics-address`, checked as the node config's key is.
fn metrics_address(s: &str) -> Result<std::net::SocketAddr, String> {
    crate::config::node::metrics_address(s)
        .map_err(|why| format!("{} {why}", crate::text::quote(s)))
}

#[derive(Subcommand)]
pub enum ShowWhat {
    /// Routers, ports, addresses and floating IPs (the default).
    Routers,
    /// Connections tracked by the eBPF data plane: original and translated
    /// tuples, state, age.
    Flows {
        /// Only the router with this ID (default: every router).
        ///
        /// The ID as `xrouter show` lists it, or a start of it that no
        /// other router's has (`xrouter monitor` prints the first 8
        /// characters).
        ///
        /// Example: --router 5c7ef3a1-2d4b-4e8f-9a6c-1b2d3e4f5a6b, or --router 5c7ef3a1
        #[arg(long, value_name = "ID")]
        router: Option<String>,
    },
    /// eBPF counters per router: packets forwarded (XDP, TC), handed to the
    /// kernel and dropped, by reason; connection events.
    ///
    /// The table leaves out counters at zero; --json lists them all.
    Stats {
        /// Only the router with this ID (default: every router).
        ///
        /// The ID as `xrouter show` lists it, or a start of it that no
        /// other router's has (`xrouter monitor` prints the first 8
        /// characters).
        ///
        /// Example: --router 5c7ef3a1-2d4b-4e8f-9a6c-1b2d3e4f5a6b, or --router 5c7ef3a1
        #[arg(long, value_name = "ID")]
        router: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon in the foreground: apply the routers, then keep them so.
    ///
    /// Reloads on `xrouter reload`, on SIGHUP and when the routers file
    /// changes on disk; every `resync_interval` seconds it repairs what was
    /// removed behind its back and retries the routers that failed.
    /// Stopping it (SIGTERM, Ctrl-C) leaves the routers forwarding; `xrouter
    /// cleanup` removes them. The node config is read at start: restart
    /// the daemon to change it.
    ///
    /// Each router namespace gets the metadata proxy VMs reach at
    /// 169.254.169.254 (port metadata_port, forwarding to the metadata
    /// agent's socket metadata_proxy_socket). A stopping daemon hands its
    /// listeners to a holder process (`xrouter metadata-hold`) that the next
    /// daemon takes them from, so no VM connection is refused in between;
    /// under systemd use KillMode=process (the units of packaging/systemd/
    /// do). docs/metadata.md, docs/operations.md.
    ///
    /// To run it in another network namespace, enter that namespace alone:
    /// `nsenter --net=/run/netns/NAME xrouter run ...`. Not with `ip netns
    /// exec`: it runs the daemon in a mount namespace of its own with /sys
    /// mounted anew, which hides the bpffs at /sys/fs/bpf that the eBPF data
    /// planes pin to (they refuse to start), and keeps the router
    /// namespaces the daemon creates from the rest of the system.
    Run {
        /// The routers file to apply and follow.
        ///
        /// Neutron's `sync_routers` payload as JSON: a list of router dicts,
        /// or {"routers": [...]}. It is validated before anything is built;
        /// once the daemon runs, a change of it on disk is a reload.
        ///
        /// Example: --routers /var/lib/xrouter/routers.json
        #[arg(long, value_name = "FILE")]
        routers: PathBuf,
        /// Data plane, instead of the node config's `dataplane` (default
        /// there: auto).
        #[arg(long, value_enum, value_name = "PLANE")]
        dataplane: Option<Dataplane>,
        /// Serve Prometheus metrics at http://ADDRESS/metrics, instead of
        /// the node config's `metrics_address` (default: no endpoint).
        ///
        /// An IP address and a port, bound exactly as written.
        ///
        /// Example: --metrics-address 127.0.0.1:9793
        #[arg(long, value_name = "ADDRESS", value_parser = metrics_address)]
        metrics_address: Option<std::net::SocketAddr>,
    },
    /// Run as Neutron's L3 agent: routers come from neutron-server over
    /// RPC (RabbitMQ), not from a file.
    ///
    /// Started like `neutron-l3-agent`, with the same files:
    /// `xrouter agent --config-file /etc/neutron/neutron.conf --config-file
    /// /etc/neutron/l3_agent.ini`. It reads [DEFAULT] transport_url, host,
    /// control_exchange, rpc_response_timeout, [AGENT] report_interval and
    /// the [oslo_messaging_rabbit] queue and TLS options; xrouter's own
    /// settings go in an [xrouter] section. It registers as an L3 agent for
    /// its host, builds the routers the server schedules to it (legacy
    /// routers; HA and distributed ones are logged as not handled), follows
    /// every notification and reports floating IP statuses. A lost message
    /// bus is retried on every broker of the URL while the routers keep
    /// forwarding; `xrouter reload` asks for a full sync (non-zero when a
    /// router was rejected or failed). Stopping it leaves the routers
    /// forwarding.
    ///
    /// Also read: [DEFAULT] agent_mode (legacy only), interface_driver
    /// (how ports are plugged), handle_internal_only_routers,
    /// metadata_port, enable_metadata_proxy, metadata_proxy_socket,
    /// state_path; [OVS] integration_bridge, ovsdb_connection;
    /// [metadata_haproxy] and [metadata_rate_limiting] (the metadata proxy,
    /// as in `run`); [AGENT] availability_zone, log_agent_heartbeats. Every
    /// option: docs/agent.md.
    Agent {
        /// Data plane, instead of the configured `dataplane` (default:
        /// auto).
        #[arg(long, value_enum, value_name = "PLANE")]
        dataplane: Option<Dataplane>,
        /// Serve Prometheus metrics at http://ADDRESS/metrics, instead of
        /// the configured `metrics_address` (default: no endpoint).
        ///
        /// An IP address and a port, bound exactly as written.
        ///
        /// Example: --metrics-address 127.0.0.1:9793
        #[arg(long, value_name = "ADDRESS", value_parser = metrics_address)]
        metrics_address: Option<std::net::SocketAddr>,
    },
    /// Make the running daemon re-read its routers file and apply it.
    ///
    /// Returns once the new state is applied, printing what changed. Exits
    /// non-zero when the file does not validate (nothing of it is applied:
    /// the daemon keeps its state) and when some routers cannot be applied
    /// (the others are; those that failed keep their previous state and are
    /// retried at every resync). Talks to the daemon through
    /// <state_dir>/xrouter.sock: give it the daemon's --config or
    /// --state-dir.
    Reload,
    /// Check the configuration, and a routers file, without applying anything.
    ///
    /// Checks the node config (--config) as every command reads it; with
    /// --config-file, Neutron's options as `agent` reads them at start
    /// ([DEFAULT] transport_url, agent_mode, interface_driver and the
    /// metadata options, [AGENT], [OVS], [metadata_haproxy],
    /// [metadata_rate_limiting], [oslo_messaging_rabbit] and its TLS files,
    /// the [xrouter] section); with --routers, the routers file, for that
    /// node config (its bridge_mappings) as `run` would check it. Prints a
    /// line per thing checked, "...: valid", and exits 0, or names the
    /// first problem (file, section or router, key or field, value) and
    /// exits 1. It reads files only: it connects to nothing, creates no
    /// directory and binds no address (`run` and `agent` also check that
    /// pin_dir is on a bpffs for the eBPF planes, and that they can create
    /// state_dir and listen on metrics_address). With --plan, also prints
    /// what an apply of the routers file would change on this node now,
    /// router by router.
    Check {
        /// The routers file to check: Neutron's `sync_routers` payload as
        /// JSON. Default: none (the configuration alone).
        ///
        /// A list of router dicts, or {"routers": [...]}.
        ///
        /// Example: --routers routers.json
        #[arg(long, value_name = "FILE")]
        routers: Option<PathBuf>,
        /// Also print what an apply would change on this node now, router
        /// by router.
        ///
        /// Compares the file with what the kernel holds (the daemon need not
        /// run) and lists the actions: namespaces, ports, addresses, routes,
        /// rules, BPF map entries, and the routers the file no longer has.
        /// Reads the kernel, so needs root; changes nothing.
        #[arg(long, requires = "routers")]
        plan: bool,
        /// Data plane to plan for, with --plan (default: the one the daemon
        /// recorded, else the node config's).
        #[arg(long, value_enum, value_name = "PLANE", requires = "plan")]
        dataplane: Option<Dataplane>,
    },
    /// Show the routers, ports, addresses and floating IPs xrouter manages.
    ///
    /// `xrouter show` lists the routers as last applied, and those whose
    /// last apply failed, with why; `show flows` the eBPF connection table;
    /// `show stats` the eBPF counters (forwarded per hook, handed to the
    /// kernel and dropped, per reason). Reads the daemon's state: give it
    /// the daemon's --config or --state-dir.
    Show {
        /// Print JSON instead of a table (for scripts).
        ///
        /// `show stats --json` lists every counter, zeros included.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: Option<ShowWhat>,
    },
    /// Show what a router's eBPF data path does with one packet, stage by
    /// stage, without touching its live state.
    ///
    /// Runs the router's programs (those attached at --in: XDP then TC, or
    /// TC) on the packet with BPF_PROG_TEST_RUN, against private copies of
    /// the router's maps: its configuration, its neighbours, and the
    /// connection entries the packet can meet. The live connection table
    /// and counters never change. Prints the packet as parsed, each
    /// program's action and counter, the connection found or created (its
    /// translation, its state), the NAT applied, the route (prefix, next
    /// hop, egress port), the frame as it leaves (addresses, ports, TTL,
    /// checksums verified) with the MACs, and the verdict: forwarded,
    /// dropped (why), handed to the kernel (why), answered. Counter names
    /// are those of `xrouter show stats`. eBPF planes only. Reads the
    /// daemon's state: give it the daemon's --config or --state-dir.
    ///
    /// Packet spec: `PROTO SRC -> DST [OPTIONS]`, PROTO tcp or udp with
    /// ADDRESS:PORT ends, or icmp with bare addresses. OPTIONS, in
    /// brackets, commas optional: `flags S|SA|A|FA|R...` (TCP; default S),
    /// `echo id N` / `echo-reply id N` (ICMP; default echo id 1), `ttl N`
    /// (default 64), `len N` (IPv4 total length; default headers + 16
    /// bytes), `df` / `no-df` (default df), `from MAC` (default
    /// 02:00:00:00:00:01), `to MAC` (default: the --in port's MAC).
    ///
    /// Examples:
    ///
    ///   xrouter explain --router ID --in qr-1a2b3c4d-5e 'tcp 10.0.1.10:40000 -> 8.8.8.8:443 [flags S]'
    ///
    ///   xrouter explain --router ID --in qg-9f8e7d6c-5b 'udp 192.168.1.15:5000 -> 192.168.1.104:53'
    ///
    ///   xrouter explain --router ID --in qr-1a2b3c4d-5e 'icmp 10.0.1.10 -> 8.8.8.8 [echo id 7, ttl 1]'
    ///
    ///   xrouter explain --router ID --in qr-1a2b3c4d-5e --hex 'fa163e000001 020000000001 0800 4500...'
    ///
    ///   xrouter explain --router ID --in qr-1a2b3c4d-5e --json 'tcp 10.0.1.10:40000 -> 8.8.8.8:443'
    Explain {
        /// The router, by ID as `xrouter show` lists it (or a unique start).
        ///
        /// Example: --router 5c7ef3a1-2d4b-4e8f-9a6c-1b2d3e4f5a6b
        #[arg(long, value_name = "ID")]
        router: String,
        /// The port the packet arrives on: a qr-/qg- device of that router
        /// (or a unique start of its name or of the port's ID).
        ///
        /// Example: --in qr-1a2b3c4d-5e
        #[arg(long = "in", value_name = "DEVICE")]
        port: String,
        /// PACKET is a whole Ethernet frame in hex (spaces and colons
        /// allowed), not a spec.
        #[arg(long)]
        hex: bool,
        /// Print JSON instead of one line per stage (for scripts).
        #[arg(long)]
        json: bool,
        /// The packet: a spec such as 'tcp 10.0.1.10:40000 -> 8.8.8.8:443
        /// [flags S]' (quote it), or with --hex a frame.
        #[arg(value_name = "PACKET")]
        packet: String,
    },
    /// Stream what a router's eBPF data path drops and hands to the kernel,
    /// packet by packet, as it happens.
    ///
    /// One line per packet: time, router (short ID), ingress port, verdict,
    /// reason (the counter names of `xrouter show stats`: `drop/...`,
    /// `kernel/...`) and the packet (`tcp 10.0.1.10:40000 -> 8.8.8.8:443
    /// [flags S]`, the spec `xrouter explain` takes), or JSON lines with
    /// --json. Every router of the daemon, including those it applies
    /// while the monitor runs, or --router's. The programs
    /// write events only while a monitor runs (it switches them on at start
    /// and off when it exits: --count, --duration, Ctrl-C, SIGTERM, its
    /// output closed); otherwise they cost nothing. One monitor per router
    /// at a time: a second is refused. Events the full ring buffer could
    /// not take (a flood faster than the terminal) are counted and shown at
    /// the end; --sample keeps a flood readable. eBPF planes only. Reads
    /// the daemon's state: give it the daemon's --config or --state-dir.
    ///
    /// Examples:
    ///
    ///   xrouter monitor                                  # every router, later ones too, until Ctrl-C
    ///
    ///   xrouter monitor --router ID --drops              # what one router drops
    ///
    ///   xrouter monitor --router ID --forwarded --sample 100 --duration 10
    ///
    ///   xrouter monitor --router ID --json --count 20 | jq -c '[.reason, .packet]'
    Monitor {
        /// Only the router with this ID (default: every router, and
        /// those the daemon applies later).
        ///
        /// The ID as `xrouter show` lists it, or a start of it that no
        /// other router's has (as this command prints it: 8 characters).
        ///
        /// Example: --router 5c7ef3a1-2d4b-4e8f-9a6c-1b2d3e4f5a6b
        #[arg(long, value_name = "ID")]
        router: Option<String>,
        /// Only dropped packets (not those handed to the kernel).
        #[arg(long, conflicts_with = "forwarded")]
        drops: bool,
        /// Forwarded packets too: their tuple as they leave (translated),
        /// ingress and egress port.
        #[arg(long)]
        forwarded: bool,
        /// One JSON object per line (for scripts), and a last line
        /// {"summary": {"events", "lost", "stopped", "sample"}}.
        #[arg(long)]
        json: bool,
        /// Report one packet in N (counted per CPU, in the programs), N 1 or more.
        #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true,
              value_parser = clap::value_parser!(u32).range(1..))]
        sample: u32,
        /// Stop after N events (default: no limit).
        #[arg(long, value_name = "N", allow_negative_numbers = true,
              value_parser = monitor_count)]
        count: Option<u64>,
        /// Stop after SECS seconds, 0 to 31536000 (a year), fractions
        /// allowed (default: no limit).
        #[arg(long, value_name = "SECS", allow_negative_numbers = true,
              value_parser = monitor_secs)]
        duration: Option<std::time::Duration>,
    },
    /// Remove every namespace, port, bridge and BPF pin xrouter created.
    ///
    /// Works from the daemon's state file (the routers applied, and those
    /// whose apply failed): give it the daemon's --config or --state-dir,
    /// and run it in the network namespace the daemon ran in. It refuses
    /// while the daemon (`run` or `agent`) answers on its control socket:
    /// stop it first, or its next resync would build the routers again.
    Cleanup,
    /// Holds the metadata listeners between two runs of the daemon (started
    /// by a stopping daemon, not by hand).
    #[command(hide = true)]
    MetadataHold {
        /// The unix socket the next daemon takes the listeners from (no
        /// default: the daemon always gives it).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// A listener as ROUTER:NETNS-INODE:FD (repeated; default: none).
        #[arg(long = "listener", value_name = "ROUTER:INODE:FD")]
        listeners: Vec<String>,
    },
    /// Show what a Neutron router does, in a sandbox that is removed after.
    ///
    /// Builds a sandbox of namespaces (a router with two tenant networks,
    /// a floating IP, two VMs and an external host) with a daemon of its
    /// own, runs four experiments (gateway SNAT, a floating IP from outside
    /// and from inside, east-west), prints what each server saw, and removes
    /// the sandbox.
    #[command(
        after_help = "The demo makes its own node config: it refuses --config, --state-dir and \
                      --config-file (listed above as every command's)."
    )]
    Demo {
        /// Leave the sandbox in place for a look; it prints how to remove it.
        #[arg(long)]
        keep: bool,
        /// Data plane to demonstrate.
        ///
        /// With auto, the demo says which plane it picked.
        #[arg(long, value_enum, value_name = "PLANE", default_value = "auto")]
        dataplane: Dataplane,
    },
}

/// Writes `args` to standard output. A closed standard output
/// (`xrouter show | head`) is not an error: what is left to print is
/// dropped, and the command finishes what it was doing (the demo still
/// removes its sandbox) and exits as it would have. Any other write error
/// (say a full disk) is returned.
pub fn stdout(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    match o.write_fmt(args).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}

/// Writes `args` and a newline to standard error, ignoring any error: a
/// message that cannot be shown must not turn into a panic.
pub fn stderr(args: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `print!` through [`stdout`]: a closed standard output is not an error.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::stdout(format_args!($($arg)*)) };
}

/// `println!` through [`stdout`]: a closed standard output is not an error.
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` through [`stderr`]: never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::stderr(format_args!($($arg)*)) };
}

/// Most `monitor --duration` takes: a year.
const MONITOR_MAX_SECS: f64 = 365.0 * 86_400.0;

/// `monitor --count`: a whole number of events, 0 or more.
fn monitor_count(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| "a whole number of events, 0 or more, is expected".to_string())
}

/// `monitor --duration`: seconds, 0 to a year, fractions allowed.
fn monitor_secs(s: &str) -> Result<std::time::Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(d) if d.is_finite() && (0.0..=MONITOR_MAX_SECS).contains(&d) => {
            Ok(std::time::Duration::from_secs_f64(d))
        }
        _ => Err(format!(
            "a number of seconds from 0 to {MONITOR_MAX_SECS:.0} (a year) is expected"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every command and option of `c` and its subcommands, with the path
    /// of commands leading to it.
    fn walk(c: &clap::Command, path: &str, f: &mut dyn FnMut(&str, &clap::Command)) {
        let path = format!("{path} {}", c.get_name()).trim().to_string();
        f(&path, c);
        for s in c.get_subcommands() {
            walk(s, &path, f);
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_and_option_has_help_that_says_its_default() {
        let mut problems = Vec::new();
        walk(&Cli::command(), "", &mut |path, c| {
            if path != "xrouter help"
                && !path.starts_with("xrouter help ")
                && c.get_about().is_none()
            {
                problems.push(format!("{path}: no help"));
            }
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = a
                    .get_long_help()
                    .or(a.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if help.trim().is_empty() {
                    problems.push(format!("{path} --{id}: no help"));
                    continue;
                }
                // An optional value must say what happens without it.
                let optional_value = !a.is_required_set()
                    && a.get_num_args().is_none_or(|n| n.takes_values())
                    && !matches!(
                        a.get_action(),
                        clap::ArgAction::SetTrue | clap::ArgAction::Count
                    )
                    && a.get_default_values().is_empty();
                if optional_value && !help.to_lowercase().contains("default") {
                    problems.push(format!("{path} --{id}: does not say its default: {help}"));
                }
            }
        });
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn check_help_explains_routers() {
        let mut cmd = Cli::command();
        let check = cmd.find_subcommand_mut("check").unwrap();
        let help = check.render_long_help().to_string();
        let mut lines = help.lines().skip_while(|l| l.trim() != "--routers <FILE>");
        let text = lines.nth(1).unwrap_or_default().trim();
        assert!(text.starts_with("The routers file"), "{help}");
    }
}
