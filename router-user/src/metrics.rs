//! The Prometheus endpoint: `GET /metrics` on `metrics_address` (or
//! `--metrics-address`), off unless one is given. It serves what the BPF
//! programs count per router (read through their pinned maps, as `xrouter
//! show stats` does), how full each router's connection table is, how
//! long router applies take and which fail, and in agent mode the RPC
//! figures. docs/operations.md lists every metric.
//!
//! The engine and the agent record into one registry per process whether
//! or not it is served: recording is a few atomic adds.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use router_common::counters::Outcome;

use crate::{
    backend::bpf::{XR_CT, pinned},
    config::node::Dataplane,
    state::State,
};

/// Labels: `router`, and `hook`, `reason`, `table`... as the metric says.
type Labels = Vec<(&'static str, String)>;

/// Content type of the OpenMetrics text prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapes served at once; more connections wait in the accept queue.
const MAX_CONNECTIONS: usize = 16;
/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (all its requests) lasts at most this.
const CONNECTION_TIME: Duration = Duration::from_secs(60);
/// A request head (and buffered body) may be at most this big.
const MAX_REQUEST: usize = 16 * 1024;
/// Connection tables are counted at most this often (see [`Fill`]).
pub const FILL_EVERY: Duration = Duration::from_secs(30);

/// What the daemon records, and what a scrape needs to read the rest.
pub struct Metrics {
    apply_seconds: Histogram,
    apply_failures: Family<Labels, Counter>,
    routers: Family<Labels, Gauge>,
    state_reports: Family<Labels, Counter>,
    full_syncs: Family<Labels, Counter>,
    full_sync_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    reconnects: Counter,
    connected: Gauge,
    gc_passes: Counter,
    gc_deleted: Counter,
    gc_scanned: Gauge,
    gc_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    gc_busy_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// When the last GC pass recorded started (each is recorded once).
    gc_seen: Mutex<Option<Instant>>,
    /// The routers to read the maps of, by the last apply.
    ids: Mutex<Vec<String>>,
    /// Set once the endpoint is served.
    source: Mutex<Option<Source>>,
    fill: Mutex<Fill>,
}

/// Where a scrape reads the data plane, and in which mode the daemon runs.
#[derive(Clone, Debug)]
pub struct Source {
    pub dataplane: Dataplane,
    pub pin_dir: PathBuf,
    pub agent: bool,
}

/// Connection-table fill by router: counting the entries of a BPF hash
/// table means walking it (the kernel keeps no count a map's user can
/// read), thousands of entries a syscall but still seconds of a core for
/// millions, so counts are sampled: at most every
/// [`FILL_EVERY`], and at most a tenth of the time (a walk that took 5 s
/// waits 50 s).
#[derive(Default)]
struct Fill {
    /// Router -> (established entries, embryonic entries); None: its
    /// tables could not be opened (a router that failed before its BPF
    /// object was loaded), so that it is not tried at every scrape.
    counts: HashMap<String, Option<(u64, u64)>>,
    at: Option<Instant>,
    took: Duration,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    // 1 ms to about 2 minutes: an unchanged router takes milliseconds, a
    // new one with thousands of floating IPs seconds.
    apply_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 18,
    )),
    apply_failures: Family::default(),
    routers: Family::default(),
    state_reports: Family::default(),
    full_syncs: Family::default(),
    full_sync_seconds: Gauge::default(),
    reconnects: Counter::default(),
    connected: Gauge::default(),
    gc_passes: Counter::default(),
    gc_deleted: Counter::default(),
    gc_scanned: Gauge::default(),
    gc_seconds: Gauge::default(),
    gc_busy_seconds: Gauge::default(),
    gc_seen: Mutex::new(None),
    ids: Mutex::new(Vec::new()),
    source: Mutex::new(None),
    fill: Mutex::new(Fill::default()),
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn router(id: &str) -> Labels {
    vec![("router", id.to_string())]
}

impl Metrics {
    /// One router's apply (observe, plan, execute) took `took`; `ok`: it
    /// succeeded.
    pub fn applied(&self, id: &str, took: Duration, ok: bool) {
        self.apply_seconds.observe(took.as_secs_f64());
        // Created at 0 on the first apply: `increase()` sees the first
        // failure of a router.
        let failures = self.apply_failures.get_or_create(&router(id));
        if !ok {
            failures.inc();
        }
    }

    /// The routers as recorded now: applied, and failed.
    pub fn publish(&self, state: &State) {
        let applied = state
            .routers
            .iter()
            .filter(|r| state.failure(&r.id).is_none())
            .count();
        self.routers
            .get_or_create(&vec![("state", "applied".into())])
            .set(applied as i64);
        self.routers
            .get_or_create(&vec![("state", "failed".into())])
            .set(state.failed.len() as i64);
        *self.ids.lock().unwrap() = state.router_ids().into_iter().collect();
    }

    /// Agent mode: a state report was sent (`ok`) or failed.
    pub fn state_report(&self, ok: bool) {
        let result = if ok { "sent" } else { "failed" };
        self.state_reports
            .get_or_create(&vec![("result", result.into())])
            .inc();
    }

    /// Agent mode: a full sync with neutron-server ended after `took`.
    pub fn full_sync(&self, took: Duration, ok: bool) {
        let result = if ok { "done" } else { "failed" };
        self.full_syncs
            .get_or_create(&vec![("result", result.into())])
            .inc();
        if ok {
            self.full_sync_seconds.set(took.as_secs_f64());
        }
    }

    /// Agent mode: connected to the message bus (`again`: after a lost
    /// connection), or the connection was lost.
    pub fn bus(&self, up: bool, again: bool) {
        self.connected.set(i64::from(up));
        if up && again {
            self.reconnects.inc();
        }
    }

    /// The connection GC's last finished pass (the engine keeps it); each
    /// pass is counted once.
    pub fn gc(&self, last: Option<&crate::engine::GcSummary>) {
        let Some(s) = last else { return };
        let mut seen = self.gc_seen.lock().unwrap();
        if *seen == Some(s.started) {
            return;
        }
        *seen = Some(s.started);
        self.gc_passes.inc();
        self.gc_deleted.inc_by(s.deleted);
        self.gc_scanned.set(s.scanned as i64);
        self.gc_seconds.set(s.took.as_secs_f64());
        self.gc_busy_seconds.set(s.busy.as_secs_f64());
    }

    /// The registry of one scrape: what was recorded, and the data plane's
    /// counters read now. Blocking (it reads BPF maps).
    pub fn render(&self) -> String {
        let source = self.source.lock().unwrap().clone();
        let mut r = Registry::with_prefix("xrouter");
        if let Some(s) = &source {
            let info: Family<Labels, Gauge> = Family::default();
            info.get_or_create(&vec![
                ("dataplane", s.dataplane.to_string()),
                ("version", env!("CARGO_PKG_VERSION").into()),
                ("mode", if s.agent { "agent" } else { "run" }.into()),
            ])
            .set(1);
            r.register("info", "The daemon: data plane in use, version, mode", info);
        }
        r.register(
            "routers",
            "Routers by the last apply: applied, or failed (retried at every resync)",
            self.routers.clone(),
        );
        r.register_with_unit(
            "router_apply_duration",
            "Time one router's apply took (observe, plan, execute), changed or not",
            Unit::Seconds,
            self.apply_seconds.clone(),
        );
        r.register(
            "router_apply_failures",
            "Applies of a router that failed (it keeps its previous state)",
            self.apply_failures.clone(),
        );
        if source.as_ref().is_some_and(|s| s.agent) {
            r.register(
                "agent_state_reports",
                "State reports to neutron-server, by result",
                self.state_reports.clone(),
            );
            r.register(
                "agent_full_syncs",
                "Full syncs with neutron-server, by result",
                self.full_syncs.clone(),
            );
            r.register_with_unit(
                "agent_last_full_sync_duration",
                "Time the last successful full sync took (fetching and applying every router)",
                Unit::Seconds,
                self.full_sync_seconds.clone(),
            );
            r.register(
                "agent_reconnects",
                "Connections to the message bus made again after one was lost",
                self.reconnects.clone(),
            );
            r.register(
                "agent_connected",
                "1 while connected to the message bus and neutron-server answered",
                self.connected.clone(),
            );
        }
        if let Some(s) = source.filter(|s| crate::engine::plane_of(s.dataplane).is_bpf()) {
            let ids = self.ids.lock().unwrap().clone();
            self.register_dataplane(&mut r, &s, &ids);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }

    /// The BPF programs' counters and the connection tables of `ids`.
    fn register_dataplane(&self, r: &mut Registry, s: &Source, ids: &[String]) {
        let family = || Family::<Labels, Counter>::default();
        let (fwd_p, fwd_b) = (family(), family());
        let (kern_p, kern_b) = (family(), family());
        let (drop_p, drop_b) = (family(), family());
        let (to_tc, arp, events) = (family(), family(), family());
        let entries: Family<Labels, Gauge> = Family::default();
        let max: Family<Labels, Gauge> = Family::default();
        let in_use: Family<Labels, Gauge> = Family::default();
        for id in ids {
            // A router whose apply failed early has no pins: nothing to say.
            let Ok(counters) = pinned::counters(&s.pin_dir, id) else {
                continue;
            };
            for (o, c) in counters {
                let with = |k: &'static str, v: &str| {
                    let mut l = router(id);
                    l.push((k, v.to_string()));
                    l
                };
                let name = o.name();
                let (p, b, l) = match o {
                    Outcome::FwdXdp => (&fwd_p, Some(&fwd_b), with("hook", "xdp")),
                    Outcome::FwdTc => (&fwd_p, Some(&fwd_b), with("hook", "tc")),
                    Outcome::ToTc => (&to_tc, None, router(id)),
                    Outcome::ArpReplied => (&arp, None, router(id)),
                    _ => match name.split_once('/') {
                        Some(("drop", why)) => (&drop_p, Some(&drop_b), with("reason", why)),
                        Some((_, why)) => (&kern_p, Some(&kern_b), with("reason", why)),
                        None => continue,
                    },
                };
                p.get_or_create(&l).inc_by(c.packets);
                if let Some(b) = b {
                    b.get_or_create(&l).inc_by(c.bytes);
                }
            }
            if let Ok(evs) = pinned::events(&s.pin_dir, id) {
                for (e, n) in evs {
                    let name = e.name().trim_start_matches("conntrack/");
                    let mut l = router(id);
                    l.push(("event", name.to_string()));
                    events.get_or_create(&l).inc_by(n);
                }
            }
            if let Ok(Some(n)) = pinned::slots_in_use(&s.pin_dir, id) {
                // The CPUs add theirs in batches: it can lag below zero.
                in_use.get_or_create(&router(id)).set(n.max(0));
            }
            if let Some(m) = max_entries(&s.pin_dir, id, XR_CT) {
                // The slots, not the table's own line after them.
                let slots = router_common::conntrack::ct_slots_of(m).unwrap_or(m);
                max.get_or_create(&router(id)).set(i64::from(slots));
            }
        }
        for (id, (est, emb)) in self.fill_counts(&s.pin_dir, ids) {
            for (table, n) in [("established", est), ("embryonic", emb)] {
                let mut l = router(&id);
                l.push(("table", table.into()));
                entries.get_or_create(&l).set(n as i64);
            }
        }
        r.register(
            "forwarded_packets",
            "Packets the BPF programs forwarded, by hook (xdp, tc)",
            fwd_p,
        );
        r.register(
            "forwarded_bytes",
            "Bytes the BPF programs forwarded, by hook (xdp, tc)",
            fwd_b,
        );
        r.register(
            "xdp_to_tc_packets",
            "Packets XDP handed to the TC program (xdp plane)",
            to_tc,
        );
        r.register(
            "kernel_packets",
            "Packets the BPF programs handed to the kernel, by reason (show stats: kernel/<reason>)",
            kern_p,
        );
        r.register(
            "kernel_bytes",
            "Bytes the BPF programs handed to the kernel, by reason",
            kern_b,
        );
        r.register(
            "dropped_packets",
            "Packets the BPF programs dropped, by reason (show stats: drop/<reason>)",
            drop_p,
        );
        r.register(
            "dropped_bytes",
            "Bytes the BPF programs dropped, by reason",
            drop_b,
        );
        r.register(
            "arp_replies",
            "ARP requests for a floating IP the programs answered on the gateway port",
            arp,
        );
        r.register(
            "conntrack_events",
            "Connection-table events: created (embryonic), established (from then on never \
             evicted), evicted-embryonic (an embryonic connection's slot taken by a new one)",
            events,
        );
        r.register(
            "conntrack_entries",
            "Entries (two per connection) in the router's connection table, established and \
             embryonic; sampled: counted by walking the table at most every 30 s",
            entries,
        );
        r.register(
            "conntrack_slots_in_use",
            "Slots of the router's connection table in use (holding an entry, or freed and not \
             yet given back), as the programs count them (each CPU up to 64 off either way, \
             so a handful of connections can read 0, or a few dozen after they have gone): \
             from half of xrouter_conntrack_max_entries on, new connections take embryonic \
             ones' places before free slots and give back the slots the evicted ones' other \
             directions held, which holds a flood at a little over half of the slots",
            in_use,
        );
        r.register(
            "conntrack_max_entries",
            "Slots of the router's connection table, an entry each (conntrack_size \
             connections fill half of them)",
            max,
        );
        r.register(
            "conntrack_gc_passes",
            "Passes of the connection GC over every router's connection table",
            self.gc_passes.clone(),
        );
        r.register(
            "conntrack_gc_deleted_entries",
            "Expired connection-table entries the GC deleted (two per connection)",
            self.gc_deleted.clone(),
        );
        r.register(
            "conntrack_gc_scanned_entries",
            "Entries the last GC pass read: every router's table as it saw it",
            self.gc_scanned.clone(),
        );
        r.register_with_unit(
            "conntrack_gc_last_pass_duration",
            "Time from start to end of the last GC pass",
            Unit::Seconds,
            self.gc_seconds.clone(),
        );
        r.register_with_unit(
            "conntrack_gc_last_pass_busy",
            "Time the last GC pass spent working (in slices)",
            Unit::Seconds,
            self.gc_busy_seconds.clone(),
        );
    }

    /// The connection-table entries of `ids`, counted anew when the last
    /// count is old enough (see [`Fill`]).
    fn fill_counts(&self, pin_dir: &std::path::Path, ids: &[String]) -> Vec<(String, (u64, u64))> {
        let mut f = self.fill.lock().unwrap();
        let stale =
            f.at.is_none_or(|t| t.elapsed() >= FILL_EVERY.max(f.took * 10));
        // A router added since the last count is counted now.
        let missing = ids.iter().any(|id| !f.counts.contains_key(id));
        if stale || missing {
            let t0 = Instant::now();
            let mut counts = HashMap::new();
            for id in ids {
                counts.insert(id.clone(), pinned::count(pin_dir, id).ok());
            }
            f.counts = counts;
            f.took = t0.elapsed();
            f.at = Some(Instant::now());
        }
        ids.iter()
            .filter_map(|id| Some((id.clone(), (*f.counts.get(id)?)?)))
            .collect()
    }
}

/// The capacity of a router's pinned map `name` (from the kernel's map
/// info: no walk).
fn max_entries(pin_dir: &std::path::Path, id: &str, name: &str) -> Option<u32> {
    let d = aya::maps::MapData::from_pin(pin_dir.join(id).join(name)).ok()?;
    Some(d.info().ok()?.max_entries())
}

/// Binds the endpoint at `addr` exactly and serves it in the background.
/// A bind that fails is an error: the operator asked for the endpoint.
pub async fn serve(addr: SocketAddr, source: Source) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_address {addr}: cannot listen there"))?;
    tracing::info!("metrics at http://{addr}/metrics");
    *get().source.lock().unwrap() = Some(source);
    tokio::spawn(accept(listener));
    Ok(())
}

async fn accept(listener: tokio::net::TcpListener) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: the endpoint waits, not spins.
                tracing::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer));
            // Errors are the client's (a bad request, a reset): hyper has
            // answered what could be answered.
            let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
        });
    }
}

/// `GET /metrics` (and HEAD); 405 for another method there, 404 elsewhere.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "not found; try /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n".into());
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let body = tokio::task::spawn_blocking(|| get().render())
        .await
        .unwrap_or_default();
    let mut r = reply(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_recorded_is_rendered_with_prometheus_names() {
        let m = get();
        m.applied("r1", Duration::from_millis(3), false);
        m.applied("r2", Duration::from_millis(3), true);
        let text = m.render();
        assert!(
            text.contains("xrouter_router_apply_failures_total{router=\"r2\"} 0"),
            "a router applied without failure is at 0: {text}"
        );
        assert!(
            text.contains("xrouter_router_apply_failures_total{router=\"r1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE xrouter_router_apply_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
