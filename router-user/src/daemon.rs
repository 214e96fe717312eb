//! `xrouter run`: apply the routers file, then keep it applied — reload on
//! request (control socket, SIGHUP), repair on a timer — until stopped.
//! Stopping leaves the routers forwarding, as Neutron's agent does.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use tokio::{io::AsyncWriteExt as _, net::UnixListener, signal::unix::SignalKind};

use crate::{
    config::node::{Dataplane, NodeConfig},
    control::{Reply, Request},
    engine::Engine,
    source::{file_stamp, read_routers},
};

/// Picks the data plane actually used for a requested one, saying why in
/// one log line. `auto` is XDP when the BPF object loads (a device without
/// native XDP is then served by TC alone), iptables when BPF cannot be used
/// here.
pub fn resolve_dataplane(want: Dataplane) -> Result<Dataplane> {
    match want {
        Dataplane::Iptables => {
            tracing::info!("data plane: iptables (as configured)");
            Ok(Dataplane::Iptables)
        }
        Dataplane::Auto => match crate::backend::bpf::object::load() {
            Ok(_) => {
                tracing::info!("data plane: xdp (auto: the BPF programs load on this kernel)");
                Ok(Dataplane::Xdp)
            }
            Err(e) => {
                tracing::warn!("data plane: iptables (auto: BPF cannot be used here: {e:#})");
                Ok(Dataplane::Iptables)
            }
        },
        Dataplane::Xdp | Dataplane::Tc => {
            crate::backend::bpf::object::load()
                .with_context(|| format!("--dataplane {want}: BPF cannot be used here"))?;
            tracing::info!("data plane: {want} (as configured)");
            Ok(want)
        }
    }
}

/// Runs the daemon in the foreground.
pub async fn run(node: NodeConfig, routers_file: PathBuf) -> Result<()> {
    // A bad routers file is refused before anything is created.
    read_routers(&routers_file, &node)?;
    let dataplane = resolve_dataplane(node.dataplane)?;
    let socket = node.socket_path();
    crate::state::ensure_private_dir(&node.state_dir)?;
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "another xrouter daemon is running (control socket {})",
            socket.display()
        );
    }
    let desired = read_routers(&routers_file, &node)?;
    let mut engine = Engine::new(node.clone(), dataplane, routers_file)?;
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
                    match engine.reload().await {
                        Ok(a) if a.failures.is_empty() => tracing::info!("routers file changed: {}", a.report()),
                        Ok(a) => tracing::error!("routers file changed: {}", a.report()),
                        Err(e) => tracing::error!("routers file changed but was not applied, previous state kept: {e:#}"),
                    }
                }
            }
            _ = hup.recv() => {
                stamp = file_stamp(&routers_path);
                match engine.reload().await {
                    Ok(a) if a.failures.is_empty() => tracing::info!("SIGHUP reload: {}", a.report()),
                    Ok(a) => tracing::error!("SIGHUP reload: {}", a.report()),
                    Err(e) => tracing::error!("SIGHUP reload failed, previous state kept: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = fast.tick(), if !engine.bpf.is_empty() => {
                engine.tick().await;
            }
            _ = tick.tick(), if node.resync_interval > 0 => {
                match engine.resync().await {
                    Ok(a) if a.failures.is_empty() => {}
                    Ok(a) => tracing::warn!("resync: {}", a.report()),
                    Err(e) => tracing::warn!("resync: {e:#}"),
                }
            }
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let (r, mut w) = stream.into_split();
                // Requests are served one at a time: applies never overlap.
                let reply = match tokio::time::timeout(Duration::from_secs(5), crate::control::read_request(r)).await {
                    Ok(Ok(Request::Reload)) => {
                        stamp = file_stamp(&routers_path);
                        match engine.reload().await {
                            Ok(a) => Reply {
                                ok: a.failures.is_empty(),
                                message: a.report(),
                                failed: a.failures.iter().map(|f| f.router.clone()).collect(),
                            },
                            Err(e) => Reply { ok: false, message: format!("{e:#}"), failed: vec![] },
                        }
                    }
                    Ok(Err(e)) => Reply { ok: false, message: format!("{e:#}"), failed: vec![] },
                    Err(_) => Reply { ok: false, message: "timed out reading the request".into(), failed: vec![] },
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
