//! `xrouter explain` on a running router, as an operator runs it: the
//! built binary in the node namespace, against the daemon's router. Each
//! packet's printed and JSON stages are checked against what the router
//! is configured to do, and the live connection table and counters must
//! not move.

use serde_json::Value;
use tests::{Dataplane, Rig, TcpServer, TcpSession, article::*, ping, sa, wait_until};

tests::ebpf_only!(
    no_route_snat_and_dnat_explained,
    a_gateway_that_never_answers_arp_is_named
);
tests::iptables_only!(iptables_plane_is_refused);

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
const EVERY: std::time::Duration = std::time::Duration::from_millis(300);

fn explain(rig: &Rig, port: &str, spec: &str, json: bool) -> tests::Out {
    let cfg = rig.config_path().display().to_string();
    let id = rig.router().id.clone();
    let mut args = vec![
        "--config", &cfg, "explain", "--router", &id, "--in", port, spec,
    ];
    if json {
        args.push("--json");
    }
    rig.xrouter(&args)
}

fn explain_json(rig: &Rig, port: &str, spec: &str) -> Value {
    let out = explain(rig, port, spec, true);
    assert!(out.success(), "{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// `show flows --json` without what the clock moves (ages, idle time).
fn flows(rig: &Rig) -> Value {
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["--config", &cfg, "show", "flows", "--json"]);
    assert!(out.success(), "{}", out.describe());
    let mut v: Value = serde_json::from_str(&out.stdout).unwrap();
    for (_, fl) in v.as_object_mut().unwrap() {
        for f in fl.as_array_mut().unwrap() {
            let o = f.as_object_mut().unwrap();
            for k in ["age_secs", "idle_secs", "expires_secs"] {
                o.remove(k);
            }
        }
    }
    v
}

/// Counters the hosts' own background traffic moves whenever it likes
/// (IPv6 neighbour discovery, multicast listener reports): the kernel's,
/// after XDP hands them up.
const BACKGROUND: [&str; 3] = ["kernel/not-ipv4", "kernel/local", "xdp->tc"];

fn packets(v: &Value, k: &str) -> u64 {
    v[k]["packets"].as_u64().unwrap_or(0)
}

/// `show stats --json` of the router: every counter but the background
/// ones, and how many packets those counted.
fn stats(rig: &Rig) -> (Value, [u64; 3]) {
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&["--config", &cfg, "show", "stats", "--json"]);
    assert!(out.success(), "{}", out.describe());
    let all: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut v = all[&rig.router().id].clone();
    let bg = BACKGROUND.map(|k| packets(&v, k));
    for k in BACKGROUND {
        v.as_object_mut().unwrap().remove(k);
    }
    (v, bg)
}

/// The live counters moved only by background traffic: everything else
/// equal, and no packet handed up by XDP (none on the tc plane) but those
/// that ended as the kernel's background.
fn assert_counters_unmoved(before: &(Value, [u64; 3]), after: &(Value, [u64; 3])) {
    assert_eq!(after.0, before.0, "live counters changed");
    let d = |i: usize| after.1[i] - before.1[i];
    assert!(
        d(2) <= d(0) + d(1),
        "xdp->tc moved by more than the kernel's background traffic: {before:?} -> {after:?}"
    );
}

fn mac_of(rig: &Rig, host: &str) -> String {
    let l = tests::link(&rig.ns(host), "eth0").expect("eth0");
    l["address"].as_str().unwrap().to_string()
}

/// Three packets on a router whose external subnet has no gateway (so no
/// default route): one to nowhere, one SNATed, one to a floating IP.
fn no_route_snat_and_dnat_explained(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.without_default_route();
    rig.start();
    rig.article_hosts(&[]);
    let (qr1, qr2, qg) = (
        rig.port_dev("net1"),
        rig.port_dev("net2"),
        rig.port_dev("ext"),
    );
    let (vm2_mac, ext_mac) = (mac_of(&rig, "vm2"), mac_of(&rig, "ext"));

    // Traffic through both ways, so the router has resolved vm2 and ext;
    // its neighbours map follows the kernel's within a second.
    let p = ping(&rig.ns("ext"), FIP, &["-c", "2", "-i", "0.2"]);
    assert!(p.success(), "{}", p.describe());
    let p = ping(&rig.ns("vm1"), EXT_HOST, &["-c", "2", "-i", "0.2"]);
    assert!(p.success(), "{}", p.describe());
    let dnat_spec = format!("udp {EXT_HOST}:5000 -> {FIP}:53");
    let snat_spec = format!("tcp {VM1}:40000 -> {EXT_HOST}:8080 [flags S]");
    let known = wait_until(TIMEOUT, EVERY, || {
        let d = explain_json(&rig, &qg, &dnat_spec);
        let s = explain_json(&rig, &qr1, &snat_spec);
        d["egress"]["dst_mac"] == vm2_mac.as_str() && s["egress"]["dst_mac"] == ext_mac.as_str()
    });
    assert!(known, "the neighbours map never held vm2 and ext");

    let flows_before = flows(&rig);
    let stats_before = stats(&rig);

    // 1. No route: the program hands it to the kernel to answer.
    let v = explain_json(
        &rig,
        &qr1,
        &format!("tcp {VM1}:40000 -> 8.8.8.8:443 [flags S]"),
    );
    assert_eq!(v["plane"], plane.to_string(), "{v:#}");
    assert_eq!(v["ingress"]["device"], qr1.as_str(), "{v:#}");
    // The daemon runs the same binary: its programs are the ones that ran.
    assert_eq!(v["same_build"], true, "{v:#}");
    assert_eq!(v["verdict"]["kind"], "kernel", "{v:#}");
    assert_eq!(v["verdict"]["outcome"], "kernel/no-route", "{v:#}");
    assert_eq!(v["route"]["destination"], "8.8.8.8", "{v:#}");
    assert!(v["route"]["prefix"].is_null(), "{v:#}");
    assert_eq!(v["conntrack"]["created"], serde_json::json!([]), "{v:#}");
    let hooks = v["hooks"].as_array().unwrap();
    let last = hooks.last().unwrap();
    assert_eq!(last["program"], "xr_tc", "{v:#}");
    assert_eq!(last["return"], "TC_ACT_OK", "{v:#}");
    assert_eq!(last["mark"], "0x78650000", "{v:#}");
    if plane == Dataplane::Xdp {
        assert_eq!(hooks.len(), 2, "{v:#}");
        assert_eq!(hooks[0]["program"], "xr_xdp");
        assert_eq!(hooks[0]["return"], "XDP_PASS");
        assert_eq!(hooks[0]["outcome"], "xdp->tc");
    } else {
        assert_eq!(hooks.len(), 1, "{v:#}");
    }
    // Handed up untranslated.
    assert_eq!(v["output"]["headers"]["ip"]["src"], VM1, "{v:#}");
    assert_eq!(v["output"]["headers"]["ip"]["dst"], "8.8.8.8", "{v:#}");

    // 2. SNAT: a VM to an external host leaves as the gateway address.
    let v = explain_json(&rig, &qr1, &snat_spec);
    assert_eq!(v["verdict"]["kind"], "forwarded", "{v:#}");
    let fwd = if plane == Dataplane::Xdp {
        "forwarded/xdp"
    } else {
        "forwarded/tc"
    };
    assert_eq!(v["verdict"]["outcome"], fwd, "{v:#}");
    assert_eq!(v["conntrack"]["found"], Value::Null, "{v:#}");
    let created = v["conntrack"]["created"].as_array().unwrap();
    assert_eq!(created.len(), 2, "an entry per direction: {v:#}");
    assert!(
        created
            .iter()
            .all(|e| e["table"] == "embryonic" && e["state"] == "SYN_SENT" && e["snat"] == true),
        "{v:#}"
    );
    let to = v["nat"]["source"]["to"].as_str().unwrap();
    let (addr, port) = to.split_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert_eq!(addr, QG, "{v:#}");
    assert!(port >= 1024, "{v:#}");
    assert!(v["nat"]["destination"].is_null(), "{v:#}");
    let ip = &v["output"]["headers"]["ip"];
    assert_eq!(ip["src"], QG, "{v:#}");
    assert_eq!(ip["sport"], port, "{v:#}");
    assert_eq!(ip["dst"], EXT_HOST, "{v:#}");
    assert_eq!(ip["ttl"], 63, "{v:#}");
    assert_eq!(ip["ip_checksum_ok"], true, "{v:#}");
    assert_eq!(ip["l4_checksum"], "ok", "{v:#}");
    assert_eq!(v["route"]["prefix"], EXT, "{v:#}");
    assert_eq!(v["route"]["egress"], qg.as_str(), "{v:#}");
    assert_eq!(v["egress"]["device"], qg.as_str(), "{v:#}");
    assert_eq!(v["egress"]["dst_mac"], ext_mac.as_str(), "{v:#}");
    let qg_mac = rig.router().gateway.as_ref().unwrap().mac.to_lowercase();
    assert_eq!(v["egress"]["src_mac"], qg_mac.as_str(), "{v:#}");
    if plane == Dataplane::Xdp {
        // XDP wrote the MACs into the frame itself.
        assert_eq!(v["egress"]["macs_written_by"], "xr_xdp", "{v:#}");
        assert_eq!(v["output"]["headers"]["dst_mac"], ext_mac.as_str(), "{v:#}");
        assert_eq!(v["output"]["headers"]["src_mac"], qg_mac.as_str(), "{v:#}");
    } else {
        assert_eq!(
            v["egress"]["macs_written_by"], "bpf_redirect_neigh",
            "{v:#}"
        );
    }

    // The same, as a terminal shows it: one line per stage.
    let out = explain(&rig, &qr1, &snat_spec, false);
    assert!(out.success(), "{}", out.describe());
    let t = &out.stdout;
    for want in [
        format!("input      tcp {VM1}:40000 -> {EXT_HOST}:8080 [flags S]"),
        format!("nat        source {VM1}:40000 -> {QG}:"),
        format!("route      {EXT_HOST} in {EXT} on-link, out {qg}"),
        format!("egress     {qg}: source MAC {qg_mac}, destination MAC {ext_mac}"),
        format!("verdict    FORWARDED ({fwd})"),
        "conntrack  no connection for tcp".to_string(),
        "checksums: IPv4 ok, tcp ok".to_string(),
    ] {
        assert!(t.contains(&want), "no {want:?} in:\n{t}");
    }

    // 3. DNAT: outside to the floating IP reaches the fixed IP.
    let v = explain_json(&rig, &qg, &dnat_spec);
    assert_eq!(v["verdict"]["kind"], "forwarded", "{v:#}");
    assert_eq!(v["verdict"]["outcome"], fwd, "{v:#}");
    assert_eq!(
        v["nat"]["destination"]["from"],
        format!("{FIP}:53"),
        "{v:#}"
    );
    assert_eq!(v["nat"]["destination"]["to"], format!("{VM2}:53"), "{v:#}");
    assert!(
        v["nat"]["source"].is_null(),
        "the VM sees the real client: {v:#}"
    );
    let ip = &v["output"]["headers"]["ip"];
    assert_eq!(ip["src"], EXT_HOST, "{v:#}");
    assert_eq!(ip["dst"], VM2, "{v:#}");
    assert_eq!(ip["dport"], 53, "{v:#}");
    assert_eq!(ip["l4_checksum"], "ok", "{v:#}");
    assert_eq!(v["route"]["egress"], qr2.as_str(), "{v:#}");
    assert_eq!(v["egress"]["device"], qr2.as_str(), "{v:#}");
    assert_eq!(v["egress"]["dst_mac"], vm2_mac.as_str(), "{v:#}");
    let created = v["conntrack"]["created"].as_array().unwrap();
    assert!(created.iter().all(|e| e["dnat"] == true), "{v:#}");

    // 4. A reply of a live connection (the warm-up's ping from vm1): found
    // in the table, translated back to the VM; the live entry stays as is.
    let ping_conn = flows_before[&rig.router().id]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["proto"] == "icmp" && f["orig"]["src"] == VM1)
        .unwrap_or_else(|| panic!("no live ICMP connection from vm1: {flows_before:#}"))
        .clone();
    let (id, gw_id) = (
        ping_conn["orig"]["sport"].as_u64().unwrap(),
        ping_conn["translated"]["sport"].as_u64().unwrap(),
    );
    let v = explain_json(
        &rig,
        &qg,
        &format!("icmp {EXT_HOST} -> {QG} [echo-reply id {gw_id}]"),
    );
    assert_eq!(v["verdict"]["kind"], "forwarded", "{v:#}");
    let found = &v["conntrack"]["found"];
    assert_eq!(found["direction"], "reply", "{v:#}");
    assert_eq!(found["snat"], true, "{v:#}");
    assert_eq!(found["translated"]["dst"], VM1, "{v:#}");
    assert_eq!(v["conntrack"]["created"], serde_json::json!([]), "{v:#}");
    assert_eq!(
        v["nat"]["destination"]["to"],
        format!("{VM1} id {id}"),
        "{v:#}"
    );
    assert_eq!(v["route"]["egress"], qr1.as_str(), "{v:#}");
    assert_eq!(v["output"]["headers"]["ip"]["l4_checksum"], "ok", "{v:#}");
    // An echo has one id, rewritten on the way back, and no source change.
    assert_eq!(v["output"]["headers"]["ip"]["icmp_id"], id, "{v:#}");
    assert!(v["nat"]["source"].is_null(), "{v:#}");

    // 5. A whole frame in hex: an ARP request for the floating IP,
    // answered by the programs themselves.
    let ip4 = |a: &str| a.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let mac6 = |m: &str| -> Vec<u8> {
        m.split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    let mut arp = vec![0xff; 6];
    arp.extend(mac6(&ext_mac));
    arp.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend(mac6(&ext_mac));
    arp.extend(ip4(EXT_HOST));
    arp.extend([0; 6]);
    arp.extend(ip4(FIP));
    let hex: String = arp.iter().map(|b| format!("{b:02x}")).collect();
    let cfg = rig.config_path().display().to_string();
    let id = rig.router().id.clone();
    let out = rig.xrouter(&[
        "--config", &cfg, "explain", "--router", &id, "--in", &qg, "--hex", &hex, "--json",
    ]);
    assert!(out.success(), "{}", out.describe());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["verdict"]["kind"], "answered", "{v:#}");
    assert_eq!(v["verdict"]["outcome"], "arp/floating-ip-replied", "{v:#}");
    let answer = &v["output"]["headers"];
    assert_eq!(answer["ethertype"], 0x0806, "{v:#}");
    assert_eq!(
        answer["dst_mac"],
        ext_mac.as_str(),
        "sent back to the asker: {v:#}"
    );

    // The shortest frame explain runs: Ethernet and an IPv4 header
    // claiming more than it carries, dropped as malformed; shorter is
    // refused before running, saying why.
    let mut runt = vec![0xfa, 0x16, 0x3e, 0, 0, 1];
    runt.extend(mac6(&ext_mac));
    runt.extend([0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    runt.extend(ip4(EXT_HOST));
    runt.extend(ip4(FIP));
    assert_eq!(runt.len(), 34);
    let hex: String = runt.iter().map(|b| format!("{b:02x}")).collect();
    let out = rig.xrouter(&[
        "--config", &cfg, "explain", "--router", &id, "--in", &qg, "--hex", &hex, "--json",
    ]);
    assert!(out.success(), "{}", out.describe());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["verdict"]["kind"], "dropped", "{v:#}");
    let out = rig.xrouter(&[
        "--config",
        &cfg,
        "explain",
        "--router",
        &id,
        "--in",
        &qg,
        "--hex",
        &hex[..48],
    ]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("at least 34 bytes"),
        "{}",
        out.describe()
    );

    // Nothing of it reached the live router.
    assert_eq!(flows(&rig), flows_before, "live connections changed");
    assert_counters_unmoved(&stats_before, &stats(&rig));

    // Bad requests are refused precisely.
    let out = explain(&rig, "qr-nosuchport", &snat_spec, false);
    assert!(!out.success());
    assert!(
        out.stderr.contains("has no port \"qr-nosuchport\"") && out.stderr.contains(&qr1),
        "{}",
        out.describe()
    );
    // A port by a unique start of its device name: the same answer.
    let whole = explain_json(&rig, &qr1, &snat_spec);
    let short = explain_json(&rig, &qr1[..9], &snat_spec);
    assert_eq!(short["verdict"], whole["verdict"], "{short:#}");
    let out = explain(&rig, "qr-", &snat_spec, false);
    assert!(!out.success());
    assert!(
        out.stderr.contains("the start of more than one port") && out.stderr.contains(&qr1),
        "{}",
        out.describe()
    );
    let cfg = rig.config_path().display().to_string();
    let out = rig.xrouter(&[
        "--config", &cfg, "explain", "--router", "nope", "--in", &qr1, &snat_spec,
    ]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("no router \"nope\""),
        "{}",
        out.describe()
    );
    let out = explain(
        &rig,
        &qr1,
        &format!("tcp {VM1}:40000 -> {EXT_HOST}:99999"),
        false,
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("\"99999\" at column") && out.stderr.contains("port 1-65535"),
        "{}",
        out.describe()
    );

    // 6. A SYN from the port of a connection both sides closed: that
    // connection ends and a new one takes its place.
    let _server = TcpServer::start(&rig.ns("ext"), "ext", 8081).unwrap();
    let from = sa(VM1, 47002);
    let mut s = TcpSession::open_from(&rig.ns("vm1"), Some(from), sa(EXT_HOST, 8081)).unwrap();
    s.exchange().unwrap();
    drop(s);
    let spec = format!("tcp {VM1}:47002 -> {EXT_HOST}:8081 [flags S]");
    let closed = wait_until(TIMEOUT, EVERY, || {
        explain_json(&rig, &qr1, &spec)["conntrack"]["found"]["state"] == "FIN"
    });
    assert!(closed, "the connection never read FIN: {:#}", flows(&rig));
    let v = explain_json(&rig, &qr1, &spec);
    assert_eq!(v["verdict"]["kind"], "forwarded", "{v:#}");
    let created = v["conntrack"]["created"].as_array().unwrap();
    assert_eq!(created.len(), 2, "a new connection, both ways: {v:#}");
    assert!(
        created
            .iter()
            .all(|e| e["table"] == "embryonic" && e["state"] == "SYN_SENT"),
        "{v:#}"
    );
    let ended = v["conntrack"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| {
            c["tuple"]["src"] == VM1
                && c["change"]
                    .as_str()
                    .is_some_and(|t| t.contains("a new connection in its place"))
        });
    assert!(ended, "{v:#}");
    let out = explain(&rig, &qr1, &spec, false);
    assert!(
        out.stdout.contains("a new connection in its place"),
        "{}",
        out.describe()
    );
}

fn iptables_plane_is_refused(plane: Dataplane) {
    let rig = Rig::article(plane);
    let qr1 = rig.port_dev("net1");
    let out = explain(&rig, &qr1, &format!("tcp {VM1}:1 -> {EXT_HOST}:80"), false);
    assert!(!out.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("the data plane is iptables") && out.stderr.contains("xdp or tc"),
        "{}",
        out.describe()
    );
}

/// The rig's external gateway (192.168.1.1) is no host: once the kernel
/// gave up resolving it, explain says that what goes there is handed to
/// the kernel to be answered "host unreachable".
fn a_gateway_that_never_answers_arp_is_named(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.start();
    rig.article_hosts(&[]);
    let qr1 = rig.port_dev("net1");
    // A documentation address: nothing answers, and no packet leaves the
    // rig (the gateway it is sent to does not exist).
    let far = "203.0.113.7";
    let p = ping(&rig.ns("vm1"), far, &["-c", "1", "-W", "1"]);
    assert!(!p.success(), "{}", p.describe());
    // The kernel probes for 3 s, then the daemon mirrors its verdict.
    let mut v = Value::Null;
    let answered = wait_until(TIMEOUT, EVERY, || {
        v = explain_json(&rig, &qr1, &format!("udp {VM1}:5000 -> {far}:53"));
        v["verdict"]["outcome"] == "kernel/neighbour"
    });
    assert!(answered, "{v:#}");
    assert_eq!(v["verdict"]["kind"], "kernel", "{v:#}");
    let meaning = v["verdict"]["meaning"].to_string();
    assert!(meaning.contains("host unreachable"), "{v:#}");
    let last = v["hooks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["mark"], "0x78680000", "{v:#}");
}
