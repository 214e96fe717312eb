//! `xrouter monitor` on a running router, as an operator runs it: the built
//! binary in the node namespace, real packets from the hosts' namespaces,
//! the events it prints checked for their reason and tuple; the switch in
//! the router's pinned control map is off again once it exits, and a second
//! monitor of the same router is refused while one runs.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use router_user::backend::{bpf::monitor::MonitorMaps, netns};
use serde_json::Value;
use tests::{Dataplane, Rig, article::*, ping};

tests::ebpf_only!(drops_and_hand_offs_are_streamed_with_their_tuple);
tests::iptables_only!(iptables_plane_is_refused);

/// A monitor running in the background, its output collected.
struct Monitor {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Monitor {
    /// Starts `xrouter monitor ARGS` for the rig's router and waits until it
    /// says it watches (the switch is on from then on).
    fn start(rig: &Rig, args: &[&str]) -> Monitor {
        let id = rig.router().id.clone();
        Monitor::spawn(rig, &[&["--router", &id], args].concat(), "router ")
    }

    /// Starts `xrouter monitor ARGS` and waits until its first line says it
    /// watches `what`...
    fn spawn(rig: &Rig, args: &[&str], what: &str) -> Monitor {
        let cfg = rig.config_path().display().to_string();
        let mut c = Command::new(tests::xrouter_bin());
        c.args(["--config", &cfg, "monitor"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        netns::command_in(&rig.node, &mut c).unwrap();
        let mut child = c.spawn().expect("starting xrouter monitor");
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        let m = Monitor {
            child,
            stdout,
            stderr,
        };
        // (A router another monitor watches is said so first.)
        let first = loop {
            let l = m
                .stderr
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("xrouter monitor {args:?} said nothing in 10 s"));
            if !l.starts_with("monitor: not watching router") {
                break l;
            }
        };
        assert!(
            first.starts_with(&format!("monitor: watching {what}")),
            "unexpected: {first}"
        );
        m
    }

    /// Waits (bounded) for a line of standard error containing `what`;
    /// the lines before it.
    fn wait_stderr(&self, what: &str) -> Vec<String> {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
                if l.contains(what) {
                    return seen;
                }
                seen.push(l);
            }
        }
        panic!("no {what:?} from the monitor in 20 s; it said {seen:?}");
    }

    fn interrupt(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }

    /// Waits (bounded) for the exit; its status, stdout lines and the rest
    /// of stderr.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                panic!("xrouter monitor did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = Vec::new();
        while let Ok(l) = self.stdout.recv_timeout(Duration::from_secs(2)) {
            out.push(l);
        }
        let mut err = String::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            err += &l;
            err += "\n";
        }
        (status, out, err)
    }
}

/// JSON lines: the events and the summary.
fn parse(lines: &[String]) -> (Vec<Value>, Value) {
    let mut events = Vec::new();
    let mut summary = Value::Null;
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        if v.get("summary").is_some() {
            summary = v["summary"].clone();
        } else {
            events.push(v);
        }
    }
    (events, summary)
}

/// A FIN from vm1 to the external host through SNAT, for no connection:
/// `drop/tcp-invalid`.
fn send_invalid_fin(rig: &Rig, qr1: &str) {
    let vm1_mac = tests::frames::mac_of(&rig.ns("vm1"), "eth0").unwrap();
    let qr1_mac = tests::frames::mac_of(&rig.router_ns(), qr1).unwrap();
    let f = tests::frames::tcp(
        (vm1_mac, qr1_mac),
        VM1.parse().unwrap(),
        40001,
        EXT_HOST.parse().unwrap(),
        80,
        0x01,
    );
    assert_eq!(
        tests::frames::send(&rig.ns("vm1"), "eth0", &[f]).unwrap(),
        1
    );
}

/// A UDP datagram from vm1 to 8.8.8.8: no route (no default route), so
/// `kernel/no-route`.
fn send_no_route(rig: &Rig) -> u16 {
    let s = tests::probe::udp_socket(&rig.ns("vm1")).unwrap();
    s.send_to(b"where", SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53))
        .unwrap();
    s.local_addr().unwrap().port()
}

fn is_icmp_between(e: &Value, a: &str, b: &str) -> bool {
    e["proto"] == "icmp" && ((e["src"] == a && e["dst"] == b) || (e["src"] == b && e["dst"] == a))
}

fn ctl_is_off(rig: &Rig) -> bool {
    let m = MonitorMaps::open(&rig.pin_dir, &rig.router().id).unwrap();
    let c = m.ctl().unwrap();
    c.flags == 0 && c.sample_every == 0
}

/// On a router without a default route (its external subnet has no
/// gateway): a datagram to nowhere is handed to the kernel, a FIN that
/// opens nothing is dropped, a ping through SNAT is forwarded and shows
/// only with --forwarded.
fn drops_and_hand_offs_are_streamed_with_their_tuple(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.without_default_route();
    rig.start();
    rig.article_hosts(&[]);
    let (qr1, qg) = (rig.port_dev("net1"), rig.port_dev("ext"));
    // Neighbours resolved before anything is watched.
    let p = ping(&rig.ns("vm1"), EXT_HOST, &["-c", "2", "-i", "0.2"]);
    assert!(p.success(), "{}", p.describe());
    assert!(ctl_is_off(&rig), "monitoring is off by default");

    // 1. Drops and hand-offs (the default), JSON.
    let m = Monitor::start(&rig, &["--json", "--count", "1000", "--duration", "10"]);
    // One monitor per router: a second is refused while this one runs.
    let cfg = rig.config_path().display().to_string();
    let id = rig.router().id.clone();
    let second = rig.xrouter(&[
        "--config",
        &cfg,
        "monitor",
        "--router",
        &id,
        "--duration",
        "1",
    ]);
    assert!(!second.success(), "{}", second.describe());
    assert!(
        second.stderr.contains("is already being monitored"),
        "{}",
        second.describe()
    );
    assert!(!ctl_is_off(&rig), "the refused monitor left the switch on");
    // Without --router, the router watched elsewhere is left to that
    // monitor: this one starts, says so, and runs its course.
    let every = rig.xrouter(&["--config", &cfg, "monitor", "--duration", "1"]);
    assert!(every.success(), "{}", every.describe());
    assert!(
        every.stderr.contains(&format!("not watching router {id}"))
            && every.stderr.contains("is already being monitored"),
        "{}",
        every.describe()
    );
    assert!(!ctl_is_off(&rig), "the other monitor left the switch on");
    // One that follows the daemon takes the router up once the other
    // monitor lets it go (below).
    let follower = Monitor::spawn(&rig, &["--json", "--duration", "60"], "no routers and");
    let sport = send_no_route(&rig);
    send_invalid_fin(&rig, &qr1);
    let p = ping(&rig.ns("vm1"), EXT_HOST, &["-c", "2", "-i", "0.2"]);
    assert!(p.success(), "{}", p.describe());
    std::thread::sleep(Duration::from_millis(300));
    m.interrupt();
    let (status, out, err) = m.finish();
    assert!(status.success(), "{status}: {err}");
    follower.wait_stderr(&format!("now watching router {id}"));
    let sport2 = send_no_route(&rig);
    std::thread::sleep(Duration::from_millis(300));
    follower.interrupt();
    let (fstatus, fout, ferr) = follower.finish();
    assert!(fstatus.success(), "{fstatus}: {ferr}");
    let (fevents, _) = parse(&fout);
    assert!(
        fevents
            .iter()
            .any(|e| e["reason"] == "kernel/no-route" && e["sport"] == sport2),
        "the follower saw nothing after taking the router up: {fevents:#?}"
    );
    assert!(
        !fevents.iter().any(|e| e["sport"] == sport),
        "the follower saw what came before: {fevents:#?}"
    );
    let (events, summary) = parse(&out);
    let no_route = events
        .iter()
        .find(|e| e["reason"] == "kernel/no-route")
        .unwrap_or_else(|| panic!("no kernel/no-route event: {events:#?}"));
    assert_eq!(no_route["verdict"], "kernel", "{no_route:#}");
    assert_eq!(no_route["in"], qr1.as_str(), "{no_route:#}");
    assert_eq!(no_route["hook"], "tc", "XDP hands it up: {no_route:#}");
    assert_eq!(no_route["proto"], "udp", "{no_route:#}");
    assert_eq!(no_route["src"], VM1, "{no_route:#}");
    assert_eq!(no_route["sport"], sport, "{no_route:#}");
    assert_eq!(no_route["dst"], "8.8.8.8", "{no_route:#}");
    assert_eq!(no_route["dport"], 53, "{no_route:#}");
    assert_eq!(
        no_route["packet"],
        format!("udp {VM1}:{sport} -> 8.8.8.8:53"),
        "{no_route:#}"
    );
    let drop = events
        .iter()
        .find(|e| e["reason"] == "drop/tcp-invalid")
        .unwrap_or_else(|| panic!("no drop/tcp-invalid event: {events:#?}"));
    assert_eq!(drop["verdict"], "drop", "{drop:#}");
    assert_eq!(drop["in"], qr1.as_str(), "{drop:#}");
    let hook = if plane == Dataplane::Xdp { "xdp" } else { "tc" };
    assert_eq!(drop["hook"], hook, "{drop:#}");
    assert_eq!(
        drop["packet"],
        format!("tcp {VM1}:40001 -> {EXT_HOST}:80 [flags F]"),
        "{drop:#}"
    );
    assert_eq!(drop["tcp_flags"], "F", "{drop:#}");
    assert!(
        !events
            .iter()
            .any(|e| is_icmp_between(e, VM1, EXT_HOST) || is_icmp_between(e, QG, EXT_HOST)),
        "the forwarded ping was reported: {events:#?}"
    );
    assert!(
        events.iter().all(|e| e["verdict"] != "forwarded"),
        "{events:#?}"
    );
    assert_eq!(summary["stopped"], "signal", "{out:#?}");
    assert_eq!(summary["events"], events.len(), "{out:#?}");
    assert_eq!(summary["lost"][&id], 0, "{out:#?}");
    assert!(ctl_is_off(&rig), "the switch stayed on after the monitor");

    // 2. Drops only; the first one ends it (--count 1).
    let m = Monitor::start(
        &rig,
        &["--json", "--drops", "--count", "1", "--duration", "10"],
    );
    send_no_route(&rig);
    send_invalid_fin(&rig, &qr1);
    let (status, out, err) = m.finish();
    assert!(status.success(), "{status}: {err}");
    let (events, summary) = parse(&out);
    assert_eq!(events.len(), 1, "{out:#?}");
    assert_eq!(events[0]["verdict"], "drop", "{out:#?}");
    assert_eq!(summary["stopped"], "count", "{out:#?}");
    assert!(ctl_is_off(&rig));

    // 3. Forwarded: the ping both ways, as it leaves (SNAT to the gateway
    // address, back to the VM), with both ports; the terminal's lines.
    let m = Monitor::start(&rig, &["--forwarded", "--duration", "10"]);
    let p = ping(&rig.ns("vm1"), EXT_HOST, &["-c", "1"]);
    assert!(p.success(), "{}", p.describe());
    // And DNAT: the external host to the floating IP, on to vm2.
    let p = ping(&rig.ns("ext"), FIP, &["-c", "1"]);
    assert!(p.success(), "{}", p.describe());
    std::thread::sleep(Duration::from_millis(300));
    m.interrupt();
    let (status, out, err) = m.finish();
    assert!(status.success(), "{status}: {err}");
    let fwd = if plane == Dataplane::Xdp {
        "forwarded/xdp"
    } else {
        "forwarded/tc"
    };
    let echo = out
        .iter()
        .find(|l| l.contains(&format!("icmp {QG} -> {EXT_HOST} [echo id")))
        .unwrap_or_else(|| panic!("no forwarded echo: {out:#?}"));
    assert!(echo.contains(&format!("{qr1} -> {qg}")), "{echo}");
    assert!(echo.contains("FORWARDED"), "{echo}");
    assert!(echo.contains(fwd), "{echo}");
    assert!(echo.contains("ttl 63"), "{echo}");
    let reply = out
        .iter()
        .find(|l| l.contains(&format!("icmp {EXT_HOST} -> {VM1} [echo-reply id")))
        .unwrap_or_else(|| panic!("no forwarded echo reply: {out:#?}"));
    assert!(reply.contains(&format!("{qg} -> {qr1}")), "{reply}");
    let qr2 = rig.port_dev("net2");
    let dnat = out
        .iter()
        .find(|l| l.contains(&format!("icmp {EXT_HOST} -> {VM2} [echo id")))
        .unwrap_or_else(|| panic!("no forwarded echo to the floating IP's VM: {out:#?}"));
    assert!(dnat.contains(&format!("{qg} -> {qr2}")), "{dnat}");
    // Under xdp by TC when vm2's MAC is not yet in the neighbour map.
    assert!(dnat.contains("FORWARDED forwarded/"), "{dnat}");
    assert!(
        err.contains("monitor: ") && err.contains("0 lost"),
        "no summary: {err}"
    );
    assert!(ctl_is_off(&rig));

    // 4. Its output closed (`| head` gone): it stops and switches off.
    let t0 = Instant::now();
    let mut c = Command::new(tests::xrouter_bin());
    c.args([
        "--config",
        &cfg,
        "monitor",
        "--router",
        &id,
        "--duration",
        "10",
    ]);
    netns::command_in(&rig.node, &mut c).unwrap();
    let o = tests::cmd::run_stdout_closed(&mut c, Duration::from_secs(15)).unwrap();
    assert!(o.success(), "{}", o.describe());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(ctl_is_off(&rig));
    assert!(
        o.stderr.contains("stopped: output-closed"),
        "the summary still goes to standard error: {}",
        o.describe()
    );

    // 5. The short ID it prints names the router.
    let out = rig.xrouter(&[
        "--config",
        &cfg,
        "monitor",
        "--router",
        &id[..8],
        "--count",
        "0",
    ]);
    assert!(out.success(), "{}", out.describe());

    // `show` takes the same start of the ID.
    for what in ["flows", "stats"] {
        let out = rig.xrouter(&["--config", &cfg, "show", what, "--router", &id[..8]]);
        assert!(
            out.success() && out.stdout.contains(id.as_str()),
            "{}",
            out.describe()
        );
    }
    // The state dir alone (the default pin_dir): a refusal that says why.
    let dir = rig.dir.display().to_string();
    let out = rig.xrouter(&["--state-dir", &dir, "show", "stats"]);
    assert!(
        !out.success()
            && out.stderr.contains("no pinned maps under")
            && out.stderr.contains("--config"),
        "{}",
        out.describe()
    );

    // Clear refusals.
    let out = rig.xrouter(&[
        "--config", &cfg, "monitor", "--router", "nope", "--count", "1",
    ]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("no router \"nope\""),
        "{}",
        out.describe()
    );

    // 6. A monitor killed outright cannot switch off: the daemon does, and
    // the next monitor starts.
    let m = Monitor::start(&rig, &["--duration", "30"]);
    assert!(!ctl_is_off(&rig));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = m.finish();
    assert!(
        tests::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            ctl_is_off(&rig)
        }),
        "the switch stayed on after its monitor was killed"
    );
    let out = rig.xrouter(&["--config", &cfg, "monitor", "--router", &id, "--count", "0"]);
    assert!(out.success(), "{}", out.describe());

    // 7. The router removed under a running monitor: it says so and stops
    // (and a new monitor is not refused by a silent one).
    let m = Monitor::start(&rig, &["--duration", "30"]);
    let out = rig.reload_text("[]");
    assert!(out.success(), "{}", out.describe());
    let (status, _, err) = m.finish();
    assert!(status.success(), "{err}");
    assert!(err.contains(&format!("router {id} is gone")), "{err}");
    assert!(err.contains("stopped: router-gone"), "{err}");

    // 8. Without --router it follows the daemon: with no router yet it
    // waits; a router applied later is watched from then on, and one
    // removed is let go while the monitor goes on.
    let mut m = Monitor::spawn(
        &rig,
        &["--json", "--drops", "--duration", "60"],
        "no routers and those the daemon applies",
    );
    rig.apply();
    m.wait_stderr(&format!("monitor: now watching router {id}"));
    assert!(!ctl_is_off(&rig), "the router applied later is switched on");
    send_invalid_fin(&rig, &qr1);
    let out = rig.reload_text("[]");
    assert!(out.success(), "{}", out.describe());
    m.wait_stderr(&format!("router {id} is gone"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        matches!(m.child.try_wait(), Ok(None)),
        "the monitor stopped with its router"
    );
    m.interrupt();
    let (status, out, err) = m.finish();
    assert!(status.success(), "{status}: {err}");
    let (events, summary) = parse(&out);
    assert!(
        events
            .iter()
            .any(|e| e["router"] == id.as_str() && e["reason"] == "drop/tcp-invalid"),
        "no drop of the router applied later: {events:#?}"
    );
    assert_eq!(summary["stopped"], "signal", "{summary:#}");
    assert!(summary["lost"].get(&id).is_some(), "{summary:#}");
}

fn iptables_plane_is_refused(plane: Dataplane) {
    let rig = Rig::article(plane);
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["--config", &cfg, "monitor", "--duration", "1"]);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("the data plane is iptables")
            && out.stderr.contains("needs an eBPF data plane"),
        "{}",
        out.describe()
    );
}
