//! Next hops as the kernel knows them: a VM that changes its MAC without a
//! gratuitous ARP is reached again once the router's kernel checks the
//! neighbour, on every plane. On `xdp` the kernel never sees the packets
//! XDP forwards, so it would never check a neighbour it holds as STALE:
//! the daemon has it check the ones XDP uses.

use std::time::{Duration, Instant};

use tests::{
    Checks, Dataplane, Rig, TcpServer, article::*, cmd, ping, sa, tcp_connect, tcp_request,
};

tests::planes!(
    a_vm_that_changes_its_mac_is_reached_again,
    after_a_restart_a_vm_that_changes_its_mac_is_reached_again,
    a_next_hop_that_never_answers_is_reported_unreachable
);

/// Short neighbour timers on the router's port to vm2 (the kernel's
/// defaults: 30 s reachable, 5 s before the first probe), so that the
/// check happens within seconds; the same on every plane. Set before vm2
/// is first resolved (an entry resolved under the defaults stays
/// reachable for up to 45 s).
fn quick_neighbour_timers(rig: &Rig) {
    let dev = rig.port_dev("net2");
    for (knob, v) in [
        ("base_reachable_time_ms", "1000"),
        ("delay_first_probe_time", "1"),
        ("retrans_time_ms", "200"),
    ] {
        let key = format!("net.ipv4.neigh.{dev}.{knob}={v}");
        let out = cmd::exec(&rig.router_ns(), "sysctl", &["-qw", &key], cmd::CMD_TIMEOUT)
            .expect("sysctl in the router namespace");
        assert!(out.success(), "{}", out.describe());
    }
}

fn a_vm_that_changes_its_mac_is_reached_again(plane: Dataplane) {
    let rig = Rig::article(plane);
    quick_neighbour_timers(&rig);
    let mut c = Checks::new("a_vm_that_changes_its_mac_is_reached_again");
    // Resolved, and on xdp forwarded by XDP from the MAC mirrored.
    let p = ping(&rig.ns("vm1"), VM2, &["-c", "8", "-i", "0.2"]);
    c.ok(p.success(), "ping vm1 -> vm2", p.describe());
    new_mac_reached(&rig, &mut c);
    c.finish();
}

/// The same after a restart of the daemon that adopts the router as it
/// is (programs and maps in place, nothing to change): the restarted
/// daemon mirrors the router's neighbours all the same.
fn after_a_restart_a_vm_that_changes_its_mac_is_reached_again(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    quick_neighbour_timers(&rig);
    let mut c = Checks::new("after_a_restart_a_vm_that_changes_its_mac_is_reached_again");
    let p = ping(&rig.ns("vm1"), VM2, &["-c", "8", "-i", "0.2"]);
    c.ok(p.success(), "ping vm1 -> vm2", p.describe());
    let st = rig.stop_daemon();
    c.ok(st.is_some_and(|s| s.success()), "daemon exits 0", st);
    rig.start();
    let p = ping(&rig.ns("vm1"), VM2, &["-c", "8", "-i", "0.2"]);
    c.ok(p.success(), "after restart: ping vm1 -> vm2", p.describe());
    new_mac_reached(&rig, &mut c);
    c.finish();
}

/// vm2 takes a new MAC without telling anyone; vm1 reaches it again within
/// 30 s, through the programs.
fn new_mac_reached(rig: &Rig, c: &mut Checks) {
    let (vm1, vm2) = (rig.ns("vm1"), rig.ns("vm2"));

    // A new MAC, told to no one (no gratuitous ARP).
    let out = cmd::exec(
        &vm2,
        "ip",
        &["link", "set", "dev", "eth0", "address", "02:00:00:00:02:99"],
        cmd::CMD_TIMEOUT,
    )
    .expect("ip link set");
    assert!(out.success(), "{}", out.describe());
    let t0 = Instant::now();
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(30) {
        if ping(&vm1, VM2, &["-W", "1"]).success() {
            back = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let neigh = cmd::exec(&rig.router_ns(), "ip", &["neigh", "show"], cmd::CMD_TIMEOUT)
        .map(|o| o.stdout)
        .unwrap_or_default();
    c.ok(
        back.is_some(),
        "vm2 reached again within 30 s of its new MAC",
        &neigh,
    );
    // Still through the programs afterwards.
    let p = ping(&vm1, VM2, &["-c", "8", "-i", "0.2"]);
    c.ok(p.success(), "ping vm1 -> vm2 at its new MAC", p.describe());
    rig.assert_fast_path(c);
}

/// No one at 91.1.180.99 (a fixed IP with floating IP 192.168.1.105) nor at
/// 192.168.1.99, until a VM takes 91.1.180.99.
const NOBODY: &str = "91.1.180.99";
const NOBODY_FIP: &str = "192.168.1.105";
const NOBODY_EXT: &str = "192.168.1.99";

/// A next hop that never answers ARP: as the kernel's forwarding does on
/// the iptables plane, the sender is told the host is unreachable (ICMP
/// host unreachable, about what it sent), so its TCP connect fails with
/// "No route to host" within seconds instead of timing out: through SNAT,
/// east-west, and to a floating IP. Once a VM takes the address, it is
/// reached within seconds, through the programs.
fn a_next_hop_that_never_answers_is_reported_unreachable(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut().add_fip(NOBODY_FIP, NOBODY);
    rig.start();
    rig.article_hosts(&[]);
    // Resolution fails after three probes 200 ms apart (the kernel's
    // default: 1 s), the same on every plane.
    for net in ["ext", "net2"] {
        let key = format!("net.ipv4.neigh.{}.retrans_time_ms=200", rig.port_dev(net));
        let out = cmd::exec(&rig.router_ns(), "sysctl", &["-qw", &key], cmd::CMD_TIMEOUT)
            .expect("sysctl in the router namespace");
        assert!(out.success(), "{}", out.describe());
    }
    let mut c = Checks::new("a_next_hop_that_never_answers_is_reported_unreachable");
    for (what, from, to) in [
        (
            "vm1 -> nobody on the external network (SNAT)",
            "vm1",
            NOBODY_EXT,
        ),
        ("vm1 -> nobody on net2 (east-west)", "vm1", NOBODY),
        ("ext -> the floating IP of nobody", "ext", NOBODY_FIP),
    ] {
        let t0 = Instant::now();
        let r = tcp_connect(&rig.ns(from), None, sa(to, 80), Duration::from_secs(20));
        let took = t0.elapsed();
        let err = match r {
            Ok(_) => "connected".to_string(),
            Err(e) => format!("{e:#}"),
        };
        c.ok(
            err.contains("No route to host") && took < Duration::from_secs(15),
            &format!("{what}: \"No route to host\" within 15 s"),
            format!("{err} after {took:?}"),
        );
    }
    // The error comes from where the kernel's NAT sends it: from the
    // floating IP the sender used (from outside, or inside: hairpin); else
    // after SNAT from the address the source was translated to; else from
    // the router's port (east-west).
    for (from, to, by) in [
        ("vm1", NOBODY_EXT, QG),
        ("vm2", NOBODY_EXT, FIP),
        ("vm1", NOBODY, QR1),
        ("ext", NOBODY_FIP, NOBODY_FIP),
        ("vm1", NOBODY_FIP, NOBODY_FIP),
    ] {
        let p = ping(&rig.ns(from), to, &["-c", "2", "-i", "0.5", "-W", "1"]);
        c.ok(
            p.stdout.contains(&format!(
                "From {by} icmp_seq=1 Destination Host Unreachable"
            )),
            &format!("ping {from} -> {to}: host unreachable from {by}"),
            p.describe(),
        );
    }
    if plane != Dataplane::Iptables {
        c.ok(
            rig.stat("kernel/neighbour") > 0,
            "the programs handed the packets up to be answered",
            rig.stats_text(),
        );
    }

    // Someone takes the address: reached within seconds, from vm1 and from
    // outside through the floating IP.
    rig.vm("vm3", "net2", &format!("{NOBODY}/24"), QR2);
    let _s = TcpServer::start(&rig.ns("vm3"), "vm3", 80).unwrap();
    let t0 = Instant::now();
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(15) {
        if ping(&rig.ns("vm1"), NOBODY, &["-W", "1"]).success() {
            back = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    c.ok(
        back.is_some(),
        "vm3 reached within 15 s",
        format!("{back:?}"),
    );
    match tcp_request(&rig.ns("ext"), sa(NOBODY_FIP, 80)) {
        Ok(r) => c.eq(
            "ext -> the floating IP: vm3 saw",
            r.peer.ip().to_string(),
            EXT_HOST.to_string(),
        ),
        Err(e) => c.ok(false, "ext -> the floating IP of vm3", format!("{e:#}")),
    };
    let p = ping(&rig.ns("vm1"), NOBODY, &["-c", "8", "-i", "0.2"]);
    c.ok(p.success(), "ping vm1 -> vm3", p.describe());
    rig.assert_fast_path(&mut c);
    c.finish();
}
