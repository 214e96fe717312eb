//! `xrouter monitor`: sampled events of a router's data path (drops, hand-offs
//! to the kernel, optionally forwards), read from each router's pinned ring
//! buffer and printed one line each (or JSON lines).
//!
//! The programs write events only while a monitor has set the router's
//! switch (`XR_MON_CTL`); this command sets it on start and clears it on
//! every way out (count or duration reached, Ctrl-C, SIGTERM, SIGHUP, its
//! output closed). One monitor per router: each holds an flock'd lock file
//! `<state_dir>/monitor-<router id>.lock`, and a second is refused.
//! Without `--router` it follows the daemon's state file: routers applied
//! later are watched as they come, routers removed are let go.

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use router_common::{
    counters::Outcome,
    monitor::{
        EV_FRAGMENT, EV_IPV4, EV_L4, EV_VLAN, HOOK_XDP, MON_DROPS, MON_FORWARDED, MON_KERNEL,
        MonitorCtl, MonitorEvent,
    },
};
use serde::Serialize;
use tokio::{io::unix::AsyncFd, signal::unix, sync::mpsc};

use crate::{
    backend::{
        bpf::{self, monitor::MonitorMaps},
        netns,
    },
    config::node::{Dataplane, NodeConfig},
    model::Router,
    state::State,
    text,
};

/// What to report and for how long.
#[derive(Clone, Debug)]
pub struct Options {
    /// One router (None: every router of the daemon).
    pub router: Option<String>,
    /// Drops only.
    pub drops: bool,
    /// Forwarded packets too.
    pub forwarded: bool,
    pub json: bool,
    /// Report 1 in N (per CPU).
    pub sample: u32,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

impl Options {
    /// The switch's `MON_*` bits.
    pub fn flags(&self) -> u32 {
        let mut f = MON_DROPS;
        if !self.drops {
            f |= MON_KERNEL;
        }
        if self.forwarded {
            f |= MON_FORWARDED;
        }
        f
    }
}

/// A router being monitored: its maps, its lock, its ports by ifindex.
struct Watched {
    id: String,
    maps: MonitorMaps,
    ports: HashMap<u32, String>,
    _lock: Lock,
}

/// Why the monitor stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Stop {
    Count,
    Duration,
    Signal,
    OutputClosed,
    RingClosed,
    /// A watched router was removed or rebuilt by the daemon.
    RouterGone,
}

/// The routers to monitor, as the daemon's state has them.
fn routers<'a>(state: &'a State, node: &NodeConfig, only: Option<&str>) -> Result<Vec<&'a Router>> {
    match state.dataplane {
        Some(Dataplane::Xdp | Dataplane::Tc) => {}
        Some(d) => bail!(
            "the data plane is {d}: monitor needs an eBPF data plane (xdp or tc); \
             on the iptables plane the kernel's own tools show drops (`ip netns exec qrouter-ID \
             iptables -L -v`, `nft monitor trace`)"
        ),
        None => bail!("{}", crate::show::no_state(node)),
    }
    if let Some(id) = only {
        return Ok(vec![crate::explain::find_router(state, id)?]);
    }
    // None yet is fine: the monitor watches those the daemon applies.
    Ok(state.routers.iter().collect())
}

/// Whether a live process holds router `router_id`'s monitor lock under
/// `dir` (the pid its lock file names is alive). A monitor killed outright
/// leaves its file, with its pid, behind.
pub fn running(dir: &Path, router_id: &str) -> bool {
    let path = dir.join(format!("monitor-{router_id}.lock"));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| {
            pid > 0
                && !matches!(
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                    Err(nix::errno::Errno::ESRCH)
                )
        })
}

/// An flock'd lock file: one monitor per router.
struct Lock {
    path: PathBuf,
    file: File,
}

impl Lock {
    fn take(dir: &Path, router_id: &str) -> Result<Lock> {
        let path = dir.join(format!("monitor-{router_id}.lock"));
        loop {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: a valid descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let holder = holder.trim();
                    bail!(
                        "router {router_id} is already being monitored{} (lock {}): \
                         one monitor per router",
                        if holder.is_empty() {
                            String::new()
                        } else {
                            format!(" by process {holder}")
                        },
                        path.display()
                    );
                }
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            // A monitor that was ending may have removed the file between
            // our open and our lock: lock the file the path names.
            let same = std::fs::metadata(&path).ok().is_some_and(|m| {
                use std::os::unix::fs::MetadataExt as _;
                file.metadata()
                    .is_ok_and(|f| f.ino() == m.ino() && f.dev() == m.dev())
            });
            if !same {
                continue;
            }
            file.set_len(0)?;
            write!(file, "{}", std::process::id())?;
            return Ok(Lock { path, file });
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still locked, so no one locks a file on its way out.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// The router's ports by ifindex, in its namespace.
fn ports_of(r: &Router) -> HashMap<u32, String> {
    let devs: Vec<String> = r.ports().map(|p| p.device()).collect();
    let ns = r.namespace();
    netns::run_in(Some(&ns), move || {
        devs.into_iter()
            .filter_map(|d| {
                nix::net::if_::if_nametoindex(d.as_str())
                    .ok()
                    .map(|i| (i, d))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The routers being watched, by the index their events carry, and what
/// adding or dropping one takes.
struct Session {
    /// None: dropped (gone) since.
    watched: Vec<Option<Watched>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    tx: mpsc::Sender<(usize, MonitorEvent)>,
    ctl: MonitorCtl,
    /// Events lost per router, of routers dropped so far.
    lost: serde_json::Map<String, serde_json::Value>,
    /// Routers another monitor watches: not tried again.
    elsewhere: std::collections::HashSet<String>,
}

impl Session {
    /// Starts reading a router's ring, then switches it on.
    fn add(&mut self, mut w: Watched) -> Result<()> {
        w.maps.reset()?;
        let ring = w.maps.take_ring().context("ring already taken")?;
        // SAFETY: the ring owns its map's descriptor, open (and the same)
        // for as long as the ring lives.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the ring buffer of router {}: {e}", w.id))?;
        let i = self.watched.len();
        self.readers
            .push(tokio::spawn(read_ring(i, fd, self.tx.clone())));
        let id = w.id.clone();
        self.watched.push(Some(w));
        if let Some(Some(w)) = self.watched.last_mut()
            && let Err(e) = w.maps.set_ctl(self.ctl)
        {
            // Not watched after all: a later `follow` tries it again.
            self.readers[i].abort();
            self.watched[i] = None;
            return Err(e.context(format!("switching router {id} on")));
        }
        Ok(())
    }

    fn is_watched(&self, id: &str) -> bool {
        self.watched.iter().flatten().any(|w| w.id == id)
    }

    /// Stops watching router `i` (gone: its maps are not the pinned ones
    /// any more, so there is no switch to clear).
    fn drop_router(&mut self, i: usize) {
        self.readers[i].abort();
        if let Some(w) = self.watched[i].take() {
            self.lost
                .insert(w.id.clone(), w.maps.lost().unwrap_or(0).into());
        }
    }

    /// Routers the daemon applied since: watched from now on. One not
    /// ready yet (maps not pinned, namespace not made) is tried again on
    /// the next call.
    fn follow(&mut self, node: &NodeConfig) {
        let Ok(state) = State::load(&node.state_file()) else {
            return;
        };
        for r in &state.routers {
            if self.is_watched(&r.id) {
                continue;
            }
            // One another monitor watches is tried again each time (taken
            // once that monitor lets go), and said so once.
            let lock = match Lock::take(&node.state_dir, &r.id) {
                Ok(l) => l,
                Err(e) => {
                    if self.elsewhere.insert(r.id.clone()) {
                        crate::errln!("monitor: not watching router {}: {e:#}", r.id);
                    }
                    continue;
                }
            };
            self.elsewhere.remove(&r.id);
            let Ok(maps) = MonitorMaps::open(&node.pin_dir, &r.id) else {
                continue;
            };
            if !maps.still_pinned() {
                continue;
            }
            let w = Watched {
                id: r.id.clone(),
                maps,
                ports: ports_of(r),
                _lock: lock,
            };
            match self.add(w) {
                Ok(()) => crate::errln!("monitor: now watching router {}", r.id),
                Err(e) => tracing::debug!("monitor: router {}: {e:#}", r.id),
            }
        }
    }

    /// Switches every watched router off; the first error.
    fn off(&mut self) -> Option<anyhow::Error> {
        let mut err = None;
        for w in self.watched.iter_mut().flatten() {
            if let Err(e) = w.maps.set_ctl(MonitorCtl::default()) {
                err.get_or_insert(e.context(format!("switching router {} off", w.id)));
            }
            self.lost
                .insert(w.id.clone(), w.maps.lost().unwrap_or(0).into());
        }
        err
    }
}

/// Runs the monitor until it is told to stop; prints events to standard
/// output, a summary at the end (standard error, or the last JSON line).
/// Without `--router` it also watches the routers the daemon applies
/// while it runs, and lets go of those it removes.
pub async fn run(state: &State, node: &NodeConfig, opts: &Options) -> Result<ExitCode> {
    if opts.sample == 0 {
        bail!("--sample must be 1 or more");
    }
    let follow = opts.router.is_none();
    let routers = routers(state, node, opts.router.as_deref())?;
    // Pinned programs outlive the daemon: its routers can still be watched.
    if tokio::net::UnixStream::connect(node.socket_path())
        .await
        .is_err()
    {
        crate::errln!(
            "monitor: note: the daemon does not answer on {}: watching the programs it left \
             attached (they keep forwarding without it)",
            node.socket_path().display()
        );
    }
    // Every router's lock and maps first: nothing is switched on unless all
    // of them can be. Without --router, one another monitor watches is
    // left to it, as `follow` leaves those applied later.
    let mut first = Vec::new();
    let mut elsewhere = std::collections::HashSet::new();
    for r in routers {
        let lock = match Lock::take(&node.state_dir, &r.id) {
            Ok(l) => l,
            Err(e) if follow => {
                crate::errln!("monitor: not watching router {}: {e:#}", r.id);
                elsewhere.insert(r.id.clone());
                continue;
            }
            Err(e) => return Err(e),
        };
        let maps = MonitorMaps::open(&node.pin_dir, &r.id)?;
        first.push(Watched {
            id: r.id.clone(),
            maps,
            ports: ports_of(r),
            _lock: lock,
        });
    }
    let (tx, mut rx) = mpsc::channel::<(usize, MonitorEvent)>(4096);
    let mut session = Session {
        watched: Vec::new(),
        readers: Vec::new(),
        tx,
        ctl: MonitorCtl {
            flags: opts.flags(),
            sample_every: opts.sample,
        },
        lost: serde_json::Map::new(),
        elsewhere,
    };
    // From the first switch on, every way out goes through `off`.
    let mut result = Ok(());
    for w in first {
        if let Err(e) = session.add(w) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        let mut what = vec!["drops"];
        if !opts.drops {
            what.push("hand-offs to the kernel");
        }
        if opts.forwarded {
            what.push("forwarded packets");
        }
        let on: Vec<&str> = session
            .watched
            .iter()
            .flatten()
            .map(|w| w.id.as_str())
            .collect();
        crate::errln!(
            "monitor: watching {}{} ({}{}); Ctrl-C to stop",
            if on.len() == 1 && !follow {
                format!("router {}", on[0])
            } else {
                text::count(on.len(), "router")
            },
            if follow {
                " and those the daemon applies from now on"
            } else {
                ""
            },
            what.join(", "),
            if opts.sample > 1 {
                format!(", 1 packet in {}", opts.sample)
            } else {
                String::new()
            }
        );
    }
    let (stop, events) = if result.is_ok() {
        let (s, n, r) = pump(&mut session, follow.then_some(node), opts, &mut rx).await;
        result = r;
        (s, n)
    } else {
        (Stop::Signal, 0)
    };
    for r in &session.readers {
        r.abort();
    }
    let off_err = session.off();
    let lost = std::mem::take(&mut session.lost);
    let total_lost: u64 = lost.values().filter_map(|v| v.as_u64()).sum();
    // A closed output still gets its summary on standard error (JSON's is
    // a line of the output).
    if !(stop == Stop::OutputClosed && opts.json) {
        let summary = if opts.json {
            serde_json::json!({
                "summary": {
                    "events": events,
                    "lost": lost,
                    "stopped": stop,
                    "sample": opts.sample,
                }
            })
            .to_string()
        } else {
            format!(
                "monitor: {} shown, {} lost to a full ring{}; stopped: {}",
                text::count(events as usize, "event"),
                total_lost,
                if opts.sample > 1 {
                    format!(", 1 packet in {} sampled", opts.sample)
                } else {
                    String::new()
                },
                serde_json::to_value(stop)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )
        };
        if opts.json {
            let _ = write_line(&summary);
        } else {
            crate::errln!("{summary}");
        }
    }
    result?;
    if let Some(e) = off_err {
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one ring as it fills, handing events on; ends when the receiver
/// is gone.
async fn read_ring(
    i: usize,
    mut fd: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    tx: mpsc::Sender<(usize, MonitorEvent)>,
) {
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(ev) = bpf::monitor::decode(&item)
                && tx.send((i, ev)).await.is_err()
            {
                return;
            }
        }
        guard.clear_ready();
    }
}

/// Prints events until a stop; how many were printed. `follow`: the
/// node whose daemon's routers are followed (None: a router gone stops).
async fn pump(
    session: &mut Session,
    follow: Option<&NodeConfig>,
    opts: &Options,
    rx: &mut mpsc::Receiver<(usize, MonitorEvent)>,
) -> (Stop, u64, Result<()>) {
    let clock = Clock::now();
    let sig = |k| unix::signal(k).context("installing a signal handler");
    let (mut int, mut term, mut hup) = match (
        sig(unix::SignalKind::interrupt()),
        sig(unix::SignalKind::terminate()),
        sig(unix::SignalKind::hangup()),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return (Stop::Signal, 0, Err(e)),
    };
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ticks = 0u64;
    let mut n = 0u64;
    if opts.count == Some(0) {
        return (Stop::Count, 0, Ok(()));
    }
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => {
                let Some((i, ev)) = ev else { return (Stop::RingClosed, n, Ok(())) };
                // Events a dropped router left in the channel are not shown.
                let Some(Some(w)) = session.watched.get(i) else { continue };
                let line = if opts.json {
                    serde_json::to_string(&json_event(&w.id, &w.ports, &ev, &clock))
                        .unwrap_or_default()
                } else {
                    text_event(&w.id, &w.ports, &ev, &clock)
                };
                match write_line(&line) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return (Stop::OutputClosed, n, Ok(()));
                    }
                    Err(e) => return (Stop::OutputClosed, n, Err(e).context("writing to standard output")),
                }
                n += 1;
                if opts.count.is_some_and(|c| n >= c) {
                    return (Stop::Count, n, Ok(()));
                }
            }
            _ = int.recv() => return (Stop::Signal, n, Ok(())),
            _ = term.recv() => return (Stop::Signal, n, Ok(())),
            _ = hup.recv() => return (Stop::Signal, n, Ok(())),
            _ = sleep => return (Stop::Duration, n, Ok(())),
            _ = tick.tick() => {
                ticks += 1;
                // Quiet routers print nothing: notice a closed pipe anyway.
                if stdout_closed() {
                    return (Stop::OutputClosed, n, Ok(()));
                }
                // A router the daemon removed or rebuilt writes elsewhere (or
                // nowhere): say so rather than watch in silence.
                let gone: Vec<usize> = session
                    .watched
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| w.as_ref().filter(|w| !w.maps.still_pinned()).map(|_| i))
                    .collect();
                for i in gone {
                    let Some(Some(w)) = session.watched.get(i) else { continue };
                    if follow.is_none() {
                        crate::errln!(
                            "monitor: router {} is gone (the daemon removed or rebuilt it); start \
                             the monitor again to follow it",
                            w.id
                        );
                        return (Stop::RouterGone, n, Ok(()));
                    }
                    crate::errln!(
                        "monitor: router {} is gone (the daemon removed or rebuilt it)",
                        w.id
                    );
                    session.drop_router(i);
                }
                // New routers, and rebuilt ones, once a second.
                if let Some(node) = follow
                    && ticks.is_multiple_of(4)
                {
                    session.follow(node);
                }
            }
        }
    }
}

fn write_line(line: &str) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}")?;
    o.flush()
}

/// Whether standard output is a pipe whose reader has gone.
fn stdout_closed() -> bool {
    let mut p = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Turns the programs' CLOCK_MONOTONIC stamps into wall-clock time.
pub struct Clock {
    /// Realtime minus monotonic, in nanoseconds.
    offset: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = bpf::monotonic_ns() as i128;
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Clock {
            offset: real - mono,
        }
    }

    /// Nanoseconds since the Unix epoch.
    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.offset
    }
}

/// `HH:MM:SS.uuuuuu` (local time) and RFC 3339 (UTC) of a wall-clock time.
fn times(wall_ns: i128) -> (String, String) {
    let secs = wall_ns.div_euclid(1_000_000_000) as libc::time_t;
    let micros = (wall_ns.rem_euclid(1_000_000_000) / 1000) as u32;
    // SAFETY: zeroed tm is a valid out value; valid pointers.
    let mut local: libc::tm = unsafe { std::mem::zeroed() };
    let mut utc: libc::tm = unsafe { std::mem::zeroed() };
    unsafe {
        libc::localtime_r(&secs, &mut local);
        libc::gmtime_r(&secs, &mut utc);
    }
    (
        format!(
            "{:02}:{:02}:{:02}.{micros:06}",
            local.tm_hour, local.tm_min, local.tm_sec
        ),
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            utc.tm_year + 1900,
            utc.tm_mon + 1,
            utc.tm_mday,
            utc.tm_hour,
            utc.tm_min,
            utc.tm_sec
        ),
    )
}

fn outcome_of(ev: &MonitorEvent) -> Option<Outcome> {
    Outcome::ALL.get(ev.outcome as usize).copied()
}

/// `drop`, `kernel` or `forwarded`, from the outcome's name.
fn verdict_of(reason: &str) -> &'static str {
    match reason.split('/').next() {
        Some("drop") => "drop",
        Some("forwarded") => "forwarded",
        _ => "kernel",
    }
}

fn port_name(ports: &HashMap<u32, String>, ifindex: u32) -> String {
    ports
        .get(&ifindex)
        .cloned()
        .unwrap_or_else(|| format!("if{ifindex}"))
}

fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x10, 'A'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if s.is_empty() { "none".into() } else { s }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => format!("proto {n}"),
    }
}

fn is_echo(ev: &MonitorEvent) -> bool {
    ev.proto == 1 && matches!(ev.tcp_flags_or_icmp_type, 0 | 8)
}

/// The packet as `explain`'s spec writes it: `tcp A:P -> B:Q [flags S]`.
pub fn tuple_text(ev: &MonitorEvent) -> String {
    if ev.flags & EV_IPV4 == 0 {
        return match ev.ethertype {
            0x0806 => "arp".into(),
            0x86dd => "ipv6".into(),
            0x8100 | 0x88a8 => "vlan-tagged frame".into(),
            t => format!("ethertype {t:#06x}"),
        };
    }
    let (src, dst) = (Ipv4Addr::from(ev.src), Ipv4Addr::from(ev.dst));
    let (sp, dp) = (u16::from_be(ev.sport), u16::from_be(ev.dport));
    let l4 = ev.flags & EV_L4 != 0;
    let mut s = match ev.proto {
        6 | 17 if l4 => format!("{} {src}:{sp} -> {dst}:{dp}", proto_name(ev.proto)),
        p => format!("{} {src} -> {dst}", proto_name(p)),
    };
    if l4 && ev.proto == 6 {
        s += &format!(" [flags {}]", tcp_flags(ev.tcp_flags_or_icmp_type));
    } else if l4 && is_echo(ev) {
        let kind = if ev.tcp_flags_or_icmp_type == 8 {
            "echo"
        } else {
            "echo-reply"
        };
        s += &format!(" [{kind} id {sp}]");
    } else if l4 && ev.proto == 1 {
        s += &format!(
            " [type {} code {}]",
            ev.tcp_flags_or_icmp_type, ev.icmp_code
        );
    } else if ev.flags & EV_FRAGMENT != 0 {
        s += " [later fragment]";
    }
    s
}

/// One line for a terminal: time, router, port(s), verdict, reason, tuple.
pub fn text_event(
    router: &str,
    ports: &HashMap<u32, String>,
    ev: &MonitorEvent,
    clock: &Clock,
) -> String {
    let (local, _) = times(clock.wall_ns(ev.ts_ns));
    let reason =
        outcome_of(ev).map_or_else(|| format!("outcome {}", ev.outcome), |o| o.name().into());
    let mut port = port_name(ports, ev.ifindex);
    if ev.egress != 0 {
        port = format!("{port} -> {}", port_name(ports, ev.egress));
    }
    let verdict = verdict_of(&reason).to_uppercase();
    let mut extra = Vec::new();
    if ev.flags & EV_IPV4 != 0 {
        extra.push(format!("ttl {}", ev.ttl));
    }
    extra.push(format!("{} bytes", ev.len));
    if ev.flags & EV_VLAN != 0 {
        extra.push("vlan tag".into());
    }
    extra.push(if ev.hook == HOOK_XDP { "xdp" } else { "tc" }.into());
    format!(
        "{local}  {}  {port:<16} {verdict:<9} {reason:<26} {}  ({})",
        &router[..router.len().min(8)],
        tuple_text(ev),
        extra.join(", ")
    )
}

/// One event as a JSON line.
#[derive(Serialize)]
pub struct JsonEvent {
    pub time: String,
    /// The programs' clock (CLOCK_MONOTONIC), nanoseconds.
    pub ts_ns: u64,
    pub router: String,
    #[serde(rename = "in")]
    pub ingress: String,
    pub ifindex: u32,
    /// Egress port of a forwarded packet.
    pub out: Option<String>,
    pub verdict: &'static str,
    pub reason: String,
    pub hook: &'static str,
    pub ethertype: String,
    pub proto: Option<String>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub tcp_flags: Option<String>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub icmp_id: Option<u16>,
    pub ttl: Option<u8>,
    pub len: u32,
    pub vlan: bool,
    pub fragment: bool,
    /// The tuple as the terminal line shows it.
    pub packet: String,
}

pub fn json_event(
    router: &str,
    ports: &HashMap<u32, String>,
    ev: &MonitorEvent,
    clock: &Clock,
) -> JsonEvent {
    let (_, time) = times(clock.wall_ns(ev.ts_ns));
    let reason =
        outcome_of(ev).map_or_else(|| format!("outcome {}", ev.outcome), |o| o.name().into());
    let ip = ev.flags & EV_IPV4 != 0;
    let l4 = ip && ev.flags & EV_L4 != 0;
    let ports_l4 = l4 && matches!(ev.proto, 6 | 17);
    let icmp = l4 && ev.proto == 1;
    JsonEvent {
        time,
        ts_ns: ev.ts_ns,
        router: router.to_string(),
        ingress: port_name(ports, ev.ifindex),
        ifindex: ev.ifindex,
        out: (ev.egress != 0).then(|| port_name(ports, ev.egress)),
        verdict: verdict_of(&reason),
        hook: if ev.hook == HOOK_XDP { "xdp" } else { "tc" },
        reason,
        ethertype: format!("{:#06x}", ev.ethertype),
        proto: ip.then(|| proto_name(ev.proto)),
        src: ip.then(|| Ipv4Addr::from(ev.src).to_string()),
        dst: ip.then(|| Ipv4Addr::from(ev.dst).to_string()),
        sport: ports_l4.then(|| u16::from_be(ev.sport)),
        dport: ports_l4.then(|| u16::from_be(ev.dport)),
        tcp_flags: (l4 && ev.proto == 6).then(|| tcp_flags(ev.tcp_flags_or_icmp_type)),
        icmp_type: icmp.then_some(ev.tcp_flags_or_icmp_type),
        icmp_code: icmp.then_some(ev.icmp_code),
        icmp_id: (icmp && is_echo(ev)).then(|| u16::from_be(ev.sport)),
        ttl: ip.then_some(ev.ttl),
        len: ev.len,
        vlan: ev.flags & EV_VLAN != 0,
        fragment: ev.flags & EV_FRAGMENT != 0,
        packet: tuple_text(ev),
    }
}

#[cfg(test)]
mod tests {
    use router_common::monitor::HOOK_TC;

    use super::*;

    fn event() -> MonitorEvent {
        MonitorEvent {
            ts_ns: 5_000_000_000,
            ifindex: 4,
            outcome: Outcome::DropTcpInvalid as u32,
            len: 54,
            ethertype: 0x0800,
            hook: HOOK_XDP,
            flags: EV_IPV4 | EV_L4,
            src: [81, 1, 180, 12],
            dst: [192, 168, 1, 15],
            sport: 40001u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            ttl: 64,
            tcp_flags_or_icmp_type: 0x01,
            ..MonitorEvent::default()
        }
    }

    fn ports() -> HashMap<u32, String> {
        HashMap::from([(4, "qr-04239b03-68".into()), (10, "qg-3d9e4819-3c".into())])
    }

    #[test]
    fn a_drop_reads_as_the_spec_explain_takes() {
        let ev = event();
        assert_eq!(
            tuple_text(&ev),
            "tcp 81.1.180.12:40001 -> 192.168.1.15:80 [flags F]"
        );
        let clock = Clock { offset: 0 };
        let line = text_event("f342d97a-9ee0-ae4a", &ports(), &ev, &clock);
        assert!(line.contains("  f342d97a  qr-04239b03-68 "), "{line}");
        assert!(line.contains("DROP "), "{line}");
        assert!(line.contains("drop/tcp-invalid"), "{line}");
        assert!(line.ends_with("(ttl 64, 54 bytes, xdp)"), "{line}");
        let j = serde_json::to_value(json_event("r", &ports(), &ev, &clock)).unwrap();
        assert_eq!(j["verdict"], "drop");
        assert_eq!(j["reason"], "drop/tcp-invalid");
        assert_eq!(j["in"], "qr-04239b03-68");
        assert_eq!(j["out"], serde_json::Value::Null);
        assert_eq!(j["sport"], 40001);
        assert_eq!(j["dport"], 80);
        assert_eq!(j["tcp_flags"], "F");
        assert_eq!(j["time"], "1970-01-01T00:00:05.000000Z");
    }

    #[test]
    fn echo_forwards_and_frames_without_ipv4() {
        let ev = MonitorEvent {
            outcome: Outcome::FwdTc as u32,
            hook: HOOK_TC,
            egress: 10,
            proto: 1,
            tcp_flags_or_icmp_type: 8,
            sport: 7u16.to_be(),
            dport: 0,
            ..event()
        };
        assert_eq!(
            tuple_text(&ev),
            "icmp 81.1.180.12 -> 192.168.1.15 [echo id 7]"
        );
        let line = text_event("r", &ports(), &ev, &Clock { offset: 0 });
        assert!(line.contains("qr-04239b03-68 -> qg-3d9e4819-3c"), "{line}");
        assert!(line.contains("FORWARDED"), "{line}");
        let j = serde_json::to_value(json_event("r", &ports(), &ev, &Clock { offset: 0 })).unwrap();
        assert_eq!(j["icmp_id"], 7);
        assert_eq!(j["out"], "qg-3d9e4819-3c");
        assert_eq!(j["sport"], serde_json::Value::Null);
        let arp = MonitorEvent {
            ethertype: 0x0806,
            flags: 0,
            outcome: Outcome::KernelNotIpv4 as u32,
            ..event()
        };
        assert_eq!(tuple_text(&arp), "arp");
        let j =
            serde_json::to_value(json_event("r", &ports(), &arp, &Clock { offset: 0 })).unwrap();
        assert_eq!(j["verdict"], "kernel");
        assert_eq!(j["src"], serde_json::Value::Null);
    }

    #[test]
    fn drops_only_never_asks_for_the_kernel() {
        let mut o = Options {
            router: None,
            drops: true,
            forwarded: false,
            json: false,
            sample: 1,
            count: None,
            duration: None,
        };
        assert_eq!(o.flags(), MON_DROPS);
        o.drops = false;
        o.forwarded = true;
        assert_eq!(o.flags(), MON_DROPS | MON_KERNEL | MON_FORWARDED);
    }
}
