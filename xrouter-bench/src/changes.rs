//! `xrouter-bench --changes`: how fast live changes take effect, per data
//! plane. It drives the real `xrouter` binary in a
//! sandbox of namespaces, as production does, and prints:
//!
//! - time to apply 1,000 and 10,000 floating IPs on one router (`xrouter
//!   reload` until it returns) and to release them;
//! - time from `reload` returning to the first ping answered through a new
//!   floating IP;
//! - packets lost by a steady ping flow (1 ms apart) through a floating IP
//!   across a daemon restart (on eBPF planes the restart loads the programs
//!   anew and swaps them into the pinned links: a program upgrade).
//!
//! All traffic stays inside the sandbox; everything is removed at the end.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use router_user::fixtures::{Network, PortSpec, RouterSpec, routers_json};

use crate::shell::{in_ns, ip, sh, stop_child};

/// The sandbox's router: gateway 10.200.255.1/16, one internal network
/// 10.100.0.0/16; the VM is 10.100.0.2, the external host 10.200.255.100.
fn base_router(tag: &str) -> RouterSpec {
    let ext = Network::new("ext", "10.200.0.0/16", Some("10.200.255.254"));
    let net = Network::new("net", "10.100.0.0/16", Some("10.100.255.1"));
    let mut r = RouterSpec::empty(tag);
    r.gateway = Some(PortSpec::new(&ext, "10.200.255.1"));
    r.interfaces.push(PortSpec::new(&net, "10.100.255.1"));
    r
}

/// The router with `n` floating IPs 10.200.x.y -> 10.100.x.y (the first,
/// 10.200.0.2, is the sandbox VM's).
fn with_fips(base: &RouterSpec, n: usize) -> RouterSpec {
    let mut r = base.clone();
    for i in 0..n {
        let (x, y) = (i / 250, i % 250 + 2);
        r.add_fip(&format!("10.200.{x}.{y}"), &format!("10.100.{x}.{y}"));
    }
    r
}

struct Sandbox {
    tag: String,
    router: RouterSpec,
    dir: PathBuf,
    bin: PathBuf,
    daemon: Option<Child>,
    namespaces: Vec<String>,
}

impl Sandbox {
    fn node(&self) -> String {
        format!("xrbc-{}-node", self.tag)
    }
    fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    fn routers(&self) -> PathBuf {
        self.dir.join("routers.json")
    }

    fn write_routers(&self, n: usize) -> Result<()> {
        let tmp = self.dir.join("routers.json.tmp");
        std::fs::write(
            &tmp,
            routers_json(&[with_fips(&self.router, n)]).to_string(),
        )?;
        std::fs::rename(&tmp, self.routers())?;
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let child = in_ns(
            &self.node(),
            self.bin.to_str().unwrap(),
            &[
                "--config",
                self.config().to_str().unwrap(),
                "run",
                "--routers",
                self.routers().to_str().unwrap(),
            ],
        )?
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
        self.daemon = Some(child);
        let sock = self.dir.join("state/xrouter.sock");
        let t0 = Instant::now();
        while !sock.exists() {
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the daemon did not come up (see {})",
                    self.dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            stop_child(d, Duration::from_secs(10));
        }
    }

    /// `xrouter reload` after writing a router with `n` floating IPs.
    fn reload_to(&self, n: usize) -> Result<Duration> {
        self.write_routers(n)?;
        let t0 = Instant::now();
        sh(&mut in_ns(
            &self.node(),
            self.bin.to_str().unwrap(),
            &["--config", self.config().to_str().unwrap(), "reload"],
        )?)?;
        Ok(t0.elapsed())
    }

    /// A host namespace on a bridge of the node.
    fn host(&mut self, name: &str, bridge: &str, cidr: &str, gw: &str) -> Result<String> {
        let ns = format!("xrbc-{}-{name}", self.tag);
        ip(&format!("netns add {ns}"))?;
        self.namespaces.push(ns.clone());
        let dev = format!("b{}{name}", self.tag);
        ip(&format!(
            "-n {} link add {dev} type veth peer name eth0 netns {ns}",
            self.node()
        ))?;
        ip(&format!(
            "-n {} link set {dev} master {bridge} up",
            self.node()
        ))?;
        ip(&format!("-n {ns} link set lo up"))?;
        ip(&format!("-n {ns} addr add {cidr} dev eth0"))?;
        ip(&format!("-n {ns} link set eth0 up"))?;
        ip(&format!("-n {ns} route add default via {gw}"))?;
        Ok(ns)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
        if let Ok(mut c) = in_ns(
            &self.node(),
            self.bin.to_str().unwrap(),
            &["--config", self.config().to_str().unwrap(), "cleanup"],
        ) {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&format!("netns del {ns}"));
        }
        let _ = ip(&format!("netns del {}", self.router.namespace()));
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/xrbc-{}", self.tag));
    }
}

/// Time from now until the first echo reply from `dst` (single pings 50 ms
/// apart at most, for up to 5 s).
fn first_reply(ns: &str, dst: &str) -> Result<Option<Duration>> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let ok = in_ns(ns, "ping", &["-n", "-c", "1", "-W", "0.05", dst])?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            return Ok(Some(t0.elapsed()));
        }
    }
    Ok(None)
}

/// Sent and received of a ping flow 1 ms apart while `during` runs.
fn loss_across(ns: &str, dst: &str, during: impl FnOnce() -> Result<()>) -> Result<(u64, u64)> {
    let ping = in_ns(
        ns,
        "ping",
        &["-n", "-q", "-i", "0.001", "-W", "1", "-c", "6000", dst],
    )?
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    during()?;
    let out = ping.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("no ping summary")?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    Ok((nums[0], nums[1]))
}

struct Row {
    plane: String,
    apply_1k: Duration,
    release_1k: Duration,
    apply_10k: Duration,
    release_10k: Duration,
    first_packet: Option<Duration>,
    restart: (u64, u64),
}

fn bench_plane(bin: &Path, plane: &str, n_big: usize) -> Result<Row> {
    // Five hex digits: they start the router's, ports' and networks' UUIDs.
    let plane_digit = match plane {
        "iptables" => 1,
        "xdp" => 2,
        "tc" => 3,
        _ => 0,
    };
    let tag = format!("{:04x}{plane_digit}", std::process::id() & 0xffff);
    let dir = std::env::temp_dir().join(format!("xrbc-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let mut sb = Sandbox {
        tag: tag.clone(),
        router: base_router(&tag),
        dir,
        bin: bin.into(),
        daemon: None,
        namespaces: vec![],
    };
    std::fs::write(
        sb.config(),
        format!(
            "state_dir = {:?}\npin_dir = \"/sys/fs/bpf/xrbc-{tag}\"\ndataplane = \"{plane}\"\nresync_interval = 3600\nsend_garp = false\nconntrack_size = 65536\n",
            sb.dir.join("state")
        ),
    )?;
    ip(&format!("netns add {}", sb.node()))?;
    sb.namespaces.push(sb.node());
    sb.write_routers(0)?;
    sb.start()?;
    let (ext_bridge, vm_bridge) = (
        sb.router
            .gateway
            .as_ref()
            .map(|g| g.network.bridge())
            .unwrap_or_default(),
        sb.router.interface("net").network.bridge(),
    );
    let ext = sb.host("ext", &ext_bridge, "10.200.255.100/16", "10.200.255.254")?;
    sb.host("vm", &vm_bridge, "10.100.0.2/16", "10.100.255.1")?;

    let apply_1k = sb.reload_to(1000)?;
    let release_1k = sb.reload_to(0)?;
    let apply_10k = sb.reload_to(n_big)?;
    let release_10k = sb.reload_to(0)?;
    // One floating IP, then the first packet through it.
    sb.write_routers(1)?;
    sh(&mut in_ns(
        &sb.node(),
        bin.to_str().unwrap(),
        &["--config", sb.config().to_str().unwrap(), "reload"],
    )?)?;
    let first_packet = first_reply(&ext, "10.200.0.2")?;
    let restart = loss_across(&ext, "10.200.0.2", || {
        sb.stop();
        sb.start()
    })?;
    Ok(Row {
        plane: plane.into(),
        apply_1k,
        release_1k,
        apply_10k,
        release_10k,
        first_packet,
        restart,
    })
}

pub fn run(bin: &Path, planes: &[String], n_big: usize) -> Result<()> {
    let mut rows = Vec::new();
    for p in planes {
        eprintln!("xrouter-bench --changes: {p} ...");
        rows.push(bench_plane(bin, p, n_big).with_context(|| format!("data plane {p}"))?);
    }
    let mut o = String::new();
    let _ = writeln!(o, "live changes, {}", super::cpu::machine());
    let _ = writeln!(
        o,
        "{:<9} {:>10} {:>10} {:>10} {:>11} {:>14} {:>22}",
        "plane",
        "+1k FIPs",
        "-1k FIPs",
        format!("+{} FIPs", crate::report::count(n_big as u32)),
        format!("-{} FIPs", crate::report::count(n_big as u32)),
        "reload->1st pkt",
        "restart: lost/sent"
    );
    for r in &rows {
        let _ = writeln!(
            o,
            "{:<9} {:>9.2}s {:>9.2}s {:>9.2}s {:>10.2}s {:>14} {:>22}",
            r.plane,
            r.apply_1k.as_secs_f64(),
            r.release_1k.as_secs_f64(),
            r.apply_10k.as_secs_f64(),
            r.release_10k.as_secs_f64(),
            r.first_packet
                .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "none".into()),
            format!("{}/{}", r.restart.0 - r.restart.1, r.restart.0),
        );
    }
    print!("{o}");
    Ok(())
}
