//! Changes over time (semantics file, "Changes over time"): what a user sees
//! while the routers file changes under a running daemon, or the router is
//! damaged behind its back.

use std::time::{Duration, Instant};

use tests::{
    Checks, Dataplane, Launch, Rig, RouterSpec, TcpServer, TcpSession, addresses, article::*, link,
    link_exists, ping, sa, tcp_request, wait_until,
};

const TCP: u16 = 8080;

tests::planes!(
    fip_removal,
    fip_moved,
    gateway_ip_change,
    gateway_and_fips_removed,
    router_deleted,
    namespace_rebuilt,
    mtu_change,
    same_file_twice,
    garp_for_new_fip,
    daemon_stop_keeps_forwarding,
    daemon_restart_keeps_sessions,
    plane_switch_by_restart,
    stop_during_the_first_apply,
    routers_file_change_applies,
    subnet_and_routes_changed_live,
    self_healing,
    failed_router_keeps_previous_state,
    check_plan_shows_and_changes_nothing,
    failed_new_router_leaves_nothing_after_cleanup,
);

tests::iptables_only!(cleanup_after_ip_netns_exec_leaves_nothing);

fn tcp_servers(rig: &Rig, hosts: &[&str]) -> Vec<TcpServer> {
    hosts
        .iter()
        .map(|h| TcpServer::start(&rig.ns(h), h, TCP).unwrap())
        .collect()
}

/// Removing a floating IP kills its sessions and flushes its conntrack
/// entries; the VM falls back to the gateway IP; the /32 leaves qg-.
fn fip_removal(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm2", "ext"]);
    let (vm2, ext) = (rig.ns("vm2"), rig.ns("ext"));
    let mut c = Checks::new("fip_removal");

    let mut inbound = TcpSession::open(&ext, sa(FIP, TCP)).expect("ext -> FIP session");
    c.reply(
        "before: ext -> FIP session works",
        inbound.exchange(),
        "vm2",
        EXT_HOST,
    );
    let mut outbound = TcpSession::open(&vm2, sa(EXT_HOST, TCP)).expect("vm2 -> ext session");
    c.reply(
        "before: vm2 -> ext session, seen as the FIP",
        outbound.exchange(),
        "ext",
        FIP,
    );
    let before = rig.connections_with(FIP);
    c.ok(
        !before.is_empty(),
        "before: conntrack has entries with the FIP",
        &before,
    );

    rig.router_mut().remove_fip(FIP);
    rig.apply();

    // Checked first, before any probe can create new entries.
    let mut left = vec![];
    let gone = wait_until(Duration::from_secs(1), Duration::from_millis(100), || {
        left = rig.connections_with(FIP);
        left.is_empty()
    });
    c.ok(gone, "after: no conntrack entry to or from the FIP", &left);
    c.ok(
        !rig.fip_published(FIP),
        "after: the FIP is no longer published on qg- (no /32, no BPF entry)",
        (),
    );
    c.fails(
        "after: the established ext -> FIP session is dead",
        inbound.exchange(),
    );
    c.fails(
        "after: the established vm2 -> ext session is dead",
        outbound.exchange(),
    );
    c.fails(
        "after: a new connection ext -> FIP fails",
        tcp_request(&ext, sa(FIP, TCP)),
    );
    c.reply(
        "after: vm2 -> ext is seen as the gateway IP",
        tcp_request(&vm2, sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Moving a floating IP: sessions keep their old VM, new ones reach the new,
/// also one from the port of a connection closed just before (as the
/// kernel's conntrack reopens a connection in TIME_WAIT for a new SYN).
fn fip_moved(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm1", "vm2", "ext"]);
    let ext = rig.ns("ext");
    let mut c = Checks::new("fip_moved");
    let mut old = TcpSession::open(&ext, sa(FIP, TCP)).expect("ext -> FIP session");
    c.reply(
        "before: ext -> FIP reaches vm2",
        old.exchange(),
        "vm2",
        EXT_HOST,
    );
    // A connection from a fixed port, closed by both sides (ext first).
    let port = sa(EXT_HOST, 47001);
    let mut closed =
        TcpSession::open_from(&ext, Some(port), sa(FIP, TCP)).expect("ext -> FIP from 47001");
    c.reply(
        "before: ext:47001 -> FIP reaches vm2",
        closed.exchange(),
        "vm2",
        EXT_HOST,
    );
    drop(closed);
    // The server's FIN answers ext's within a round trip.
    std::thread::sleep(Duration::from_millis(300));

    rig.router_mut().move_fip(FIP, VM1);
    rig.apply();

    c.reply(
        "after: a new connection from the closed one's port reaches vm1",
        TcpSession::open_from(&ext, Some(port), sa(FIP, TCP)).and_then(|mut s| s.exchange()),
        "vm1",
        EXT_HOST,
    );

    c.reply(
        "after: the existing session still reaches vm2",
        old.exchange(),
        "vm2",
        EXT_HOST,
    );
    c.reply(
        "after: a new connection reaches vm1",
        tcp_request(&ext, sa(FIP, TCP)),
        "vm1",
        EXT_HOST,
    );
    c.reply(
        "after: vm1 -> ext is seen as the FIP",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        FIP,
    );
    c.reply(
        "after: vm2 -> ext is seen as the gateway IP",
        tcp_request(&rig.ns("vm2"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Gateway and all floating IPs removed in one update: no NAT survives
/// (Neutron's bug would SNAT east-west traffic to the dead floating IP).
fn gateway_and_fips_removed(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm1", "vm2"]);
    let mut c = Checks::new("gateway_and_fips_removed");
    let qg_dev = rig.router().qg();
    c.reply(
        "before: vm2 -> vm1 un-NATed",
        tcp_request(&rig.ns("vm2"), sa(VM1, TCP)),
        "vm1",
        VM2,
    );
    {
        let r = rig.router_mut();
        r.gateway = None;
        r.fips.clear();
    }
    rig.apply();
    c.reply(
        "after: vm2 (former FIP) -> vm1 seen with its fixed IP",
        tcp_request(&rig.ns("vm2"), sa(VM1, TCP)),
        "vm1",
        VM2,
    );
    c.reply(
        "after: vm1 -> vm2 seen with its fixed IP",
        tcp_request(&rig.ns("vm1"), sa(VM2, TCP)),
        "vm2",
        VM1,
    );
    let rules = rig.router_kernel_rules();
    let bad: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains(FIP) || l.contains(QG))
        .collect();
    c.ok(
        bad.is_empty(),
        "no kernel rule or map mentions the old FIP or gateway IP",
        bad,
    );
    let qg = link(&rig.router_ns(), &qg_dev);
    c.ok(qg.is_none(), "after: no qg- device left", &qg);
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// A router deleted from the file: its namespace and taps go; the other
/// router stays.
fn router_deleted(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    let net3 = rig.add_network("net3", "10.3.0.0/24", Some("10.3.0.1"));
    let mut other = RouterSpec::empty(&rig.tag);
    other
        .interfaces
        .push(tests::PortSpec::new(&net3, "10.3.0.1"));
    rig.routers.push(other);
    rig.start();
    rig.vm("vm3", "net3", "10.3.0.5/24", "10.3.0.1");
    let mut c = Checks::new("router_deleted");
    let gone = rig.routers.remove(0);
    let kept = rig.routers[0].clone();
    c.ok(
        router_user::backend::netns::exists(&gone.namespace()),
        "before: first router's namespace exists",
        (),
    );
    let taps = gone.taps();
    for t in &taps {
        c.ok(
            link_exists(&rig.node, t),
            &format!("before: {t} exists"),
            (),
        );
    }
    let gone_pins = rig.pin_dir.join(&gone.id);
    if plane != Dataplane::Iptables {
        c.ok(
            gone_pins.join("XR_CT").exists(),
            "before: its BPF maps are pinned",
            &gone_pins,
        );
        c.ok(
            gone_pins
                .join("links")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some()),
            "before: its BPF links are pinned",
            &gone_pins,
        );
    }
    rig.apply();
    c.ok(
        !router_user::backend::netns::exists(&gone.namespace()),
        "after: its namespace is gone",
        gone.namespace(),
    );
    c.ok(
        !gone_pins.exists(),
        "after: no pinned map or link of it is left",
        &gone_pins,
    );
    if plane != Dataplane::Iptables {
        c.ok(
            rig.pin_dir.join(&kept.id).join("XR_CT").exists(),
            "after: the other router's maps stay pinned",
            (),
        );
    }
    for t in &taps {
        c.ok(
            !link_exists(&rig.node, t),
            &format!("after: {t} is gone from the node"),
            (),
        );
    }
    c.ok(
        router_user::backend::netns::exists(&kept.namespace()),
        "after: the other router's namespace stays",
        (),
    );
    c.ok(
        link_exists(&rig.node, &kept.interfaces[0].tap()),
        "after: the other router's tap stays",
        (),
    );
    let p = ping(&rig.ns("vm3"), "10.3.0.1", &[]);
    c.ok(
        p.success(),
        "after: the other router still answers",
        p.describe(),
    );
    let show = rig.show();
    let ids: Vec<&str> = show["routers"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_str()).collect())
        .unwrap_or_default();
    c.eq(
        "after: show lists only the other router",
        ids,
        vec![kept.id.as_str()],
    );
    c.finish();
}

/// A router namespace deleted behind the daemon's back is rebuilt, complete,
/// within a few seconds (resync_interval is 1 s), and forwards again.
fn namespace_rebuilt(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm2", "ext"]);
    let rns = rig.router_ns();
    let r = rig.router().clone();
    let mut c = Checks::new("namespace_rebuilt");
    c.reply(
        "before: vm1 -> ext",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "del", &rns])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip netns del: {out:?}");
    assert!(
        !router_user::backend::netns::exists(&rns),
        "{rns} still there after ip netns del"
    );
    let t0 = Instant::now();
    // The deleted namespace may live on unnamed while something holds it
    // (and forward meanwhile), so wait for the named one first.
    let back = wait_until(Duration::from_secs(8), Duration::from_millis(100), || {
        router_user::backend::netns::exists(&rns)
    });
    c.ok(back, "the namespace is back within 8 s", t0.elapsed());
    let works = wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)).is_ok_and(|r| r.peer_ip().to_string() == QG)
            && tcp_request(&rig.ns("ext"), sa(FIP, TCP)).is_ok()
    });
    c.ok(works, "traffic works again", t0.elapsed());
    println!("rebuilt and forwarding after {:?}", t0.elapsed());
    // Traffic may still go through the old namespace (alive while held):
    // the new one gets its ports and rules within the resync that made it.
    for (dev, want) in [
        (r.qr("net1"), format!("{QR1}/24")),
        (r.qr("net2"), format!("{QR2}/24")),
        (r.qg(), format!("{QG}/24")),
    ] {
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            addresses(&rns, &dev).is_ok_and(|a| a.contains(&want))
        });
        let got = addresses(&rns, &dev).unwrap_or_default();
        c.ok(
            got.contains(&want),
            &format!("rebuilt {dev} has {want}"),
            &got,
        );
    }
    // The floating IP's /32 comes after the ports' own addresses in the
    // same apply: waited for like them.
    c.ok(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            rig.fip_published(FIP)
        }),
        "rebuilt: the FIP is published on qg-",
        (),
    );
    let (rules, want) = if plane == Dataplane::Iptables {
        (
            tests::cmd::sh(&rns, "iptables-save", &[]),
            format!("-d {FIP}/32 -j DNAT --to-destination {VM2}"),
        )
    } else {
        (
            tests::cmd::sh(&rns, "nft", &["list", "map", "ip", "xrouter", "fip-dnat"]),
            format!("{FIP} : {VM2}"),
        )
    };
    let mut rules = rules.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rules.contains(&want) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        rules = if plane == Dataplane::Iptables {
            tests::cmd::sh(&rns, "iptables-save", &[])
        } else {
            tests::cmd::sh(&rns, "nft", &["list", "map", "ip", "xrouter", "fip-dnat"])
        }
        .unwrap_or_default();
    }
    c.ok(
        rules.contains(&want),
        "rebuilt namespace has the FIP's kernel DNAT",
        &rules,
    );
    c.reply(
        "after: vm1 -> ext",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    c.reply(
        "after: ext -> FIP",
        tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
        "vm2",
        EXT_HOST,
    );
    c.finish();
}

/// A network's MTU change is applied to the port (both veth ends).
fn mtu_change(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let mut c = Checks::new("mtu_change");
    let qr = rig.router().qr("net1");
    let tap = rig.router().interface("net1").tap();
    let mtu = |ns: &str, dev: &str| link(ns, dev).and_then(|l| l["mtu"].as_u64());
    c.eq("before: qr- MTU", mtu(&rig.router_ns(), &qr), Some(1500));
    rig.router_mut().interface_mut("net1").mtu = 1400;
    rig.apply();
    c.eq("after: qr- MTU", mtu(&rig.router_ns(), &qr), Some(1400));
    c.eq("after: tap MTU", mtu(&rig.node, &tap), Some(1400));
    let p = ping(&rig.ns("vm1"), QR1, &["-M", "do", "-s", "1372"]);
    c.ok(p.success(), "vm1 -> qr-, DF 1400 bytes", p.describe());
    // The gateway's MTU lowered: a VM's DF packet over it is answered
    // "fragmentation needed", and leaves no connection behind (the
    // kernel's conntrack keeps none for a packet that never left).
    rig.router_mut().gateway.as_mut().unwrap().mtu = 1400;
    rig.apply();
    let p = ping(&rig.ns("vm2"), EXT_HOST, &["-M", "do", "-s", "1472"]);
    c.ok(
        p.stdout.contains("Frag needed") && p.stdout.contains("mtu = 1400"),
        "vm2 -> ext, DF 1500 bytes: Frag needed (mtu = 1400)",
        p.describe(),
    );
    c.eq(
        "no connection for the packet that never left",
        rig.connections_with(EXT_HOST),
        Vec::<String>::new(),
    );
    let p = ping(&rig.ns("vm2"), EXT_HOST, &["-M", "do", "-s", "1372"]);
    c.ok(p.success(), "vm2 -> ext, DF 1400 bytes", p.describe());
    c.ok(
        !rig.connections_with(EXT_HOST).is_empty(),
        "its connection",
        "",
    );
    c.finish();
}

/// Applying the same file twice changes nothing: devices keep their ifindex
/// and addresses, and traffic keeps flowing.
fn same_file_twice(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["ext"]);
    let mut c = Checks::new("same_file_twice");
    let rns = rig.router_ns();
    let devs = [
        rig.router().qr("net1"),
        rig.router().qr("net2"),
        rig.router().qg(),
    ];
    let snapshot = |rig: &Rig| {
        devs.iter()
            .map(|d| {
                let ifindex = link(&rns, d).and_then(|l| l["ifindex"].as_u64());
                (d.clone(), ifindex, addresses(&rns, d).unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .chain(std::iter::once((
                "routes".to_string(),
                None,
                vec![rig.router_ip("route show")],
            )))
            .collect::<Vec<_>>()
    };
    let before = snapshot(&rig);
    let show_before = rig.show();
    let mut session = TcpSession::open(&rig.ns("vm1"), sa(EXT_HOST, TCP)).unwrap();
    c.succeeds("before: session works", session.exchange());
    for i in 1..=2 {
        let out = rig.reload();
        c.ok(
            out.success(),
            &format!("reload #{i} of the same file succeeds"),
            out.describe(),
        );
    }
    c.eq(
        "devices, ifindexes, addresses and routes unchanged",
        snapshot(&rig),
        before,
    );
    c.eq("show --json unchanged", rig.show(), show_before);
    c.succeeds("the established session still works", session.exchange());
    c.finish();
}

/// Gratuitous ARP for a new floating IP: the outside learns its MAC (the qg-
/// MAC) without any traffic to it.
fn garp_for_new_fip(plane: Dataplane) {
    const NEW: &str = "192.168.1.105";
    let mut rig = Rig::article(plane);
    let ext = rig.host("ext").clone();
    ext.sysctl("net.ipv4.conf.eth0.arp_accept", "1");
    let mut c = Checks::new("garp_for_new_fip");
    let neigh = |h: &tests::Host| h.ip(&format!("neigh show {NEW} dev eth0"));
    c.ok(
        neigh(&ext).trim().is_empty(),
        "before: ext has no neighbour entry",
        neigh(&ext),
    );
    rig.router_mut().add_fip(NEW, VM1);
    rig.apply();
    let mac = rig.router().gateway.as_ref().unwrap().mac.to_lowercase();
    let mut seen = String::new();
    let learnt = wait_until(Duration::from_secs(3), Duration::from_millis(100), || {
        seen = neigh(&ext);
        seen.to_lowercase().contains(&format!("lladdr {mac}"))
    });
    c.ok(
        learnt,
        &format!("ext learnt {NEW} is-at {mac} within 3 s"),
        &seen,
    );
    c.finish();
}

/// SIGTERM stops the daemon and leaves the routers forwarding.
fn daemon_stop_keeps_forwarding(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm2", "ext"]);
    let mut c = Checks::new("daemon_stop_keeps_forwarding");
    let running = rig.show()["daemon_running"].clone();
    c.eq("show: the daemon is running", running, true.into());
    let st = rig.stop_daemon();
    c.ok(
        st.is_some_and(|s| s.success()),
        "daemon exits 0 on SIGTERM",
        st,
    );
    let shown = rig.show();
    c.eq(
        "show after the stop: the daemon is not running",
        shown["daemon_running"].clone(),
        false.into(),
    );
    c.ok(
        shown["routers"].as_array().is_some_and(|r| r.len() == 1),
        "show after the stop: the router, as last applied",
        &shown,
    );
    let cfg = rig.config_path().display().to_string();
    let table = rig.xrouter(&["show", "--config", &cfg]);
    c.ok(
        table.success() && table.stdout.contains("daemon: NOT RUNNING"),
        "show's table says the daemon is not running",
        table.describe(),
    );
    c.reply(
        "vm1 -> ext still SNATed",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    c.reply(
        "ext -> FIP still DNATed",
        tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
        "vm2",
        EXT_HOST,
    );
    c.finish();
}

/// The data plane changed by a restart, from `plane` to each other plane
/// and back: new connections through the floating IP and gateway SNAT work
/// on each, carried by that plane (BPF counters, no kernel NAT); the taps
/// carry an XDP program and insert VLAN tags in software on `xdp` only,
/// and are given the veth default back on leaving it; BPF pins exist on
/// the eBPF planes only.
fn plane_switch_by_restart(plane: Dataplane) {
    use router_user::backend::{ethtool, netns};
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm2", "ext"]);
    let mut c = Checks::new("plane_switch_by_restart");
    let r = rig.router().clone();
    let taps = r.taps();
    let others = [Dataplane::Iptables, Dataplane::Xdp, Dataplane::Tc]
        .into_iter()
        .filter(|p| *p != plane);
    for (i, now) in std::iter::once(plane)
        .chain(others)
        .chain([plane])
        .enumerate()
    {
        if i > 0 {
            let st = rig.stop_daemon();
            c.ok(st.is_some_and(|s| s.success()), "daemon exits 0", st);
            let was = rig.plane;
            rig.plane = now;
            rig.start();
            // Between the eBPF planes the log says what happens to XDP.
            if was != Dataplane::Iptables && now != Dataplane::Iptables {
                let log = rig.daemon_log();
                c.ok(
                    log.contains(&format!("switching from {was} to {now}: XDP programs")),
                    &format!("{was:?} -> {now:?}: the switch is logged"),
                    log,
                );
            }
            // What the plane before left in the kernel's conntrack is not
            // this plane's doing.
            let _ = tests::cmd::exec(
                &rig.router_ns(),
                "conntrack",
                &["-F"],
                tests::cmd::CMD_TIMEOUT,
            );
        }
        let base = if now == Dataplane::Iptables {
            serde_json::Value::Null
        } else {
            rig.stats_json()
        };
        let on = format!("on {now:?}");
        c.reply(
            &format!("{on}: vm1 -> ext SNATed"),
            tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
            "ext",
            QG,
        );
        c.reply(
            &format!("{on}: ext -> FIP DNATed"),
            tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
            "vm2",
            EXT_HOST,
        );
        rig.assert_fast_path_since(&mut c, &base);
        let xdp = now == Dataplane::Xdp;
        for t in &taps {
            let prog = link(&rig.node, t).map(|l| l.get("xdp").is_some());
            c.eq(&format!("{on}: {t} has an XDP program"), prog, Some(xdp));
            let vlan = netns::run_in(Some(&rig.node), || {
                ethtool::active(t, &ethtool::VLAN_TX_OFFLOADS).map_err(|e| format!("{e:#}"))
            });
            c.eq(
                &format!("{on}: {t} inserts VLAN tags in hardware"),
                vlan.map_err(|e| format!("{e:#}")).and_then(|v| v),
                Ok(vec![Some(!xdp), Some(!xdp)]),
            );
        }
        c.eq(
            &format!("{on}: the router's BPF maps are pinned"),
            rig.pin_dir.join(&r.id).join("XR_CT").exists(),
            now != Dataplane::Iptables,
        );
    }
    c.finish();
}

/// SIGTERM while the first apply builds eight routers: the daemon stops
/// after the router it is on rather than building the rest first, exits
/// 0, and leaves nothing of the routers it did not get to (on the eBPF
/// planes their programs were loading ahead: no pins of theirs stay);
/// `cleanup` removes the rest. Started again, it builds them all.
fn stop_during_the_first_apply(plane: Dataplane) {
    const N: u8 = 8;
    let mut rig = Rig::new(plane);
    rig.routers.clear();
    for k in 10..10 + N {
        let net = rig.add_network(
            &format!("net{k}"),
            &format!("10.{k}.0.0/24"),
            Some(&format!("10.{k}.0.1")),
        );
        let mut r = RouterSpec::empty(&rig.tag);
        r.interfaces
            .push(tests::PortSpec::new(&net, &format!("10.{k}.0.1")));
        rig.routers.push(r);
    }
    let routers = rig.routers.clone();
    let mut c = Checks::new("stop_during_the_first_apply");
    rig.start_unready();
    let first = routers[0].namespace();
    c.ok(
        wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
            router_user::backend::netns::exists(&first)
        }),
        "the first router's namespace appears",
        rig.daemon_log(),
    );
    let st = rig.stop_daemon_within(Duration::from_secs(60));
    c.ok(
        st.is_some_and(|s| s.success()),
        "SIGTERM during the first apply: the daemon exits 0",
        (st, rig.daemon_log()),
    );
    let built: Vec<bool> = routers
        .iter()
        .map(|r| router_user::backend::netns::exists(&r.namespace()))
        .collect();
    c.ok(
        built.iter().filter(|b| **b).count() < N as usize,
        "it stopped before building every router",
        (&built, rig.daemon_log()),
    );
    let stray: Vec<&str> = routers
        .iter()
        .zip(&built)
        .filter(|(r, b)| !**b && rig.pin_dir.join(&r.id).exists())
        .map(|(r, _)| r.id.as_str())
        .collect();
    c.ok(
        stray.is_empty(),
        "no pins of a router it did not get to",
        (&stray, rig.daemon_log()),
    );
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["--config", &cfg, "cleanup"]);
    c.ok(out.success(), "cleanup after the stop", out.describe());
    let left: Vec<String> = routers
        .iter()
        .map(|r| r.namespace())
        .filter(|ns| router_user::backend::netns::exists(ns))
        .collect();
    c.ok(
        left.is_empty() && !rig.pin_dir.exists(),
        "cleanup leaves no router namespace and no pins",
        (&left, &rig.pin_dir),
    );
    rig.start();
    let all = routers
        .iter()
        .all(|r| router_user::backend::netns::exists(&r.namespace()));
    c.ok(
        all,
        "started again, it builds every router",
        rig.daemon_log(),
    );
    if plane != Dataplane::Iptables {
        c.ok(
            routers
                .iter()
                .all(|r| rig.pin_dir.join(&r.id).join("XR_CT").exists()),
            "and loads every router's programs",
            &rig.pin_dir,
        );
    }
    c.finish();
}

/// Changing the gateway IP flushes its conntrack entries: SNATed sessions
/// die, new ones use the new address.
fn gateway_ip_change(plane: Dataplane) {
    const NEW_QG: &str = "192.168.1.111";
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm2", "ext"]);
    let rns = rig.router_ns();
    let mut c = Checks::new("gateway_ip_change");
    let mut session = TcpSession::open(&rig.ns("vm1"), sa(EXT_HOST, TCP)).expect("vm1 -> ext");
    c.reply(
        "before: vm1 -> ext seen as the gateway IP",
        session.exchange(),
        "ext",
        QG,
    );
    rig.router_mut().gateway.as_mut().unwrap().ip = NEW_QG.to_string();
    rig.apply();
    let mut left = vec![];
    let gone = wait_until(Duration::from_secs(1), Duration::from_millis(100), || {
        left = rig.connections_with(QG);
        left.is_empty()
    });
    c.ok(
        gone,
        "after: no conntrack entry with the old gateway IP",
        &left,
    );
    let qg = addresses(&rns, &rig.router().qg()).unwrap();
    c.ok(
        qg.contains(&format!("{NEW_QG}/24")) && !qg.contains(&format!("{QG}/24")),
        "after: qg- has the new address only",
        &qg,
    );
    c.fails("after: the SNATed session is dead", session.exchange());
    c.reply(
        "after: vm1 -> ext seen as the new gateway IP",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        NEW_QG,
    );
    c.reply(
        "after: ext -> FIP still reaches vm2",
        tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
        "vm2",
        EXT_HOST,
    );
    c.finish();
}

/// A restarted daemon adopts what it finds: established sessions through a
/// floating IP and through gateway SNAT keep going, with the same translated
/// address and port, and new connections work. Restarted again with
/// another `conntrack_size`, on the eBPF planes it loads the router anew
/// (its pins no longer fit), carries the connections into the new tables
/// and takes the pinned links over: the sessions still keep going.
fn daemon_restart_keeps_sessions(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm2", "ext"]);
    let mut c = Checks::new("daemon_restart_keeps_sessions");
    let mut inbound = TcpSession::open(&rig.ns("ext"), sa(FIP, TCP)).expect("ext -> FIP");
    let mut outbound = TcpSession::open(&rig.ns("vm1"), sa(EXT_HOST, TCP)).expect("vm1 -> ext");
    // One exchange on each session, checked: the peers each server saw
    // (the FIP session's client; the SNAT session's translated address and
    // port).
    let mut both = |c: &mut Checks, when: &str| {
        let a = c.reply(
            &format!("{when}: ext -> FIP session"),
            inbound.exchange(),
            "vm2",
            EXT_HOST,
        );
        let b = c.reply(
            &format!("{when}: vm1 -> ext session, SNATed"),
            outbound.exchange(),
            "ext",
            QG,
        );
        (a.map(|r| r.peer), b.map(|r| r.peer))
    };
    let (a, b) = both(&mut c, "before");
    let st = rig.stop_daemon();
    c.ok(
        st.is_some_and(|s| s.success()),
        "daemon exits 0 on SIGTERM",
        st,
    );
    both(&mut c, "while stopped");
    rig.start();
    let (a2, b2) = both(&mut c, "after restart");
    c.eq("the FIP session keeps its peer", a2, a);
    c.eq("the SNAT session keeps its external port", b2, b);
    c.reply(
        "after restart: a new vm1 -> ext connection",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    if plane != Dataplane::Iptables {
        // The restarted daemon adopted the router without loading it: its
        // GC must expire the router's idle connections all the same.
        c.ok(
            idle_connection_expires(&rig),
            "after restart: an idle connection is expired by the GC",
            rig.daemon_log(),
        );
    }
    // Again, with a connection table of another size.
    let st = rig.stop_daemon();
    c.ok(st.is_some_and(|s| s.success()), "daemon exits 0 again", st);
    rig.conntrack_size *= 2;
    rig.start();
    let id = rig.router().id.clone();
    if plane != Dataplane::Iptables {
        c.ok(
            router_user::backend::bpf::pins_fit(&rig.pin_dir, &id, rig.conntrack_size),
            "a new conntrack_size: the router's pins are loaded again at that size",
            rig.daemon_log(),
        );
    }
    let (a3, b3) = both(&mut c, "after a restart with another conntrack_size");
    c.eq("the FIP session keeps its peer in the new table", a3, a);
    c.eq(
        "the SNAT session keeps its external port in the new table",
        b3,
        b,
    );
    rig.assert_fast_path(&mut c);
    // Stopped, then cleaned up: the router's pins go, and the rig's pin
    // directory, left empty, goes too, each said.
    rig.stop_daemon();
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["--config", &cfg, "cleanup"]);
    c.ok(
        out.success(),
        "cleanup after the daemon stopped",
        out.describe(),
    );
    if plane != Dataplane::Iptables {
        c.ok(
            out.stdout.contains("removed the BPF pins")
                && out.stdout.contains(&format!(
                    "removed the empty pin directory {}",
                    rig.pin_dir.display()
                ))
                && !rig.pin_dir.exists(),
            "cleanup removes the router's pins and the empty pin directory, and says so",
            (&rig.pin_dir, &out.stdout),
        );
    }
    c.finish();
}

/// Writes an idle UDP connection entry (last seen 200 s ago: past UDP's
/// 30 s) into the router's pinned table; whether the daemon's GC removes
/// it within 25 s (a pass starts every 10 s).
fn idle_connection_expires(rig: &Rig) -> bool {
    use router_common::conntrack::{CtEntry, CtKey, ct_ticks};
    use router_user::backend::bpf::{monotonic_ns, pinned};
    let Ok(t) = pinned::ct(&rig.pin_dir, &rig.router().id) else {
        return false;
    };
    let seen = monotonic_ns().saturating_sub(200_000_000_000);
    let k = CtKey::new(
        [10, 99, 0, 1],
        [10, 99, 0, 2],
        1000u16.to_be(),
        2000u16.to_be(),
        17,
    );
    let e = CtEntry {
        new_src: k.src,
        new_dst: k.dst,
        new_sport: k.sport,
        new_dport: k.dport,
        last_seen: seen,
        created: ct_ticks(seen),
        ..CtEntry::default()
    };
    if t.insert(&k, &e).is_err() {
        return false;
    }
    wait_until(Duration::from_secs(25), Duration::from_millis(200), || {
        t.get(&k).is_none()
    })
}

/// Editing the routers file is enough: the daemon notices and applies it
/// (no `reload`, no SIGHUP), as when Neutron's side rewrites it.
fn routers_file_change_applies(plane: Dataplane) {
    const NEW_FIP: &str = "192.168.1.105";
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm1"]);
    let mut c = Checks::new("routers_file_change_applies");
    // The node config changed too: read at start only, which the reload
    // says, naming the setting.
    let cfg = rig.config_path();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("resync_interval = 1", "resync_interval = 2"),
    )
    .unwrap();
    rig.router_mut().add_fip(NEW_FIP, VM1);
    rig.write_routers();
    let added = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        rig.fip_published(NEW_FIP)
    });
    c.ok(
        added,
        "the new floating IP is published on qg- without a reload",
        (),
    );
    c.reply(
        "ext -> the new floating IP reaches vm1",
        tcp_request(&rig.ns("ext"), sa(NEW_FIP, TCP)),
        "vm1",
        EXT_HOST,
    );
    // The daemon's log goes to a file here: plain text, no colour codes.
    let log = rig.daemon_log();
    c.ok(
        !log.is_empty() && !log.contains('\u{1b}'),
        "the daemon's log to a file has no terminal escapes",
        log.lines().take(2).collect::<Vec<_>>(),
    );
    c.ok(
        log.contains(&format!(
            "node config {} changed since the start (resync_interval differs); the daemon \
             keeps the settings it started with until it is restarted",
            cfg.display()
        )),
        "the reload says the node config changed and which setting",
        &log,
    );
    c.finish();
}

/// A router gains a subnet and extra routes, then loses the routes, while
/// running: the new subnet's VM is routed and SNATed at once, the routes
/// come and go, and traffic of the existing subnets is untouched.
fn subnet_and_routes_changed_live(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm1", "ext"]);
    let mut c = Checks::new("subnet_and_routes_changed_live");
    let mut session = TcpSession::open(&rig.ns("vm2"), sa(EXT_HOST, TCP)).expect("vm2 -> ext");
    c.reply("before: vm2 -> ext session", session.exchange(), "ext", FIP);

    let net3 = rig.add_network("net3", "10.3.0.0/24", Some("10.3.0.1"));
    rig.router_mut()
        .interfaces
        .push(tests::PortSpec::new(&net3, "10.3.0.1"));
    rig.router_mut().add_route("172.31.0.0/16", "10.3.0.7");
    rig.router_mut().add_route("172.31.0.0/16", "10.3.0.8");
    rig.apply();
    rig.vm("vm3", "net3", "10.3.0.5/24", "10.3.0.1");
    c.reply(
        "new subnet: vm3 -> ext SNATed",
        tcp_request(&rig.ns("vm3"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    c.reply(
        "new subnet: vm3 -> vm1 east-west",
        tcp_request(&rig.ns("vm3"), sa(VM1, TCP)),
        "vm1",
        "10.3.0.5",
    );
    let routes = rig.router_ip("route show 172.31.0.0/16");
    c.ok(
        routes.contains("nexthop via 10.3.0.7") && routes.contains("nexthop via 10.3.0.8"),
        "the extra routes form one ECMP route",
        &routes,
    );
    c.reply(
        "meanwhile: vm2 -> ext session",
        session.exchange(),
        "ext",
        FIP,
    );

    rig.router_mut().routes.clear();
    rig.apply();
    let routes = rig.router_ip("route show 172.31.0.0/16");
    c.ok(
        routes.trim().is_empty(),
        "the extra routes are gone",
        &routes,
    );
    c.reply("after: vm2 -> ext session", session.exchange(), "ext", FIP);
    c.reply(
        "after: vm3 -> ext",
        tcp_request(&rig.ns("vm3"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// What is removed behind the daemon's back comes back within seconds: a
/// port, the floating IP (its /32, or its BPF map entry), the default
/// route, and (eBPF) the programs' links.
fn self_healing(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _s = tcp_servers(&rig, &["vm2", "ext"]);
    let rns = rig.router_ns();
    let r = rig.router().clone();
    let mut c = Checks::new("self_healing");
    let qr1 = r.qr("net1");
    tests::ip(&rns, &format!("link del {qr1}")).expect("deleting qr-");
    rig.unpublish_fip_by_hand(FIP);
    tests::ip(&rns, "route del default").expect("deleting the default route");
    if plane != Dataplane::Iptables {
        // Detach the gateway port's programs, as an operator's bpftool would.
        let links = rig.pin_dir.join(&r.id).join("links");
        let mut detached = 0;
        for e in std::fs::read_dir(&links).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&r.qg()) {
                let out = tests::cmd::run(
                    std::process::Command::new("bpftool")
                        .args(["link", "detach", "pinned"])
                        .arg(e.path()),
                    Duration::from_secs(5),
                )
                .expect("bpftool link detach");
                c.ok(
                    out.success(),
                    &format!("bpftool detached {name}"),
                    out.describe(),
                );
                detached += 1;
            }
        }
        c.ok(
            detached > 0,
            "found the gateway port's pinned links",
            &links,
        );
    }
    let t0 = Instant::now();
    let healed = wait_until(Duration::from_secs(8), Duration::from_millis(200), || {
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)).is_ok_and(|r| r.peer_ip().to_string() == QG)
            && tcp_request(&rig.ns("ext"), sa(FIP, TCP))
                .is_ok_and(|r| r.peer_ip().to_string() == EXT_HOST)
    });
    c.ok(healed, "traffic works again within 8 s", t0.elapsed());
    c.ok(link_exists(&rns, &qr1), "the qr- port is back", ());
    c.ok(rig.fip_published(FIP), "the FIP is published again", ());
    let routes = rig.router_ip("route show default");
    c.ok(
        routes.contains("via 192.168.1.1"),
        "the default route is back",
        &routes,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// The router `id` as `xrouter show --json` lists it among the applied
/// routers (Null if it is not there).
fn shown_router(show: &serde_json::Value, id: &str) -> serde_json::Value {
    show["routers"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A reload in which one router cannot be applied: the other is applied;
/// the failed one keeps its previous recorded state (`show --json`), and
/// `reload` says which failed; once the obstacle is gone the next resync
/// applies it, and the floating IP that update released has its
/// connections flushed then (an established session through it dies), as
/// if the apply had never failed.
///
/// The obstacle: a veth in the node namespace holding the name of the
/// bridge a new port of the router needs (a port cannot be enslaved to a
/// veth), which the daemon does not remove since it is not its own.
fn failed_router_keeps_previous_state(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    let net3 = rig.add_network("net3", "10.3.0.0/24", Some("10.3.0.1"));
    let net4 = rig.add_network("net4", "10.4.0.0/24", Some("10.4.0.1"));
    let net5 = rig.add_network("net5", "10.5.0.0/24", Some("10.5.0.1"));
    let mut other = RouterSpec::empty(&rig.tag);
    other
        .interfaces
        .push(tests::PortSpec::new(&net3, "10.3.0.1"));
    rig.routers.push(other);
    rig.start();
    rig.article_hosts(&[]);
    let _s = tcp_servers(&rig, &["vm2"]);
    let (a_id, b_id) = (rig.routers[0].id.clone(), rig.routers[1].id.clone());
    let mut c = Checks::new("failed_router_keeps_previous_state");
    let mut session = TcpSession::open(&rig.ns("ext"), sa(FIP, TCP)).expect("ext -> FIP session");
    c.reply(
        "before: ext -> FIP session",
        session.exchange(),
        "vm2",
        EXT_HOST,
    );
    let before = rig.show();
    let a_before = shown_router(&before, &a_id);
    c.ok(
        !a_before.is_null(),
        "before: show lists the article's router",
        &before,
    );

    let obstacle = net5.bridge();
    tests::ip(
        &rig.node,
        &format!("link add {obstacle} type veth peer name xo{}", rig.tag),
    )
    .expect("a veth named as net5's bridge");
    // The article's router gains a port on net5 and releases its floating
    // IP; the other router gains a port on net4.
    rig.routers[0]
        .interfaces
        .push(tests::PortSpec::new(&net5, "10.5.0.1"));
    rig.routers[0].remove_fip(FIP);
    rig.routers[1]
        .interfaces
        .push(tests::PortSpec::new(&net4, "10.4.0.1"));
    let out = rig.reload();
    println!("reload: {}", out.stderr.trim());
    c.ok(
        !out.success() && !out.timed_out,
        "reload exits non-zero",
        out.describe(),
    );
    c.ok(
        out.stderr.contains(&a_id) && out.stderr.contains("keeps its previous state"),
        "reload names the failed router and says it keeps its previous state",
        &out.stderr,
    );
    c.ok(
        !out.stderr.contains(&b_id),
        "reload does not name the other router",
        &out.stderr,
    );
    let show = rig.show();
    c.eq(
        "show --json: the failed router's recorded state is the previous one",
        shown_router(&show, &a_id),
        a_before.clone(),
    );
    c.ok(
        show["failed"]
            .as_array()
            .is_some_and(|f| f.len() == 1 && f[0]["id"] == a_id.as_str()),
        "show --json lists it as failed",
        &show["failed"],
    );
    let b_ports = shown_router(&show, &b_id)["interfaces"]
        .as_array()
        .map_or(0, Vec::len);
    c.eq(
        "show --json: the other router is applied (2 ports)",
        b_ports,
        2,
    );
    let b_qr4 = rig.routers[1].qr("net4");
    c.ok(
        link_exists(&rig.routers[1].namespace(), &b_qr4),
        "the other router's new port exists",
        &b_qr4,
    );
    // Nothing of the release has happened yet (the router failed before
    // its rules): the session still works, so what kills it below is the
    // release's flush.
    c.reply(
        "after the failed reload: the ext -> FIP session still works",
        session.exchange(),
        "vm2",
        EXT_HOST,
    );

    tests::ip(&rig.node, &format!("link del {obstacle}")).expect("removing the obstacle");
    let t0 = Instant::now();
    let mut show = serde_json::Value::Null;
    let applied = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        show = rig.show();
        let a = shown_router(&show, &a_id);
        a["interfaces"].as_array().map_or(0, Vec::len) == 3
            && a["floating_ips"].as_array().is_some_and(Vec::is_empty)
            && show["failed"].as_array().is_some_and(Vec::is_empty)
    });
    c.ok(
        applied,
        "once the obstacle is gone, a resync applies the router within 10 s",
        (t0.elapsed(), &show),
    );
    let mut left = vec![];
    let gone = wait_until(Duration::from_secs(1), Duration::from_millis(100), || {
        left = rig.connections_with(FIP);
        left.is_empty()
    });
    c.ok(
        gone,
        "then no conntrack entry to or from the released FIP",
        &left,
    );
    c.fails(
        "then the established ext -> FIP session is dead",
        session.exchange(),
    );
    c.fails(
        "then a new connection ext -> FIP fails",
        tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
    );
    c.finish();
}

/// `xrouter check --plan` prints what an apply would change against the
/// running router, and changes nothing: nothing for the applied file; a
/// floating IP more; what was removed behind the daemon's back.
fn check_plan_shows_and_changes_nothing(plane: Dataplane) {
    const FIP2: &str = "192.168.1.106";
    let mut rig = Rig::article(plane);
    // The resync would repair what the test breaks: stop the daemon; the
    // router keeps forwarding and the plan reads the kernel alone.
    rig.stop_daemon();
    let mut c = Checks::new("check_plan_shows_and_changes_nothing");
    let routers = rig.routers_path().display().to_string();
    let cfg = rig.config_path().display().to_string();
    let plan = |rig: &Rig, file: &str| {
        let out = rig.xrouter(&["--config", &cfg, "check", "--routers", file, "--plan"]);
        assert!(out.success(), "{}", out.describe());
        out.stdout
    };
    let p = plan(&rig, &routers);
    c.ok(
        p.contains("nothing to change"),
        "the applied file: nothing to change",
        &p,
    );

    rig.router_mut().add_fip(FIP2, VM1);
    let text = serde_json::to_string(&tests::routers_json(&rig.routers)).unwrap();
    let other = rig.dir.join("planned.json");
    std::fs::write(&other, text).unwrap();
    let p = plan(&rig, &other.display().to_string());
    c.ok(
        p.contains(&format!("gratuitous ARP for {FIP2}")),
        "a floating IP more: announced",
        &p,
    );
    if plane == Dataplane::Iptables {
        c.ok(
            p.contains("load the iptables rules"),
            "a floating IP more: rules",
            &p,
        );
        c.ok(
            p.contains(&format!("add address {FIP2}/32")),
            "a floating IP more: its /32",
            &p,
        );
    } else {
        c.ok(
            p.contains("nft: add element"),
            "a floating IP more: nft elements",
            &p,
        );
        c.ok(p.contains("BPF: maps"), "a floating IP more: BPF maps", &p);
    }
    c.ok(!rig.fip_published(FIP2), "planning published nothing", ());

    let qr = rig.router().qr("net1");
    rig.router_ip(&format!("addr del {QR1}/24 dev {qr}"));
    let p = plan(&rig, &routers);
    c.ok(
        p.contains(&format!("{qr}: add address {QR1}/24")),
        "an address removed behind our back: put back",
        &p,
    );
    c.ok(
        !addresses(&rig.router_ns(), &qr)
            .unwrap()
            .contains(&format!("{QR1}/24")),
        "planning changed nothing",
        (),
    );
    c.finish();
}

/// A new router whose first apply fails halfway, started as `how` says:
/// `xrouter cleanup` (the daemon stopped) leaves nothing of it, neither
/// its namespace (nor its file in /run/netns), nor its taps, nor the
/// bridges made for it before the failure, nor BPF pins.
///
/// The obstacle: a device in the node namespace with the name of the
/// router's port on net2, so creating that port fails once the namespace,
/// the net1 port and the bridges of net1 and net2 exist. The device is not
/// xrouter's and stays.
fn failed_first_apply_then_cleanup(plane: Dataplane, how: Launch, c: &mut Checks) {
    let mut rig = Rig::new(plane);
    let r = rig.router().clone();
    let obstacle = r.qr("net2");
    tests::ip(
        &rig.node,
        &format!("link add {obstacle} type veth peer name xo{}", rig.tag),
    )
    .expect("a veth named as the router's port on net2");
    rig.start_with(how);
    let show = rig.show();
    c.ok(
        show["failed"]
            .as_array()
            .is_some_and(|f| f.len() == 1 && f[0]["id"] == r.id.as_str())
            && show["routers"].as_array().is_some_and(Vec::is_empty),
        "the router's first apply failed",
        &show,
    );
    let made = [rig.network("net1").bridge(), rig.network("net2").bridge()];
    for b in &made {
        c.ok(
            link_exists(&rig.node, b),
            &format!("{b} was made before the failure"),
            (),
        );
    }
    let file = std::path::Path::new(router_user::backend::netns::NETNS_DIR).join(r.namespace());
    c.ok(file.exists(), "the router's namespace was made", &file);
    if how == Launch::IpNetnsExec {
        c.ok(
            !router_user::backend::netns::exists(&r.namespace()),
            "under ip netns exec, the node sees only its file",
            &file,
        );
        c.ok(
            rig.daemon_log().contains("mount namespace of its own"),
            "the daemon warned that its namespaces stay in its mount namespace",
            rig.daemon_log(),
        );
    }
    rig.stop_daemon();
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["--config", &cfg, "cleanup"]);
    println!("cleanup: {}", out.stdout.trim());
    c.ok(out.success(), "cleanup succeeds", out.describe());
    c.ok(
        !out.stdout.contains("cleanup: no items removed")
            && out.stdout.contains(&format!("removed bridge {}", made[0]))
            && out.stdout.contains("removed the state file"),
        "cleanup says it removed something",
        &out.stdout,
    );
    c.ok(
        !file.exists(),
        "no namespace of the router is left, not even its file",
        &file,
    );
    for p in r.interfaces.iter().chain(r.gateway.as_ref()) {
        c.ok(
            !link_exists(&rig.node, &p.tap()),
            &format!("no tap {} is left", p.tap()),
            (),
        );
    }
    for b in &made {
        c.ok(!link_exists(&rig.node, b), &format!("{b} is removed"), ());
    }
    c.ok(
        link_exists(&rig.node, &obstacle),
        "the device that was not xrouter's stays",
        (),
    );
    c.ok(
        !rig.pin_dir.join(&r.id).exists(),
        "no BPF pins of the router are left",
        &rig.pin_dir,
    );
}

fn failed_new_router_leaves_nothing_after_cleanup(plane: Dataplane) {
    let mut c = Checks::new("failed_new_router_leaves_nothing_after_cleanup");
    failed_first_apply_then_cleanup(plane, Launch::Nsenter, &mut c);
    c.finish();
}

/// Under `ip netns exec` the router namespaces the daemon creates live in
/// its own mount namespace and end with it, leaving their files in
/// /run/netns: `cleanup` removes those too (and what else the failed
/// first apply built).
fn cleanup_after_ip_netns_exec_leaves_nothing(plane: Dataplane) {
    let mut c = Checks::new("cleanup_after_ip_netns_exec_leaves_nothing");
    failed_first_apply_then_cleanup(plane, Launch::IpNetnsExec, &mut c);
    c.finish();
}
