//! Open vSwitch plugging (`interface_driver = "openvswitch"`), on a private
//! OVS per test (userspace datapath): the taps are ports of the integration
//! bridge with exactly the Interface `external_ids` Neutron sets, leave it
//! with their router, come back when removed behind the daemon's back, and
//! a missing integration bridge is a clear per-router error.

use std::{collections::BTreeMap, time::Duration};

use tests::{
    Checks, Dataplane, Plugging, Rig, TcpServer, article::*, sa, set_plugging, tcp_request,
    wait_until,
};

tests::planes!(
    ports_are_on_the_integration_bridge_as_neutron_plugs_them,
    a_removed_router_leaves_the_bridge,
    a_port_removed_behind_our_back_comes_back,
    a_missing_integration_bridge_is_a_clear_error,
);

const TCP: u16 = 8080;

fn ovs_rig(plane: Dataplane) -> Rig {
    set_plugging(Plugging::Ovs);
    Rig::new(plane)
}

/// The taps of the first router's ports: (tap, port id, MAC).
fn taps(rig: &Rig) -> Vec<(String, String, String)> {
    let r = rig.router();
    r.interfaces
        .iter()
        .chain(r.gateway.as_ref())
        .map(|p| (p.tap(), p.id.clone(), p.mac.clone()))
        .collect()
}

fn ovs(rig: &Rig) -> &tests::ovs::Ovs {
    rig.ovs.as_ref().expect("an OVS rig")
}

fn ports_carry_neutron_s_external_ids(rig: &Rig, c: &mut Checks) {
    let ifaces = ovs(rig).interfaces().unwrap();
    let ports = ovs(rig).ports().unwrap();
    for (tap, id, mac) in taps(rig) {
        let want: BTreeMap<String, String> = [
            ("iface-id", id.as_str()),
            ("iface-status", "active"),
            ("attached-mac", mac.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        c.ok(ports.contains(&tap), &format!("{tap} on br-int"), &ports);
        c.eq(
            &format!("{tap} external_ids"),
            ifaces.get(&tap),
            Some(&want),
        );
    }
}

fn ports_are_on_the_integration_bridge_as_neutron_plugs_them(plane: Dataplane) {
    let rig = {
        let mut r = ovs_rig(plane);
        r.start();
        r.article_hosts(&[]);
        r
    };
    let mut c = Checks::new("ovs_layout");
    ports_carry_neutron_s_external_ids(&rig, &mut c);
    for (tap, _, _) in taps(&rig) {
        // OVS's userspace datapath reads it: no kernel bridge holds it.
        let l = tests::link(&rig.node, &tap);
        c.eq(
            &format!("{tap} has no Linux bridge"),
            l.as_ref().and_then(|l| l["master"].as_str()),
            None,
        );
    }
    // The qg- port (after the agent's part) carries the external tag.
    let qg_tap = rig.router().gateway.as_ref().unwrap().tap();
    let tag = ovs(&rig).vsctl(&["get", "Port", &qg_tap, "tag"]).unwrap();
    c.eq(
        "qg-'s tap on the external network's VLAN",
        tag.trim().to_string(),
        rig.vlan_of(&rig.network("ext").id).to_string(),
    );
    // The userspace datapath's devices live in the node namespace only.
    for dev in ["br-int", "ovs-netdev"] {
        c.ok(
            tests::link_exists(&rig.node, dev),
            &format!("{dev} in the node namespace"),
            "",
        );
        c.ok(
            !std::path::Path::new("/sys/class/net").join(dev).exists(),
            &format!("no {dev} in the root namespace"),
            "",
        );
    }
    // The router's ports finish checksums themselves (netdev datapath).
    let qr = rig.router().interfaces[0].qr();
    let k = tests::cmd::exec(
        &rig.router_ns(),
        "ethtool",
        &["-k", &qr],
        tests::cmd::CMD_TIMEOUT,
    )
    .unwrap();
    c.ok(
        k.stdout.contains("tx-checksum-ip-generic: off")
            && k.stdout.contains("tx-tcp-segmentation: off"),
        &format!("{qr}: checksum and segmentation offloads off"),
        &k.stdout,
    );
    // Applied twice, nothing to change: `check --plan` against the node.
    let cfg = rig.config_path().display().to_string();
    let routers = rig.routers_path().display().to_string();
    let plan = rig.xrouter(&["check", "--routers", &routers, "--config", &cfg, "--plan"]);
    c.ok(
        plan.success() && plan.stdout.contains("nothing to change"),
        "xrouter check --plan: nothing to change",
        plan.describe(),
    );
    let _s = TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap();
    c.reply(
        "TCP vm1 -> vm2 through br-int",
        tcp_request(&rig.ns("vm1"), sa(VM2, TCP)),
        "vm2",
        VM1,
    );
    c.reply(
        "TCP ext -> FIP through br-int",
        tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
        "vm2",
        EXT_HOST,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

fn a_removed_router_leaves_the_bridge(plane: Dataplane) {
    let mut rig = ovs_rig(plane);
    rig.start();
    let mut c = Checks::new("ovs_router_removed");
    let ports = ovs(&rig).ports().unwrap();
    c.eq("router ports on br-int", ports.len(), taps(&rig).len());
    let gone = taps(&rig);
    rig.routers.clear();
    rig.apply();
    let ports = ovs(&rig).ports().unwrap();
    c.ok(
        gone.iter().all(|(t, _, _)| !ports.contains(t)),
        "the removed router's ports are gone from br-int",
        &ports,
    );
    c.finish();
}

fn a_port_removed_behind_our_back_comes_back(plane: Dataplane) {
    let mut rig = ovs_rig(plane);
    rig.start();
    rig.article_hosts(&[]);
    let _s = TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap();
    let mut c = Checks::new("ovs_self_heal");
    let tap = rig.router().interfaces[0].tap();
    ovs(&rig).vsctl(&["del-port", "br-int", &tap]).unwrap();
    let back = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        ovs(&rig).ports().unwrap().contains(&tap)
    });
    c.ok(
        back,
        &format!("{tap} re-added within 10 s (resync every 1 s)"),
        "",
    );
    // The OVS agent's part: the new port is bound to its network.
    let bound = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        rig.bind_ovs().is_empty()
    });
    c.ok(bound, "router ports found by iface-id and tagged", "");
    ports_carry_neutron_s_external_ids(&rig, &mut c);
    c.ok(
        rig.daemon_log()
            .contains(&format!("{tap}: add to OVS bridge br-int")),
        "the daemon logged the repair",
        "",
    );
    c.reply(
        "TCP vm1 -> vm2 after the repair",
        tcp_request(&rig.ns("vm1"), sa(VM2, TCP)),
        "vm2",
        VM1,
    );
    c.finish();
}

fn a_missing_integration_bridge_is_a_clear_error(plane: Dataplane) {
    let mut rig = ovs_rig(plane);
    ovs(&rig).vsctl(&["del-br", "br-int"]).unwrap();
    rig.start();
    let mut c = Checks::new("ovs_no_bridge");
    let id = rig.router().id.clone();
    let want = "the Open vSwitch integration bridge br-int does not exist";
    let failed = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        rig.show()["failed"].as_array().is_some_and(|f| {
            f.iter().any(|f| {
                f["id"] == id.as_str() && f["error"].as_str().is_some_and(|e| e.contains(want))
            })
        })
    });
    c.ok(
        failed,
        "xrouter show: the router failed, naming br-int",
        rig.show(),
    );
    c.ok(
        rig.daemon_log().contains(want),
        "the daemon's log names the missing bridge",
        "",
    );
    // Once the OVS agent makes it, the next resync plugs the router.
    ovs(&rig)
        .vsctl(&[
            "add-br",
            "br-int",
            "--",
            "set",
            "Bridge",
            "br-int",
            "datapath_type=netdev",
        ])
        .unwrap();
    let applied = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let s = rig.show();
        s["failed"].as_array().is_some_and(|f| f.is_empty())
            && s["routers"].as_array().is_some_and(|r| r.len() == 1)
    });
    c.ok(applied, "applied once br-int exists", rig.show());
    ports_carry_neutron_s_external_ids(&rig, &mut c);
    c.finish();
}
