//! Agent mode against a real RabbitMQ and a stand-in neutron-server on real
//! oslo.messaging, both in the test's node namespace: what the server sees
//! of the agent (registration, reports, floating IP statuses) and what the
//! VMs see of the routers it builds, on every data plane.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{
    Checks, Dataplane, MetadataAgent, NeutronMetadataAgent, Rig, TcpServer, TcpSession, UdpServer,
    article::*,
    header_values,
    metadata_agent::{METADATA_URL, curl},
    names, ping, sa, tcp_request, udp_request, wait_until,
};

const TCP: u16 = 8080;
const UDP: u16 = 8081;
/// Bound for the agent to act on something (a sync, a report).
const ACT: Duration = Duration::from_secs(30);

tests::planes!(
    registers_builds_and_reports,
    follows_every_notification,
    broker_restart_revived_and_agent_restart_keep_sessions,
    burst_of_updates_is_coalesced,
);

tests::iptables_only!(sync_timeouts_and_routers_no_longer_listed);

// Plugged into Open vSwitch, as Neutron's options say.
tests::ovs_planes!(registers_builds_and_reports);

/// The statuses of update_floatingip_statuses calls, merged in order.
fn fip_statuses(rig: &Rig) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for c in rig.server().calls("update_floatingip_statuses") {
        if let Some(s) = c["args"]["fip_statuses"].as_object() {
            m.extend(s.clone());
        }
    }
    m
}

fn wait_fip(rig: &Rig, id: &str, status: &str) -> bool {
    wait_until(ACT, Duration::from_millis(100), || {
        fip_statuses(rig).get(id).and_then(Value::as_str) == Some(status)
    })
}

/// The methods the server received, in order (for messages).
fn methods(rig: &Rig) -> Vec<String> {
    rig.server()
        .all_calls()
        .iter()
        .filter_map(|c| c["method"].as_str().map(str::to_string))
        .collect()
}

fn namespace_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// The article's router from the server, and its hosts; waits until its
/// floating IP is reported ACTIVE (the router is applied).
fn agent_article(plane: Dataplane) -> Rig {
    let mut rig = Rig::new(plane);
    rig.start_agent();
    let fip = rig.router().fips[0].id.clone();
    assert!(
        wait_fip(&rig, &fip, "ACTIVE"),
        "floating IP {fip} never reported ACTIVE; calls: {:?}\nlog:\n{}",
        methods(&rig),
        rig.daemon_log()
    );
    // The OVS agent's part: the router's ports get their networks' tags.
    rig.bind_ovs();
    rig.article_hosts(&[]);
    rig
}

/// Registration, reports with Neutron's fields, the routers built from
/// sync_routers forwarding as the file-fed daemon's do, FIP ACTIVE.
fn registers_builds_and_reports(plane: Dataplane) {
    let rig = agent_article(plane);
    let host = rig.agent_host();
    let srv = rig.server();
    let mut c = Checks::new("registers_builds_and_reports");

    // The handshake before anything else, then a full sync.
    let names: Vec<String> = srv
        .all_calls()
        .iter()
        .filter_map(|c| c["method"].as_str().map(str::to_string))
        .collect();
    let pos = |m: &str| names.iter().position(|n| n == m);
    c.ok(
        pos("get_host_ha_router_count") == Some(0),
        "get_host_ha_router_count comes first",
        format!("{names:?}"),
    );
    c.ok(
        pos("get_router_ids").is_some() && pos("sync_routers") > pos("get_router_ids"),
        "full sync: get_router_ids then sync_routers",
        format!("{names:?}"),
    );
    for call in srv.calls("sync_routers") {
        c.ok(
            call["args"]["host"] == host && call["version"] == "1.0",
            "sync_routers names the host, version 1.0",
            call.to_string(),
        );
    }
    // Reports: the first with start_flag, later ones without, counts right.
    let reports_ok = wait_until(ACT, Duration::from_millis(200), || {
        srv.calls("report_state").len() >= 3
    });
    c.ok(reports_ok, "periodic reports (report_interval 1 s)", "");
    // The counts are of the routers built: on a busy machine the first
    // reports can come before the build is done. The next one counts it.
    wait_until(ACT, Duration::from_millis(200), || {
        srv.calls("report_state").last().is_some_and(|r| {
            r["args"]["agent_state"]["agent_state"]["configurations"]["routers"] == 1
        })
    });
    let reports = srv.calls("report_state");
    if let Some(first) = reports.first() {
        let s = &first["args"]["agent_state"]["agent_state"];
        c.ok(
            s["start_flag"] == true,
            "first report has start_flag",
            s.to_string(),
        );
        for (k, v) in [
            ("binary", json!("neutron-l3-agent")),
            ("agent_type", json!("L3 agent")),
            ("topic", json!("l3_agent")),
            ("host", json!(host)),
            ("availability_zone", json!("nova")),
        ] {
            c.ok(s[k] == v, &format!("agent_state.{k} = {v}"), s.to_string());
        }
        let conf = &s["configurations"];
        for (k, v) in [
            ("agent_mode", json!("legacy")),
            (
                "interface_driver",
                json!(if rig.ovs.is_some() {
                    "openvswitch"
                } else {
                    "linuxbridge"
                }),
            ),
            ("handle_internal_only_routers", json!(true)),
        ] {
            c.ok(
                conf[k] == v,
                &format!("configurations.{k} = {v}"),
                conf.to_string(),
            );
        }
        c.ok(
            first["version"] == "1.4" && first["call"] == true,
            "report_state is a call, version 1.4",
            first.to_string(),
        );
        c.ok(
            first["args"]["time"]
                .as_str()
                .is_some_and(|t| t.len() == 26),
            "report time in Neutron's format",
            first["args"]["time"].to_string(),
        );
    }
    if let Some(last) = reports.last() {
        let s = &last["args"]["agent_state"]["agent_state"];
        c.ok(
            s.get("start_flag").is_none(),
            "later reports have no start_flag",
            s.to_string(),
        );
        let conf = &s["configurations"];
        c.ok(
            conf["routers"] == 1
                && conf["ex_gw_ports"] == 1
                && conf["interfaces"] == 2
                && conf["floating_ips"] == 1,
            "report counts routers, gateway ports, interfaces, floating IPs",
            conf.to_string(),
        );
        c.ok(
            s["uuid"].as_str().is_some_and(|u| u.len() >= 32),
            "each report has a uuid",
            s.to_string(),
        );
    }
    // The router forwards as Neutron's would.
    let _t = [
        TcpServer::start(&rig.ns("ext"), "ext", TCP).unwrap(),
        TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap(),
        TcpServer::start(&rig.ns("vm1"), "vm1", TCP).unwrap(),
    ];
    let _u = UdpServer::start(&rig.ns("ext"), "ext", UDP).unwrap();
    c.reply(
        "SNAT: vm1 -> ext as the gateway IP",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    c.reply(
        "UDP SNAT",
        udp_request(&rig.ns("vm1"), None, sa(EXT_HOST, UDP)),
        "ext",
        QG,
    );
    c.reply(
        "FIP out: vm2 -> ext as the FIP",
        tcp_request(&rig.ns("vm2"), sa(EXT_HOST, TCP)),
        "ext",
        FIP,
    );
    c.reply(
        "FIP in: ext -> FIP reaches vm2",
        tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
        "vm2",
        EXT_HOST,
    );
    c.reply(
        "east-west unNATed",
        tcp_request(&rig.ns("vm1"), sa(VM2, TCP)),
        "vm2",
        VM1,
    );
    rig.assert_fast_path(&mut c);
    metadata_through_neutrons_agent(&rig, &mut c);
    // The operator's commands find the agent's state through its files.
    let conf = rig.dir.join("neutron.conf").display().to_string();
    let ini = rig.dir.join("l3_agent.ini").display().to_string();
    for what in [
        &["show", "--json"][..],
        &["show", "stats", "--json"],
        &["show", "flows", "--json"],
    ] {
        let mut args: Vec<&str> = what.to_vec();
        args.extend(["--config-file", &conf, "--config-file", &ini]);
        let out = rig.xrouter(&args);
        let label = format!("xrouter {} with the agent's --config-file", what.join(" "));
        if plane == Dataplane::Iptables && what.len() == 3 {
            // Flows and counters are the eBPF planes'; the message says so.
            c.ok(
                out.stderr.contains("the data plane is iptables"),
                &label,
                out.describe(),
            );
            continue;
        }
        c.ok(
            out.success() && serde_json::from_str::<Value>(&out.stdout).is_ok(),
            &label,
            out.describe(),
        );
        if what.len() == 2 {
            c.ok(
                out.stdout.contains(&rig.router().id),
                "xrouter show lists the router",
                &out.stdout,
            );
        }
    }
    c.finish();
}

/// Metadata as a VM gets it on a real node: xrouter's proxy, Neutron's own
/// metadata agent (asking the stand-in server which instance has the VM's
/// address on the router's networks), and Nova's metadata API (an echo of
/// what it received): each VM's request reaches Nova as its own instance's,
/// signed with the shared secret.
fn metadata_through_neutrons_agent(rig: &Rig, c: &mut Checks) {
    const SECRET: &str = "metadata-s3cret";
    let nova = MetadataAgent::start_tcp(&rig.node, "127.0.0.1:8775".parse().unwrap());
    let project = names::uuid();
    let vms = [("vm1", "net1", VM1), ("vm2", "net2", VM2)];
    let instances: Vec<String> = vms.iter().map(|_| names::uuid()).collect();
    let ports: Vec<Value> = vms
        .iter()
        .zip(&instances)
        .map(|((_, net, ip), inst)| {
            let n = rig.network(net);
            json!({
                "id": names::uuid(), "network_id": n.id, "device_id": inst,
                "device_owner": "compute:nova", "project_id": project,
                "tenant_id": project, "mac_address": names::mac(),
                "fixed_ips": [{"ip_address": ip, "subnet_id": n.subnet_id}],
            })
        })
        .collect();
    rig.server().set_ports(&json!(ports));
    let _agent = NeutronMetadataAgent::start(
        &rig.node,
        rig.broker.as_ref().unwrap(),
        rig.server().dir(),
        &rig.metadata_socket(),
        8775,
        SECRET,
    );
    for ((vm, _, ip), inst) in vms.iter().zip(&instances) {
        let f = curl(&rig.ns(vm), METADATA_URL, &[]);
        if !c.eq(&format!("metadata: {vm} is answered"), f.status, 200) {
            c.ok(false, "curl", f.out.describe());
            continue;
        }
        let e = f.echo();
        c.eq(
            &format!("metadata: Nova gets {vm}'s instance"),
            header_values(&e, "X-Instance-ID"),
            vec![inst.clone()],
        );
        c.eq(
            &format!("metadata: Nova gets {vm}'s project"),
            header_values(&e, "X-Tenant-ID"),
            vec![project.clone()],
        );
        c.eq(
            &format!("metadata: Nova gets {vm}'s address"),
            header_values(&e, "X-Forwarded-For"),
            vec![ip.to_string()],
        );
        c.eq(
            &format!("metadata: {vm}'s instance ID signed with the shared secret"),
            header_values(&e, "X-Instance-ID-Signature"),
            vec![hmac_sha256_hex(SECRET, inst)],
        );
    }
    let asked = rig.server().calls("get_ports");
    c.ok(
        asked
            .iter()
            .any(|m| m["args"]["filters"]["device_id"] == json!([rig.router().id])),
        "the agent found the router's networks by its X-Neutron-Router-ID",
        &asked,
    );
    c.eq("Nova answered both", nova.answered(), 2);
}

/// HMAC-SHA256 of `msg` under `key`, in hex (openssl computes it).
fn hmac_sha256_hex(key: &str, msg: &str) -> String {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "printf %s \"$1\" | openssl dgst -sha256 -hmac \"$2\" -r",
            "sh",
            msg,
            key,
        ])
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Every notification type, and floating IP statuses ACTIVE, DOWN, ERROR.
fn follows_every_notification(plane: Dataplane) {
    let mut rig = agent_article(plane);
    let host = rig.agent_host();
    let id = rig.router().id.clone();
    let ns = rig.router_ns();
    let mut c = Checks::new("follows_every_notification");
    let _t = TcpServer::start(&rig.ns("vm1"), "vm1", TCP).unwrap();
    let _e = TcpServer::start(&rig.ns("ext"), "ext", TCP).unwrap();

    // routers_updated: a new floating IP for vm1, ACTIVE, reachable.
    let fip2 = "192.168.1.105";
    rig.router_mut().add_fip(fip2, VM1);
    rig.serve_routers();
    let fip2_id = rig.router().fips.last().unwrap().id.clone();
    let out = rig.server().notify(&["routers_updated", &host, &id]);
    c.ok(out.success(), "routers_updated cast", out.describe());
    c.ok(
        wait_fip(&rig, &fip2_id, "ACTIVE"),
        "new FIP reported ACTIVE",
        "",
    );
    c.reply(
        "new FIP reaches vm1",
        tcp_request(&rig.ns("ext"), sa(fip2, TCP)),
        "vm1",
        EXT_HOST,
    );

    // Released: DOWN, and no longer reachable.
    rig.router_mut().remove_fip(fip2);
    rig.serve_routers();
    rig.server().notify(&["routers_updated", &host, &id]);
    c.ok(
        wait_fip(&rig, &fip2_id, "DOWN"),
        "released FIP reported DOWN",
        "",
    );
    c.ok(
        tcp_request(&rig.ns("ext"), sa(fip2, TCP)).is_err(),
        "released FIP no longer reaches vm1",
        "",
    );

    // A router dict that fails validation: its FIPs ERROR, it keeps its
    // state, a good router in the same sync is applied.
    let fip1_id = rig.router().fips[0].id.clone();
    let mut bad = tests::routers_json(&rig.routers);
    bad[0]["_interfaces"][0]["mtu"] = json!(10);
    rig.server().set_routers(&bad);
    rig.server().notify(&["routers_updated", &host, &id]);
    c.ok(
        wait_fip(&rig, &fip1_id, "ERROR"),
        "invalid router: its FIP ERROR",
        "",
    );
    let log_ok = wait_until(ACT, Duration::from_millis(100), || {
        let l = rig.daemon_log();
        l.contains(&id) && l.contains("mtu")
    });
    c.ok(log_ok, "the log names the router and the field", "");
    c.reply(
        "it keeps forwarding as before",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    rig.serve_routers();
    rig.server().notify(&["routers_updated", &host, &id]);
    c.ok(
        wait_fip(&rig, &fip1_id, "ACTIVE"),
        "fixed: ACTIVE again",
        "",
    );

    // network_update: an MTU change of net1 reaches the router's port.
    rig.router_mut().interface_mut("net1").mtu = 1400;
    rig.serve_routers();
    let net1 = rig.router().interface("net1").network.id.clone();
    let qr1 = rig.router().qr("net1");
    let out = rig.server().notify(&[
        "network_update",
        &json!({"id": net1, "mtu": 1400}).to_string(),
    ]);
    c.ok(out.success(), "network_update fanout", out.describe());
    let mtu_ok = wait_until(ACT, Duration::from_millis(100), || {
        rig.router_ip(&format!("-o link show {qr1}"))
            .contains("mtu 1400")
    });
    c.ok(mtu_ok, "network_update: the port's new MTU applied", "");

    // agent_updated: a full sync.
    let before = rig.server().calls("get_router_ids").len();
    let out = rig.server().notify(&["agent_updated", &host, "true"]);
    c.ok(out.success(), "agent_updated cast", out.describe());
    let full = wait_until(ACT, Duration::from_millis(100), || {
        rig.server().calls("get_router_ids").len() > before
    });
    c.ok(full, "agent_updated: a full sync follows", "");

    // router_removed_from_agent: gone; router_added_to_agent (a call): back.
    rig.server().set_routers(&json!([]));
    let out = rig
        .server()
        .notify(&["router_removed_from_agent", &host, &id]);
    c.ok(
        out.success(),
        "router_removed_from_agent cast",
        out.describe(),
    );
    let gone = wait_until(ACT, Duration::from_millis(100), || !namespace_exists(&ns));
    c.ok(gone, "router_removed_from_agent: namespace removed", "");
    rig.serve_routers();
    let out = rig.server().notify(&["router_added_to_agent", &host, &id]);
    c.ok(
        out.success(),
        "router_added_to_agent is answered (a call)",
        out.describe(),
    );
    let back = wait_until(ACT, Duration::from_millis(100), || namespace_exists(&ns));
    c.ok(back, "router_added_to_agent: router built again", "");
    let fwd = wait_until(ACT, Duration::from_millis(200), || {
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)).is_ok()
    });
    c.ok(fwd, "and forwarding again", "");

    // router_deleted (fanout): gone.
    rig.server().set_routers(&json!([]));
    let out = rig.server().notify(&["router_deleted", &id]);
    c.ok(out.success(), "router_deleted fanout", out.describe());
    let gone = wait_until(ACT, Duration::from_millis(100), || !namespace_exists(&ns));
    c.ok(gone, "router_deleted: namespace removed", "");

    // An HA router is not handled: logged, not built.
    rig.serve_routers();
    let mut ha = tests::routers_json(&rig.routers);
    ha[0]["ha"] = json!(true);
    rig.server().set_routers(&ha);
    rig.server().notify(&["routers_updated", &host, &id]);
    let logged = wait_until(ACT, Duration::from_millis(100), || {
        rig.daemon_log().contains("not handled")
    });
    c.ok(logged, "HA router logged as not handled", "");
    c.ok(!namespace_exists(&ns), "HA router not built", "");
    // oslo's health probe.
    let out = rig.server().notify(&["ping", &host]);
    c.ok(
        out.success() && out.stdout.contains("pong"),
        "oslo_rpc_server_ping answered pong",
        out.describe(),
    );
    c.finish();
}

/// A broker restart and a "revived" answer each bring a full sync; a
/// restart of the agent resyncs; an established session survives all.
fn broker_restart_revived_and_agent_restart_keep_sessions(plane: Dataplane) {
    let mut rig = agent_article(plane);
    let mut c = Checks::new("broker_restart_revived_and_agent_restart_keep_sessions");
    let _t = TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap();
    let mut session = TcpSession::open(&rig.ns("ext"), sa(FIP, TCP)).expect("session to the FIP");
    c.reply("session up", session.exchange(), "vm2", EXT_HOST);

    let syncs = |rig: &Rig| rig.server().calls("get_router_ids").len();
    let before = syncs(&rig);
    let t0 = Instant::now();
    rig.broker.as_mut().unwrap().restart();
    // The stand-in server reconnects on its own; the agent must too.
    let resynced = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        syncs(&rig) > before
    });
    c.ok(
        resynced,
        "after a broker restart the agent reconnects and resyncs",
        format!("{:?}", t0.elapsed()),
    );
    c.reply(
        "session survives the broker restart",
        session.exchange(),
        "vm2",
        EXT_HOST,
    );

    let before = syncs(&rig);
    rig.server().set_report_answer(Some("revived"));
    let resynced = wait_until(ACT, Duration::from_millis(100), || syncs(&rig) > before);
    c.ok(resynced, "'revived' brings a full sync", "");
    rig.server().set_report_answer(None);

    let status = rig.stop_daemon();
    c.ok(
        status.is_some_and(|s| s.success()),
        "agent stops cleanly",
        format!("{status:?}"),
    );
    c.reply(
        "routers forward with the agent stopped",
        session.exchange(),
        "vm2",
        EXT_HOST,
    );
    // A VM asking for metadata while the agent is down is answered once
    // it is back.
    let _md = MetadataAgent::start(&rig.metadata_socket());
    let vm1 = rig.ns("vm1");
    let asking = std::thread::spawn(move || curl(&vm1, METADATA_URL, &[]));
    std::thread::sleep(Duration::from_millis(300));
    let before = syncs(&rig);
    rig.start_agent();
    let f = asking.join().unwrap();
    c.eq(
        "metadata asked while the agent was down is answered",
        f.status,
        200,
    );
    let resynced = wait_until(ACT, Duration::from_millis(100), || syncs(&rig) > before);
    c.ok(resynced, "restarted agent resyncs", "");
    // Its first report runs on its own timer: it may come after the resync.
    let started = || {
        rig.server()
            .calls("report_state")
            .into_iter()
            .filter(|r| r["args"]["agent_state"]["agent_state"]["start_flag"] == true)
            .count()
    };
    wait_until(ACT, Duration::from_millis(100), || started() >= 2);
    let first = started();
    c.ok(
        first >= 2,
        "the restarted agent's first report has start_flag",
        format!("{first}"),
    );
    c.reply(
        "session survives the agent restart",
        session.exchange(),
        "vm2",
        EXT_HOST,
    );
    let p = ping(&rig.ns("vm1"), EXT_HOST, &[]);
    c.ok(p.success(), "new traffic after the restart", p.describe());
    c.finish();
}

/// Ten rounds of routers_updated naming every one of 40 routers (400
/// notifications): all applied, in far fewer syncs than notifications.
/// 40 routers: enough to see coalescing at work; each eBPF router loads
/// its own programs (a second or more of the verifier here), so a hundred
/// took over four minutes of the suite on the xdp plane. A hundred
/// routers' full sync is measured by `cargo xtask bench --agent`.
fn burst_of_updates_is_coalesced(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.routers.clear();
    let mut ids = Vec::new();
    const ROUTERS: usize = 40;
    for i in 0..ROUTERS as u32 {
        let (a, b) = (100 + i / 250, i % 250);
        let gw = format!("10.{a}.{b}.1");
        let net = rig.add_network(&format!("n{i}"), &format!("10.{a}.{b}.0/24"), Some(&gw));
        let mut r = tests::RouterSpec::empty(&rig.tag);
        r.interfaces.push(tests::PortSpec::new(&net, &gw));
        ids.push(r.id.clone());
        rig.routers.push(r);
    }
    rig.start_agent();
    let host = rig.agent_host();
    // A bound on liveness, not a speed claim: on a loaded 2-core machine
    // building 100 routers has taken over four minutes.
    let mut c = Checks::new("burst_of_updates_is_coalesced");
    let all_built = || {
        ids.iter()
            .all(|id| namespace_exists(&format!("qrouter-{id}")))
    };
    c.ok(
        wait_until(Duration::from_secs(300), Duration::from_millis(200), || {
            all_built()
        }),
        "every router from the full sync",
        "",
    );
    let syncs_before = rig.server().calls("sync_routers").len();
    // Ten rounds, each naming every router.
    let t0 = Instant::now();
    for _ in 0..10 {
        let mut args = vec!["routers_updated".to_string(), host.clone()];
        args.extend(ids.iter().cloned());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = rig.server().notify(&a);
        c.ok(
            out.success(),
            "routers_updated casts naming every router",
            out.describe(),
        );
    }
    let received = |rig: &Rig| {
        rig.server()
            .calls("sync_routers")
            .iter()
            .skip(syncs_before)
            .flat_map(|s| {
                s["args"]["router_ids"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let caught_up = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        received(&rig) == ROUTERS
    });
    let syncs = rig.server().calls("sync_routers").len() - syncs_before;
    println!(
        "{} notifications for {ROUTERS} routers: {syncs} sync_routers calls, caught up in {:?}",
        10 * ROUTERS,
        t0.elapsed()
    );
    c.ok(
        caught_up,
        "every router re-synced",
        format!("{} of {ROUTERS}", received(&rig)),
    );
    c.ok(
        syncs <= ROUTERS,
        "a burst collapses (at most one sync_routers per notification round per router)",
        format!("{syncs} calls"),
    );
    c.ok(all_built(), "every router still there", "");
    c.finish();
}

/// A sync_routers that times out halves the chunk and is retried; a full
/// sync removes the routers the server no longer lists for this host.
/// (The data plane plays no part: iptables alone.)
fn sync_timeouts_and_routers_no_longer_listed(plane: Dataplane) {
    let mut rig = agent_article(plane);
    let host = rig.agent_host();
    let id = rig.router().id.clone();
    let ns = rig.router_ns();
    let mut c = Checks::new("sync_timeouts_and_routers_no_longer_listed");
    // rpc_response_timeout is 10 s in the rig: an 11 s answer times out.
    rig.server().set_sleep("sync_routers", 11.0);
    let before = rig.server().calls("sync_routers").len();
    rig.server().notify(&["routers_updated", &host, &id]);
    let halved = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        rig.daemon_log().contains("chunk size now 128")
    });
    c.ok(
        halved,
        "a timed-out sync_routers halves the chunk (256 -> 128)",
        "",
    );
    rig.server().set_sleep("sync_routers", 0.0);
    let retried = wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        rig.server().calls("sync_routers").len() >= before + 2
    });
    c.ok(retried, "and the sync is retried", "");
    c.ok(namespace_exists(&ns), "the router stays meanwhile", "");
    // A second router holds 192.168.1.150; the first one taking it too is
    // refused (its new floating IP ERROR), the holder keeps it.
    let ext = rig.network("ext").clone();
    let net3 = rig.add_network("net3", "71.1.180.0/24", Some("71.1.180.1"));
    let mut holder = tests::RouterSpec::empty(&rig.tag);
    holder.gateway = Some(tests::PortSpec::new(&ext, "192.168.1.111"));
    holder
        .interfaces
        .push(tests::PortSpec::new(&net3, "71.1.180.1"));
    holder.add_fip("192.168.1.150", "71.1.180.5");
    let holder_id = holder.id.clone();
    let holder_fip = holder.fips[0].id.clone();
    rig.routers.push(holder);
    rig.serve_routers();
    rig.server().notify(&["routers_updated", &host, &holder_id]);
    c.ok(
        wait_fip(&rig, &holder_fip, "ACTIVE"),
        "a second router holds 192.168.1.150",
        "",
    );
    rig.router_mut().add_fip("192.168.1.150", VM1);
    let taker_fip = rig.router().fips.last().unwrap().id.clone();
    rig.serve_routers();
    rig.server().notify(&["routers_updated", &host, &id]);
    c.ok(
        wait_fip(&rig, &taker_fip, "ERROR"),
        "a router taking an address another holds: its floating IPs ERROR",
        "",
    );
    let holder_ns = format!("qrouter-{holder_id}");
    let qg_holder = tests::ip(&holder_ns, "-o addr show").unwrap_or_default();
    let qg_taker = rig.router_ip("-o addr show");
    c.ok(
        qg_holder.contains("192.168.1.150/32") && !qg_taker.contains("192.168.1.150"),
        "the holder keeps the address, the other router does not get it",
        format!("holder: {qg_holder}\ntaker: {qg_taker}"),
    );
    // A full sync too: the holder (listed after the claimant) keeps it and
    // stays ACTIVE; only the claimant is named as not applied.
    let out = rig.xrouter(&[
        "reload",
        "--config",
        &rig.config_path().display().to_string(),
    ]);
    c.ok(
        !out.success() && out.stderr.contains(&id) && !out.stderr.contains(&holder_id),
        "full sync: only the claimant is refused",
        out.describe(),
    );
    c.ok(
        fip_statuses(&rig).get(&holder_fip).and_then(Value::as_str) == Some("ACTIVE"),
        "full sync: the holder's floating IP stays ACTIVE",
        format!("{:?}", fip_statuses(&rig).get(&holder_fip)),
    );
    rig.router_mut().remove_fip("192.168.1.150");
    rig.serve_routers();
    // cleanup refuses while the agent runs (it would be undone).
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["cleanup", "--config", &cfg]);
    c.ok(
        !out.success() && out.stderr.contains("stop it first") && namespace_exists(&ns),
        "cleanup refuses while the agent runs",
        out.describe(),
    );
    // `xrouter reload` is a full sync with the server, answered once done.
    let before = rig.server().calls("get_router_ids").len();
    let out = rig.reload();
    c.ok(
        out.success() && out.stdout.contains("full sync"),
        "xrouter reload: a full sync",
        out.describe(),
    );
    c.ok(
        rig.server().calls("get_router_ids").len() > before,
        "reload asked the server for the routers",
        "",
    );
    // The server no longer lists the router: the next full sync removes it.
    rig.server().set_routers(&json!([]));
    rig.server().notify(&["agent_updated", &host, "true"]);
    let gone = wait_until(ACT, Duration::from_millis(100), || !namespace_exists(&ns));
    c.ok(gone, "a full sync removes a router no longer listed", "");
    // A stop does not wait for a sync the server is slow to answer.
    rig.server().set_sleep("sync_routers", 30.0);
    rig.serve_routers();
    let before = rig.server().calls("sync_routers").len();
    rig.server().notify(&["routers_updated", &host, &id]);
    let asked = wait_until(ACT, Duration::from_millis(100), || {
        rig.server().calls("sync_routers").len() > before
    });
    c.ok(asked, "a sync_routers the server sits on", "");
    let t0 = Instant::now();
    let status = rig.stop_daemon();
    c.ok(
        status.is_some_and(|s| s.success()),
        "SIGTERM stops the agent cleanly, without waiting out rpc_response_timeout",
        format!("{status:?} after {:?}", t0.elapsed()),
    );
    rig.server().set_sleep("sync_routers", 0.0);
    c.finish();
}
