//! `xrouter`: the daemon and its command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use router_user::{
    config::node::{Dataplane, NodeConfig},
    control::{self, Request},
    daemon, errln, out, outln, show,
    state::State,
    text,
};

/// Neutron-compatible virtual routers with an eBPF data plane.
///
/// xrouter reads the routers Neutron's server hands an L3 agent (the
/// `sync_routers` payload, as JSON) and builds each as Neutron's legacy agent
/// does: a `qrouter-<id>` namespace, `qr-`/`qg-` ports, addresses, routes,
/// floating IPs and NAT.
#[derive(Parser)]
#[command(name = "xrouter", version, propagate_version = true)]
struct Cli {
    /// Node config (TOML): metadata port, bridges, data plane, directories.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the state file and control socket (overrides the config).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum ShowWhat {
    /// Routers, ports, addresses and floating IPs (the default).
    Routers,
    /// Connections tracked by the eBPF data plane: original and translated
    /// tuples, state, age.
    Flows {
        /// Only this router.
        #[arg(long, value_name = "ID")]
        router: Option<String>,
    },
    /// eBPF counters per router: forwarded (XDP, TC), to the kernel and
    /// dropped, by reason.
    Stats {
        /// Only this router.
        #[arg(long, value_name = "ID")]
        router: Option<String>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground: apply the routers and keep them so.
    ///
    /// Reloads on SIGHUP and on `xrouter reload`; repairs what is removed
    /// behind its back every `resync_interval` seconds. Stopping it
    /// (SIGTERM, Ctrl-C) leaves the routers forwarding.
    Run {
        /// The routers file: a JSON list of router dicts or {"routers": [...]}.
        #[arg(long, value_name = "FILE")]
        routers: PathBuf,
        /// Data plane (overrides the node config).
        #[arg(long, value_enum)]
        dataplane: Option<Dataplane>,
    },
    /// Make the running daemon re-read its routers file and apply it.
    ///
    /// Returns once the new state is applied; on a validation error exits
    /// non-zero and the daemon keeps the previous state. When some routers
    /// cannot be applied, the others are, and it exits non-zero naming
    /// those that failed (they keep their previous state).
    Reload,
    /// Check a routers file without applying anything.
    ///
    /// With `--plan`, also print what an apply of it would change on this
    /// node now, router by router (reads the kernel: needs root; changes
    /// nothing).
    Check {
        #[arg(long, value_name = "FILE")]
        routers: PathBuf,
        /// Print the plan against the running state.
        #[arg(long)]
        plan: bool,
        /// Data plane to plan for (default: the one the daemon records,
        /// else the node config's).
        #[arg(long, value_enum, requires = "plan")]
        dataplane: Option<Dataplane>,
    },
    /// Show the routers, ports, addresses and floating IPs xrouter manages.
    ///
    /// `xrouter show` lists routers; `show flows` the eBPF connection table;
    /// `show stats` the eBPF counters (forwarded per hook, handed to the
    /// kernel and dropped, per reason).
    Show {
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: Option<ShowWhat>,
    },
    /// Remove every namespace, port and bridge xrouter created.
    Cleanup,
    /// Build a sandbox with the article's topology, run its experiments,
    /// print what each showed, and tear it down.
    Demo {
        /// Leave the sandbox in place for a look (it prints how to remove it).
        #[arg(long)]
        keep: bool,
        /// Data plane to demonstrate.
        #[arg(long, value_enum, default_value = "auto")]
        dataplane: Dataplane,
    },
}

fn node_config(cli: &Cli) -> Result<NodeConfig> {
    let mut node = NodeConfig::load(cli.config.as_deref())?;
    if let Some(d) = &cli.state_dir {
        if let Some(why) = router_user::config::node::dir_problem(d) {
            anyhow::bail!("--state-dir: {} {why}", text::quote(&d.to_string_lossy()));
        }
        node.state_dir = d.clone();
    }
    Ok(node)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XROUTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
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
    init_logs();
    match real_main(cli).await {
        Ok(code) => code,
        Err(e) => {
            errln!("xrouter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> Result<ExitCode> {
    let mut node = node_config(&cli)?;
    match cli.cmd {
        Cmd::Run { routers, dataplane } => {
            if let Some(d) = dataplane {
                node.dataplane = d;
            }
            let routers = std::path::absolute(&routers)?;
            daemon::run(node, routers).await?;
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
            let r = router_user::source::read_routers(&routers, &node)?;
            outln!("{}: {} routers, valid", text::path(&routers), r.len())?;
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
                ShowWhat::Routers if json => outln!("{}", show::json(&state))?,
                ShowWhat::Routers => out!("{}", show::table(&state))?,
                ShowWhat::Flows { router } => {
                    out!("{}", show::flows(&state, &node, router.as_deref(), json)?)?
                }
                ShowWhat::Stats { router } => {
                    out!("{}", show::stats(&state, &node, router.as_deref(), json)?)?
                }
            }
        }
        Cmd::Cleanup => {
            let ch = router_user::engine::cleanup(&node).await?;
            outln!("cleanup: {} items removed", ch.len())?;
        }
        Cmd::Demo { keep, dataplane } => {
            return router_user::demo::run(dataplane, keep).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
