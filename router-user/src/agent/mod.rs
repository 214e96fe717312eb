//! `xrouter agent`: take `neutron-l3-agent`'s place. Routers come from
//! neutron-server over its RPC (oslo.messaging on RabbitMQ) instead of a
//! file, and go through the same engine.
//!
//! Life: connect (every broker of the URL in turn, with backoff); ask
//! `get_host_ha_router_count` until the server answers; serve the
//! `l3_agent` topic (and the network updates); report state every
//! `report_interval`; full sync; then follow notifications, each followed
//! by `sync_routers` of the routers named and the floating IP statuses of
//! each router applied. A lost broker, or a server saying "revived", means
//! a full sync once back. The data plane keeps forwarding whatever happens
//! to the connection or the process.

pub mod clash;
pub mod fip_status;
pub mod plugin;
pub mod report;
pub mod work;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use oslo_rpc::{Endpoint, Incoming, Rpc, Settings};
use serde_json::Value;
use tokio::{signal::unix::SignalKind, sync::mpsc};

use crate::{
    config::{node::NodeConfig, routers},
    control::{Reply, Request},
    engine::Engine,
    model::Router,
};

use self::{
    fip_status::Reported,
    plugin::{CHUNK_MAX, Plugin},
    report::{Counts, Identity},
    work::Pending,
};

/// Everything the agent needs besides the node config.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub rpc: Settings,
    pub identity: Identity,
    /// `rpc_response_timeout`.
    pub rpc_timeout: Duration,
    /// `[AGENT] report_interval` (None: no reports).
    pub report_interval: Option<Duration>,
    /// Reconnection backoff: first delay, factor, longest delay.
    pub retry: (Duration, u32, Duration),
}

impl AgentSettings {
    /// The agent's settings from Neutron's options; a transport URL that
    /// does not parse, or an agent mode other than legacy, is refused.
    pub fn from_config(n: &crate::config::agent::NeutronSettings) -> Result<AgentSettings> {
        use crate::config::agent::AgentMode;
        if n.agent_mode != AgentMode::Legacy {
            anyhow::bail!(
                "{}: [DEFAULT] agent_mode: {:?}: xrouter serves legacy routers only \
                 (agent_mode = legacy)",
                n.file_of("DEFAULT", "agent_mode"),
                n.agent_mode.as_str()
            );
        }
        // The URL holds a password: the message names the problem, not
        // the value.
        let url = oslo_rpc::TransportUrl::parse(n.transport_url.expose()).map_err(|e| {
            anyhow::anyhow!("{}: [DEFAULT] {e}", n.file_of("DEFAULT", "transport_url"))
        })?;
        let r = &n.rabbit;
        let tls = r.ssl.then(|| oslo_rpc::Tls {
            ca_file: r.ssl_ca_file.clone(),
            cert_file: r.ssl_cert_file.clone(),
            key_file: r.ssl_key_file.clone(),
        });
        if let Some(t) = &tls {
            oslo_rpc::check_tls(t).map_err(|p| {
                let file = p
                    .file
                    .as_ref()
                    .map(|f| format!("{}: ", crate::text::path(f)))
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "{}: [oslo_messaging_rabbit] {}: {file}{}",
                    n.file_of("oslo_messaging_rabbit", p.key),
                    p.key,
                    p.what
                )
            })?;
        }
        Ok(AgentSettings {
            rpc: Settings {
                url,
                exchange: n.control_exchange.clone(),
                queues: oslo_rpc::QueueOptions {
                    amqp_durable_queues: r.amqp_durable_queues,
                    amqp_auto_delete: r.amqp_auto_delete,
                    rabbit_quorum_queue: r.rabbit_quorum_queue,
                    rabbit_transient_quorum_queue: r.rabbit_transient_quorum_queue,
                    rabbit_stream_fanout: r.rabbit_stream_fanout,
                    rabbit_transient_queues_ttl: r.rabbit_transient_queues_ttl,
                },
                tls,
                heartbeat: r.heartbeat_timeout_threshold,
                prefetch: r.rabbit_qos_prefetch_count,
                client_name: format!("xrouter-agent:{}", n.host),
            },
            identity: Identity {
                host: n.host.clone(),
                availability_zone: n.availability_zone.clone(),
                agent_mode: n.agent_mode.as_str().into(),
                handle_internal_only_routers: n.handle_internal_only_routers,
                interface_driver: Some(n.interface_driver.clone()),
                log_agent_heartbeats: n.log_agent_heartbeats,
            },
            rpc_timeout: Duration::from_secs(u64::from(n.rpc_response_timeout.max(1))),
            report_interval: n.report_interval,
            retry: (
                Duration::from_secs(u64::from(r.rabbit_retry_interval.max(1))),
                r.rabbit_retry_backoff.max(1),
                Duration::from_secs(u64::from(r.rabbit_interval_max.max(1))),
            ),
        })
    }
}

/// What the connection task hands the main loop.
enum Link {
    Up(Arc<Rpc>, mpsc::Receiver<Incoming>),
}

/// What the report task tells the main loop.
enum Heard {
    /// The server answered a report with "revived": resync.
    Revived,
}

/// Connects and serves, retrying with backoff until it works.
async fn connect(s: AgentSettings) -> Link {
    let (first, factor, max) = s.retry;
    let mut delay = first;
    let url = s.rpc.url.redacted();
    loop {
        match open(&s).await {
            Ok(link) => return link,
            Err(e) => {
                tracing::warn!("message bus {url}: {e:#}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * factor).min(max);
            }
        }
    }
}

async fn open(s: &AgentSettings) -> Result<Link> {
    let rpc = Arc::new(Rpc::connect(&s.rpc).await?);
    tracing::info!("connected to the message bus at {}", rpc.broker);
    // Neutron's agent waits for the server before anything else.
    let plugin = Plugin {
        rpc: &rpc,
        host: &s.identity.host,
        timeout: s.rpc_timeout,
        stop: None,
    };
    loop {
        match plugin.get_host_ha_router_count().await {
            Ok(_) => break,
            Err(oslo_rpc::CallError::Timeout { .. }) => {
                tracing::warn!("neutron-server does not answer yet (get_host_ha_router_count)");
            }
            Err(oslo_rpc::CallError::Remote { failure, .. }) => {
                // An answer all the same: the server is there.
                tracing::warn!("get_host_ha_router_count: {failure}");
                break;
            }
            Err(e) => return Err(e.into()),
        }
        if !rpc.is_connected() {
            anyhow::bail!("connection lost");
        }
    }
    let endpoint = Endpoint {
        version: work::L3_AGENT_VERSION.into(),
        namespace: None,
        methods: work::METHODS.iter().map(|m| m.to_string()).collect(),
    };
    let (tx, rx) = mpsc::channel(4096);
    for topic in ["l3_agent", "q-agent-notifier-network-update"] {
        let mut r = rpc.serve(topic, &s.identity.host, endpoint.clone()).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(i) = r.recv().await {
                if tx.send(i).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(Link::Up(rpc, rx))
}

/// Reports state every interval until the connection goes.
async fn reporter(
    rpc: Arc<Rpc>,
    s: AgentSettings,
    counts: Arc<Mutex<Counts>>,
    first: Arc<std::sync::atomic::AtomicBool>,
    heard: mpsc::Sender<Heard>,
) {
    let Some(interval) = s.report_interval else {
        return;
    };
    let plugin = Plugin {
        rpc: &rpc,
        host: &s.identity.host,
        timeout: s.rpc_timeout,
        stop: None,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = *counts.lock().unwrap();
        let start = first.load(std::sync::atomic::Ordering::Relaxed);
        let uuid = oslo_rpc::envelope::unique_id();
        let state = report::agent_state(&s.identity, c, start, &uuid);
        let sent = plugin.report_state(state, interval).await;
        crate::metrics::get().state_report(sent.is_ok());
        match sent {
            Ok(answer) => {
                first.store(false, std::sync::atomic::Ordering::Relaxed);
                if s.identity.log_agent_heartbeats {
                    tracing::info!("state reported ({answer})");
                } else {
                    tracing::debug!("state reported ({answer})");
                }
                if answer == "revived" {
                    tracing::info!("the server had taken this agent for dead: full sync");
                    let _ = heard.send(Heard::Revived).await;
                }
            }
            Err(e) => tracing::warn!("reporting state: {e}"),
        }
    }
}

/// The agent's own record besides the engine's.
struct Agent {
    settings: AgentSettings,
    engine: Engine,
    pending: Pending,
    reported: Reported,
    chunk: usize,
    counts: Arc<Mutex<Counts>>,
    /// Routers the last sync could not apply (rejected or failed), for
    /// `xrouter reload`'s answer.
    not_applied: Vec<String>,
    /// True once SIGTERM or SIGINT came.
    stop: tokio::sync::watch::Receiver<bool>,
    /// A full sync has succeeded since the start.
    synced: bool,
}

impl Agent {
    fn update_counts(&self) {
        *self.counts.lock().unwrap() = Counts::of(&self.engine.desired);
    }

    fn take(&mut self, i: &Incoming) {
        let r = &i.request;
        let desired = &self.engine.desired;
        // Routers with a port on a network.
        let networks = |n: &str| {
            desired
                .iter()
                .filter(|r| r.ports().any(|p| p.network_id == n))
                .map(|r| r.id.clone())
                .collect()
        };
        match self.pending.take(r, networks) {
            Ok(()) => tracing::debug!("{} via {}", r.method, i.via),
            Err(e) => tracing::warn!("notification ignored: {e}"),
        }
    }

    /// Does the pending work. Fails (leaving the work pending) when the
    /// server could not be asked.
    async fn work(&mut self, rpc: &Rpc) -> Result<()> {
        let p = std::mem::take(&mut self.pending);
        let t0 = std::time::Instant::now();
        let out = self.work_on(rpc, &p).await;
        if p.full {
            crate::metrics::get().full_sync(t0.elapsed(), out.is_ok());
            // A sync a stop cut short is no sync (no READY=1 for it).
            self.synced |= out.is_ok() && !self.engine.stopping();
        }
        if out.is_err() {
            // Nothing of it is lost: merged back with what came since.
            self.pending.full |= p.full;
            self.pending.update.extend(p.update);
            self.pending.remove.extend(p.remove);
        }
        self.update_counts();
        out
    }

    async fn work_on(&mut self, rpc: &Rpc, p: &Pending) -> Result<()> {
        let s = self.settings.clone();
        let plugin = Plugin {
            rpc,
            host: &s.identity.host,
            timeout: s.rpc_timeout,
            stop: Some(self.stop.clone()),
        };
        let t0 = std::time::Instant::now();
        let (checked, removed) = if p.full {
            let ids = plugin.get_router_ids().await?;
            let mut dicts = plugin.sync_routers_chunked(&ids, &mut self.chunk).await?;
            // Where two routers claim one address, the one holding it keeps
            // it: routers asking for nothing new come first (the checks
            // across routers refuse the later claimant).
            dicts.sort_by_key(|d| !self.claims_nothing_new(d));
            let mut checked = self.check(dicts);
            self.hold_incumbents(&mut checked, true);
            // Routers the server no longer gives this host go, as with the
            // routers file; those it gives that fail validation keep what
            // they had.
            let mut wanted = checked.routers.clone();
            for id in &checked.keep {
                if let Some(r) = self.engine.state.applied(id) {
                    wanted.push(r.clone());
                }
            }
            let gone: Vec<String> = self
                .engine
                .state
                .router_ids()
                .into_iter()
                .filter(|id| !wanted.iter().any(|r| &r.id == id))
                .collect();
            self.engine.desired = wanted;
            tracing::info!(
                "full sync: {} from the server in {:.1?}",
                crate::text::count(ids.len(), "router"),
                t0.elapsed()
            );
            (checked, gone)
        } else {
            let mut removed: Vec<String> = p.remove.iter().cloned().collect();
            let mut checked = Checked::default();
            if !p.update.is_empty() {
                let ids: Vec<String> = p.update.iter().cloned().collect();
                let dicts = plugin.sync_routers_chunked(&ids, &mut self.chunk).await?;
                let got: BTreeSet<String> = dicts
                    .iter()
                    .filter_map(|d| d.get("id").and_then(Value::as_str).map(str::to_string))
                    .collect();
                // Named but not given: deleted or scheduled elsewhere.
                removed.extend(ids.iter().filter(|id| !got.contains(*id)).cloned());
                checked = self.check(dicts);
                self.hold_incumbents(&mut checked, false);
            }
            (checked, removed)
        };
        let mut removed = removed;
        removed.extend(checked.not_here.iter().cloned());
        let mut failures = Vec::new();
        let mut changes = crate::engine::Changes::default();
        if !removed.is_empty() {
            let a = self.engine.remove(&removed).await?;
            failures.extend(a.failures);
            changes.items.extend(a.changes.items);
            for id in &removed {
                self.reported.forget(id);
            }
        }
        // Router by router, each followed by its floating IP statuses: the
        // first routers of a long sync need not wait for the last (the new
        // ones' BPF programs load ahead, on the other CPUs).
        self.engine.preload(&checked.routers);
        for (i, r) in checked.routers.iter().enumerate() {
            if self.engine.stops_before(checked.routers.len() - i) {
                break;
            }
            self.engine.want(r);
            let mut ch = crate::engine::Changes::default();
            let outcome = self.engine.update(r, &mut ch).await;
            crate::engine::log_router(&r.id, &ch.items, outcome.as_ref().err());
            let status = match outcome {
                Ok(()) => fip_status::ACTIVE,
                Err(f) => {
                    failures.push(f);
                    fip_status::ERROR
                }
            };
            changes.items.extend(ch.items);
            let fips = r.floating_ips.iter().map(|f| f.id.clone()).collect();
            self.report_fips(&plugin, &r.id, &fips, status).await;
            if i % 32 == 31 {
                self.engine.state.save(&self.engine.node.state_file())?;
            }
        }
        self.engine.state.save(&self.engine.node.state_file())?;
        crate::metrics::get().publish(&self.engine.state);
        for (id, fips) in &checked.errors {
            let fips = fips.iter().cloned().collect();
            self.report_fips(&plugin, id, &fips, fip_status::ERROR)
                .await;
        }
        self.not_applied = failures
            .iter()
            .map(|f| f.router.clone())
            .chain(checked.errors.keys().cloned())
            .collect();
        let applied = crate::engine::Applied {
            changes,
            failures,
            routers: self.engine.desired.len(),
        };
        tracing::info!(
            "applied: {}{} in {:.1?}",
            crate::engine::summary_line(&applied),
            match checked.errors.len() {
                0 => String::new(),
                n => format!(
                    "; {} not applied (see above)",
                    crate::text::count(n, "router")
                ),
            },
            t0.elapsed()
        );
        Ok(())
    }

    /// Whether a router dict's external addresses (gateway, floating IPs)
    /// are all held by its applied state already.
    fn claims_nothing_new(&self, d: &Value) -> bool {
        let Some(prev) = d
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| self.engine.state.applied(id))
        else {
            return false;
        };
        let held: BTreeSet<String> = prev
            .floating_ips
            .iter()
            .map(|f| f.floating_ip.to_string())
            .chain(
                prev.gateway
                    .iter()
                    .flat_map(|g| g.port.addresses.iter().map(|a| a.addr().to_string())),
            )
            .collect();
        let strings = |v: Option<&Value>, key: &str| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.get(key).and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut wanted = strings(d.get("_floatingips"), "floating_ip_address");
        wanted.extend(strings(
            d.get("gw_port").and_then(|g| g.get("fixed_ips")),
            "ip_address",
        ));
        wanted.iter().all(|a| held.contains(a))
    }

    /// Refuses a router that would take an address or device name another
    /// router holds: the holder keeps it. In a full sync the holders are
    /// the routers kept as they were (rejected ones); otherwise every
    /// router of the node not in this batch.
    fn hold_incumbents(&self, c: &mut Checked, full: bool) {
        loop {
            let mut holders: Vec<Router> = if full {
                c.keep
                    .iter()
                    .filter_map(|id| self.engine.state.applied(id).cloned())
                    .collect()
            } else {
                self.engine
                    .desired
                    .iter()
                    .filter(|d| !c.routers.iter().any(|r| r.id == d.id))
                    .cloned()
                    .collect()
            };
            if !full {
                holders.retain(|h| !c.not_here.contains(&h.id));
            }
            let Some((i, why)) = c
                .routers
                .iter()
                .enumerate()
                .find_map(|(i, r)| clash::clash(r, &holders).map(|w| (i, w)))
            else {
                return;
            };
            let r = c.routers.remove(i);
            tracing::error!(router = %r.id, "router not applied: router {}: {why}", r.id);
            c.errors.insert(
                r.id.clone(),
                r.floating_ips.iter().map(|f| f.id.clone()).collect(),
            );
            // It keeps what it had (in a full sync, a holder from now on).
            c.keep.push(r.id.clone());
        }
    }

    /// Router dicts from the server, validated one by one: one bad router
    /// does not stop the others.
    fn check(&self, dicts: Vec<Value>) -> Checked {
        let parsed = routers::parse_each(dicts, &self.engine.node);
        let mut c = Checked {
            routers: parsed.routers,
            not_here: parsed.down,
            ..Default::default()
        };
        for r in parsed.rejected {
            tracing::error!(router = r.id.as_deref(), "router not applied: {}", r.error);
            if let Some(id) = r.id {
                c.keep.push(id.clone());
                c.errors.insert(id, r.floating_ip_ids);
            }
        }
        for u in parsed.unsupported {
            tracing::warn!(router = %u.id, "router {} not handled: {}", u.id, u.reason);
            // Nothing serves its floating IPs here.
            c.errors.insert(u.id.clone(), u.floating_ip_ids);
            c.not_here.push(u.id);
        }
        c
    }

    /// Sends a router's floating IP status changes (its floating IPs now
    /// `fips`, all in `status`).
    async fn report_fips(
        &mut self,
        plugin: &Plugin<'_>,
        id: &str,
        fips: &BTreeSet<String>,
        status: &'static str,
    ) {
        let changes = self.reported.changes(id, fips, status);
        if changes.is_empty() {
            return;
        }
        match plugin.update_floatingip_statuses(id, &changes).await {
            Ok(()) => self.reported.record(id, &changes),
            Err(e) => tracing::warn!(router = %id, "router {id}: floating IP statuses: {e}"),
        }
    }
}

/// Router dicts sorted out.
#[derive(Default)]
struct Checked {
    /// Valid: to apply.
    routers: Vec<Router>,
    /// Invalid, with an ID: they keep what they had; their floating IPs
    /// are in ERROR.
    keep: Vec<String>,
    errors: BTreeMap<String, Vec<String>>,
    /// Not for this agent (HA, DVR, administratively down): removed.
    not_here: Vec<String>,
}

/// Runs the agent in the foreground until SIGTERM or SIGINT.
pub async fn run(node: NodeConfig, settings: AgentSettings) -> Result<()> {
    let mut stopped = crate::daemon::stop_signal()?;
    let dataplane = crate::daemon::preflight(&node).await?;
    crate::daemon::serve_metrics(&node, dataplane, true).await?;
    let mut engine = Engine::new(node.clone(), dataplane, None)?;
    engine.resume_metadata();
    if !engine.state.routers.is_empty() {
        tracing::info!(
            "{} kept from the last run: forwarding goes on while the agent syncs",
            crate::text::count(engine.state.routers.len(), "router")
        );
    }
    let listener = crate::daemon::bind_control(&node)?;
    tracing::info!(
        "agent for host {} ({}); control socket {}",
        settings.identity.host,
        settings.rpc.url.redacted(),
        node.socket_path().display()
    );
    let mut agent = Agent {
        settings: settings.clone(),
        engine,
        pending: Pending {
            full: true,
            ..Default::default()
        },
        reported: Reported::default(),
        chunk: CHUNK_MAX,
        counts: Default::default(),
        not_applied: Vec::new(),
        stop: tokio::sync::watch::channel(false).1,
        synced: false,
    };
    agent.update_counts();

    // Signals are watched by a task of their own: a stop must not wait for
    // a sync waiting on neutron-server, nor for a pass's last router.
    agent.stop = stopped.clone();
    agent.engine.stop = Some(stopped.clone());
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let period = Duration::from_secs(node.resync_interval.max(1));
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fast = tokio::time::interval(Duration::from_secs(1));
    fast.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A failed sync (server unreachable, timeouts) is retried this often.
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let first_report = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (heard_tx, mut heard) = mpsc::channel(8);
    let mut connecting = Some(tokio::spawn(connect(settings.clone())));
    // The connection, its requests and its reporter, while connected.
    let mut rpc: Option<Arc<Rpc>> = None;
    let mut rx: Option<mpsc::Receiver<Incoming>> = None;
    let mut rep: Option<tokio::task::JoinHandle<()>> = None;
    let mut failed_work = false;
    // Ready for systemd once the first full sync is done (see `work`).
    let mut ready = false;
    let mut ever_connected = false;
    crate::notify::status("connecting to the message bus; routers of the last run keep forwarding");

    loop {
        if agent.synced && !ready {
            ready = true;
            crate::notify::ready(&format!(
                "{}; synced with neutron-server",
                crate::daemon::status_line(&agent.engine)
            ));
        }
        // Work is done between events, once every message that had
        // arrived is taken in: a burst collapses into one sync.
        if let (Some(conn), Some(rx)) = (rpc.clone(), rx.as_mut()) {
            while let Ok(i) = rx.try_recv() {
                agent.take(&i);
                answer(&i).await;
            }
            if !agent.pending.is_empty() && !failed_work && !*stopped.borrow() {
                if let Err(e) = agent.work(&conn).await {
                    tracing::warn!("sync with neutron-server failed, retried shortly: {e:#}");
                    failed_work = true;
                }
                continue;
            }
        }
        let closed = {
            let conn = rpc.clone();
            async move {
                match conn {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            }
        };
        let next = async {
            match rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: full sync");
                agent.pending.full = true;
            }
            up = async { connecting.as_mut().unwrap().await }, if connecting.is_some() => {
                connecting = None;
                if let Ok(Link::Up(conn, requests)) = up {
                    rep = Some(tokio::spawn(reporter(
                        conn.clone(),
                        settings.clone(),
                        agent.counts.clone(),
                        first_report.clone(),
                        heard_tx.clone(),
                    )));
                    crate::metrics::get().bus(true, ever_connected);
                    ever_connected = true;
                    crate::notify::status("connected to the message bus; full sync");
                    // Whatever was missed while away: a full sync.
                    agent.pending.full = true;
                    failed_work = false;
                    rpc = Some(conn);
                    rx = Some(requests);
                }
            }
            _ = closed => {
                rpc = None;
                rx = None;
                if let Some(r) = rep.take() {
                    r.abort();
                }
                tracing::warn!("message bus connection lost; reconnecting (routers keep forwarding)");
                crate::metrics::get().bus(false, false);
                crate::notify::status(&format!(
                    "{}; message bus connection lost, reconnecting",
                    crate::daemon::status_line(&agent.engine)
                ));
                connecting = Some(tokio::spawn(connect(settings.clone())));
            }
            Some(i) = next => {
                agent.take(&i);
                answer(&i).await;
            }
            Some(h) = heard.recv() => match h {
                Heard::Revived => agent.pending.full = true,
            },
            _ = retry.tick(), if failed_work => failed_work = false,
            _ = fast.tick(), if !agent.engine.bpf.is_empty() => {
                agent.engine.tick().await;
                crate::metrics::get().gc(agent.engine.gc_last.as_ref());
            }
            _ = resync.tick(), if node.resync_interval > 0 => {
                match agent.engine.resync().await {
                    Ok(a) if a.failures.is_empty() => {}
                    Ok(a) => tracing::warn!("resync: {}", a.report()),
                    Err(e) => tracing::warn!("resync: {e:#}"),
                }
            }
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let (req, conn) = crate::control::receive(stream).await;
                let reply = match req {
                    // In agent mode a reload is a full sync with the server.
                    Ok(Request::Reload) => match rpc.clone() {
                        Some(c) => {
                            agent.pending.full = true;
                            if ready {
                                crate::notify::reloading();
                            }
                            let done = agent.work(&c).await;
                            if ready {
                                crate::notify::ready(&format!(
                                    "{}; synced with neutron-server",
                                    crate::daemon::status_line(&agent.engine)
                                ));
                            }
                            match done {
                                Ok(()) if agent.not_applied.is_empty() => Reply { ok: true, message: "full sync with neutron-server done".into(), failed: vec![] },
                                Ok(()) => Reply {
                                    ok: false,
                                    message: format!(
                                        "full sync with neutron-server done; not applied (the daemon's log says why): {}",
                                        agent.not_applied.join(", ")
                                    ),
                                    failed: agent.not_applied.clone(),
                                },
                                Err(e) => {
                                    tracing::warn!("xrouter reload: full sync failed: {e:#}");
                                    Reply::error(format!("{e:#}"))
                                }
                            }
                        }
                        None => Reply::error("not connected to neutron-server yet (the message bus, or the server's first answer, is awaited); a full sync follows"),
                    },
                    Err(reply) => reply,
                };
                conn.answer(&reply).await?;
            }
        }
    }
    crate::notify::stopping();
    if let Some(r) = rep.take() {
        r.abort();
    }
    if let Some(conn) = rpc.take() {
        conn.close().await;
    }
    agent.engine.shutdown().await;
    let _ = std::fs::remove_file(node.socket_path());
    tracing::info!("stopped; routers keep forwarding (`xrouter cleanup` removes them)");
    Ok(())
}

/// Answers a call at once (`router_added_to_agent`: the server waits, and
/// retries without an answer); the work follows.
async fn answer(i: &Incoming) {
    if i.is_call()
        && let Err(e) = i.reply(Ok(Value::Null)).await
    {
        tracing::warn!("answering {}: {e}", i.request.method);
    }
}
