//! What an operator runs the daemon with: the systemd units (they verify,
//! and their capabilities are enough), systemd's notifications, and the
//! Prometheus endpoint (off by default; counters that follow traffic).

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use router_user::backend::netns;
use tests::{
    Checks, Dataplane, Rig, TcpServer, TempDir, UdpServer, article::*, cmd, names, sa, tcp_request,
    udp_request, xrouter_bin, xrouter_plain,
};

// The endpoint's port: each rig's node namespace is its own, so any port
// is free there.
const PORT: u16 = 9793;
const TCP: u16 = 8080;
const UDP: u16 = 8081;
const UNITS: [&str; 2] = ["xrouter.service", "xrouter-agent.service"];

tests::ebpf_only!(metrics_follow_forwarded_traffic);
tests::iptables_only!(metrics_serve_applies_and_only_get_metrics);

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(name)
}

/// The directive lines of a unit (comments and blank lines left out).
fn directives(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect()
}

/// Both units pass `systemd-analyze verify` without a word (with the path
/// of the binary under test in place of the installed one, which the
/// verification requires to exist), and hold the directives the daemon
/// relies on.
#[test]
fn systemd_units_verify_clean() {
    let mut c = Checks::new("systemd_units_verify_clean");
    let dir = TempDir::new(&format!("units-{}", names::tag()));
    let mut copies = Vec::new();
    for u in UNITS {
        let text = std::fs::read_to_string(unit_path(u)).expect("reading the unit");
        let lines = directives(&text);
        for want in [
            "Type=notify",
            "KillMode=process",
            "Restart=on-failure",
            "NotifyAccess=main",
        ] {
            c.ok(lines.contains(&want), &format!("{u}: {want}"), &lines);
        }
        c.ok(
            lines
                .iter()
                .any(|l| l.starts_with("ExecReload=/usr/local/bin/xrouter reload ")),
            &format!("{u}: ExecReload runs xrouter reload"),
            &lines,
        );
        // Each would give the service a mount namespace of its own, whose
        // /run/netns bind mounts never reach the node.
        for banned in [
            "PrivateNetwork",
            "PrivateMounts",
            "PrivateTmp",
            "ProtectSystem",
            "ProtectHome",
            "ReadWritePaths",
            "PrivateDevices",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectControlGroups",
        ] {
            c.ok(
                !lines.iter().any(|l| l.starts_with(&format!("{banned}="))),
                &format!("{u}: no {banned}"),
                &lines,
            );
        }
        let copy = dir.path().join(u);
        std::fs::write(
            &copy,
            text.replace(
                "/usr/local/bin/xrouter",
                &xrouter_bin().display().to_string(),
            ),
        )
        .unwrap();
        copies.push(copy);
    }
    // The capability test runs the daemon with xrouter.service's set.
    let sets: Vec<Option<String>> = UNITS
        .iter()
        .map(|u| {
            let text = std::fs::read_to_string(unit_path(u)).unwrap();
            directives(&text)
                .iter()
                .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
                .map(str::to_string)
        })
        .collect();
    c.ok(
        sets[0].is_some() && sets[0] == sets[1],
        "both units have the same CapabilityBoundingSet",
        &sets,
    );
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").args(&copies);
    let out = cmd::run(&mut verify, Duration::from_secs(60)).expect("systemd-analyze");
    c.ok(
        out.success() && out.combined().trim().is_empty(),
        "systemd-analyze verify: clean",
        out.describe(),
    );
    c.finish();
}

/// Messages to a unix datagram socket the test owns, as systemd's
/// `NOTIFY_SOCKET`, each with whether the router was built and the
/// control socket there when it came.
struct Notifications {
    rx: mpsc::Receiver<(String, bool)>,
    _thread: thread::JoinHandle<()>,
}

impl Notifications {
    fn listen(rig: &mut Rig) -> Notifications {
        let path = rig.dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("binding the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        rig.env
            .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
        let (ns, control) = (rig.router_ns(), rig.socket_path());
        let (tx, rx) = mpsc::channel();
        let t = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        // Checked at once, before anything else can build.
                        let built = netns::exists(&ns) && control.exists();
                        if tx.send((msg, built)).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        // The receiver gone: the test is over.
                        if tx.send((String::new(), false)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Notifications { rx, _thread: t }
    }

    /// Every message (but STATUS-only ones) that came within `wait`.
    fn take(&self, wait: Duration) -> Vec<(String, bool)> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok((m, built)) if m.lines().any(|l| !l.starts_with("STATUS=")) => {
                    out.push((m, built))
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        out
    }
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// The RELOADING / READY states among notifications, in order.
fn reload_states<T>(msgs: &[(String, T)]) -> Vec<&'static str> {
    msgs.iter()
        .filter_map(|(m, _)| {
            if has(m, "RELOADING=1") {
                Some("RELOADING")
            } else if has(m, "READY=1") {
                Some("READY")
            } else {
                None
            }
        })
        .collect()
}

/// Under systemd (`Type=notify`): READY=1 comes once the routers are built
/// and the control socket answers, not before; a reload is bracketed by
/// RELOADING=1 (with its MONOTONIC_USEC) and READY=1; a stop says
/// STOPPING=1.
#[test]
fn systemd_hears_ready_after_the_first_apply_and_around_reloads() {
    let mut c = Checks::new("systemd_hears_ready_after_the_first_apply_and_around_reloads");
    let mut rig = Rig::new(Dataplane::Iptables);
    let n = Notifications::listen(&mut rig);
    rig.start();
    let first = n.take(Duration::from_secs(2));
    let ready: Vec<&(String, bool)> = first.iter().filter(|(m, _)| has(m, "READY=1")).collect();
    c.eq("one READY=1 after the start", ready.len(), 1);
    c.ok(
        ready.iter().all(|(_, built)| *built),
        "READY=1 only once the router namespace and the control socket exist",
        &first,
    );
    c.ok(
        ready
            .iter()
            .all(|(m, _)| m.lines().any(|l| l.starts_with("STATUS=1 router up"))),
        "READY=1 comes with a status naming the routers up",
        &first,
    );
    c.ok(
        first.first().is_some_and(|(m, _)| has(m, "READY=1")),
        "nothing before READY=1",
        &first,
    );

    let out = rig.reload();
    c.ok(out.success(), "xrouter reload", out.describe());
    // The routers file written anew may also be seen changed on disk: a
    // reload of its own, bracketed alike.
    let around = n.take(Duration::from_millis(2500));
    let states = reload_states(&around);
    c.ok(
        !states.is_empty()
            && states.len().is_multiple_of(2)
            && states
                .chunks(2)
                .all(|p| p == ["RELOADING", "READY"].as_slice()),
        "the reload is RELOADING=1 then READY=1",
        &around,
    );
    c.ok(
        around
            .iter()
            .filter(|(m, _)| has(m, "RELOADING=1"))
            .all(|(m, _)| m.lines().any(|l| l.starts_with("MONOTONIC_USEC="))),
        "RELOADING=1 carries MONOTONIC_USEC",
        &around,
    );

    rig.stop_daemon();
    let last = n.take(Duration::from_millis(500));
    c.ok(
        last.iter().any(|(m, _)| has(m, "STOPPING=1")),
        "STOPPING=1 on SIGTERM",
        &last,
    );
    c.finish();
}

/// The TCP sockets process `pid` listens on in its network namespace, as
/// `address:port` (`/proc/PID/net/tcp` and `tcp6`, the sockets matched by
/// inode with the process's descriptors).
fn listening(pid: u32) -> Vec<String> {
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    let mut out = Vec::new();
    for (table, v6) in [("tcp", false), ("tcp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" || !fds.contains(&format!("socket:[{}]", f[9])) {
                continue;
            }
            let Some((addr, port)) = f[1].split_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16).unwrap_or(0);
            let addr = if v6 {
                // Four 32-bit words, each in host order.
                let mut b = [0u8; 16];
                for i in 0..4 {
                    let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).unwrap_or(0);
                    b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
                }
                format!("[{}]", std::net::Ipv6Addr::from(b))
            } else {
                let w = u32::from_str_radix(addr, 16).unwrap_or(0);
                std::net::Ipv4Addr::from(w.to_le_bytes()).to_string()
            };
            out.push(format!("{addr}:{port}"));
        }
    }
    out
}

/// Without `metrics_address` the daemon listens on no TCP port of the
/// node (the metadata proxy listens in the router namespaces only).
#[test]
fn metrics_are_off_by_default() {
    let mut c = Checks::new("metrics_are_off_by_default");
    let mut rig = Rig::new(Dataplane::Iptables);
    rig.start();
    let pid = rig.daemon_pid().expect("daemon running");
    c.eq(
        "TCP sockets the daemon listens on in the node namespace",
        listening(pid),
        Vec::<String>::new(),
    );
    // The endpoint's usual port answers nothing.
    let out = curl(&rig, &["http://127.0.0.1:9793/metrics"]);
    c.ok(!out.success(), "nothing answers on 9793", out.describe());
    c.finish();
}

/// A bad `metrics_address` is refused naming the key and the value, by
/// `check` and `run` (before anything is built); so is a bad
/// `--metrics-address`.
#[test]
fn a_bad_metrics_address_is_refused() {
    let mut c = Checks::new("a_bad_metrics_address_is_refused");
    let rig = Rig::new(Dataplane::Iptables);
    let routers = rig.dir.join("routers.json");
    std::fs::write(&routers, "[]").unwrap();
    let node = rig.dir.join("bad.toml");
    let (node_s, routers_s) = (node.display().to_string(), routers.display().to_string());
    for (value, why) in [
        ("localhost:9793", "not an IP address and port"),
        ("127.0.0.1", "not an IP address and port"),
        ("127.0.0.1:0", "port 0"),
    ] {
        std::fs::write(
            &node,
            format!(
                "state_dir = \"{}\"\npin_dir = \"{}\"\ndataplane = \"iptables\"\nmetrics_address = \"{value}\"\n",
                rig.dir.display(),
                rig.pin_dir.display()
            ),
        )
        .unwrap();
        for cmd in [
            vec!["--config", &node_s, "check", "--routers", &routers_s],
            vec!["--config", &node_s, "run", "--routers", &routers_s],
        ] {
            let what = format!("metrics_address = {value:?}: xrouter {}", cmd[2]);
            let out = rig.xrouter(&cmd);
            c.eq(&format!("{what}: exits 1"), out.code, Some(1));
            c.ok(
                [node_s.as_str(), "metrics_address", value, why]
                    .iter()
                    .all(|n| out.stderr.contains(n)),
                &format!("{what}: names the file, the key, the value and why"),
                &out.stderr,
            );
            c.ok(
                !rig.socket_path().exists(),
                &format!("{what}: no control socket"),
                (),
            );
        }
    }
    let out = xrouter_plain(&[
        "run",
        "--routers",
        "/nonexistent",
        "--metrics-address",
        "localhost:9793",
    ]);
    c.eq(
        "--metrics-address localhost:9793: exits 2",
        out.code,
        Some(2),
    );
    c.ok(
        [
            "--metrics-address",
            "localhost:9793",
            "not an IP address and port",
        ]
        .iter()
        .all(|n| out.stderr.contains(n)),
        "--metrics-address: names the option, the value and why",
        &out.stderr,
    );
    c.finish();
}

/// `curl ARGS` in the rig's node namespace (bounded).
fn curl(rig: &Rig, args: &[&str]) -> tests::Out {
    let mut a = vec!["-sS", "-m", "10", "--fail-with-body"];
    a.extend_from_slice(args);
    cmd::exec(&rig.node, "curl", &a, Duration::from_secs(15)).expect("running curl")
}

/// One scrape of the rig's endpoint.
fn scrape(rig: &Rig) -> String {
    let out = curl(rig, &[&format!("http://127.0.0.1:{PORT}/metrics")]);
    assert!(out.success(), "scraping: {}", out.describe());
    out.stdout
}

/// The value of sample `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .then(|| value.parse().ok())
        .flatten()
    })
}

/// A rig whose daemon serves metrics at 127.0.0.1:PORT of its node
/// namespace, with the article's hosts.
fn metrics_rig(plane: Dataplane) -> Rig {
    let mut rig = Rig::new(plane);
    rig.extra_config
        .push(format!("metrics_address = \"127.0.0.1:{PORT}\""));
    rig.start();
    rig.article_hosts(&[]);
    rig
}

/// Traffic through the router (SNAT and floating IP, TCP and UDP).
fn traffic(rig: &Rig, c: &mut Checks) {
    let (vm1, vm2) = (rig.ns("vm1"), rig.ns("vm2"));
    for i in 0..5 {
        c.reply(
            &format!("TCP vm1 -> ext #{i}"),
            tcp_request(&vm1, sa(EXT_HOST, TCP)),
            "ext",
            QG,
        );
        c.reply(
            &format!("UDP vm2 -> ext #{i}"),
            udp_request(&vm2, None, sa(EXT_HOST, UDP)),
            "ext",
            FIP,
        );
    }
}

/// On the eBPF planes the forwarded counters of the router move with the
/// traffic sent through it, agree with `show stats`, and the connection
/// tables' fill and capacity are there.
fn metrics_follow_forwarded_traffic(plane: Dataplane) {
    let mut c = Checks::new("metrics_follow_forwarded_traffic");
    let rig = metrics_rig(plane);
    let _servers = (
        TcpServer::start(&rig.ns("ext"), "ext", TCP).unwrap(),
        UdpServer::start(&rig.ns("ext"), "ext", UDP).unwrap(),
    );
    let id = rig.router().id.clone();
    let forwarded = |text: &str| {
        ["xdp", "tc"]
            .iter()
            .map(|h| {
                sample(
                    text,
                    "xrouter_forwarded_packets_total",
                    &[("router", &id), ("hook", h)],
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let before = scrape(&rig);
    c.ok(
        before.contains("# TYPE xrouter_forwarded_packets counter"),
        "the forwarded counters are served",
        &before,
    );
    traffic(&rig, &mut c);
    let after = scrape(&rig);
    let stats = rig.stats_json();
    let (b, a) = (forwarded(&before), forwarded(&after));
    // Each TCP exchange is several packets each way, each UDP one two.
    c.ok(
        a >= b + 20.0,
        "xrouter_forwarded_packets_total of the router grew with the traffic",
        (b, a),
    );
    let shown = ["forwarded/xdp", "forwarded/tc"]
        .iter()
        .map(|k| stats[k]["packets"].as_u64().unwrap_or(0) as f64)
        .sum::<f64>();
    c.ok(
        a <= shown && a > 0.0,
        "what /metrics says is what show stats says (read after it)",
        (a, shown),
    );
    c.ok(
        sample(&after, "xrouter_conntrack_max_entries", &[("router", &id)])
            .is_some_and(|m| m > 0.0),
        "the connection table's capacity",
        &after,
    );
    c.ok(
        sample(&after, "xrouter_conntrack_slots_in_use", &[("router", &id)])
            .is_some_and(|m| m >= 0.0),
        "the connection table's slots in use",
        &after,
    );
    for table in ["established", "embryonic"] {
        c.ok(
            sample(
                &after,
                "xrouter_conntrack_entries",
                &[("router", &id), ("table", table)],
            )
            .is_some(),
            &format!("the {table} table's entries"),
            &after,
        );
    }
    c.ok(
        sample(
            &after,
            "xrouter_conntrack_events_total",
            &[("router", &id), ("event", "created")],
        )
        .is_some_and(|n| n >= 1.0),
        "connections created are counted",
        &after,
    );
    c.ok(
        sample(&after, "xrouter_info", &[("dataplane", &plane.to_string())]) == Some(1.0),
        "xrouter_info names the data plane",
        &after,
    );
    // The GC's passes (one starts within a second, small tables end it).
    let passed = cmd::wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        sample(&scrape(&rig), "xrouter_conntrack_gc_passes_total", &[]).is_some_and(|n| n >= 1.0)
    });
    let text = scrape(&rig);
    c.ok(passed, "the connection GC's passes are counted", &text);
    c.ok(
        sample(&text, "xrouter_conntrack_gc_scanned_entries", &[]).is_some()
            && sample(
                &text,
                "xrouter_conntrack_gc_last_pass_duration_seconds",
                &[],
            )
            .is_some_and(|s| s > 0.0),
        "what the last pass read and how long it took",
        &text,
    );
    c.finish();
}

/// On the iptables plane the endpoint serves the apply figures (and no
/// BPF counters); it answers GET /metrics only, 404 elsewhere, 405 for
/// another method, and survives a garbage request and an oversized head.
/// It listens on the address written, exactly.
fn metrics_serve_applies_and_only_get_metrics(plane: Dataplane) {
    let mut c = Checks::new("metrics_serve_applies_and_only_get_metrics");
    let mut rig = Rig::new(plane);
    rig.extra_config
        .push(format!("metrics_address = \"127.0.0.1:{PORT}\""));
    // The router's first apply fails: a device of the node has the name of
    // its port on net2 (see changes.rs, failed_first_apply_then_cleanup).
    let obstacle = rig.router().qr("net2");
    tests::ip(
        &rig.node,
        &format!("link add {obstacle} type veth peer name xo{}", rig.tag),
    )
    .expect("a veth named as the router's port on net2");
    rig.start();
    let id = rig.router().id.clone();
    let pid = rig.daemon_pid().expect("daemon running");
    c.eq(
        "the daemon listens on the address written, only",
        listening(pid),
        vec![format!("127.0.0.1:{PORT}")],
    );
    let text = scrape(&rig);
    c.ok(
        sample(&text, "xrouter_router_apply_duration_seconds_count", &[]).is_some_and(|n| n >= 1.0),
        "the first apply is in the apply histogram",
        &text,
    );
    c.ok(
        sample(
            &text,
            "xrouter_router_apply_failures_total",
            &[("router", &id)],
        )
        .is_some_and(|n| n >= 1.0)
            && sample(&text, "xrouter_routers", &[("state", "failed")]) == Some(1.0),
        "the failed apply is counted for the router",
        &text,
    );
    c.ok(
        !text.contains("xrouter_forwarded_packets"),
        "no BPF counters on the iptables plane",
        &text,
    );
    // Once the obstacle is gone, the next resync applies the router.
    tests::ip(&rig.node, &format!("link del {obstacle}")).expect("removing the obstacle");
    let applied = cmd::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        sample(&scrape(&rig), "xrouter_routers", &[("state", "applied")]) == Some(1.0)
    });
    c.ok(applied, "the router applied at a resync", scrape(&rig));

    let url = |p: &str| format!("http://127.0.0.1:{PORT}{p}");
    let node = rig.node.clone();
    let code = |args: &[&str]| {
        let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend_from_slice(args);
        let out = cmd::exec(
            &node,
            "curl",
            &[&["-sS", "-m", "10"], a.as_slice()].concat(),
            Duration::from_secs(15),
        )
        .unwrap();
        out.stdout.trim().to_string()
    };
    c.eq("GET / is 404", code(&[&url("/")]), "404".into());
    c.eq(
        "GET /metrics/x is 404",
        code(&[&url("/metrics/x")]),
        "404".into(),
    );
    c.eq(
        "POST /metrics is 405",
        code(&["-X", "POST", "-d", "x", &url("/metrics")]),
        "405".into(),
    );
    let garbage = cmd::exec(
        &rig.node,
        "sh",
        &[
            "-c",
            &format!("printf 'NOT HTTP AT ALL\\r\\n\\r\\n' | socat -t2 - TCP:127.0.0.1:{PORT}"),
        ],
        Duration::from_secs(10),
    )
    .unwrap();
    c.ok(
        garbage.stdout.starts_with("HTTP/1.1 400"),
        "a garbage request is a 400",
        garbage.describe(),
    );
    let big = format!("X-Big: {}", "a".repeat(64 * 1024));
    let out = code(&["-H", &big, &url("/metrics")]);
    c.ok(out != "200", "a 64 KiB request head is refused", &out);
    c.ok(rig.daemon_alive(), "the daemon is still running", ());
    c.eq(
        "GET /metrics still answers",
        code(&[&url("/metrics")]),
        "200".into(),
    );
    c.finish();
}

/// The capabilities of the units' CapabilityBoundingSet, for `setpriv`.
fn unit_capabilities() -> String {
    let text = std::fs::read_to_string(unit_path("xrouter.service")).unwrap();
    let caps: Vec<String> = directives(&text)
        .iter()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

/// The daemon started with the units' capabilities and nothing else (as
/// systemd would, by `setpriv`), no new privileges: it builds the router,
/// forwards through SNAT and the floating IP, reloads and stops.
fn the_units_capabilities_suffice(plane: Dataplane) {
    let mut c = Checks::new("the_units_capabilities_suffice");
    let mut rig = Rig::new(plane);
    let caps = unit_capabilities();
    rig.wrapper = vec![
        "setpriv".into(),
        format!("--bounding-set={caps}"),
        "--inh-caps=-all".into(),
        "--no-new-privs".into(),
        "--".into(),
    ];
    rig.extra_config
        .push(format!("metrics_address = \"127.0.0.1:{PORT}\""));
    rig.start();
    rig.article_hosts(&[]);
    let pid = rig.daemon_pid().expect("daemon running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let all = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    c.ok(
        eff == all && u64::from_str_radix(&eff, 16).is_ok_and(|m| m.count_ones() <= 8),
        "the daemon runs with the unit's capabilities only",
        (&eff, &all, &caps),
    );
    let _servers = (
        TcpServer::start(&rig.ns("ext"), "ext", TCP).unwrap(),
        UdpServer::start(&rig.ns("ext"), "ext", UDP).unwrap(),
    );
    traffic(&rig, &mut c);
    rig.assert_fast_path(&mut c);
    // Neutron's metadata agent's socket is the neutron user's, not root's
    // (here nobody's), mode 0644 as its `metadata_proxy_socket_mode`
    // "user" makes it.
    let _agent = tests::MetadataAgent::start(&rig.metadata_socket());
    let sock = rig.metadata_socket();
    std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let f = tests::metadata_agent::curl(&rig.ns("vm1"), tests::metadata_agent::METADATA_URL, &[]);
    c.eq(
        "a VM's metadata request reaches the metadata agent's socket of another user",
        f.status,
        200,
    );
    let out = rig.reload();
    c.ok(out.success(), "xrouter reload", out.describe());
    c.reply(
        "TCP vm1 -> ext after the reload",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    let text = scrape(&rig);
    c.ok(
        sample(&text, "xrouter_routers", &[("state", "applied")]) == Some(1.0),
        "metrics served",
        &text,
    );
    let log = rig.daemon_log();
    c.ok(
        !log.contains("Operation not permitted") && !log.contains("EPERM"),
        "nothing was refused for want of a capability",
        &log,
    );
    c.ok(
        rig.stop_daemon().is_some_and(|s| s.success()),
        "the daemon stops cleanly",
        rig.daemon_log(),
    );
    c.finish();
}

mod capabilities {
    #[test]
    fn tc() {
        super::the_units_capabilities_suffice(tests::Dataplane::Tc);
    }
    #[test]
    fn xdp() {
        super::the_units_capabilities_suffice(tests::Dataplane::Xdp);
    }
    #[test]
    fn iptables() {
        super::the_units_capabilities_suffice(tests::Dataplane::Iptables);
    }
}

/// Agent mode: READY=1 once the first full sync with neutron-server has
/// built the router; a reload (a full sync) is bracketed by RELOADING=1
/// and READY=1; the endpoint serves the RPC figures, a broker restart
/// among them.
#[test]
fn agent_is_ready_after_its_first_sync_and_serves_rpc_metrics() {
    let mut c = Checks::new("agent_is_ready_after_its_first_sync_and_serves_rpc_metrics");
    let mut rig = Rig::new(Dataplane::Iptables);
    rig.extra_config
        .push(format!("metrics_address = \"127.0.0.1:{PORT}\""));
    let n = Notifications::listen(&mut rig);
    rig.start_agent();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !got.iter().any(|(m, _): &(String, bool)| has(m, "READY=1"))
    {
        got.extend(n.take(Duration::from_millis(200)));
    }
    let ready: Vec<&(String, bool)> = got.iter().filter(|(m, _)| has(m, "READY=1")).collect();
    c.eq("READY=1 after the first sync", ready.len(), 1);
    c.ok(
        ready.iter().all(|(_, built)| *built),
        "READY=1 only once the router namespace exists",
        &got,
    );
    // Reports go every second (report_interval = 1).
    let reported = cmd::wait_until(Duration::from_secs(10), Duration::from_millis(250), || {
        sample(
            &scrape(&rig),
            "xrouter_agent_state_reports_total",
            &[("result", "sent")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    let text = scrape(&rig);
    c.ok(reported, "state reports are counted", &text);
    c.ok(
        sample(
            &text,
            "xrouter_agent_full_syncs_total",
            &[("result", "done")],
        )
        .is_some_and(|n| n >= 1.0),
        "the full sync is counted",
        &text,
    );
    c.ok(
        sample(&text, "xrouter_agent_last_full_sync_duration_seconds", &[])
            .is_some_and(|s| s > 0.0),
        "the last full sync's duration",
        &text,
    );
    c.ok(
        sample(&text, "xrouter_agent_connected", &[]) == Some(1.0),
        "connected to the message bus",
        &text,
    );
    c.ok(
        sample(&text, "xrouter_info", &[("mode", "agent")]) == Some(1.0),
        "xrouter_info says agent mode",
        &text,
    );
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["reload", "--config", &cfg]);
    c.ok(
        out.success(),
        "xrouter reload (a full sync)",
        out.describe(),
    );
    let around = n.take(Duration::from_millis(500));
    let states = reload_states(&around);
    c.eq(
        "the reload is RELOADING=1 then READY=1",
        states,
        vec!["RELOADING", "READY"],
    );
    // A lost message bus: counted once the agent is connected again.
    rig.broker.as_mut().unwrap().restart();
    let back = cmd::wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        let t = scrape(&rig);
        sample(&t, "xrouter_agent_reconnects_total", &[]).is_some_and(|n| n >= 1.0)
            && sample(&t, "xrouter_agent_connected", &[]) == Some(1.0)
            && sample(&t, "xrouter_agent_full_syncs_total", &[("result", "done")])
                .is_some_and(|n| n >= 3.0)
    });
    c.ok(
        back,
        "after a broker restart: one reconnect, connected, a full sync more",
        scrape(&rig),
    );
    c.finish();
}

/// Under systemd the log goes to the journal, each router's events with
/// the router as a field (`ROUTER=<id>`) and a message that names it. Run
/// with a journald of its own: in a mount, network and PID namespace of
/// the test (a tmpfs on /run holds the journal's sockets and files, and
/// the router namespaces; the node's interfaces are the new network
/// namespace's), so everything ends with the namespace's first process.
#[test]
fn the_journal_gets_each_router_event_with_its_router_field() {
    let mut c = Checks::new("the_journal_gets_each_router_event_with_its_router_field");
    let dir = TempDir::new(&format!("journal-{}", names::tag()));
    let d = dir.path().display().to_string();
    let ext = tests::Network::new("ext", EXT, Some(EXT_GW));
    let net1 = tests::Network::new("net1", NET1, Some(QR1));
    let net2 = tests::Network::new("net2", NET2, Some(QR2));
    let router = tests::RouterSpec::article(&names::tag(), &ext, &net1, &net2);
    std::fs::write(
        dir.path().join("routers.json"),
        serde_json::to_string(&tests::routers_json(std::slice::from_ref(&router))).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "state_dir = \"{d}/state\"\npin_dir = \"/sys/fs/bpf/xrt-journal\"\n\
             dataplane = \"iptables\"\nsend_garp = false\nenable_metadata_proxy = false\n"
        ),
    )
    .unwrap();
    // journald writes to /run/log/journal (the tmpfs) since nothing has
    // asked it to flush to /var.
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal /run/netns /run/log/journal
ip link set lo up
/lib/systemd/systemd-journald > {d}/journald.out 2>&1 &
for i in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
exec 2> {d}/stderr
export JOURNAL_STREAM=$(stat -L -c '%d:%i' /proc/self/fd/2)
{bin} run --config {d}/node.toml --routers {d}/routers.json &
for i in $(seq 100); do [ -S {d}/state/xrouter.sock ] && break; sleep 0.1; done
journalctl -D /run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=xrouter > {d}/journal.json
"#,
        bin = xrouter_bin().display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]);
    let out = cmd::run(&mut cmd, Duration::from_secs(60)).expect("unshare");
    c.ok(
        out.success(),
        "the daemon ran beside a journald",
        out.describe(),
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    let entries: Vec<serde_json::Value> = read("journal.json")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let created = format!("created namespace {}", router.namespace());
    c.ok(
        entries.iter().any(|e| {
            e["ROUTER"] == router.id.as_str() && e["MESSAGE"].as_str() == Some(created.as_str())
        }),
        "the router's change is in the journal with ROUTER=<id> and a message naming it",
        (&entries.len(), read("journald.out")),
    );
    c.ok(
        entries.iter().any(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("router up"))
        }),
        "the daemon's own events are there too",
        entries.len(),
    );
    c.eq("nothing on standard error", read("stderr"), String::new());
    c.finish();
}
