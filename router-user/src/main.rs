//! `xrouter`: the daemon and its command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;
use router_user::{
    cli::{Cli, Cmd, ShowWhat},
    config::node::NodeConfig,
    control::{self, Request},
    daemon, errln, out, outln, show,
    state::State,
    text,
};

fn node_config(cli: &Cli) -> Result<NodeConfig> {
    let mut node = if cli.config_files.is_empty() {
        NodeConfig::load(cli.config.as_deref())?
    } else {
        router_user::config::agent::load_node(&cli.config_files, cli.config.as_deref())?
    };
    if let Some(d) = &cli.state_dir {
        if let Some(why) = router_user::config::node::dir_problem(d) {
            anyhow::bail!("--state-dir: {} {why}", text::quote(&d.to_string_lossy()));
        }
        node.state_dir = d.clone();
    }
    Ok(node)
}

/// The agent's settings from Neutron's files, as `agent` takes them at
/// start and `check` checks them.
fn agent_settings(
    files: &[std::path::PathBuf],
    config: Option<&std::path::Path>,
) -> Result<router_user::agent::AgentSettings> {
    let cfg = router_user::config::agent::load(files, config)?;
    router_user::agent::AgentSettings::from_config(&cfg.neutron)
}

/// Parses the command line; on an error, shows what the user typed escaped
/// and cut, as every message does (clap would echo a value as it is).
fn parse_cli() -> Cli {
    use clap::error::{ContextKind, ContextValue};
    let mut e = match Cli::try_parse() {
        Ok(c) => return c,
        Err(e) => e,
    };
    for kind in [
        ContextKind::InvalidValue,
        ContextKind::InvalidArg,
        ContextKind::InvalidSubcommand,
    ] {
        let clean = match e.get(kind) {
            Some(ContextValue::String(s)) => ContextValue::String(text::bare(s)),
            Some(ContextValue::Strings(v)) => {
                ContextValue::Strings(v.iter().map(|s| text::bare(s)).collect())
            }
            _ => continue,
        };
        e.insert(kind, clean);
    }
    e.exit()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse_cli();
    router_user::logs::init();
    match real_main(cli).await {
        Ok(code) => code,
        Err(e) => {
            errln!("xrouter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> Result<ExitCode> {
    if let Cmd::MetadataHold { socket, listeners } = &cli.cmd {
        let held = listeners
            .iter()
            .map(|l| router_user::metadata::parse_listener(l))
            .collect::<Result<Vec<_>>>()?;
        router_user::metadata::hold(socket, held, router_user::metadata::HOLD_FOR)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::Demo { .. } = &cli.cmd {
        // The demo's node config is its sandbox's own: an operator's file
        // or directory given here would be silently ignored.
        let given = [
            ("--config", cli.config.is_some()),
            ("--state-dir", cli.state_dir.is_some()),
            ("--config-file", !cli.config_files.is_empty()),
        ];
        let named: Vec<&str> = given.iter().filter(|(_, g)| *g).map(|(o, _)| *o).collect();
        if !named.is_empty() {
            let opts = named.join(", ");
            anyhow::bail!(
                "demo: {opts} {} not apply: the demo builds its own node config in its \
                 sandbox and touches no daemon's state (leave {opts} out)",
                if named.len() == 1 { "does" } else { "do" }
            );
        }
    }
    let mut node = node_config(&cli)?;
    match cli.cmd {
        Cmd::MetadataHold { .. } => unreachable!("handled above"),
        Cmd::Run {
            routers,
            dataplane,
            metrics_address,
        } => {
            if let Some(d) = dataplane {
                node.dataplane = d;
            }
            if metrics_address.is_some() {
                node.metrics_address = metrics_address;
            }
            let routers = std::path::absolute(&routers)?;
            let node_file = daemon::NodeFile::read(cli.config.as_deref());
            daemon::run(node, routers, node_file).await?;
        }
        Cmd::Agent {
            dataplane,
            metrics_address,
        } => {
            let settings = agent_settings(&cli.config_files, cli.config.as_deref())?;
            if let Some(d) = dataplane {
                node.dataplane = d;
            }
            if metrics_address.is_some() {
                node.metrics_address = metrics_address;
            }
            router_user::agent::run(node, settings).await?;
        }
        Cmd::Reload => {
            let reply = control::call(&node.socket_path(), &Request::Reload).await?;
            if !reply.ok && !reply.failed.is_empty() {
                // Applied, but not every router: the message names them.
                errln!("xrouter: reload: {}", reply.message);
                return Ok(ExitCode::FAILURE);
            }
            if !reply.ok {
                errln!(
                    "xrouter: reload failed, previous state kept:\n{}",
                    reply.message
                );
                return Ok(ExitCode::FAILURE);
            }
            outln!("{}", reply.message)?;
        }
        Cmd::Check {
            routers,
            plan,
            dataplane,
        } => {
            // A line per thing checked (the node config was read above).
            match &cli.config {
                Some(c) => outln!("{}: node config valid", text::path(c))?,
                None if cli.config_files.is_empty() && routers.is_none() => {
                    outln!("no node config given (--config): the defaults, valid")?
                }
                None => {}
            }
            // What `agent` refuses at start, refused here.
            if !cli.config_files.is_empty() {
                agent_settings(&cli.config_files, cli.config.as_deref())?;
                let files: Vec<String> = cli.config_files.iter().map(|f| text::path(f)).collect();
                outln!("{}: agent options valid", files.join(", "))?;
            }
            let Some(routers) = routers else {
                return Ok(ExitCode::SUCCESS);
            };
            let r = router_user::source::read_routers(&routers, &node)?;
            outln!(
                "{}: {}, valid",
                text::path(&routers),
                text::count(r.len(), "router")
            )?;
            if plan {
                let recorded = State::load(&node.state_file())?.dataplane;
                let want = dataplane.or(recorded).unwrap_or(node.dataplane);
                let plane = router_user::engine::plane_of(daemon::resolve_dataplane(want)?);
                out!("{}", router_user::engine::dry_run(&node, plane, &r).await?)?;
            }
        }
        Cmd::Show { json, what } => {
            let state = State::load(&node.state_file())?;
            match what.unwrap_or(ShowWhat::Routers) {
                ShowWhat::Routers => out!("{}", show::routers(&state, &node, json)?)?,
                ShowWhat::Flows { router } => {
                    out!("{}", show::flows(&state, &node, router.as_deref(), json)?)?
                }
                ShowWhat::Stats { router } => {
                    out!("{}", show::stats(&state, &node, router.as_deref(), json)?)?
                }
            }
        }
        Cmd::Explain {
            router,
            port,
            hex,
            json,
            packet,
        } => {
            let packet = router_user::explain::Packet::parse(&packet, hex)?;
            let state = State::load(&node.state_file())?;
            out!(
                "{}",
                router_user::explain::explain(&state, &node, &router, &port, &packet, json)?
            )?;
        }
        Cmd::Monitor {
            router,
            drops,
            forwarded,
            json,
            sample,
            count,
            duration,
        } => {
            let opts = router_user::monitor::Options {
                router,
                drops,
                forwarded,
                json,
                sample,
                count,
                duration,
            };
            let state = State::load(&node.state_file())?;
            return router_user::monitor::run(&state, &node, &opts).await;
        }
        Cmd::Cleanup => {
            // A running daemon would build everything again at its next
            // resync: it must be stopped first.
            if tokio::net::UnixStream::connect(node.socket_path())
                .await
                .is_ok()
            {
                errln!(
                    "xrouter: cleanup: a daemon is running on {} (its control socket answers): \
                     stop it first, or it rebuilds the routers at its next resync",
                    node.socket_path().display()
                );
                return Ok(ExitCode::FAILURE);
            }
            // Left by a daemon that was killed: nothing answers on it. (First,
            // so an otherwise empty state directory goes too.)
            let stale = std::fs::remove_file(node.socket_path()).is_ok();
            let recorded = node.state_file().exists();
            let mut ch = router_user::engine::cleanup(&node).await?;
            if stale {
                ch.items.insert(
                    0,
                    format!(
                        "removed the stale control socket {}",
                        node.socket_path().display()
                    ),
                );
            }
            outln!("cleanup: {} removed", text::count(ch.len(), "item"))?;
            if !recorded {
                errln!(
                    "xrouter: cleanup: no state file at {}: nothing recorded to remove \
                     (another --state-dir or --config?)",
                    node.state_file().display()
                );
            }
            for item in &ch.items {
                outln!("  {item}")?;
            }
        }
        Cmd::Demo { keep, dataplane } => {
            return router_user::demo::run(dataplane, keep).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
