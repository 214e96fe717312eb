//! The metadata proxy: what Neutron runs as one haproxy per router, here
//! one listener per router inside the daemon. Each router's listener is
//! created inside its namespace (a socket keeps the namespace it was made
//! in), on `0.0.0.0:<metadata_port>`, where the router's rules redirect
//! VMs' requests to 169.254.169.254:80; requests go on to the metadata
//! agent's unix socket with the headers that tell the agent which router
//! (and, by the VM's address, which instance) asks.

mod handover;
mod http;
mod limit;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::sync::{Semaphore, watch};

use crate::{backend::netns, config::node::MetadataConfig, model::namespace_of};

pub use handover::{HOLD_FOR, hold, parse_listener};

/// Connections served at once per router (Neutron's haproxy `maxconn`);
/// more wait in the kernel's queue.
pub const MAX_CONNECTIONS: usize = 1024;
/// The listening queue of each router's socket.
const BACKLOG: i32 = 1024;
/// How long a stopping daemon lets requests under way finish.
const DRAIN: Duration = Duration::from_secs(10);
/// A failing metadata agent is logged at most this often per router.
const COMPLAIN_EVERY: Duration = Duration::from_secs(60);

/// Requests of one router's proxy taken in and not answered yet (what a
/// stopping daemon reports it cut off).
#[derive(Default, Debug)]
pub struct InFlight(AtomicU64);

impl InFlight {
    /// Counts a request until the guard goes (answered, or its connection
    /// dropped).
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlightGuard(&self.0)
    }

    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub struct InFlightGuard<'a>(&'a AtomicU64);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What one router's connections share.
pub struct RouterProxy {
    pub router: String,
    pub settings: MetadataConfig,
    pub in_flight: InFlight,
    last_complaint: Mutex<Option<Instant>>,
    /// Turned true when a stopping daemon has waited long enough: requests
    /// still waiting for the agent are answered 503 at once.
    pub cut_off: watch::Sender<bool>,
}

impl RouterProxy {
    /// Logs a failure of the metadata agent, once a minute at most.
    fn complain(&self, why: &str) {
        let mut last = self.last_complaint.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= COMPLAIN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                "router {}: metadata request failed: {why} (VMs get an error page; logged once a minute)",
                self.router
            );
        }
    }
}

/// One router's listener and the task serving it.
struct Listener {
    /// The inode of the namespace the socket lives in.
    netns: u64,
    /// The listening socket (a duplicate of what the task accepts on), kept
    /// to hand over.
    socket: OwnedFd,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    proxy: Arc<RouterProxy>,
}

/// Every router's metadata proxy.
pub struct Proxies {
    settings: MetadataConfig,
    port: u16,
    state_dir: PathBuf,
    listeners: BTreeMap<String, Listener>,
}

fn netns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(netns::path(ns))
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

impl Proxies {
    pub fn new(settings: MetadataConfig, port: u16, state_dir: &Path) -> Proxies {
        Proxies {
            settings,
            port,
            state_dir: state_dir.to_path_buf(),
            listeners: BTreeMap::new(),
        }
    }

    /// Takes over the listeners a previous daemon left with its holder:
    /// those of `routers` whose namespace is still the one they were made
    /// in are served from now on (their queued connections first); the
    /// others are closed.
    pub fn resume(&mut self, routers: &std::collections::BTreeSet<String>) {
        let held = match handover::take_over(&self.state_dir) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("taking over the metadata listeners: {e:#}");
                return;
            }
        };
        let mut taken = 0;
        for h in held {
            let current = netns_inode(&namespace_of(&h.router));
            // A socket on another port (the setting changed) is closed.
            let port =
                nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(h.fd.as_raw_fd())
                    .map(|a| a.port());
            if !self.settings.enabled
                || !routers.contains(&h.router)
                || current != Some(h.netns)
                || port != Ok(self.port)
                || self.listeners.contains_key(&h.router)
            {
                continue;
            }
            match self.serve(&h.router, h.netns, h.fd) {
                Ok(()) => taken += 1,
                Err(e) => tracing::warn!("router {}: metadata listener: {e:#}", h.router),
            }
        }
        if taken > 0 {
            tracing::info!(
                "{} taken over from the previous run",
                crate::text::count(taken, "metadata listener")
            );
        }
    }

    /// Makes sure router `id` has its listener, in its namespace as it is
    /// now (a namespace made anew gets a new listener).
    pub fn ensure(&mut self, id: &str) -> Result<()> {
        if !self.settings.enabled {
            return Ok(());
        }
        let ns = namespace_of(id);
        let inode = netns_inode(&ns).with_context(|| format!("namespace {ns} missing"))?;
        if let Some(l) = self.listeners.get(id) {
            if l.netns == inode && !l.task.is_finished() {
                return Ok(());
            }
            self.remove(id);
        }
        let port = self.port;
        let socket = netns::run_in(Some(&ns), move || listen_socket(port))?
            .with_context(|| format!("metadata proxy: listening on 0.0.0.0:{port} in {ns}"))?;
        self.serve(id, inode, socket)?;
        tracing::info!("{ns}: metadata proxy listening on 0.0.0.0:{port}");
        Ok(())
    }

    /// Starts serving `socket` for router `id`.
    fn serve(&mut self, id: &str, netns: u64, socket: OwnedFd) -> Result<()> {
        let std_listener = std::net::TcpListener::from(socket.try_clone()?);
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let proxy = Arc::new(RouterProxy {
            router: id.to_string(),
            settings: self.settings.clone(),
            in_flight: InFlight::default(),
            last_complaint: Mutex::new(None),
            cut_off: watch::Sender::new(false),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, proxy.clone(), stopped));
        self.listeners.insert(
            id.to_string(),
            Listener {
                netns,
                socket,
                stop,
                task,
                proxy,
            },
        );
        Ok(())
    }

    /// Closes router `id`'s listener (its connections finish their
    /// request under way).
    pub fn remove(&mut self, id: &str) {
        if let Some(l) = self.listeners.remove(id) {
            let _ = l.stop.send(true);
        }
    }

    /// On stop: hands every listener to a holder for the next daemon, lets
    /// the requests under way finish (bounded), and closes the rest.
    pub async fn hand_over(&mut self) {
        if self.listeners.is_empty() {
            return;
        }
        let held: Vec<handover::Held> = self
            .listeners
            .iter()
            .filter_map(|(id, l)| {
                Some(handover::Held {
                    router: id.clone(),
                    netns: l.netns,
                    fd: l.socket.try_clone().ok()?,
                })
            })
            .collect();
        match handover::spawn_holder(&self.state_dir, &held) {
            Ok(()) => tracing::info!(
                "{} handed to a holder for the next run (kept {} s)",
                crate::text::count(held.len(), "metadata listener"),
                HOLD_FOR.as_secs()
            ),
            Err(e) => tracing::warn!("metadata listeners not handed over: {e:#}"),
        }
        drop(held);
        let (tasks, proxies): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_values()
            .map(|l| {
                let _ = l.stop.send(true);
                (l.task, l.proxy)
            })
            .unzip();
        let all = futures::future::join_all(tasks);
        tokio::pin!(all);
        if tokio::time::timeout(DRAIN, &mut all).await.is_err() {
            // Still waiting for the agent: answered 503 rather than cut.
            let waiting: u64 = proxies.iter().map(|p| p.in_flight.get()).sum();
            tracing::warn!(
                "{} still waiting for the metadata agent after {} s: answered 503",
                crate::text::count(waiting as usize, "request"),
                DRAIN.as_secs()
            );
            for p in &proxies {
                p.cut_off.send_replace(true);
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
        }
    }
}

/// A listening TCP socket on 0.0.0.0:`port` in the calling thread's
/// namespace.
fn listen_socket(port: u16) -> Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
        sockopt,
    };
    let s = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&s, sockopt::ReuseAddr, &true)?;
    let addr = SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    bind(s.as_raw_fd(), &addr)?;
    listen(&s, Backlog::new(BACKLOG)?)?;
    Ok(s)
}

/// Accepts VMs' connections, at most [`MAX_CONNECTIONS`] served at once,
/// until `stop`; then waits for the connections to finish.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    proxy: Arc<RouterProxy>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let limiter = proxy
        .settings
        .rate_limit
        .then(|| Arc::new(Mutex::new(limit::Limiter::new(proxy.settings.rate))));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("never closed"),
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of fds and the like: pause rather than spin.
                    tracing::warn!("router {}: metadata proxy accept: {e}", proxy.router);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let (p, l, s) = (proxy.clone(), limiter.clone(), stop.clone());
        conns.spawn(async move {
            http::serve(stream, peer, p, l, s).await;
            drop(slot);
        });
        // Reap finished connections as we go.
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Takes the listeners a holder keeps in `state_dir`, if any, and closes
/// them (`cleanup`); how many there were.
pub fn release(state_dir: &Path) -> Result<usize> {
    Ok(handover::take_over(state_dir)?.len())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
