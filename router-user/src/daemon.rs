//! `xrouter run`: apply the routers file, then keep it applied — reload on
//! request (control socket, SIGHUP), repair on a timer — until stopped.
//! Stopping leaves the routers forwarding, as Neutron's agent does.

use std::{
    collections::{BTreeMap, HashMap},
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
    ebpf::{self, BpfRouter, Hook},
    model::Router,
    netlink::Nl,
    reconcile::{Changes, Reconciler},
    state::State,
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
        Dataplane::Auto => match crate::bpf::load() {
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
            crate::bpf::load()
                .with_context(|| format!("--dataplane {want}: BPF cannot be used here"))?;
            tracing::info!("data plane: {want} (as configured)");
            Ok(want)
        }
    }
}

fn is_bpf(d: Option<Dataplane>) -> bool {
    matches!(d, Some(Dataplane::Xdp | Dataplane::Tc))
}

/// Reads and validates a routers file for this node.
pub fn read_routers(path: &Path, node: &NodeConfig) -> Result<Vec<Router>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading routers file {}", crate::text::path(path)))?;
    routers::parse_for(&text, node).map_err(|e| anyhow::anyhow!("{}: {e}", crate::text::path(path)))
}

/// The applied state and the means to change it.
pub struct Engine {
    pub node: NodeConfig,
    pub state: State,
    /// Loaded BPF objects by router ID (eBPF data planes only).
    pub bpf: BTreeMap<String, BpfRouter>,
    /// Neighbour event followers by router ID, with the inode of the
    /// namespace they listen in (a rebuilt namespace needs a new one).
    watchers: BTreeMap<String, (u64, tokio::task::JoinHandle<()>)>,
    /// The connection GC pass under way, if any.
    gc_task: Option<tokio::task::JoinHandle<()>>,
    /// When the last GC pass started, and how long it took (nanoseconds,
    /// written by the pass itself).
    gc_last: Option<std::time::Instant>,
    gc_took_ns: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Engine {
    pub fn new(node: NodeConfig, dataplane: Dataplane, routers_file: PathBuf) -> Result<Engine> {
        // Adopt what a previous run left, so removed routers are cleaned up.
        let mut state = State::load(&node.state_file())?;
        if is_bpf(state.dataplane) && !is_bpf(Some(dataplane)) {
            // Leaving eBPF: unpinning the links detaches the programs, so
            // the kernel alone forwards (and translates) from here on.
            for r in &state.routers {
                if let Err(e) = ebpf::remove_pins(&node.pin_dir, &r.id) {
                    tracing::warn!("router {}: removing BPF pins: {e:#}", r.id);
                }
            }
            tracing::info!(
                "switched from {} to {dataplane}: BPF programs detached",
                state.dataplane.unwrap()
            );
        }
        state.dataplane = Some(dataplane);
        state.routers_file = Some(routers_file);
        Ok(Engine {
            node,
            state,
            bpf: BTreeMap::new(),
            watchers: BTreeMap::new(),
            gc_task: None,
            gc_last: None,
            gc_took_ns: Default::default(),
        })
    }

    fn hook(&self) -> Option<Hook> {
        match self.state.dataplane {
            Some(Dataplane::Xdp) => Some(Hook::Xdp),
            Some(Dataplane::Tc) => Some(Hook::Tc),
            _ => None,
        }
    }

    /// Loads (or adopts) the router's BPF object, fills its maps from the
    /// router and attaches it to the router's ports and their taps.
    async fn apply_bpf(
        &mut self,
        r: &Router,
        prev: Option<&Router>,
        hook: Hook,
        ch: &mut Changes,
    ) -> Result<()> {
        let ns = r.namespace();
        if !self.bpf.contains_key(&r.id) {
            let b = BpfRouter::load(&r.id, &self.node.pin_dir, self.node.conntrack_size)?;
            ch.items.push(format!(
                "{ns}: BPF object loaded ({} pinned maps reused)",
                b.reused_maps().len()
            ));
            self.bpf.insert(r.id.clone(), b);
        }
        let b = self.bpf.get_mut(&r.id).expect("inserted above");
        let nl = Nl::open(Some(&ns)).await?;
        let links = nl.links().await?;
        let ifindex: HashMap<String, u32> =
            links.iter().map(|l| (l.name.clone(), l.index)).collect();
        let n = b.sync(r, &self.node, &ifindex)?;
        if n > 0 {
            ch.items.push(format!("{ns}: {n} BPF map entries updated"));
        }
        let devices: Vec<(String, u32)> = r
            .ports()
            .filter_map(|p| ifindex.get(&p.device()).map(|i| (p.device(), *i)))
            .collect();
        b.attach(&ns, &devices, hook)?;
        let host = Nl::open(None).await?;
        let mut taps = Vec::new();
        for p in r.ports() {
            if let Some(t) = host.link(&p.tap()).await? {
                taps.push((t.name, t.index));
            }
        }
        b.attach_taps(&taps)?;
        b.sync_neighbours(&ns).await?;
        let inode = std::fs::metadata(crate::netns::path(&ns))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        let fresh = self
            .watchers
            .get(&r.id)
            .is_some_and(|(i, h)| *i == inode && !h.is_finished());
        if !fresh {
            let h = ebpf::watch_neighbours(&ns, &self.node.pin_dir, &r.id).await?;
            if let Some((_, old)) = self.watchers.insert(r.id.clone(), (inode, h)) {
                old.abort();
            }
        }
        let gone = crate::reconcile::gone_addresses(prev, r);
        if !gone.is_empty() {
            let n = b.flush_addresses(&gone)?;
            ch.items.push(format!(
                "{ns}: flushed {n} BPF connection entries of {} released addresses",
                gone.len()
            ));
        }
        Ok(())
    }

    /// Mirrors neighbour tables into the maps (every second) and, when one
    /// is due, starts a pass collecting expired connections.
    pub async fn tick(&mut self) {
        let now = ebpf::monotonic_ns();
        for (id, b) in self.bpf.iter_mut() {
            if let Err(e) = b.sync_neighbours(&crate::model::namespace_of(id)).await {
                tracing::debug!("router {id}: neighbours: {e:#}");
            }
        }
        // GC walks whole tables (millions of entries on a busy node): it runs
        // on a blocking thread, one pass at a time, never stalling reloads,
        // and at most every ten times as long as the last pass took (so it
        // stays near a tenth of a core however big the tables are).
        let idle = self.gc_task.as_ref().is_none_or(|t| t.is_finished());
        let took = Duration::from_nanos(self.gc_took_ns.load(std::sync::atomic::Ordering::Relaxed));
        let due = self
            .gc_last
            .is_none_or(|t| t.elapsed() >= (took * 10).max(Duration::from_secs(10)));
        if idle && due {
            let pin_dir = self.node.pin_dir.clone();
            let ids: Vec<String> = self.bpf.keys().cloned().collect();
            let took_ns = self.gc_took_ns.clone();
            self.gc_last = Some(std::time::Instant::now());
            self.gc_task = Some(tokio::task::spawn_blocking(move || {
                let t0 = std::time::Instant::now();
                for id in ids {
                    match ebpf::pinned::gc(&pin_dir, &id, now) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::debug!("router {id}: {n} expired connection entries collected")
                        }
                        Err(e) => tracing::warn!("router {id}: connection GC: {e:#}"),
                    }
                }
                took_ns.store(
                    t0.elapsed().as_nanos() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }));
        }
    }

    /// Applies `desired`. Routers that fail are reported; the others are applied.
    pub async fn apply(&mut self, desired: Vec<Router>) -> Result<Changes> {
        let mut ch = Changes::default();
        let node = self.node.clone();
        let mut rec = Reconciler::new(&node).await?;
        rec.floating_addresses = !is_bpf(self.state.dataplane);
        let mut errors = Vec::new();
        let old_routers = self.state.routers.clone();
        for old in &old_routers {
            if desired.iter().any(|r| r.id == old.id) {
                continue;
            }
            if let Err(e) = rec.remove_router(&old.id, &mut ch).await {
                errors.push(format!("router {}: {e:#}", old.id));
            }
            if let Some((_, h)) = self.watchers.remove(&old.id) {
                h.abort();
            }
            let unpinned = match self.bpf.remove(&old.id) {
                Some(b) => b.detach_and_unpin(),
                None => ebpf::remove_pins(&self.node.pin_dir, &old.id),
            };
            if let Err(e) = unpinned {
                errors.push(format!("router {}: removing BPF objects: {e:#}", old.id));
            }
        }
        let hook = self.hook();
        for r in &desired {
            let prev = old_routers.iter().find(|o| o.id == r.id);
            if let Err(e) = rec.apply_router(r, prev, &mut ch).await {
                errors.push(format!("router {}: {e:#}", r.id));
                continue;
            }
            let t0 = std::time::Instant::now();
            if let Some(hook) = hook
                && let Err(e) = self.apply_bpf(r, prev, hook, &mut ch).await
            {
                errors.push(format!("router {}: eBPF data plane: {e:#}", r.id));
                continue;
            }
            tracing::debug!("router {}: BPF maps and links in {:?}", r.id, t0.elapsed());
            let t0 = std::time::Instant::now();
            let published = rec.publish_floating_ips(r, prev, &mut ch).await;
            tracing::debug!(
                "router {}: floating IPs published in {:?}",
                r.id,
                t0.elapsed()
            );
            if let Err(e) = published {
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
        let desired = read_routers(&path, &self.node)?;
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
                        Ok(ch) => tracing::info!("routers file changed: {}", summary(&ch)),
                        Err(e) => tracing::error!("routers file changed but was not applied, previous state kept: {e:#}"),
                    }
                }
            }
            _ = hup.recv() => {
                stamp = file_stamp(&routers_path);
                match engine.reload().await {
                    Ok(ch) => tracing::info!("SIGHUP reload: {}", summary(&ch)),
                    Err(e) => tracing::error!("SIGHUP reload failed, previous state kept: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = fast.tick(), if !engine.bpf.is_empty() => {
                engine.tick().await;
            }
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
                    Ok(Ok(Request::Reload)) => {
                        stamp = file_stamp(&routers_path);
                        match engine.reload().await {
                            Ok(ch) => Reply { ok: true, message: summary(&ch) },
                            Err(e) => Reply { ok: false, message: format!("{e:#}") },
                        }
                    }
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

/// What identifies a version of a file on disk (None: unreadable).
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.modified().ok()?,
        m.len(),
        std::os::unix::fs::MetadataExt::ino(&m),
    ))
}

/// `xrouter cleanup`: removes every router, tap and bridge xrouter created.
pub async fn cleanup(node: &NodeConfig) -> Result<Changes> {
    let path = node.state_file();
    let state = State::load(&path)?;
    let mut rec = Reconciler::new(node).await?;
    let mut ch = Changes::default();
    for r in &state.routers {
        rec.remove_router(&r.id, &mut ch).await?;
        ebpf::remove_pins(&node.pin_dir, &r.id)?;
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
    // The pin directory goes too once empty (it may be shared, so only then).
    let _ = std::fs::remove_dir(&node.pin_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(ch)
}
