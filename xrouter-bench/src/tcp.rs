//! `xrouter-bench --tcp`: bulk TCP as VMs send it, per data plane.
//!
//! Per data plane a sandbox of namespaces like `--changes`: the real
//! `xrouter run` in a node namespace with linuxbridge plugging (bridges
//! `brq…` in the node namespace), two VMs on the internal network
//! 10.92.1.0/24 (`vm` 10.92.1.10 without a floating IP, `vmf` 10.92.1.100
//! behind floating IP 172.31.92.100) and an external host 172.31.92.50 on
//! the external network 172.31.92.0/24 (router gateway 172.31.92.10). Each
//! host is a veth pair whose node end is on the network's bridge; both ends
//! keep veth's default features (TSO, GSO, checksum offload on) and get GRO
//! switched on, as a node's VM-facing devices have it. The router's own
//! devices (qr-/qg- and their tap peers) are as xrouter leaves them.
//!
//! Cases: gateway SNAT (`vm` -> iperf3 server on the external host),
//! floating IP in (external client -> the floating IP, DNAT to a server on
//! `vmf`), floating IP out (`vmf` -> the external server); Debian's iperf3,
//! one stream and `-P N`, every run bounded by a deadline.
//!
//! Every plane is measured once per round (`--rounds`, a fresh sandbox each
//! time, the planes' order rotated); reported are medians over the rounds.
//! Reported per plane, case and stream count: Gbit/s received (iperf3's
//! `sum_received`) and CPU per GB received over the client's run: all of
//! the machine's busy time from /proc/stat (every CPU: user, nice, system,
//! irq, softirq, steal), the share of it /proc/stat counts as softirq, and
//! the two iperf3 processes' own CPU time (their `cpu_utilization_percent`
//! times the test's length). The endpoints and the router share the CPUs,
//! so the router's cost is best read as the difference between planes. On
//! the eBPF planes: the router's outcome counters over the run, and the
//! kernel conntrack entries in the router namespace for the flow's port
//! (none may be NATed when the fast path did the work).
//!
//! Investigation knobs: `XRB_TCP_HOST_ETHTOOL="tx off"` (any `ethtool -K`
//! settings) is applied to the hosts' eth0 after the defaults above,
//! `XRB_TCP_TAP_ETHTOOL="tso off"` to the router's taps once xrouter has
//! set them up.
//!
//! Everything is removed in Drop (daemon and iperf3 killed, namespaces,
//! pins and files deleted), also on error and interruption.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use router_user::{
    backend::netns,
    fixtures::{Network, PortSpec, RouterSpec, routers_json},
};
use serde::Serialize;

use super::{
    Opts, Plane, cpu, drops, nap,
    shell::{in_ns, ip, sh, stop_child},
    stopped,
};

const NET: &str = "10.92.1";
const EXT: &str = "172.31.92";
const VM: &str = "10.92.1.10";
const VMF: &str = "10.92.1.100";
const FIP: &str = "172.31.92.100";
const EXT_HOST: &str = "172.31.92.50";
/// iperf3's port; every run uses its own (PORT + run number), so a flow's
/// conntrack entries are told apart.
const PORT: u16 = 5201;

/// A traffic case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpCase {
    /// VM without floating IP -> external server (gateway SNAT).
    Snat,
    /// External client -> floating IP (DNAT to the VM's server).
    FipIn,
    /// VM with the floating IP -> external server.
    FipOut,
}

impl TcpCase {
    const ALL: [TcpCase; 3] = [TcpCase::Snat, TcpCase::FipIn, TcpCase::FipOut];

    fn name(self) -> &'static str {
        match self {
            TcpCase::Snat => "gateway SNAT",
            TcpCase::FipIn => "floating IP in",
            TcpCase::FipOut => "floating IP out",
        }
    }

    /// (client namespace role, server namespace role, address the client
    /// connects to).
    fn ends(self) -> (&'static str, &'static str, &'static str) {
        match self {
            TcpCase::Snat => ("vm", "ext", EXT_HOST),
            TcpCase::FipIn => ("ext", "vmf", FIP),
            TcpCase::FipOut => ("vmf", "ext", EXT_HOST),
        }
    }
}

/// What iperf3's `--json` output says of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Iperf {
    /// Bytes the server received.
    pub bytes: u64,
    pub seconds: f64,
    /// Received, bits per second.
    pub bps: f64,
    pub retransmits: u64,
    /// CPU seconds of the client (host) and the server (remote): iperf3's
    /// percentages of the test's length.
    pub client_cpu_s: f64,
    pub server_cpu_s: f64,
}

/// Parses the client's `iperf3 --json` output.
pub fn parse_iperf(text: &str) -> Result<Iperf> {
    let v: serde_json::Value = serde_json::from_str(text).context("iperf3 output is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = v.get("end").context("iperf3 output has no \"end\"")?;
    let recv = end
        .get("sum_received")
        .context("iperf3 output has no end.sum_received")?;
    let num = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_f64());
    let bytes = num(recv, "bytes").context("no sum_received.bytes")? as u64;
    let seconds = num(recv, "seconds").context("no sum_received.seconds")?;
    let bps = num(recv, "bits_per_second").context("no sum_received.bits_per_second")?;
    let retransmits = end
        .get("sum_sent")
        .and_then(|s| num(s, "retransmits"))
        .unwrap_or(0.0) as u64;
    let cpu = end.get("cpu_utilization_percent");
    let pct = |k: &str| cpu.and_then(|c| num(c, k)).unwrap_or(0.0) / 100.0 * seconds;
    Ok(Iperf {
        bytes,
        seconds,
        bps,
        retransmits,
        client_cpu_s: pct("host_total"),
        server_cpu_s: pct("remote_total"),
    })
}

/// CPU counters of the whole machine from /proc/stat, nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
struct Stat {
    busy: u64,
    softirq: u64,
    ksoftirqd: u64,
}

fn stat() -> Result<Stat> {
    let s = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        bail!("short /proc/stat line: {line}");
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let tick = 1_000_000_000 / hz;
    let total: u64 = v.iter().take(8).sum();
    Ok(Stat {
        busy: (total - v[3] - v[4]) * tick,
        softirq: v[6] * tick,
        ksoftirqd: ksoftirqd_ns(),
    })
}

/// CPU time of the `ksoftirqd/N` threads.
fn ksoftirqd_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with("ksoftirqd/").then(|| cpu::process_ns(pid))
        })
        .sum()
}

/// Extra `ethtool -K eth0` settings for the hosts, from the environment
/// (`XRB_TCP_HOST_ETHTOOL`, e.g. "tx off": the hosts then send complete
/// checksums, not CHECKSUM_PARTIAL): an investigation knob.
fn host_ethtool() -> Option<String> {
    knob("XRB_TCP_HOST_ETHTOOL")
}

/// Extra `ethtool -K` settings for the router's taps (`XRB_TCP_TAP_ETHTOOL`,
/// e.g. "tso off": what XDP does to them, without XDP): an investigation
/// knob.
fn tap_ethtool() -> Option<String> {
    knob("XRB_TCP_TAP_ETHTOOL")
}

fn knob(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|s| !s.trim().is_empty())
}

/// Waits for `child` until `deadline`, then kills it; its stdout.
fn wait_bounded(mut child: Child, deadline: Instant, what: &str) -> Result<String> {
    // Read while it runs: an output larger than the pipe would block it.
    let reader = child.stdout.take().map(|mut o| {
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut out = String::new();
            let _ = o.read_to_string(&mut out);
            out
        })
    });
    let output = |r: Option<std::thread::JoinHandle<String>>| {
        r.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    loop {
        if let Some(st) = child.try_wait()? {
            let out = output(reader);
            if !st.success() && out.trim().is_empty() {
                bail!("{what} exited with {st}");
            }
            return Ok(out);
        }
        if Instant::now() > deadline || stopped() {
            let _ = child.kill();
            let _ = child.wait();
            // The pipe is closed now: the reader ends.
            let _ = output(reader);
            if stopped() {
                bail!("interrupted");
            }
            bail!("{what} did not finish in time (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Sandbox {
    tag: String,
    plane: Plane,
    router: RouterSpec,
    dir: PathBuf,
    bin: PathBuf,
    daemon: Option<Child>,
    /// iperf3 servers still running (killed in Drop).
    servers: Vec<Child>,
    namespaces: Vec<String>,
}

impl Sandbox {
    fn node(&self) -> String {
        format!("xrbt-{}-node", self.tag)
    }
    fn host_ns(&self, role: &str) -> String {
        format!("xrbt-{}-{role}", self.tag)
    }
    fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/xrbt-{}", self.tag))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn new(bin: &Path, plane: Plane) -> Result<Sandbox> {
        let digit = match plane {
            Plane::Iptables | Plane::Kernel => 1,
            Plane::Xdp => 2,
            Plane::Tc => 3,
        };
        // Five hex digits: they start the router's UUID.
        let tag = format!("{:04x}{digit}", std::process::id() & 0xffff);
        let ext = Network::new("ext", &format!("{EXT}.0/24"), Some(&format!("{EXT}.1")));
        let net = Network::new("net", &format!("{NET}.0/24"), Some(&format!("{NET}.1")));
        let mut router = RouterSpec::empty(&tag);
        router.gateway = Some(PortSpec::new(&ext, &format!("{EXT}.10")));
        router
            .interfaces
            .push(PortSpec::new(&net, &format!("{NET}.1")));
        router.add_fip(FIP, VMF);
        let mut sb = Sandbox {
            dir: std::env::temp_dir().join(format!("xrbt-{tag}")),
            tag,
            plane,
            router,
            bin: bin.into(),
            daemon: None,
            servers: vec![],
            namespaces: vec![],
        };
        std::fs::create_dir_all(&sb.dir)?;
        let dataplane = match plane {
            Plane::Xdp => "xdp",
            Plane::Tc => "tc",
            Plane::Iptables | Plane::Kernel => "iptables",
        };
        // No metadata proxy: a stopping daemon would leave its listeners to
        // a holder process for a minute.
        std::fs::write(
            sb.config(),
            format!(
                "state_dir = {:?}\npin_dir = {:?}\ndataplane = \"{dataplane}\"\n\
                 resync_interval = 3600\nsend_garp = false\nconntrack_size = 65536\n\
                 enable_metadata_proxy = false\n",
                sb.dir.join("state"),
                sb.pin_dir(),
            ),
        )?;
        std::fs::write(
            sb.dir.join("routers.json"),
            routers_json(std::slice::from_ref(&sb.router)).to_string(),
        )?;
        let node = sb.node();
        netns::create(&node)?;
        sb.namespaces.push(node.clone());
        ip(&format!("-n {node} link set lo up"))?;
        sb.start()
            .and_then(|_| sb.hosts())
            .with_context(|| format!("daemon log:\n{}", sb.log_tail()))?;
        Ok(sb)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        let cfg = self.config();
        let routers = self.dir.join("routers.json");
        let child = in_ns(
            &self.node(),
            self.bin.to_str().context("xrouter path")?,
            &[
                "--config",
                cfg.to_str().unwrap(),
                "run",
                "--routers",
                routers.to_str().unwrap(),
            ],
        )?
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", self.bin.display()))?;
        self.daemon = Some(child);
        let sock = self.dir.join("state/xrouter.sock");
        let t0 = Instant::now();
        while !sock.exists() {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|d| d.try_wait()) {
                self.daemon = None;
                bail!("xrouter run exited ({st})");
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("xrouter run did not come up within 30 s");
            }
            nap(Duration::from_millis(50))?;
        }
        // The ports exist once the router namespace has its qg- device.
        let rns = self.router.namespace();
        let qg = self.router.qg();
        let t0 = Instant::now();
        while ip(&format!("-n {rns} link show {qg}")).is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the router's ports did not appear within 30 s");
            }
            nap(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// The VMs and the external host, each a veth pair onto a bridge.
    fn hosts(&mut self) -> Result<()> {
        let ext_bridge = self
            .router
            .gateway
            .as_ref()
            .map(|g| g.network.bridge())
            .context("no gateway")?;
        let net_bridge = self.router.interface("net").network.bridge();
        let gw = format!("{NET}.1");
        self.host("vm", &net_bridge, &format!("{VM}/24"), Some(&gw))?;
        self.host("vmf", &net_bridge, &format!("{VMF}/24"), Some(&gw))?;
        // On-link with the router's gateway and the floating IP.
        self.host("ext", &ext_bridge, &format!("{EXT_HOST}/24"), None)?;
        Ok(())
    }

    fn host(&mut self, role: &str, bridge: &str, cidr: &str, gw: Option<&str>) -> Result<()> {
        let ns = self.host_ns(role);
        let node = self.node();
        let t0 = Instant::now();
        while ip(&format!("-n {node} link show {bridge}")).is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("bridge {bridge} did not appear within 30 s");
            }
            nap(Duration::from_millis(50))?;
        }
        netns::create(&ns)?;
        self.namespaces.push(ns.clone());
        let dev = format!("t{}{role}", self.tag);
        ip(&format!(
            "-n {node} link add {dev} type veth peer name eth0 netns {ns}"
        ))?;
        ip(&format!("-n {node} link set {dev} master {bridge} up"))?;
        ip(&format!("-n {ns} link set lo up"))?;
        ip(&format!("-n {ns} addr add {cidr} dev eth0"))?;
        ip(&format!("-n {ns} link set eth0 up"))?;
        if let Some(gw) = gw {
            ip(&format!("-n {ns} route add default via {gw}"))?;
        }
        // A node's VM-facing devices: TSO/GSO (veth's defaults) and GRO.
        for (n, d) in [(node.as_str(), dev.as_str()), (ns.as_str(), "eth0")] {
            sh(&mut in_ns(
                n,
                "ethtool",
                &["-K", d, "gro", "on", "tso", "on", "gso", "on"],
            )?)?;
        }
        if let Some(extra) = host_ethtool() {
            let mut args = vec!["-K", "eth0"];
            args.extend(extra.split_whitespace());
            sh(&mut in_ns(&ns, "ethtool", &args)?)?;
        }
        Ok(())
    }

    /// Pings until `dst` answers from `role` (neighbours learnt, and on the
    /// eBPF planes mirrored into the programs' maps).
    fn reach(&self, role: &str, dst: &str) -> Result<()> {
        let ns = self.host_ns(role);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if in_ns(&ns, "ping", &["-n", "-c", "1", "-W", "0.2", dst])?
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success()
            {
                return Ok(());
            }
            nap(Duration::from_millis(100))?;
        }
        bail!("{dst} does not answer {role}'s ping")
    }

    /// `ethtool -K <tap> <extra>` on the router's taps.
    fn set_taps(&self, extra: &str) -> Result<()> {
        let taps: Vec<String> = self
            .router
            .gateway
            .iter()
            .chain(&self.router.interfaces)
            .map(PortSpec::tap)
            .collect();
        for t in taps {
            let mut args = vec!["-K", t.as_str()];
            args.extend(extra.split_whitespace());
            sh(&mut in_ns(&self.node(), "ethtool", &args)?)?;
        }
        Ok(())
    }

    /// The offload flags of the router's devices and their taps.
    fn offloads(&self) -> Result<Vec<(String, String)>> {
        let rns = self.router.namespace();
        let mut ports: Vec<(&PortSpec, String)> = vec![];
        if let Some(g) = &self.router.gateway {
            ports.push((g, g.qg()));
        }
        for p in &self.router.interfaces {
            ports.push((p, p.qr()));
        }
        let mut out = vec![];
        for (p, dev) in ports {
            for (ns, d) in [(self.node(), p.tap()), (rns.clone(), dev)] {
                let text = sh(&mut in_ns(&ns, "ethtool", &["-k", &d])?)?;
                let pick = |k: &str| {
                    text.lines()
                        .find(|l| l.trim_start().starts_with(k))
                        .map(|l| l.split_once(':').map_or("?", |x| x.1).trim().to_string())
                        .unwrap_or_else(|| "?".into())
                };
                out.push((
                    d,
                    format!(
                        "tso {}, gso {}, gro {}",
                        pick("tcp-segmentation-offload"),
                        pick("generic-segmentation-offload"),
                        pick("generic-receive-offload")
                    ),
                ));
            }
        }
        Ok(out)
    }

    fn counters(&self) -> Result<BTreeMap<String, u64>> {
        if !matches!(self.plane, Plane::Xdp | Plane::Tc) {
            return Ok(BTreeMap::new());
        }
        Ok(
            router_user::backend::bpf::pinned::counters(&self.pin_dir(), &self.router.id)?
                .into_iter()
                .map(|(o, c)| (o.name().to_string(), c.packets))
                .collect(),
        )
    }

    /// The kernel's drop counters of every namespace the flows cross, and
    /// the machine's backlog drops; devices named by role.
    fn drops(&self) -> Result<drops::Drops> {
        let mut d = drops::softnet();
        d.extend(drops::snapshot(&self.node(), "node")?);
        d.extend(drops::snapshot(&self.router.namespace(), "router")?);
        for role in ["vm", "vmf", "ext"] {
            d.extend(drops::snapshot(&self.host_ns(role), role)?);
        }
        Ok(d)
    }

    /// Kernel conntrack entries in the router namespace for `port`: (all,
    /// NATed).
    fn conntrack(&self, port: u16) -> Result<(usize, usize)> {
        let rns = self.router.namespace();
        let p = port.to_string();
        let count = |extra: &[&str]| -> Result<usize> {
            let mut args = vec!["-L", "-p", "tcp", "--orig-port-dst", &p];
            args.extend_from_slice(extra);
            let out = in_ns(&rns, "conntrack", &args)?
                .stderr(Stdio::null())
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("tcp"))
                .count())
        };
        let all = count(&[])?;
        let nat = count(&["--src-nat"])? + count(&["--dst-nat"])?;
        Ok((all, nat))
    }

    /// One iperf3 run: server on `case`'s server, client for `secs`
    /// seconds with `streams` streams.
    fn run(&mut self, case: TcpCase, streams: u32, secs: u32, port: u16) -> Result<Run> {
        let (client, server, dst) = case.ends();
        let (cns, sns) = (self.host_ns(client), self.host_ns(server));
        let ps = port.to_string();
        let srv = in_ns(&sns, "iperf3", &["-s", "-1", "-p", &ps])?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        self.servers.push(srv);
        // Listening?
        let t0 = Instant::now();
        loop {
            let l = sh(&mut in_ns(
                &sns,
                "ss",
                &["-Hltn", &format!("sport = :{port}")],
            )?)?;
            if !l.trim().is_empty() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("iperf3 server in {sns} not listening after 5 s");
            }
            nap(Duration::from_millis(20))?;
        }
        let c0 = self.counters()?;
        let k0 = self.drops()?;
        let daemon = self.daemon.as_ref().map(Child::id);
        let d0 = daemon.map_or(0, cpu::process_ns);
        let s0 = stat()?;
        let t0 = Instant::now();
        let cli = in_ns(
            &cns,
            "iperf3",
            &[
                "-c",
                dst,
                "-p",
                &ps,
                "-t",
                &secs.to_string(),
                "-P",
                &streams.to_string(),
                "--connect-timeout",
                "3000",
                "--json",
            ],
        )?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -c")?;
        let out = wait_bounded(
            cli,
            t0 + Duration::from_secs(secs as u64 + 15),
            "iperf3 client",
        )?;
        let s1 = stat()?;
        let wall = t0.elapsed().as_secs_f64();
        let d1 = daemon.map_or(0, cpu::process_ns);
        let c1 = self.counters()?;
        let k1 = self.drops()?;
        let ip = parse_iperf(&out)?;
        // The one-off server ends with its client.
        if let Some(mut s) = self.servers.pop() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s.kill();
            let _ = s.wait();
        }
        let (ct_all, ct_nat) = self.conntrack(port)?;
        let outcomes = c1
            .iter()
            .map(|(k, v)| (k.clone(), v - c0.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        let mut drops: Vec<(String, u64)> = drops::delta(&k0, &k1).into_iter().collect();
        drops.sort_by_key(|d| std::cmp::Reverse(d.1));
        let gb = ip.bytes as f64 / 1e9;
        let per_gb = |ns: u64| if gb > 0.0 { ns as f64 / 1e9 / gb } else { 0.0 };
        Ok(Run {
            round: 0,
            plane: self.plane,
            case,
            streams,
            gbps: ip.bps / 1e9,
            bytes: ip.bytes,
            retransmits: ip.retransmits,
            wall_s: wall,
            busy_s_per_gb: per_gb(s1.busy - s0.busy),
            softirq_s_per_gb: per_gb(s1.softirq - s0.softirq),
            ksoftirqd_s_per_gb: per_gb(s1.ksoftirqd.saturating_sub(s0.ksoftirqd)),
            iperf_s_per_gb: if gb > 0.0 {
                (ip.client_cpu_s + ip.server_cpu_s) / gb
            } else {
                0.0
            },
            daemon_s_per_gb: per_gb(d1.saturating_sub(d0)),
            busy_cpus: (s1.busy - s0.busy) as f64 / 1e9 / wall,
            outcomes,
            conntrack: ct_all,
            conntrack_nat: ct_nat,
            drops,
        })
    }

    fn stop(&mut self) {
        for mut s in self.servers.drain(..) {
            let _ = s.kill();
            let _ = s.wait();
        }
        if let Some(d) = self.daemon.take() {
            stop_child(d, Duration::from_secs(5));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
        // `xrouter cleanup`, bounded.
        let cfg = self.config();
        if let Ok(mut c) = in_ns(
            &self.node(),
            self.bin.to_str().unwrap_or("xrouter"),
            &["--config", cfg.to_str().unwrap_or(""), "cleanup"],
        ) && let Ok(child) = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()
        {
            let _ = wait_bounded(
                child,
                Instant::now() + Duration::from_secs(20),
                "xrouter cleanup",
            );
        }
        for ns in self.namespaces.iter().rev() {
            let _ = netns::delete(ns);
        }
        let _ = netns::delete(&self.router.namespace());
        let _ = std::fs::remove_dir_all(self.pin_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub round: u32,
    pub plane: Plane,
    pub case: TcpCase,
    pub streams: u32,
    /// Received, Gbit/s.
    pub gbps: f64,
    pub bytes: u64,
    pub retransmits: u64,
    /// Length of the client's run, seconds.
    pub wall_s: f64,
    /// CPU seconds per GB received: all CPUs' busy time (/proc/stat).
    pub busy_s_per_gb: f64,
    /// ... of which /proc/stat counts as softirq.
    pub softirq_s_per_gb: f64,
    /// ... the ksoftirqd threads' time (part of softirq).
    pub ksoftirqd_s_per_gb: f64,
    /// The two iperf3 processes' own CPU time (their system time includes
    /// softirq work done on their way out of system calls).
    pub iperf_s_per_gb: f64,
    /// The xrouter daemon's CPU time.
    pub daemon_s_per_gb: f64,
    /// Busy CPUs over the window (of all the machine's).
    pub busy_cpus: f64,
    /// The router's outcome counters over the run, packets (eBPF planes).
    pub outcomes: Vec<(String, u64)>,
    /// Kernel conntrack entries in the router namespace for the flow's
    /// port after the run, and how many of them are NATed.
    pub conntrack: usize,
    pub conntrack_nat: usize,
    /// The kernel's drop counters that grew over the run, largest first.
    pub drops: Vec<(String, u64)>,
}

#[derive(Serialize)]
struct Report<'a> {
    machine: String,
    seconds: u32,
    offloads: &'a BTreeMap<String, Vec<(String, String)>>,
    runs: &'a [Run],
}

/// Runs the cases on the data planes of `opts.planes` with each of
/// `opts.streams`, `opts.duration` seconds (rounded up) each.
pub fn run(bin: &Path, opts: &Opts) -> Result<()> {
    let mut planes = opts.planes.clone();
    planes.sort();
    planes.dedup();
    let (streams, json) = (&opts.streams, opts.json.as_deref());
    let secs = opts.duration.ceil().max(1.0) as u32;
    let machine = cpu::machine();
    let mut runs = Vec::new();
    let mut offloads = BTreeMap::new();
    let mut port = PORT;
    planes.retain(|p| *p != Plane::Kernel);
    if planes.is_empty() {
        bail!("--tcp measures the xdp, tc and iptables planes (the kernel plane has no NAT)");
    }
    for round in 0..opts.rounds {
        // Rotate the planes' order, so a slow phase of the host does not
        // always hit the same one.
        let mut order = planes.clone();
        order.rotate_left(round as usize % planes.len());
        for &plane in &order {
            eprintln!(
                "xrouter-bench --tcp: round {}/{}, {} ...",
                round + 1,
                opts.rounds,
                plane.name()
            );
            let mut sb =
                Sandbox::new(bin, plane).with_context(|| format!("plane {}", plane.name()))?;
            sb.reach("vm", EXT_HOST)?;
            sb.reach("vmf", EXT_HOST)?;
            sb.reach("ext", FIP)?;
            // The daemon mirrors neighbours into the maps every second.
            nap(Duration::from_millis(1500))?;
            if let Some(extra) = tap_ethtool() {
                sb.set_taps(&extra)?;
            }
            offloads.insert(plane.name().to_string(), sb.offloads()?);
            for case in TcpCase::ALL {
                for &n in streams.iter() {
                    port = if port >= PORT + 5000 {
                        PORT + 1
                    } else {
                        port + 1
                    };
                    let mut r = sb
                        .run(case, n, secs, port)
                        .with_context(|| format!("{} {} -P {n}", plane.name(), case.name()))?;
                    r.round = round;
                    runs.push(r);
                }
            }
            drop(sb);
        }
    }
    print!("{}", table(&machine, secs, &planes, &runs, &offloads));
    if let Some(p) = json {
        let r = Report {
            machine,
            seconds: secs,
            offloads: &offloads,
            runs: &runs,
        };
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
        println!("JSON: {}", p.display());
    }
    Ok(())
}

fn table(
    machine: &str,
    secs: u32,
    planes: &[Plane],
    runs: &[Run],
    offloads: &BTreeMap<String, Vec<(String, String)>>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "bulk TCP (iperf3, {secs} s per run), {machine}");
    if let Some(x) = host_ethtool() {
        let _ = writeln!(
            o,
            "hosts' eth0 also set: ethtool -K eth0 {x} (XRB_TCP_HOST_ETHTOOL)"
        );
    }
    if let Some(x) = tap_ethtool() {
        let _ = writeln!(
            o,
            "the router's taps also set: ethtool -K TAP {x} (XRB_TCP_TAP_ETHTOOL)"
        );
    }
    let _ = writeln!(
        o,
        "Gbit/s received, median (min-max) over rounds; CPU s per GB received, medians: \
         all CPUs busy (softirq of it) [iperf3 processes]"
    );
    let mut head = format!("{:<22}", "case");
    for p in planes {
        let _ = write!(head, " | {:<38}", p.name());
    }
    let _ = writeln!(o, "{head}");
    let mut keys: Vec<(TcpCase, u32)> = vec![];
    for r in runs {
        if !keys.contains(&(r.case, r.streams)) {
            keys.push((r.case, r.streams));
        }
    }
    for (case, n) in keys {
        let mut line = format!("{:<22}", format!("{} x{n}", case.name()));
        for p in planes {
            let these: Vec<&Run> = runs
                .iter()
                .filter(|r| r.plane == *p && r.case == case && r.streams == n)
                .collect();
            let cell = if these.is_empty() {
                String::new()
            } else {
                let m = |f: fn(&Run) -> f64| median(these.iter().map(|r| f(r)).collect());
                let g: Vec<f64> = these.iter().map(|r| r.gbps).collect();
                let (lo, hi) = g
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
                format!(
                    "{:.2} ({:.1}-{:.1}) {:.2} ({:.2}) [{:.2}]",
                    m(|r| r.gbps),
                    lo,
                    hi,
                    m(|r| r.busy_s_per_gb),
                    m(|r| r.softirq_s_per_gb),
                    m(|r| r.iperf_s_per_gb)
                )
            };
            let _ = write!(line, " | {cell:<38}");
        }
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(
        o,
        "\nfast path (eBPF planes): outcome counters over each run, packets; kernel conntrack in the router namespace for the flow"
    );
    for r in runs
        .iter()
        .filter(|r| matches!(r.plane, Plane::Xdp | Plane::Tc))
    {
        let oc: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            o,
            "  {} {:<8} {:<20} conntrack {} (NAT {}){}  {}",
            r.round + 1,
            r.plane.name(),
            format!("{} x{}", r.case.name(), r.streams),
            r.conntrack,
            r.conntrack_nat,
            if r.conntrack_nat > 0 {
                " FAST PATH MISSED"
            } else {
                ""
            },
            oc.join(", ")
        );
    }
    for r in runs.iter().filter(|r| r.plane == Plane::Iptables) {
        let _ = writeln!(
            o,
            "  {} {:<8} {:<20} conntrack {} (NAT {})",
            r.round + 1,
            r.plane.name(),
            format!("{} x{}", r.case.name(), r.streams),
            r.conntrack,
            r.conntrack_nat
        );
    }
    let _ = writeln!(
        o,
        "\noffloads (ethtool -k) of the router's devices and their taps:"
    );
    for (plane, devs) in offloads {
        for (d, f) in devs {
            let _ = writeln!(o, "  {plane:<8} {d:<16} {f}");
        }
    }
    let _ = writeln!(
        o,
        "\nall runs (round, plane, case): Gbit/s, retransmits, busy CPUs over the window, ksoftirqd and daemon s/GB, kernel drops"
    );
    for r in runs {
        let _ = writeln!(
            o,
            "  {} {:<8} {:<20} {:5.2} Gb/s  retr {:>6}  busy {:.2} CPUs  ksoftirqd {:.3}  daemon {:.4}  {}",
            r.round + 1,
            r.plane.name(),
            format!("{} x{}", r.case.name(), r.streams),
            r.gbps,
            r.retransmits,
            r.busy_cpus,
            r.ksoftirqd_s_per_gb,
            r.daemon_s_per_gb,
            r.drops
                .iter()
                .take(4)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's iperf3 3.12, `-c ... -t 1 -P 2 --json`, trimmed.
    const SAMPLE: &str = r#"{"start": {"version": "iperf 3.12", "test_start": {"protocol": "TCP", "num_streams": 2, "blksize": 131072, "omit": 0, "duration": 1, "bytes": 0, "blocks": 0, "reverse": 0, "tos": 0, "target_bitrate": 0}}, "end": {"sum_sent": {"start": 0, "end": 1.000738, "seconds": 1.000738, "bytes": 2665742336, "bits_per_second": 21310211751.727226, "retransmits": 3, "sender": true}, "sum_received": {"start": 0, "end": 1.002898, "seconds": 1.002898, "bytes": 2660499456, "bits_per_second": 21222492863.68105, "sender": true}, "cpu_utilization_percent": {"host_total": 36.02413758382905, "host_user": 1.1834514192743772, "host_system": 34.84078585720224, "remote_total": 48.89137277933049, "remote_user": 0.6326608548948207, "remote_system": 48.258711924435666}}}"#;

    #[test]
    fn parses_iperf3_json() {
        let r = parse_iperf(SAMPLE).unwrap();
        assert_eq!(r.bytes, 2_660_499_456);
        assert_eq!(r.retransmits, 3);
        assert!((r.bps - 21_222_492_863.68).abs() < 1.0);
        assert!((r.seconds - 1.002898).abs() < 1e-9);
        assert!((r.client_cpu_s - 0.3613).abs() < 1e-3, "{}", r.client_cpu_s);
        assert!((r.server_cpu_s - 0.4903).abs() < 1e-3, "{}", r.server_cpu_s);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn iperf3_errors_are_errors() {
        let e = parse_iperf(r#"{"start": {}, "end": {}, "error": "unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert!(parse_iperf("iperf3: error").is_err());
        assert!(parse_iperf(r#"{"end": {}}"#).is_err());
    }
}
