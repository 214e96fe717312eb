//! `xrouter run`: apply the routers file, then keep it applied — reload on
//! request (control socket, SIGHUP), repair on a timer — until stopped.
//! Stopping leaves the routers forwarding, as Neutron's agent does.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{net::UnixListener, signal::unix::SignalKind};

use crate::{
    config::node::{Dataplane, NodeConfig},
    control::{Reply, Request},
    engine::Engine,
    source::{file_stamp, read_routers},
};

/// Picks the data plane actually used for a requested one, saying why in
/// one log line. `auto` is TC when the BPF object loads, iptables when BPF
/// cannot be used here. Not XDP: a router's ports are veths fed by the
/// node's bridge (or Open vSwitch) with socket buffers, which a veth's XDP
/// copies into a page first; and XDP on a veth turns TSO off on its peer,
/// so a VM's bulk TCP is segmented before the router. Measured on the
/// path of a node (docs/benchmarks.md), TC forwards as many small packets
/// as XDP and five to six times the TCP throughput.
pub fn resolve_dataplane(want: Dataplane) -> Result<Dataplane> {
    match want {
        Dataplane::Iptables => {
            tracing::info!("data plane: iptables (as configured)");
            Ok(Dataplane::Iptables)
        }
        Dataplane::Auto => match crate::backend::bpf::object::load(false) {
            Ok(_) => {
                tracing::info!("data plane: tc (auto: the BPF programs load on this kernel)");
                Ok(Dataplane::Tc)
            }
            Err(e) => {
                tracing::warn!("data plane: iptables (auto: BPF cannot be used here: {e:#})");
                Ok(Dataplane::Iptables)
            }
        },
        Dataplane::Xdp | Dataplane::Tc => {
            crate::backend::bpf::object::load(want == Dataplane::Xdp)
                .with_context(|| format!("--dataplane {want}: BPF cannot be used here"))?;
            tracing::info!("data plane: {want} (as configured)");
            Ok(want)
        }
    }
}

/// Why the eBPF data planes cannot pin their maps and programs under
/// `pin_dir`, if they cannot: the nearest existing directory of it must be
/// on a bpffs (the rest is created there).
pub fn pin_dir_problem(pin_dir: &Path) -> Option<String> {
    use nix::sys::statfs::{self, statfs};
    let mut dir = pin_dir;
    let fs = loop {
        match statfs(dir) {
            Ok(s) => break s.filesystem_type(),
            Err(nix::errno::Errno::ENOENT) => dir = dir.parent()?,
            Err(e) => return Some(format!("cannot be examined ({}: {e})", dir.display())),
        }
    };
    if fs == statfs::BPF_FS_MAGIC {
        return None;
    }
    let name = [
        (statfs::SYSFS_MAGIC, "sysfs"),
        (statfs::TMPFS_MAGIC, "tmpfs"),
        (statfs::EXT4_SUPER_MAGIC, "ext4"),
        (statfs::XFS_SUPER_MAGIC, "xfs"),
        (statfs::BTRFS_SUPER_MAGIC, "btrfs"),
        (statfs::OVERLAYFS_SUPER_MAGIC, "overlayfs"),
        (statfs::PROC_SUPER_MAGIC, "procfs"),
    ]
    .iter()
    .find(|(m, _)| *m == fs)
    .map_or_else(
        || format!("a filesystem of type {:#x}", fs.0),
        |(_, n)| n.to_string(),
    );
    Some(if dir == pin_dir {
        format!("is on {name}, not on a bpffs")
    } else {
        format!("is not on a bpffs ({} is on {name})", dir.display())
    })
}

/// What `run` and `agent` check before building anything: the data plane
/// (resolved), where BPF objects are pinned, the namespace the daemon runs
/// in, its state directory, and that no other daemon runs on it.
pub async fn preflight(node: &NodeConfig) -> Result<Dataplane> {
    let dataplane = resolve_dataplane(node.dataplane)?;
    // A data plane that cannot pin what it loads is refused: it would fail
    // each router after building its namespace.
    if crate::engine::plane_of(dataplane).is_bpf()
        && let Some(why) = pin_dir_problem(&node.pin_dir)
    {
        let chosen = if node.dataplane == Dataplane::Auto {
            " (chosen by auto: the BPF programs load on this kernel)"
        } else {
            ""
        };
        bail!(
            "pin_dir {} {why}: the {dataplane} data plane{chosen} pins its BPF maps and \
             programs there. `ip netns exec` mounts /sys anew, which hides the bpffs at \
             /sys/fs/bpf: to run the daemon in a network namespace, use \
             `nsenter --net=/run/netns/NAME xrouter ...` instead. Otherwise mount a bpffs \
             (`mount -t bpf bpf /sys/fs/bpf`), set pin_dir to a directory on one, or choose \
             the iptables data plane",
            crate::text::path(&node.pin_dir)
        );
    }
    if crate::backend::netns::created_namespaces_stay_private() {
        tracing::warn!(
            "this process has a mount namespace of its own (as under `ip netns exec`) whose {} \
             does not propagate back to the node: the router namespaces the daemon creates are \
             visible to it alone and vanish when it stops. Run it with \
             `nsenter --net=/run/netns/NAME` instead",
            crate::backend::netns::NETNS_DIR
        );
    }
    let socket = node.socket_path();
    crate::state::ensure_private_dir(&node.state_dir)?;
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "another xrouter daemon is running (control socket {})",
            socket.display()
        );
    }
    Ok(dataplane)
}

/// Starts the metrics endpoint if the node config (or the command line)
/// asks for one.
pub async fn serve_metrics(node: &NodeConfig, dataplane: Dataplane, agent: bool) -> Result<()> {
    let Some(addr) = node.metrics_address else {
        return Ok(());
    };
    crate::metrics::serve(
        addr,
        crate::metrics::Source {
            dataplane,
            pin_dir: node.pin_dir.clone(),
            agent,
        },
    )
    .await
}

/// The one-line status systemd shows (`systemctl status`).
pub fn status_line(engine: &Engine) -> String {
    let failed = engine.state.failed.len();
    let up = engine.state.routers.len().saturating_sub(
        engine
            .state
            .failed
            .iter()
            .filter(|f| engine.state.applied(&f.router.id).is_some())
            .count(),
    );
    let mut s = format!("{} up", crate::text::count(up, "router"));
    if failed > 0 {
        s += &format!(", {failed} failed (retried at every resync)");
    }
    s + &format!(
        "; data plane {}",
        engine.state.dataplane.unwrap_or(Dataplane::Iptables)
    )
}

/// A reload as systemd sees it: RELOADING=1, the reload, READY=1.
async fn reload(engine: &mut Engine, node_file: &NodeFile) -> Result<crate::engine::Applied> {
    node_file.warn_if_changed();
    crate::notify::reloading();
    let out = engine.reload().await;
    crate::notify::ready(&status_line(engine));
    out
}

/// Binds the control socket, reachable by root only.
pub fn bind_control(node: &NodeConfig) -> Result<UnixListener> {
    let socket = node.socket_path();
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// SIGTERM or SIGINT, watched by a task of its own: a stop is seen
/// between two routers of a pass (a first sync of many routers takes
/// minutes), not only once the pass is done.
pub fn stop_signal() -> Result<tokio::sync::watch::Receiver<bool>> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// The node config file as the daemon read it at start: a reload re-reads
/// the routers file only, so a change of this one is said, not ignored.
pub struct NodeFile {
    path: Option<PathBuf>,
    text: String,
}

impl NodeFile {
    /// `path` as it is now (None: the daemon runs on the defaults).
    pub fn read(path: Option<&std::path::Path>) -> NodeFile {
        NodeFile {
            text: path
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default(),
            path: path.map(std::path::Path::to_path_buf),
        }
    }

    /// Warns when the file no longer reads as at start, naming the
    /// settings that differ (or why it no longer parses).
    fn warn_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let now = NodeFile::read(Some(path));
        if now.text == self.text {
            return;
        }
        let name = path.display();
        let what = match (
            NodeConfig::parse(&self.text, &path.to_string_lossy()),
            NodeConfig::parse(&now.text, &path.to_string_lossy()),
        ) {
            (_, Err(e)) => format!("it no longer reads ({e:#}): the next start will refuse it"),
            (Ok(was), Ok(is)) => match was.changed_keys(&is) {
                k if k.is_empty() => "no setting differs".to_string(),
                k if k.len() == 1 => format!("{} differs", k[0]),
                k => format!("{} differ", k.join(", ")),
            },
            (Err(_), Ok(_)) => "it reads differently".to_string(),
        };
        tracing::warn!(
            "node config {name} changed since the start ({what}); the daemon keeps the \
             settings it started with until it is restarted"
        );
    }
}

/// Runs the daemon in the foreground; `node_file` is the node config as
/// read at start (for a reload to tell when it changed).
pub async fn run(node: NodeConfig, routers_file: PathBuf, node_file: NodeFile) -> Result<()> {
    let mut stopped = stop_signal()?;
    // A bad routers file is refused before anything is created.
    read_routers(&routers_file, &node)?;
    let dataplane = preflight(&node).await?;
    serve_metrics(&node, dataplane, false).await?;
    let desired = read_routers(&routers_file, &node)?;
    let mut engine = Engine::new(node.clone(), dataplane, Some(routers_file))?;
    engine.stop = Some(stopped.clone());
    engine.resume_metadata();
    engine.desired = desired.clone();
    match engine.apply(desired).await {
        Ok(a) if a.failures.is_empty() => tracing::info!(
            "{} up, {}",
            crate::text::count(engine.state.routers.len(), "router"),
            crate::text::count(a.changes.len(), "change")
        ),
        // Failed routers are retried by the periodic resync.
        Ok(a) => tracing::error!("initial apply: {}", a.report()),
        Err(e) => tracing::error!("initial apply: {e:#}"),
    }

    let socket = node.socket_path();
    let listener = bind_control(&node)?;
    tracing::info!("ready; control socket {}", socket.display());
    // Ready for systemd once the routers are applied and the control
    // socket answers (`xrouter reload` works from here on); not when a
    // stop cut the first apply short.
    if !engine.stopping() {
        crate::notify::ready(&status_line(&engine));
    }

    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let period = Duration::from_secs(node.resync_interval.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The routers file is watched too: a change on disk is a reload.
    let routers_path = engine.state.routers_file.clone().unwrap_or_default();
    let mut stamp = file_stamp(&routers_path);
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fast = tokio::time::interval(Duration::from_secs(1));
    fast.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = watch.tick() => {
                let now = file_stamp(&routers_path);
                if now != stamp {
                    stamp = now;
                    match reload(&mut engine, &node_file).await {
                        Ok(a) if a.failures.is_empty() => tracing::info!("routers file changed: {}", a.report()),
                        Ok(a) => tracing::error!("routers file changed: {}", a.report()),
                        Err(e) => tracing::error!("routers file changed but was not applied, previous state kept: {e:#}"),
                    }
                }
            }
            _ = hup.recv() => {
                stamp = file_stamp(&routers_path);
                match reload(&mut engine, &node_file).await {
                    Ok(a) if a.failures.is_empty() => tracing::info!("SIGHUP reload: {}", a.report()),
                    Ok(a) => tracing::error!("SIGHUP reload: {}", a.report()),
                    Err(e) => tracing::error!("SIGHUP reload failed, previous state kept: {e:#}"),
                }
            }
            _ = stopped.wait_for(|s| *s) => break,
            // Whether or not this run loaded any router: one adopted from
            // an earlier run (its programs and maps in place) has its
            // connections expired all the same.
            _ = fast.tick() => {
                engine.tick().await;
                crate::metrics::get().gc(engine.gc_last.as_ref());
            }
            _ = tick.tick(), if node.resync_interval > 0 => {
                match engine.resync().await {
                    Ok(a) if a.failures.is_empty() => {}
                    Ok(a) => tracing::warn!("resync: {}", a.report()),
                    Err(e) => tracing::warn!("resync: {e:#}"),
                }
                crate::notify::status(&status_line(&engine));
            }
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                // Requests are served one at a time: applies never overlap.
                let (req, conn) = crate::control::receive(stream).await;
                let reply = match req {
                    Ok(Request::Reload) => {
                        stamp = file_stamp(&routers_path);
                        // Logged as a file change or SIGHUP is: the journal
                        // tells what `systemctl reload` did, too.
                        match reload(&mut engine, &node_file).await {
                            Ok(a) => {
                                if a.failures.is_empty() {
                                    tracing::info!("reload: {}", a.report());
                                } else {
                                    tracing::error!("reload: {}", a.report());
                                }
                                Reply {
                                    ok: a.failures.is_empty(),
                                    message: a.report(),
                                    failed: a.failures.iter().map(|f| f.router.clone()).collect(),
                                }
                            }
                            Err(e) => {
                                tracing::error!("reload failed, previous state kept: {e:#}");
                                Reply::error(format!("{e:#}"))
                            }
                        }
                    }
                    Err(reply) => reply,
                };
                conn.answer(&reply).await?;
            }
        }
    }
    crate::notify::stopping();
    // Until the metadata listeners are handed over and their requests
    // done, the control socket still says a daemon runs.
    engine.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped; routers keep forwarding (`xrouter cleanup` removes them)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_dir_off_bpffs_is_named_with_the_filesystem_it_is_on() {
        assert_eq!(
            pin_dir_problem(Path::new("/proc/xrouter-none/pins")).as_deref(),
            Some("is not on a bpffs (/proc is on procfs)")
        );
        assert_eq!(
            pin_dir_problem(Path::new("/proc")).as_deref(),
            Some("is on procfs, not on a bpffs")
        );
        // Where a bpffs is mounted (as `cargo xtask test` does), a pin
        // directory still to be made below it will do.
        if nix::sys::statfs::statfs("/sys/fs/bpf")
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        {
            assert_eq!(
                pin_dir_problem(Path::new("/sys/fs/bpf/xrouter-none/x")),
                None
            );
        }
    }
}
