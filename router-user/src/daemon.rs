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
    backend::{
        bpf::{self as ebpf, BpfRouter, Hook},
        netlink::Nl,
    },
    config::{
        node::{Dataplane, NodeConfig},
        routers,
    },
    control::{Reply, Request},
    model::Router,
    reconcile::{Changes, NatAddresses, Reconciler},
    state::{Failed, State},
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

fn is_bpf(d: Option<Dataplane>) -> bool {
    matches!(d, Some(Dataplane::Xdp | Dataplane::Tc))
}

/// Reads and validates a routers file for this node.
pub fn read_routers(path: &Path, node: &NodeConfig) -> Result<Vec<Router>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading routers file {}", crate::text::path(path)))?;
    routers::parse_for(&text, node).map_err(|e| anyhow::anyhow!("{}: {e}", crate::text::path(path)))
}

/// A router that the last apply could not bring to its desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub router: String,
    /// A removal (the router left the file) rather than an apply.
    pub removal: bool,
    /// It had never been applied: nothing of it is recorded as applied.
    pub new: bool,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = crate::text::label(&self.router);
        if self.removal {
            write!(
                f,
                "router {id}: removal failed, it stays recorded and is retried: {}",
                self.error
            )
        } else if self.new {
            write!(
                f,
                "router {id}: apply failed; it is new, so it is not recorded as applied (retried at the next resync): {}",
                self.error
            )
        } else {
            write!(
                f,
                "router {id}: apply failed, it keeps its previous state (retried at the next resync): {}",
                self.error
            )
        }
    }
}

/// What one apply did: the changes, and the routers it could not apply
/// (the others are applied and recorded).
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Changes,
    pub failures: Vec<Failure>,
    /// Routers the routers file holds.
    pub routers: usize,
}

impl Applied {
    /// What `reload` answers and the logs say.
    pub fn report(&self) -> String {
        if self.failures.is_empty() {
            return summary(&self.changes);
        }
        let mut out = format!(
            "{} router(s) failed; the other routers of the file ({} in all) are applied ({} changes):",
            self.failures.len(),
            self.routers,
            self.changes.len()
        );
        for f in &self.failures {
            out.push_str(&format!("\n  {f}"));
        }
        out
    }
}

/// The applied state and the means to change it.
pub struct Engine {
    pub node: NodeConfig,
    pub state: State,
    /// The routers as the routers file last said (validated): what every
    /// apply and resync aims at, also for routers whose last apply failed.
    pub desired: Vec<Router>,
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
            for id in state.router_ids() {
                if let Err(e) = ebpf::remove_pins(&node.pin_dir, &id) {
                    tracing::warn!("router {id}: removing BPF pins: {e:#}");
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
            desired: state.routers.clone(),
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
        before: &NatAddresses,
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
                // A VLAN tag must reach the programs in the frame itself.
                if crate::backend::ethtool::disable(
                    &t.name,
                    &crate::backend::ethtool::VLAN_TX_OFFLOADS,
                )? {
                    ch.items
                        .push(format!("{}: VLAN insertion moved to software", t.name));
                }
                taps.push((t.name, t.index));
            }
        }
        b.attach_taps(&taps)?;
        b.sync_neighbours(&ns).await?;
        let inode = std::fs::metadata(crate::backend::netns::path(&ns))
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
        let gone = before.gone(r);
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

    /// Applies `desired` router by router and records each router that
    /// succeeded. A router that fails keeps its recorded state (a new one
    /// gets none) and is remembered as failed, with everything it may have
    /// put in place, so the next pass retries it and a later release still
    /// flushes its connections. Errors only when nothing could be tried.
    pub async fn apply(&mut self, desired: Vec<Router>) -> Result<Applied> {
        let mut ch = Changes::default();
        let mut failures = Vec::new();
        let node = self.node.clone();
        let mut rec = Reconciler::new(&node).await?;
        rec.floating_addresses = !is_bpf(self.state.dataplane);
        let wanted: std::collections::BTreeSet<&str> =
            desired.iter().map(|r| r.id.as_str()).collect();
        for id in self.state.router_ids() {
            if wanted.contains(id.as_str()) {
                continue;
            }
            let mut errors = Vec::new();
            if let Err(e) = rec.remove_router(&id, &mut ch).await {
                errors.push(format!("{e:#}"));
            }
            if let Some((_, h)) = self.watchers.remove(&id) {
                h.abort();
            }
            let unpinned = match self.bpf.remove(&id) {
                Some(b) => b.detach_and_unpin(),
                None => ebpf::remove_pins(&self.node.pin_dir, &id),
            };
            if let Err(e) = unpinned {
                errors.push(format!("removing BPF objects: {e:#}"));
            }
            if errors.is_empty() {
                self.state.routers.retain(|r| r.id != id);
                self.state.failed.retain(|f| f.router.id != id);
            } else {
                failures.push(Failure {
                    router: id,
                    removal: true,
                    new: false,
                    error: errors.join("; "),
                });
            }
        }
        let hook = self.hook();
        for r in &desired {
            let prev = self.state.applied(&r.id).cloned();
            let before = match self.state.failure(&r.id) {
                Some(f) => f.live.clone(),
                None => prev.as_ref().map(NatAddresses::of).unwrap_or_default(),
            };
            match self
                .apply_one(&mut rec, r, prev.as_ref(), &before, hook, &mut ch)
                .await
            {
                Ok(()) => {
                    match self.state.routers.iter_mut().find(|o| o.id == r.id) {
                        Some(o) => *o = r.clone(),
                        None => self.state.routers.push(r.clone()),
                    }
                    self.state.failed.retain(|f| f.router.id != r.id);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    let mut live = before;
                    live.extend(&NatAddresses::of(r));
                    self.state.failed.retain(|f| f.router.id != r.id);
                    self.state.failed.push(Failed {
                        router: r.clone(),
                        error: error.clone(),
                        live,
                    });
                    failures.push(Failure {
                        router: r.id.clone(),
                        removal: false,
                        new: prev.is_none(),
                        error,
                    });
                }
            }
        }
        self.state.bridges.extend(rec.created_bridges);
        self.state.save(&self.node.state_file())?;
        for c in &ch.items {
            tracing::info!("{c}");
        }
        for f in &failures {
            tracing::error!("{f}");
        }
        Ok(Applied {
            changes: ch,
            failures,
            routers: desired.len(),
        })
    }

    /// One router: namespace, ports, rules, then (eBPF) the programs and
    /// their maps, then its floating IPs published.
    async fn apply_one(
        &mut self,
        rec: &mut Reconciler<'_>,
        r: &Router,
        prev: Option<&Router>,
        before: &NatAddresses,
        hook: Option<Hook>,
        ch: &mut Changes,
    ) -> Result<()> {
        rec.apply_router(r, before, ch).await?;
        let t0 = std::time::Instant::now();
        if let Some(hook) = hook {
            self.apply_bpf(r, before, hook, ch)
                .await
                .context("eBPF data plane")?;
        }
        tracing::debug!("router {}: BPF maps and links in {:?}", r.id, t0.elapsed());
        let t0 = std::time::Instant::now();
        rec.publish_floating_ips(r, prev, ch).await?;
        tracing::debug!(
            "router {}: floating IPs published in {:?}",
            r.id,
            t0.elapsed()
        );
        Ok(())
    }

    /// Re-reads the routers file and applies it; a file that does not
    /// validate changes nothing (an error), one that does becomes what
    /// every later pass aims at.
    pub async fn reload(&mut self) -> Result<Applied> {
        let path = self.state.routers_file.clone().context("no routers file")?;
        let desired = read_routers(&path, &self.node)?;
        self.desired = desired.clone();
        self.apply(desired).await
    }

    /// Re-applies the routers file's routers, repairing what changed behind
    /// our back and retrying the routers that failed.
    pub async fn resync(&mut self) -> Result<Applied> {
        let desired = self.desired.clone();
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
    engine.desired = desired.clone();
    match engine.apply(desired).await {
        Ok(a) if a.failures.is_empty() => tracing::info!(
            "{} routers up, {} changes",
            engine.state.routers.len(),
            a.changes.len()
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
    // Routers whose apply failed may have left something too.
    let routers = state
        .routers
        .iter()
        .chain(state.failed.iter().map(|f| &f.router));
    for r in routers {
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
