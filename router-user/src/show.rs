//! `xrouter show`: what xrouter manages, as a table or JSON.

use std::fmt::Write as _;

use router_common::counters::{Counter, CtEvent, Outcome};
use serde::Serialize;

use crate::{
    backend::netns,
    config::node::{Dataplane, NodeConfig},
    model::{Role, Router},
    state::State,
};

#[derive(Serialize)]
pub struct Shown<'a> {
    pub dataplane: Option<Dataplane>,
    /// Whether a daemon answers on the control socket: the routers shown
    /// forward without one, as last applied, but nothing follows the
    /// routers file or resyncs them.
    pub daemon_running: bool,
    /// Routers as last applied successfully.
    pub routers: Vec<ShownRouter<'a>>,
    /// Routers whose last apply failed (retried at every resync).
    pub failed: Vec<ShownFailure<'a>>,
}

#[derive(Serialize)]
pub struct ShownFailure<'a> {
    pub id: &'a str,
    pub error: &'a str,
    /// Whether `routers` holds its previous state (else it is new).
    pub has_previous_state: bool,
}

#[derive(Serialize)]
pub struct ShownRouter<'a> {
    #[serde(flatten)]
    pub router: &'a Router,
    pub namespace: String,
    /// Whether the router's namespace exists right now.
    pub present: bool,
    /// The metadata proxy's port if xrouter listens on it in the namespace
    /// right now (None: it does not, or the proxy is off).
    pub metadata_listening: Option<u16>,
    /// Who else holds the metadata port (a haproxy left behind...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_port_taken_by: Option<String>,
}

/// Who listens on TCP `port` in namespace `ns`, by the kernel's table of
/// that namespace: None if nobody, else the owning processes' names and
/// pids (`xrouter 812`) as far as /proc tells.
fn listener_of(ns: &str, port: u16) -> Option<Vec<(String, u32)>> {
    let table = netns::run_in(Some(ns), || {
        std::fs::read_to_string("/proc/thread-self/net/tcp")
    });
    let Ok(Ok(table)) = table else {
        return None;
    };
    // `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
    // inode`: 0A is LISTEN.
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let p = f.get(1)?.rsplit(':').next()?;
            (f.get(3) == Some(&"0A") && u16::from_str_radix(p, 16).ok() == Some(port))
                .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let mut owners = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let holds = std::fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
            });
        if holds {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            owners.push((comm.trim().to_string(), pid));
        }
    }
    Some(owners)
}

/// The metadata proxy of a router as found: xrouter's listener, another
/// program's, or none.
fn metadata_of(ns: &str, node: &NodeConfig) -> (Option<u16>, Option<String>) {
    if !node.metadata.enabled {
        return (None, None);
    }
    match listener_of(ns, node.metadata_port) {
        None => (None, None),
        // The daemon, or the holder keeping its listeners over a restart.
        Some(o) if o.iter().any(|(c, _)| c == "xrouter") => (Some(node.metadata_port), None),
        Some(o) => {
            let who: Vec<String> = o.iter().map(|(c, p)| format!("{c} (pid {p})")).collect();
            let who = if who.is_empty() {
                "another program".to_string()
            } else {
                who.join(", ")
            };
            (None, Some(who))
        }
    }
}

pub fn view<'a>(state: &'a State, node: &NodeConfig) -> Shown<'a> {
    Shown {
        dataplane: state.dataplane,
        daemon_running: daemon_answers(node),
        routers: state
            .routers
            .iter()
            .map(|r| {
                let present = netns::exists(&r.namespace());
                let (listening, taken) = if present {
                    metadata_of(&r.namespace(), node)
                } else {
                    (None, None)
                };
                ShownRouter {
                    router: r,
                    namespace: r.namespace(),
                    present,
                    metadata_listening: listening,
                    metadata_port_taken_by: taken,
                }
            })
            .collect(),
        failed: state
            .failed
            .iter()
            .map(|f| ShownFailure {
                id: &f.router.id,
                error: &f.error,
                has_previous_state: state.applied(&f.router.id).is_some(),
            })
            .collect(),
    }
}

pub fn json(state: &State, node: &NodeConfig) -> String {
    serde_json::to_string_pretty(&view(state, node)).expect("serialisable")
}

/// Whether a daemon accepts connections on the node's control socket
/// (connected and closed at once: the daemon reads no request and goes
/// on).
fn daemon_answers(node: &NodeConfig) -> bool {
    std::os::unix::net::UnixStream::connect(node.socket_path()).is_ok()
}

/// How the table says whether the daemon runs.
fn daemon_line(running: bool) -> &'static str {
    if running {
        "daemon: running"
    } else {
        "daemon: NOT RUNNING (the routers forward as last applied; nothing follows the routers file)"
    }
}

/// `xrouter show`: the routers as JSON or a table; an error where no
/// daemon has left its state (most likely the wrong place looked at,
/// which an empty list would hide from a script as from a reader).
pub fn routers(state: &State, node: &NodeConfig, as_json: bool) -> anyhow::Result<String> {
    if state.dataplane.is_none() && state.routers.is_empty() && state.failed.is_empty() {
        anyhow::bail!("{}", no_state(node));
    }
    Ok(if as_json {
        json(state, node) + "\n"
    } else {
        table(state, node)
    })
}

/// A terminal table per router.
pub fn table(state: &State, node: &NodeConfig) -> String {
    let mut o = String::new();
    let dp = state
        .dataplane
        .map(|d| d.to_string())
        .unwrap_or_else(|| "-".into());
    for f in &state.failed {
        let _ = writeln!(
            o,
            "router {}: last apply FAILED ({}; retried at every resync): {}",
            f.router.id,
            if state.applied(&f.router.id).is_some() {
                "shown below as it was before"
            } else {
                "new, not applied"
            },
            f.error
        );
    }
    let shown = view(state, node);
    let daemon = daemon_line(shown.daemon_running);
    if state.routers.is_empty() {
        let _ = writeln!(o, "no routers (data plane: {dp})   {daemon}");
        return o;
    }
    let _ = writeln!(
        o,
        "data plane: {dp}   routers: {}   {daemon}",
        state.routers.len()
    );
    for s in shown.routers {
        let r = s.router;
        let _ = writeln!(o);
        let gw = match &r.gateway {
            Some(g) => {
                let via: Vec<String> = g.default_gateways().iter().map(|a| a.to_string()).collect();
                format!(
                    "{} via {}",
                    g.snat_ip().map(|a| a.to_string()).unwrap_or_default(),
                    if via.is_empty() {
                        "-".into()
                    } else {
                        via.join(",")
                    }
                )
            }
            None => "none".into(),
        };
        let _ = writeln!(
            o,
            "router {}  namespace {}{}",
            r.id,
            s.namespace,
            if s.present { "" } else { "  (MISSING)" }
        );
        let metadata = match (
            node.metadata.enabled,
            s.metadata_listening,
            &s.metadata_port_taken_by,
        ) {
            (false, ..) => "off".to_string(),
            (true, Some(p), _) => format!("listening on :{p}"),
            (true, None, Some(who)) => {
                format!("NOT listening: :{} is held by {who}", node.metadata_port)
            }
            (true, None, None) => format!("NOT listening on :{}", node.metadata_port),
        };
        let _ = writeln!(
            o,
            "  gateway {gw}   snat {}   metadata {metadata}",
            if r.enable_snat { "on" } else { "off" }
        );
        let _ = writeln!(
            o,
            "  {:<15} {:<4} {:<17} {:>5}  ADDRESSES",
            "PORT", "ROLE", "MAC", "MTU"
        );
        for p in r.ports() {
            let role = match p.role {
                Role::Internal => "qr",
                Role::Gateway => "qg",
            };
            let addrs: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(
                o,
                "  {:<15} {:<4} {:<17} {:>5}  {}",
                p.device(),
                role,
                p.mac,
                p.mtu,
                addrs.join(" ")
            );
        }
        if !r.floating_ips.is_empty() {
            let _ = writeln!(o, "  {:<15} -> FIXED IP", "FLOATING IP");
            for f in &r.floating_ips {
                let _ = writeln!(o, "  {:<15} -> {}", f.floating_ip, f.fixed_ip);
            }
        }
        for e in &r.routes {
            let _ = writeln!(o, "  route {} via {}", e.destination, e.nexthop);
        }
    }
    o
}

/// What `show`, `explain` and `monitor` say when the state directory
/// holds no daemon's state (a wrong --config, --state-dir or
/// --config-file, most likely).
pub fn no_state(node: &NodeConfig) -> String {
    let file = node.state_file();
    let what = if file.exists() {
        format!("no data plane recorded in {}", crate::text::path(&file))
    } else {
        format!(
            "no daemon state: {} does not exist",
            crate::text::path(&file)
        )
    };
    format!("{what} (has the daemon run with this --config, --state-dir or --config-file?)")
}

/// The routers `show flows`/`show stats` read: all, or the one `only`
/// names (its ID or a unique start of it, as `monitor` and `explain`
/// take it), each with its pinned maps under the node config's `pin_dir`.
fn bpf_routers<'a>(
    state: &'a State,
    node: &NodeConfig,
    only: Option<&str>,
) -> anyhow::Result<Vec<&'a Router>> {
    match state.dataplane {
        Some(Dataplane::Xdp | Dataplane::Tc) => {}
        Some(dp) => {
            anyhow::bail!("the data plane is {dp}: flows and counters exist only with xdp or tc")
        }
        None => anyhow::bail!("{}", no_state(node)),
    }
    let out: Vec<&Router> = match only {
        Some(o) => vec![crate::explain::find_router(state, o)?],
        None => state.routers.iter().collect(),
    };
    for r in &out {
        let dir = node.pin_dir.join(&r.id);
        if !dir.exists() {
            anyhow::bail!(
                "router {}: no pinned maps under {} (give --config the daemon's node \
                 config if its pin_dir is not that)",
                r.id,
                node.pin_dir.display()
            );
        }
    }
    Ok(out)
}

/// `show flows`: the connection table of each router.
pub fn flows(
    state: &State,
    node: &NodeConfig,
    only: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let mut o = String::new();
    let mut all = serde_json::Map::new();
    for r in bpf_routers(state, node, only)? {
        let flows = crate::backend::bpf::pinned::flows(&node.pin_dir, &r.id)?;
        if json {
            all.insert(r.id.clone(), serde_json::to_value(&flows)?);
            continue;
        }
        let _ = writeln!(o, "router {}: {} connections", r.id, flows.len());
        for f in &flows {
            let _ = writeln!(o, "  {f}");
        }
    }
    if json {
        o = serde_json::to_string_pretty(&all)? + "\n";
    }
    Ok(o)
}

/// What `show stats` shows of one router: its outcome counters and its
/// connection events.
type RouterStats = (String, Vec<(Outcome, Counter)>, Vec<(CtEvent, u64)>);

/// `show stats`: the outcome counters of each router.
pub fn stats(
    state: &State,
    node: &NodeConfig,
    only: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let mut all: Vec<RouterStats> = Vec::new();
    for r in bpf_routers(state, node, only)? {
        let counters = crate::backend::bpf::pinned::counters(&node.pin_dir, &r.id)?;
        let events = crate::backend::bpf::pinned::events(&node.pin_dir, &r.id)?;
        all.push((r.id.clone(), counters, events));
    }
    Ok(if json {
        stats_json(&all)? + "\n"
    } else {
        stats_tables(&all)
    })
}

/// Every counter of every router, zeros included, by router ID.
fn stats_json(all: &[RouterStats]) -> anyhow::Result<String> {
    let mut out = serde_json::Map::new();
    for (id, counters, events) in all {
        let mut m: serde_json::Map<String, serde_json::Value> = counters
            .iter()
            .map(|(k, c)| {
                (
                    k.name().to_string(),
                    serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                )
            })
            .collect();
        for (ev, n) in events {
            m.insert(ev.name().to_string(), serde_json::json!({ "count": n }));
        }
        out.insert(id.clone(), serde_json::Value::Object(m));
    }
    Ok(serde_json::to_string_pretty(&out)?)
}

/// The line under `show stats`' tables.
pub const STATS_ZEROS_HIDDEN: &str =
    "packet counters at zero are not shown (connection events are, all); --json lists all";

/// A table per router: the outcomes that counted packets (the others are
/// left out, as the line under the tables says), then the connection
/// events.
fn stats_tables(all: &[RouterStats]) -> String {
    let mut o = String::new();
    for (id, counters, events) in all {
        let _ = writeln!(o, "router {id}");
        let _ = writeln!(o, "  {:<32} {:>14} {:>16}", "OUTCOME", "PACKETS", "BYTES");
        for (k, c) in counters {
            if c.packets > 0 {
                let _ = writeln!(o, "  {:<32} {:>14} {:>16}", k.name(), c.packets, c.bytes);
            }
        }
        let _ = writeln!(o, "  {:<38} {:>14}", "CONNECTIONS", "COUNT");
        for (ev, n) in events {
            let _ = writeln!(o, "  {:<38} {:>14}", ev.name(), n);
        }
    }
    if !all.is_empty() {
        let _ = writeln!(o, "{STATS_ZEROS_HIDDEN}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory no daemon has written: `show`, `show flows` and
    /// `show stats` refuse, saying so (a wrong --config, --state-dir or
    /// --config-file looks like no routers else).
    #[test]
    fn no_daemon_state_is_said_as_such() {
        let node = NodeConfig {
            state_dir: "/nonexistent/xrouter".into(),
            ..NodeConfig::default()
        };
        let empty = State::default();
        for as_json in [false, true] {
            assert_eq!(
                routers(&empty, &node, as_json).unwrap_err().to_string(),
                "no daemon state: /nonexistent/xrouter/state.json does not exist (has the \
                 daemon run with this --config, --state-dir or --config-file?)"
            );
        }
        for e in [
            flows(&empty, &node, None, false).unwrap_err(),
            stats(&empty, &node, None, true).unwrap_err(),
        ] {
            assert!(
                e.to_string()
                    .contains("has the daemon run with this --config"),
                "{e}"
            );
        }
        // A daemon that ran and holds no routers: no hint.
        let ran = State {
            dataplane: Some(Dataplane::Tc),
            ..State::default()
        };
        assert_eq!(
            routers(&ran, &node, false).unwrap(),
            format!("no routers (data plane: tc)   {}\n", daemon_line(false))
        );
    }

    /// A router whose first outcome counted 7 packets, every other counter
    /// at zero.
    fn one_counter(id: &str) -> RouterStats {
        let counters = Outcome::ALL
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let packets = if i == 0 { 7 } else { 0 };
                (
                    *k,
                    Counter {
                        packets,
                        bytes: packets * 100,
                    },
                )
            })
            .collect();
        let events = CtEvent::ALL.iter().map(|e| (*e, 0)).collect();
        (id.to_string(), counters, events)
    }

    #[test]
    fn the_stats_tables_say_that_they_leave_zeros_out() {
        let o = stats_tables(&[one_counter("r1"), one_counter("r2")]);
        assert!(o.contains(Outcome::ALL[0].name()), "{o}");
        assert!(!o.contains(Outcome::ALL[1].name()), "{o}");
        assert_eq!(o.lines().last(), Some(STATS_ZEROS_HIDDEN), "{o}");
        assert_eq!(o.matches(STATS_ZEROS_HIDDEN).count(), 1, "{o}");
        assert_eq!(stats_tables(&[]), "");
        // JSON lists them all.
        let j: serde_json::Value =
            serde_json::from_str(&stats_json(&[one_counter("r1")]).unwrap()).unwrap();
        assert_eq!(j["r1"][Outcome::ALL[1].name()]["packets"], 0);
        assert_eq!(j["r1"][Outcome::ALL[0].name()]["packets"], 7);
    }
}

#[cfg(test)]
mod docs_tests {
    use router_common::counters::{CtEvent, Outcome};

    /// Every counter `show stats` can print is explained to operators.
    #[test]
    fn every_counter_is_documented() {
        let doc = include_str!("../../docs/dataplane.md");
        let names = Outcome::ALL
            .iter()
            .map(|o| o.name())
            .chain(CtEvent::ALL.iter().map(|e| e.name()));
        for name in names {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/dataplane.md does not explain `{name}`"
            );
        }
    }
}
