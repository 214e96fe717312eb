//! Figures of the metadata proxy against Neutron's (not tests: `cargo
//! xtask bench --metadata` runs them, `--ignored`, one at a time):
//!
//! - requests/s and latency from a VM to 169.254.169.254:80, through the
//!   router's redirect to port 9697, to xrouter's in-daemon proxy or to
//!   Neutron's haproxy (started in the same router namespace with the
//!   config Neutron renders, the daemon's proxy off), both in front of the
//!   same metadata agent stand-in, with `wrk` in the VM's namespace;
//! - memory for 100 routers: the daemon's Pss with its proxies on minus
//!   off, against 100 haproxy processes.
//!
//! Nothing here asserts a figure; what is checked is that both proxies
//! answer and forward what Neutron's would.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use router_user::backend::netns;
use serde_json::{Value, json};
use tests::{
    Dataplane, PortSpec, Rig, RouterSpec, cmd, header_values,
    metadata_agent::{METADATA_URL, curl},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The planes the throughput runs on (the redirect to the proxy is the
/// kernel's, iptables REDIRECT in the router namespace, on every plane).
const PLANES: [Dataplane; 3] = [Dataplane::Iptables, Dataplane::Xdp, Dataplane::Tc];
/// One wrk run.
const RUN: Duration = Duration::from_secs(5);
const CONNECTIONS: [u32; 2] = [16, 64];
const ROUTERS: u32 = 100;
const HAPROXY: &str = "/usr/sbin/haproxy";

// ---------------------------------------------------------------- agent

/// A metadata agent stand-in for load: the same answer as
/// tests::MetadataAgent (method, path and headers echoed as JSON, one
/// request per connection, `Connection: close`), served by a
/// single-threaded tokio runtime instead of a thread per connection, so
/// that the agent is not what the figures measure.
struct FastAgent {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
    path: PathBuf,
}

impl FastAgent {
    fn start(path: &Path) -> FastAgent {
        let _ = std::fs::remove_file(path);
        let std_l = std::os::unix::net::UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        std_l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), answered.clone());
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::UnixListener::from_std(std_l).unwrap();
                while !s.load(Ordering::Relaxed) {
                    let c = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
                    if let Ok(Ok((c, _))) = c {
                        let a = a.clone();
                        tokio::spawn(async move {
                            if echo(c).await.is_ok() {
                                a.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                }
            });
        });
        FastAgent {
            stop,
            answered,
            thread: Some(thread),
            path: path.to_path_buf(),
        }
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for FastAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn echo(mut c: tokio::net::UnixStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let headers: Vec<Value> = lines
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| json!([k.trim(), v.trim()]))
        .collect();
    let resp = tests::metadata_agent::echo_answer(method, path, headers, "");
    c.write_all(resp.as_bytes()).await?;
    c.shutdown().await
}

// -------------------------------------------------------------- haproxy

/// Where the haproxy configs come from.
fn neutron_python() -> Option<PathBuf> {
    // The test venv setup makes has Neutron.
    let venv = std::env::var_os("XROUTER_VENV").unwrap_or_else(|| "/opt/xrouter-venv".into());
    let py = PathBuf::from(venv).join("bin/python");
    py.is_file().then_some(py)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("neutron")
        .join(name)
}

/// A copy of what Neutron 29 renders (neutron/common/metadata.py
/// METADATA_HAPROXY_GLOBAL + driver_base._UNLIMITED_CONFIG_TEMPLATE +
/// driver._HEADER_CONFIG_TEMPLATE, defaults of [metadata_haproxy], rate
/// limiting off), for a machine without the bench venv.
fn template_copy(id: &str, socket: &Path, port: u16, pidfile: &Path, log: &str) -> String {
    format!(
        "
global
    log         {log} local0 info
    log-tag     haproxy-metadata-proxy-{id}
    user        root
    group       root
    maxconn     1024
    nbthread    2
    pidfile     {pidfile}
    daemon

defaults
    log global
    mode http
    option httplog
    option dontlognull
    option http-server-close
    option forwardfor
    retries                 3
    timeout http-request    30s
    timeout connect         30s
    timeout client          32s
    timeout server          32s
    timeout http-keep-alive 30s

listen listener
    bind 0.0.0.0:{port}
    
    server metadata {socket}

    http-request del-header X-Neutron-Network-ID
    http-request set-header X-Neutron-Router-ID {id}
",
        pidfile = pidfile.display(),
        socket = socket.display(),
    )
}

/// haproxy processes started as Neutron's L3 agent starts them (`haproxy
/// -f <id>.conf` in `qrouter-<id>`, daemonizing), one per router; all
/// killed in Drop (also after a panic): those in the pidfiles and any
/// process whose command line names this set's directory.
struct Haproxies {
    dir: PathBuf,
    /// How the configs were made, for the report.
    source: &'static str,
    pids: Vec<i32>,
    /// haproxy's log socket, drained (`/dev/log` is absent here).
    log: Option<(Arc<AtomicBool>, thread::JoinHandle<u64>)>,
    log_path: PathBuf,
}

impl Haproxies {
    fn new(dir: &Path) -> Haproxies {
        std::fs::create_dir_all(dir).unwrap();
        let log_path = dir.join("log.sock");
        let sock = UnixDatagram::bind(&log_path).expect("binding haproxy's log socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let drain = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    n += 1;
                }
            }
            n
        });
        Haproxies {
            dir: dir.to_path_buf(),
            source: "",
            pids: vec![],
            log: Some((stop, drain)),
            log_path,
        }
    }

    /// Writes the configs of `ids` (forwarding to `socket`, on `port`).
    fn configure(&mut self, ids: &[String], socket: &Path, port: u16) {
        let log = self.log_path.display().to_string();
        if let Some(py) = neutron_python() {
            let mut c = Command::new(py);
            c.arg(script("haproxy_cfg.py"))
                .arg("--socket")
                .arg(socket)
                .arg("--out-dir")
                .arg(&self.dir)
                .arg("--port")
                .arg(port.to_string())
                .arg("--log-target")
                .arg(&log)
                .args(ids);
            let out = cmd::run(&mut c, Duration::from_secs(60)).unwrap();
            if out.success() {
                self.source = "rendered by Neutron's HaproxyConfigurator (bench venv)";
                return;
            }
            eprintln!(
                "haproxy_cfg.py failed, using the template copy: {}",
                out.describe()
            );
        }
        self.source = "copy of Neutron 29's template (no bench venv)";
        for id in ids {
            let text = template_copy(id, socket, port, &self.pidfile(id), &log);
            std::fs::write(self.conf(id), text).unwrap();
        }
    }

    fn conf(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.conf"))
    }

    fn pidfile(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pid"))
    }

    /// Starts router `id`'s haproxy in its namespace; returns once it has
    /// daemonized and written its pidfile.
    fn start(&mut self, id: &str) {
        let mut c = Command::new(HAPROXY);
        c.arg("-f").arg(self.conf(id));
        netns::command_in(&format!("qrouter-{id}"), &mut c).unwrap();
        let out = cmd::run(&mut c, Duration::from_secs(10)).unwrap();
        assert!(out.success(), "haproxy: {}", out.describe());
        let pid: i32 = std::fs::read_to_string(self.pidfile(id))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("haproxy for {id} wrote no pidfile"));
        self.pids.push(pid);
    }

    /// Log lines haproxy sent so far are not counted until drop; this
    /// stops the drain and returns how many arrived.
    fn log_lines(&mut self) -> u64 {
        match self.log.take() {
            Some((stop, t)) => {
                stop.store(true, Ordering::Relaxed);
                t.join().unwrap_or(0)
            }
            None => 0,
        }
    }

    fn stop(&mut self) {
        let mut pids = std::mem::take(&mut self.pids);
        // Also any started whose pid was not read (a panic in between).
        let dir = self.dir.display().to_string();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cl = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cl = String::from_utf8_lossy(&cl);
                if cl.starts_with(HAPROXY) && cl.contains(&dir) && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        for &p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let t0 = Instant::now();
        for &p in &pids {
            while Path::new(&format!("/proc/{p}")).exists() && t0.elapsed() < RUN {
                thread::sleep(Duration::from_millis(20));
            }
            if Path::new(&format!("/proc/{p}")).exists() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Haproxies {
    fn drop(&mut self) {
        self.stop();
        self.log_lines();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------ wrk

#[derive(Debug, Default, Clone)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    /// Socket errors and non-2xx answers.
    errors: u64,
}

fn ms(s: &str) -> f64 {
    let s = s.trim();
    let (n, f) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, f64::NAN)
    };
    n.parse::<f64>().map(|v| v * f).unwrap_or(f64::NAN)
}

fn parse_wrk(out: &str) -> Load {
    let mut l = Load::default();
    for line in out.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["50%", v] => l.p50_ms = ms(v),
            ["99%", v] => l.p99_ms = ms(v),
            ["Requests/sec:", v] => l.rps = v.parse().unwrap_or(f64::NAN),
            [n, "requests", "in", ..] => l.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => l.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                l.errors += rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    l
}

/// `wrk` in `ns` against the metadata address for [`RUN`].
fn wrk(ns: &str, conns: u32, keep_alive: bool) -> Load {
    let c = conns.to_string();
    let d = format!("{}s", RUN.as_secs());
    let mut args = vec!["-t2", "-c", &c, "-d", &d, "--latency", "--timeout", "5s"];
    if !keep_alive {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(METADATA_URL);
    let out = cmd::exec(ns, "wrk", &args, RUN + Duration::from_secs(20)).unwrap();
    assert!(out.success(), "wrk: {}", out.describe());
    let l = parse_wrk(&out.stdout);
    assert!(
        l.rps.is_finite(),
        "wrk output not understood:\n{}",
        out.stdout
    );
    l
}

/// Checks that the proxy in front of the agent answers a VM as Neutron's
/// does: 200, X-Forwarded-For the VM's address, the router's ID.
fn check_proxy(ns: &str, vm_ip: &str, router: &str, who: &str) {
    let f = curl(ns, METADATA_URL, &[]);
    assert_eq!(f.status, 200, "{who}: {}", f.out.describe());
    let e = f.echo();
    assert_eq!(
        header_values(&e, "X-Forwarded-For"),
        vec![vm_ip.to_string()],
        "{who}: {e}"
    );
    assert_eq!(
        header_values(&e, "X-Neutron-Router-ID"),
        vec![router.to_string()],
        "{who}: {e}"
    );
}

fn loads() -> Vec<(bool, u32)> {
    [true, false]
        .into_iter()
        .flat_map(|k| CONNECTIONS.map(|c| (k, c)))
        .collect()
}

fn machine() -> String {
    let lscpu = Command::new("lscpu").output().ok();
    let model = lscpu
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Model name:"))
                .map(|l| l["Model name:".len()..].trim().to_string())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{model}, {cores} cores, kernel {}, load average before: {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Restarts the daemon with its proxies on (the default); returns after
/// its first apply. A daemon killed after ignoring SIGTERM leaves its
/// control socket: removed first, so that the wait is for the new one.
fn restart_with_proxies(rig: &mut Rig) {
    rig.stop_daemon();
    let _ = std::fs::remove_file(rig.socket_path());
    rig.extra_config.clear();
    rig.start();
}

#[test]
#[ignore = "benchmark: cargo xtask bench --metadata"]
fn throughput_vs_haproxy() {
    println!("\nmachine: {}", machine());
    for plane in PLANES {
        let mut rig = Rig::new(plane);
        rig.send_garp = false;
        // The node config's default (the rig's 16384 would fill up with
        // the closed connections of the first runs on the eBPF planes and
        // slow the later ones).
        rig.conntrack_size = 1_000_000;
        rig.routers.clear();
        let net = rig.add_network("n0", "10.77.0.0/24", Some("10.77.0.1"));
        let mut r = RouterSpec::empty(&rig.tag);
        r.interfaces.push(PortSpec::new(&net, "10.77.0.1"));
        let id = r.id.clone();
        rig.routers.push(r);
        // Neutron's turn first: the daemon's proxy off, haproxy in its place.
        rig.extra_config
            .push("enable_metadata_proxy = false".into());
        rig.start();
        let vm = rig.vm("vm", "n0", "10.77.0.5/24", "10.77.0.1");
        let agent = FastAgent::start(&rig.metadata_socket());
        let mut hx = Haproxies::new(&rig.dir.join("haproxy"));
        hx.configure(std::slice::from_ref(&id), &rig.metadata_socket(), 9697);
        hx.start(&id);
        check_proxy(&vm.ns, &vm.ip, &id, "haproxy");
        // Each run from a VM of its own (a new address): the connections a
        // run closes linger in TIME_WAIT (sockets and conntrack entries of
        // the redirect) and would meet the next run's reused ports.
        let mut fresh = 0u32;
        let mut run_from_new_vm = |rig: &mut Rig, k: bool, c: u32| {
            fresh += 1;
            let v = rig.vm(
                &format!("v{fresh}"),
                "n0",
                &format!("10.77.0.{}/24", 10 + fresh),
                "10.77.0.1",
            );
            wrk(&v.ns, c, k)
        };
        let neutron: Vec<Load> = loads()
            .iter()
            .map(|&(k, c)| run_from_new_vm(&mut rig, k, c))
            .collect();
        hx.stop();
        let log_lines = hx.log_lines();
        // xrouter's turn: the same router, VM and agent.
        restart_with_proxies(&mut rig);
        let t0 = Instant::now();
        while curl(&vm.ns, METADATA_URL, &["-o", "/dev/null"]).status != 200
            && t0.elapsed() < Duration::from_secs(10)
        {
            thread::sleep(Duration::from_millis(100));
        }
        check_proxy(&vm.ns, &vm.ip, &id, "xrouter");
        let xr: Vec<Load> = loads()
            .iter()
            .map(|&(k, c)| run_from_new_vm(&mut rig, k, c))
            .collect();

        println!(
            "\nmetadata proxy, plane {plane}: VM -> 169.254.169.254:80 -> REDIRECT :9697 -> proxy -> agent \
             (unix socket; a tokio echo)\nload: wrk -t2, {} s a run; haproxy config {}; \
             haproxy {} log lines went to a drained socket",
            RUN.as_secs(),
            hx.source,
            log_lines
        );
        println!(
            "{:<20} | {:>27} | {:>27} | {:>6}",
            "", "xrouter (in daemon)", "Neutron haproxy", "ratio"
        );
        println!(
            "{:<20} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>6}",
            "load", "req/s", "p50 ms", "p99 ms", "req/s", "p50 ms", "p99 ms", "req/s"
        );
        for (((k, c), x), n) in loads().iter().zip(&xr).zip(&neutron) {
            let what = format!(
                "{} {c:>3} conns",
                if *k { "keep-alive" } else { "close     " }
            );
            println!(
                "{what:<20} | {:>9.0} {:>8.2} {:>8.2} | {:>9.0} {:>8.2} {:>8.2} | {:>5.2}x",
                x.rps,
                x.p50_ms,
                x.p99_ms,
                n.rps,
                n.p50_ms,
                n.p99_ms,
                x.rps / n.rps
            );
        }
        let errs: Vec<(u64, u64)> = xr
            .iter()
            .zip(&neutron)
            .map(|(x, n)| (x.errors, n.errors))
            .collect();
        println!(
            "errors (socket errors + non-2xx; xrouter, haproxy) per load: {errs:?}; agent answered {} in all",
            agent.answered()
        );
    }
}

// --------------------------------------------------------------- memory

/// Pss and Rss (kB) of a process, from /proc/<pid>/smaps_rollup.
fn pss_rss(pid: i32) -> (u64, u64) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        t.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// One request through each router's proxy from its VM (the proxy port
/// itself is closed to all but the redirect, as in Neutron); how many got
/// 200.
fn warm(vms: &[String]) -> usize {
    vms.iter()
        .filter(|ns| {
            let out = cmd::exec(
                ns,
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-m",
                    "3",
                    "-w",
                    "%{http_code}",
                    METADATA_URL,
                ],
                Duration::from_secs(6),
            );
            out.is_ok_and(|o| o.stdout.trim() == "200")
        })
        .count()
}

fn sum(pids: &[i32]) -> (u64, u64) {
    pids.iter()
        .map(|&p| pss_rss(p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[test]
#[ignore = "benchmark: cargo xtask bench --metadata"]
fn memory_100_routers() {
    println!("\nmachine: {}", machine());
    let mut rig = Rig::new(Dataplane::Iptables);
    rig.send_garp = false;
    rig.routers.clear();
    let mut ids = vec![];
    let net = |i: u32| format!("10.{}.{}", 100 + i / 250, i % 250);
    for i in 0..ROUTERS {
        let gw = format!("{}.1", net(i));
        let n = rig.add_network(&format!("n{i}"), &format!("{}.0/24", net(i)), Some(&gw));
        let mut r = RouterSpec::empty(&rig.tag);
        r.interfaces.push(PortSpec::new(&n, &gw));
        ids.push(r.id.clone());
        rig.routers.push(r);
    }
    rig.extra_config
        .push("enable_metadata_proxy = false".into());
    let t0 = Instant::now();
    rig.start();
    println!("{ROUTERS} routers up in {:.1?}", t0.elapsed());
    // One VM per router, to make one request through each proxy.
    let vms: Vec<String> = (0..ROUTERS)
        .map(|i| {
            let (cidr, gw) = (format!("{}.5/24", net(i)), format!("{}.1", net(i)));
            rig.vm(&format!("v{i}"), &format!("n{i}"), &cidr, &gw).ns
        })
        .collect();
    let _agent = FastAgent::start(&rig.metadata_socket());
    thread::sleep(Duration::from_secs(2));
    let off = pss_rss(rig.daemon_pid().unwrap() as i32);

    // Neutron: one haproxy per router namespace.
    let (hx_idle, hx_warm, hx_n, source) = {
        let mut hx = Haproxies::new(&rig.dir.join("haproxy"));
        hx.configure(&ids, &rig.metadata_socket(), 9697);
        for id in &ids {
            hx.start(id);
        }
        thread::sleep(Duration::from_secs(1));
        let idle = sum(&hx.pids);
        assert_eq!(warm(&vms[..1]), 1, "haproxy: the first router answers");
        assert_eq!(warm(&vms), vms.len(), "haproxy: every router answered");
        thread::sleep(Duration::from_secs(1));
        (idle, sum(&hx.pids), hx.pids.len(), hx.source)
    };

    // xrouter: the same daemon, its proxies on.
    restart_with_proxies(&mut rig);
    thread::sleep(Duration::from_secs(2));
    let pid = rig.daemon_pid().unwrap() as i32;
    let on_idle = pss_rss(pid);
    let t1 = Instant::now();
    while warm(&vms[..1]) != 1 && t1.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(warm(&vms), vms.len(), "xrouter: every router answered");
    thread::sleep(Duration::from_secs(1));
    let on = pss_rss(pid);

    let n = ROUTERS as f64;
    println!(
        "\nmemory for {ROUTERS} routers' metadata proxies (one internal port each; kB from \
         /proc/<pid>/smaps_rollup; idle: listening, none served yet; warm: each has answered \
         one request from its router's VM)\nhaproxy config {source}"
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "", "idle Pss", "idle Rss", "warm Pss", "warm Rss", "Pss/router"
    );
    let row = |what: &str, i: (i64, i64), w: (i64, i64)| {
        println!(
            "{what:<40} {:>9} {:>9} {:>9} {:>9} {:>11.0}",
            i.0,
            i.1,
            w.0,
            w.1,
            w.0 as f64 / n
        )
    };
    let s = |x: (u64, u64)| (x.0 as i64, x.1 as i64);
    row(
        &format!("Neutron: {hx_n} haproxy processes (sum)"),
        s(hx_idle),
        s(hx_warm),
    );
    row("xrouter daemon, proxies on", s(on_idle), s(on));
    println!(
        "{:<40} {:>9} {:>9}",
        "xrouter daemon, proxies off", off.0, off.1
    );
    let d = |a: (u64, u64)| (a.0 as i64 - off.0 as i64, a.1 as i64 - off.1 as i64);
    row("xrouter: the proxies' cost (on - off)", d(on_idle), d(on));
}
