//! The metadata proxy as VMs and operators see it: what reaches the
//! metadata agent (a stand-in echoing what it got, on the unix socket the
//! node config names), spoofing attempts, tenants with the same addresses,
//! a missing agent, slow and greedy clients, and restarts of the daemon
//! with requests under way.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use router_user::backend::netns;
use tests::{
    Checks, Dataplane, MetadataAgent, PortSpec, Rig, RouterSpec,
    article::*,
    cmd, header_values,
    metadata_agent::{METADATA_URL, curl},
};

tests::planes!(
    headers_cannot_be_spoofed,
    overlapping_tenants_get_their_own_router,
    agent_down_is_answered_at_once,
    slow_clients_do_not_block_others,
    rate_limit_answers_429,
    restart_loses_no_request,
    rebuilt_namespace_gets_its_listener_back,
    port_change_across_a_restart,
    port_held_by_another_program,
    stop_answers_requests_the_agent_sits_on,
);

// Through Open vSwitch (a userspace datapath: slower, more in flight).
tests::ovs_planes!(restart_loses_no_request);

/// A VM's own X-Neutron-Router-ID, X-Neutron-Network-ID and
/// X-Forwarded-For never reach the agent; keep-alive works.
fn headers_cannot_be_spoofed(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("headers_cannot_be_spoofed");
    let f = curl(
        &rig.ns("vm1"),
        METADATA_URL,
        &[
            "-H",
            "X-Neutron-Router-ID: 00000000-0000-0000-0000-000000000000",
            "-H",
            "X-Neutron-Network-ID: 11111111-1111-1111-1111-111111111111",
            "-H",
            "X-Forwarded-For: 91.1.180.14",
            // What a WSGI server reads as the same headers.
            "-H",
            "X_Neutron_Router_ID: 00000000-0000-0000-0000-000000000000",
            "-H",
            "X_Forwarded_For: 91.1.180.14",
            "-H",
            "x_neutron_network_id: 11111111-1111-1111-1111-111111111111",
        ],
    );
    c.eq("answered", f.status, 200);
    let e = f.echo();
    c.eq(
        "X-Forwarded-For is vm1's address alone",
        header_values(&e, "X-Forwarded-For"),
        vec![VM1.to_string()],
    );
    c.eq(
        "X-Neutron-Router-ID is the router's alone",
        header_values(&e, "X-Neutron-Router-ID"),
        vec![rig.router().id.clone()],
    );
    c.eq(
        "no X-Neutron-Network-ID",
        header_values(&e, "X-Neutron-Network-ID"),
        Vec::<String>::new(),
    );
    for h in [
        "X_Neutron_Router_ID",
        "X_Forwarded_For",
        "X_Neutron_Network_ID",
    ] {
        c.eq(
            &format!("no {h}"),
            header_values(&e, h),
            Vec::<String>::new(),
        );
    }
    // A VM that closes its sending side once its request is out still
    // gets the answer.
    let half = netns::run_in(Some(&rig.ns("vm1")), || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(
            &"169.254.169.254:80".parse().unwrap(),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap();
    c.ok(
        half.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 200")),
        "a half-closed request is answered",
        &half,
    );
    // Bounded requests: a head over 16 KiB, a body over 1 MiB.
    let big = format!("X-Big: {}", "a".repeat(20_000));
    c.eq(
        "a request head over 16 KiB: 431",
        curl(&rig.ns("vm1"), METADATA_URL, &["-H", &big]).status,
        431,
    );
    let body = rig.dir.join("body");
    std::fs::write(&body, vec![b'x'; 2 << 20]).unwrap();
    let at = format!("@{}", body.display());
    c.eq(
        "a body over 1 MiB: 413",
        curl(&rig.ns("vm1"), METADATA_URL, &["--data-binary", &at]).status,
        413,
    );
    // Two requests on one connection: the second reuses it.
    let out = cmd::exec(
        &rig.ns("vm1"),
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-m",
            "10",
            "-w",
            "%{http_code} %{num_connects}\n",
            METADATA_URL,
            "http://169.254.169.254/openstack/latest/meta_data.json",
        ],
        Duration::from_secs(15),
    )
    .unwrap();
    c.eq(
        "keep-alive: two answers, one connection",
        out.stdout.lines().collect::<Vec<_>>(),
        vec!["200 1", "200 0"],
    );
    c.finish();
}

/// Two routers whose tenant networks have the same prefix and VMs with
/// the same address: each VM's request names its own router.
fn overlapping_tenants_get_their_own_router(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.routers.clear();
    let mut ids = vec![];
    for t in ["ta", "tb"] {
        let net = rig.add_network(t, "10.9.0.0/24", Some("10.9.0.1"));
        let mut r = RouterSpec::empty(&rig.tag);
        r.interfaces.push(PortSpec::new(&net, "10.9.0.1"));
        ids.push(r.id.clone());
        rig.routers.push(r);
    }
    rig.start();
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("overlapping_tenants_get_their_own_router");
    for (t, id) in ["ta", "tb"].iter().zip(&ids) {
        let vm = rig.vm(&format!("vm{t}"), t, "10.9.0.5/24", "10.9.0.1");
        let f = curl(&vm.ns, METADATA_URL, &[]);
        c.eq(&format!("{t}: answered"), f.status, 200);
        let e = f.echo();
        c.eq(
            &format!("{t}: the request names its own router"),
            header_values(&e, "X-Neutron-Router-ID"),
            vec![id.clone()],
        );
        c.eq(
            &format!("{t}: from 10.9.0.5"),
            header_values(&e, "X-Forwarded-For"),
            vec!["10.9.0.5".to_string()],
        );
    }
    c.finish();
}

/// No metadata agent on the socket: the VM gets 503 at once (not after a
/// timeout), logged once; when the agent comes, requests are answered.
fn agent_down_is_answered_at_once(plane: Dataplane) {
    let rig = Rig::article(plane);
    let mut c = Checks::new("agent_down_is_answered_at_once");
    for i in 0..3 {
        let t0 = Instant::now();
        let f = curl(&rig.ns("vm1"), METADATA_URL, &[]);
        c.eq(&format!("request {i}: 503"), f.status, 503);
        c.ok(
            t0.elapsed() < Duration::from_secs(5),
            &format!("request {i}: answered within 5 s"),
            t0.elapsed(),
        );
        c.ok(
            f.body.contains("503 Service Unavailable"),
            "an error page",
            &f.body,
        );
    }
    let log = rig.daemon_log();
    c.eq(
        "the failure is logged once",
        log.matches("metadata request failed").count(),
        1,
    );
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    c.eq(
        "the agent back: answered",
        curl(&rig.ns("vm1"), METADATA_URL, &[]).status,
        200,
    );
    c.finish();
}

/// Opens `n` connections from `ns` to `dst` that send half a request head
/// and then nothing.
fn slow_clients(ns: &str, dst: SocketAddr, n: usize) -> Vec<TcpStream> {
    netns::run_in(Some(ns), move || {
        (0..n)
            .filter_map(|_| {
                let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).ok()?;
                s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n")
                    .ok()?;
                Some(s)
            })
            .collect()
    })
    .unwrap()
}

/// 200 clients that never finish their request head neither block the
/// others nor stay connected past `metadata_timeout_http_request`.
fn slow_clients_do_not_block_others(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.extra_config
        .push("metadata_timeout_http_request = 2".into());
    rig.start();
    rig.article_hosts(&[]);
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("slow_clients_do_not_block_others");
    let dst: SocketAddr = "169.254.169.254:80".parse().unwrap();
    let mut slow = slow_clients(&rig.ns("vm1"), dst, 200);
    c.eq("200 slow connections open", slow.len(), 200);
    let t0 = Instant::now();
    let f = curl(&rig.ns("vm2"), METADATA_URL, &[]);
    c.eq("vm2 is answered meanwhile", f.status, 200);
    c.ok(
        t0.elapsed() < Duration::from_secs(2),
        "vm2 answered within 2 s",
        t0.elapsed(),
    );
    // Each slow one is closed by the proxy once its 2 s are up.
    let s = &mut slow[0];
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut buf = [0u8; 256];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => true, // an error page before closing
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    c.ok(closed, "a slow connection is closed by the proxy", ());
    c.finish();
}

/// With the rate limit on (3 requests a window here), a source's fourth
/// request gets 429; another source is not affected.
fn rate_limit_answers_429(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.extra_config.extend([
        "metadata_rate_limit = true".to_string(),
        "metadata_base_rate_limit = 3".to_string(),
        "metadata_burst_rate_limit = 3".to_string(),
        "metadata_base_window = 60".to_string(),
        "metadata_burst_window = 60".to_string(),
    ]);
    rig.start();
    rig.article_hosts(&[]);
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("rate_limit_answers_429");
    let got: Vec<u16> = (0..5)
        .map(|_| curl(&rig.ns("vm1"), METADATA_URL, &[]).status)
        .collect();
    c.eq(
        "vm1: three answered, then 429",
        got,
        vec![200, 200, 200, 429, 429],
    );
    c.eq(
        "vm2 is not limited by vm1's requests",
        curl(&rig.ns("vm2"), METADATA_URL, &[]).status,
        200,
    );
    c.finish();
}

/// Requests keep coming while the daemon stops and starts again: every
/// one is answered (those under way by the old daemon, those queued
/// meanwhile by the new one); the listeners held in between are released
/// by `cleanup`.
fn restart_loses_no_request(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let agent = MetadataAgent::start(&rig.metadata_socket());
    agent.set_delay(Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (ns, stop) = (rig.ns("vm1"), stop.clone());
            thread::spawn(move || {
                let mut got = vec![];
                // Bounded: at most 200 requests, stopped sooner.
                for _ in 0..200 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let f = curl(&ns, METADATA_URL, &[]);
                    got.push((f.status, f.out.stderr.clone()));
                }
                got
            })
        })
        .collect();
    let mut c = Checks::new("restart_loses_no_request");
    for _ in 0..2 {
        thread::sleep(Duration::from_millis(800));
        let st = rig.stop_daemon();
        c.ok(
            st.is_some_and(|s| s.success()),
            "the daemon stopped cleanly",
            st,
        );
        rig.start();
    }
    thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let got: Vec<(u16, String)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let failed: Vec<&(u16, String)> = got.iter().filter(|(s, _)| *s != 200).collect();
    c.ok(
        got.len() >= 8,
        "requests were made across the restart",
        got.len(),
    );
    c.eq(
        "requests not answered 200",
        failed,
        Vec::<&(u16, String)>::new(),
    );
    c.ok(
        rig.daemon_log()
            .contains("taken over from the previous run"),
        "the new daemon took the listeners over",
        (),
    );
    // Stopped for good: a holder keeps the listeners until cleanup.
    rig.stop_daemon();
    let holder = || {
        cmd::exec(
            &rig.node,
            "pgrep",
            &[
                "-f",
                &format!("metadata-hold --socket {}", rig.dir.display()),
            ],
            cmd::CMD_TIMEOUT,
        )
        .unwrap()
        .success()
    };
    c.ok(holder(), "a holder keeps the listeners after a stop", ());
    let out = rig.xrouter(&[
        "cleanup",
        "--config",
        &rig.config_path().display().to_string(),
    ]);
    c.ok(out.success(), "cleanup", out.describe());
    c.ok(
        out.stdout.contains("held metadata listener"),
        "cleanup closes the held listeners",
        &out.stdout,
    );
    c.ok(
        tests::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            !holder()
        }),
        "the holder is gone after cleanup",
        (),
    );
    c.finish();
}

/// A router namespace deleted behind the daemon's back is rebuilt by the
/// resync, and its metadata listener with it.
fn rebuilt_namespace_gets_its_listener_back(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("rebuilt_namespace_gets_its_listener_back");
    c.eq(
        "answered",
        curl(&rig.ns("vm1"), METADATA_URL, &[]).status,
        200,
    );
    netns::delete(&rig.router_ns()).unwrap();
    let back = tests::wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        curl(&rig.ns("vm1"), METADATA_URL, &["-m", "2"]).status == 200
    });
    c.ok(
        back,
        "answered again after the namespace is rebuilt",
        rig.daemon_log(),
    );
    c.finish();
}

/// The metadata port changed while the daemon was stopped: the listeners
/// handed over on the old port are closed, new ones listen on the new
/// port, where the redirect now goes.
fn port_change_across_a_restart(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("port_change_across_a_restart");
    c.eq(
        "answered",
        curl(&rig.ns("vm1"), METADATA_URL, &[]).status,
        200,
    );
    rig.stop_daemon();
    rig.extra_config.push("metadata_port = 9700".into());
    rig.start();
    c.eq(
        "answered on the new port",
        curl(&rig.ns("vm1"), METADATA_URL, &[]).status,
        200,
    );
    let ss = cmd::sh(&rig.router_ns(), "ss", &["-Hltn"]).unwrap();
    let ports: Vec<&str> = ss
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next())
        .collect();
    c.eq(
        "only the new port listens in the router",
        ports,
        vec!["9700"],
    );
    c.eq(
        "xrouter show: the proxy listening on the new port",
        rig.show()["routers"][0]["metadata_listening"].as_u64(),
        Some(9700),
    );
    c.finish();
}

/// A program left listening on the metadata port (a haproxy of Neutron's
/// agent): xrouter builds the router all the same, logs once, `show` names
/// the holder, and the listener comes once the port is free.
fn port_held_by_another_program(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.extra_config
        .push("enable_metadata_proxy = false".into());
    rig.start();
    rig.article_hosts(&[]);
    let squatter = tests::TcpServer::start(&rig.router_ns(), "squatter", 9697).unwrap();
    rig.stop_daemon();
    rig.extra_config.clear();
    rig.start();
    let _agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("port_held_by_another_program");
    let show = rig.show();
    let r = &show["routers"][0];
    c.eq(
        "show: xrouter does not listen",
        r["metadata_listening"].as_u64(),
        None,
    );
    c.ok(
        r["metadata_port_taken_by"]
            .as_str()
            .is_some_and(|w| w.contains(&format!("pid {}", std::process::id()))),
        "show: names the program holding the port",
        r.to_string(),
    );
    c.ok(
        rig.daemon_log().contains("VMs get no metadata; retried"),
        "the log says why",
        (),
    );
    drop(squatter);
    let back = tests::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        curl(&rig.ns("vm1"), METADATA_URL, &["-m", "2"]).status == 200
    });
    c.ok(back, "once the port is free, the proxy answers", ());
    c.eq(
        "show: listening",
        rig.show()["routers"][0]["metadata_listening"].as_u64(),
        Some(9697),
    );
    c.finish();
}

/// A stopping daemon waits 10 s for the requests under way; one the
/// metadata agent still sits on then is answered 503, not cut.
fn stop_answers_requests_the_agent_sits_on(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let agent = MetadataAgent::start(&rig.metadata_socket());
    agent.set_delay(Duration::from_secs(15));
    let vm1 = rig.ns("vm1");
    let asking = thread::spawn(move || curl(&vm1, METADATA_URL, &["-m", "30"]));
    thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let st = rig.stop_daemon_within(Duration::from_secs(20));
    let mut c = Checks::new("stop_answers_requests_the_agent_sits_on");
    c.ok(st.is_some_and(|s| s.success()), "stopped cleanly", st);
    c.ok(
        t0.elapsed() < Duration::from_secs(14),
        "stopped after the 10 s drain, not the agent's 15 s",
        t0.elapsed(),
    );
    let f = asking.join().unwrap();
    c.eq("the request is answered 503", f.status, 503);
    c.ok(
        rig.daemon_log()
            .contains("1 request still waiting for the metadata agent"),
        "the log counts it",
        (),
    );
    c.finish();
}
