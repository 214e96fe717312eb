//! `xrouter run`: apply the routers file, then keep it applied — reload on
//! request (control socket, SIGHUP), repair on a timer — until stopped.
//! Stopping leaves the routers forwarding, as Neutron's agent does.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{io::AsyncWriteExt as _, net::UnixListener, signal::unix::SignalKind};

use crate::{
    config::{
        node::{Dataplane, NodeConfig},
        routers,
    },
    control::{Reply, Request},
    model::Router,
    reconcile::{Changes, Reconciler},
    state::State,
};

/// Picks the data plane actually used for a requested one.
pub fn resolve_dataplane(want: Dataplane) -> Result<Dataplane> {
    match want {
        Dataplane::Iptables => Ok(Dataplane::Iptables),
        Dataplane::Auto => {
            tracing::info!(
                "data plane: iptables (auto: the eBPF data plane is not built yet in this version)"
            );
            Ok(Dataplane::Iptables)
        }
        Dataplane::Xdp | Dataplane::Tc => {
            bail!(
                "--dataplane {want}: the eBPF data plane is not available in this version; use iptables or auto"
            )
        }
    }
}

/// Reads and validates a routers file.
pub fn read_routers(path: &Path) -> Result<Vec<Router>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading routers file {}", path.display()))?;
    routers::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The applied state and the means to change it.
pub struct Engine {
    pub node: NodeConfig,
    pub state: State,
}

impl Engine {
    pub fn new(node: NodeConfig, dataplane: Dataplane, routers_file: PathBuf) -> Result<Engine> {
        // Adopt what a previous run left, so removed routers are cleaned up.
        let mut state = State::load(&node.state_file())?;
        state.dataplane = Some(dataplane);
        state.routers_file = Some(routers_file);
        Ok(Engine { node, state })
    }

    /// Applies `desired`. Routers that fail are reported; the others are applied.
    pub async fn apply(&mut self, desired: Vec<Router>) -> Result<Changes> {
        let mut ch = Changes::default();
        let mut rec = Reconciler::new(&self.node).await?;
        let mut errors = Vec::new();
        for old in &self.state.routers {
            if !desired.iter().any(|r| r.id == old.id)
                && let Err(e) = rec.remove_router(&old.id, &mut ch).await
            {
                errors.push(format!("router {}: {e:#}", old.id));
            }
        }
        for r in &desired {
            let prev = self.state.routers.iter().find(|o| o.id == r.id);
            if let Err(e) = rec.apply_router(r, prev, &mut ch).await {
                errors.push(format!("router {}: {e:#}", r.id));
            }
        }
        self.state.bridges.extend(rec.created_bridges);
        self.state.routers = desired;
        self.state.save(&self.node.state_file())?;
        for c in &ch.items {
            tracing::info!("{c}");
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(ch)
    }

    /// Re-reads the routers file and applies it; a file that does not
    /// validate changes nothing.
    pub async fn reload(&mut self) -> Result<Changes> {
        let path = self.state.routers_file.clone().context("no routers file")?;
        let desired = read_routers(&path)?;
        self.apply(desired).await
    }

    /// Re-applies the current state, repairing what changed behind our back.
    pub async fn resync(&mut self) -> Result<Changes> {
        let desired = self.state.routers.clone();
        self.apply(desired).await
    }
}

fn summary(ch: &Changes) -> String {
    if ch.is_empty() {
        "applied: no changes".to_string()
    } else {
        format!("applied: {} changes\n  {}", ch.len(), ch.items.join("\n  "))
    }
}

/// Runs the daemon in the foreground.
pub async fn run(node: NodeConfig, routers_file: PathBuf) -> Result<()> {
    let dataplane = resolve_dataplane(node.dataplane)?;
    let socket = node.socket_path();
    crate::state::ensure_private_dir(&node.state_dir)?;
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "another xrouter daemon is running (control socket {})",
            socket.display()
        );
    }
    let desired = read_routers(&routers_file)?;
    let mut engine = Engine::new(node.clone(), dataplane, routers_file)?;
    match engine.apply(desired).await {
        Ok(ch) => tracing::info!(
            "{} routers up, {} changes",
            engine.state.routers.len(),
            ch.len()
        ),
        // Partial failures are retried by the periodic resync.
        Err(e) => tracing::error!("initial apply: {e:#}"),
    }

    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!("ready; control socket {}", socket.display());

    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let period = Duration::from_secs(node.resync_interval.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = hup.recv() => {
                match engine.reload().await {
                    Ok(ch) => tracing::info!("SIGHUP reload: {}", summary(&ch)),
                    Err(e) => tracing::error!("SIGHUP reload failed, previous state kept: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick(), if node.resync_interval > 0 => {
                if let Err(e) = engine.resync().await {
                    tracing::warn!("resync: {e:#}");
                }
            }
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let (r, mut w) = stream.into_split();
                // Requests are served one at a time: applies never overlap.
                let reply = match tokio::time::timeout(Duration::from_secs(5), crate::control::read_request(r)).await {
                    Ok(Ok(Request::Reload)) => match engine.reload().await {
                        Ok(ch) => Reply { ok: true, message: summary(&ch) },
                        Err(e) => Reply { ok: false, message: format!("{e:#}") },
                    },
                    Ok(Err(e)) => Reply { ok: false, message: format!("{e:#}") },
                    Err(_) => Reply { ok: false, message: "timed out reading the request".into() },
                };
                let mut line = serde_json::to_string(&reply)?;
                line.push('\n');
                let _ = w.write_all(line.as_bytes()).await;
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped; routers keep forwarding (`xrouter cleanup` removes them)");
    Ok(())
}

/// `xrouter cleanup`: removes every router, tap and bridge xrouter created.
pub async fn cleanup(node: &NodeConfig) -> Result<Changes> {
    let path = node.state_file();
    let state = State::load(&path)?;
    let mut rec = Reconciler::new(node).await?;
    let mut ch = Changes::default();
    for r in &state.routers {
        rec.remove_router(&r.id, &mut ch).await?;
        for p in r.ports() {
            if let Some(t) = rec.host.link(&p.tap()).await? {
                rec.host.del_link(t.index).await?;
            }
        }
    }
    let links = rec.host.links().await?;
    for b in &state.bridges {
        let Some(br) = links.iter().find(|l| &l.name == b) else {
            continue;
        };
        // A bridge that still has other ports belongs to someone else too.
        if links.iter().any(|l| l.controller == Some(br.index)) {
            tracing::warn!("bridge {b} still has ports; left in place");
            continue;
        }
        rec.host.del_link(br.index).await?;
        ch.items.push(format!("removed bridge {b}"));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(ch)
}
