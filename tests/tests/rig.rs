//! Self-tests of the rig, without the daemon: hosts on a hand-made bridge in a
//! node namespace, probes, time bounds, teardown.

use std::time::{Duration, Instant};

use tests::{
    Checks, Dataplane, Rig, TcpServer, TcpSession, UdpServer, ping, sa, tcp_request, udp_connected,
    udp_request,
};

#[test]
fn hosts_on_a_bridge_talk() {
    let (node, a_ns, b_ns);
    {
        let mut rig = Rig::new(Dataplane::Iptables);
        rig.make_bridge("br0");
        let a = rig.host_on_bridge("a", "br0", 1500, "10.0.0.1/24", None, &[]);
        let b = rig.host_on_bridge("b", "br0", 1500, "10.0.0.2/24", None, &[]);
        node = rig.node.clone();
        a_ns = a.ns.clone();
        b_ns = b.ns.clone();
        let mut c = Checks::new("rig");

        let p = ping(&a.ns, "10.0.0.2", &[]);
        c.ok(
            p.success() && p.stdout.contains("ttl=64"),
            "ping a -> b",
            p.describe(),
        );

        let tcp = TcpServer::start(&b.ns, "b", 7000).unwrap();
        let udp = UdpServer::start(&b.ns, "b", 7001).unwrap();
        c.reply(
            "tcp a -> b",
            tcp_request(&a.ns, sa("10.0.0.2", 7000)),
            "b",
            "10.0.0.1",
        );
        c.reply(
            "udp a -> b",
            udp_request(&a.ns, None, sa("10.0.0.2", 7001)),
            "b",
            "10.0.0.1",
        );
        let r = tests::tcp_request_from(&a.ns, sa("10.0.0.1", 40000), sa("10.0.0.2", 7000));
        c.ok(
            r.as_ref().is_ok_and(|r| r.peer.port() == 40000),
            "tcp from a bound source port",
            &r,
        );
        c.eq("server saw 2 tcp peers", tcp.peers().len(), 2);

        let mut s = TcpSession::open(&a.ns, sa("10.0.0.2", 7000)).unwrap();
        for i in 0..3 {
            c.succeeds(&format!("session exchange {i}"), s.exchange());
        }

        // Closed TCP port: refused (a reset), not timed out. (Not timed:
        // a loaded machine can stall the namespace thread for seconds.)
        let r = tcp_request(&a.ns, sa("10.0.0.2", 7999)).map_err(|e| format!("{e:#}"));
        c.ok(
            matches!(&r, Err(e) if e.contains("Connection refused")),
            "tcp to a closed port: refused",
            &r,
        );
        // Nobody there: bounded.
        let t0 = Instant::now();
        c.fails("tcp to nobody", tcp_request(&a.ns, sa("10.0.0.3", 7000)));
        c.ok(
            t0.elapsed() < Duration::from_secs(4),
            "bounded",
            t0.elapsed(),
        );
        // Closed UDP port: connection refused on a connected socket.
        let u = udp_connected(&a.ns, None, sa("10.0.0.2", 7998)).unwrap();
        u.send(b"x").unwrap();
        let mut buf = [0u8; 16];
        let e = u.recv(&mut buf);
        c.ok(
            e.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
            "udp to a closed port: refused",
            &e,
        );
        // Large pings with and without DF.
        let p = ping(&a.ns, "10.0.0.2", &["-M", "do", "-s", "1600"]);
        c.ok(
            !p.success(),
            "DF ping over the MTU fails locally",
            p.describe(),
        );
        let p = ping(&a.ns, "10.0.0.2", &["-M", "dont", "-s", "3000"]);
        c.ok(p.success(), "fragmented ping", p.describe());
        // Nothing of ours in the root namespace.
        let root = std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap();
        let root = String::from_utf8_lossy(&root.stdout);
        c.ok(
            !root.contains("br0") && !root.contains(&a.node_dev),
            "root namespace untouched",
            (),
        );
        drop((tcp, udp, s));
        c.finish();
    }
    for ns in [&node, &a_ns, &b_ns] {
        assert!(!router_user::backend::netns::exists(ns), "{ns} left behind");
    }
}

#[test]
fn teardown_after_panic() {
    let node = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let n = node.clone();
    let r = std::thread::spawn(move || {
        let mut rig = Rig::new(Dataplane::Iptables);
        rig.make_bridge("br0");
        rig.host_on_bridge("a", "br0", 1500, "10.0.0.1/24", None, &[]);
        *n.lock().unwrap() = rig.node.clone();
        panic!("deliberate");
    })
    .join();
    assert!(r.is_err());
    let node = node.lock().unwrap().clone();
    assert!(!node.is_empty());
    assert!(
        !router_user::backend::netns::exists(&node),
        "{node} left behind"
    );
}
