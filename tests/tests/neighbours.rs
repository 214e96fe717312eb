//! Next hops as the kernel knows them: a VM that changes its MAC without a
//! gratuitous ARP is reached again once the router's kernel checks the
//! neighbour, on every plane. On `xdp` the kernel never sees the packets
//! XDP forwards, so it would never check a neighbour it holds as STALE:
//! the daemon has it check the ones XDP uses.

use std::time::{Duration, Instant};

use tests::{Checks, Dataplane, Rig, article::*, cmd, ping};

tests::planes!(
    a_vm_that_changes_its_mac_is_reached_again,
    after_a_restart_a_vm_that_changes_its_mac_is_reached_again
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
