//! Invalid routers files: `xrouter check` and `xrouter reload` reject them
//! with a message naming the router, the field and the value, and a failed
//! reload leaves the running state in force.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{
    Checks, Dataplane, Rig, RouterSpec, TcpServer, TempDir, article::*, names, routers_json, sa,
    tcp_request, xrouter_check, xrouter_plain,
};

tests::planes!(reload_rejects_invalid_and_keeps_state);

/// One invalid file: its text and what the error message must contain.
struct Bad {
    what: &'static str,
    text: String,
    needles: Vec<String>,
}

/// The invalid variants of `router`'s file.
fn bad_files(router: &RouterSpec) -> Vec<Bad> {
    let id = router.id.clone();
    let base = routers_json(std::slice::from_ref(router));
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v[0]);
        serde_json::to_string_pretty(&v).unwrap()
    };
    // A number as written: JSON libraries would rewrite 1e3 as 1000.0.
    let edit_number =
        |f: &dyn Fn(&mut Value), number: &str| edit(f).replacen("\"NUMBER\"", number, 1);
    let port0 = router.interfaces[0].id.clone();
    let mut dup = router.clone();
    for p in dup.interfaces.iter_mut().chain(dup.gateway.as_mut()) {
        p.id = names::uuid();
    }
    let dup_text = serde_json::to_string_pretty(&routers_json(&[router.clone(), dup])).unwrap();
    // Another router on the same external network, given the same gateway IP.
    let mut other = RouterSpec::empty(&names::tag());
    let mut gw = router
        .gateway
        .clone()
        .expect("the article's router has a gateway");
    gw.id = names::uuid();
    other.gateway = Some(gw);
    let two_gateways =
        serde_json::to_string_pretty(&routers_json(&[router.clone(), other])).unwrap();
    vec![
        Bad {
            what: "bad CIDR",
            text: edit(&|r| r["_interfaces"][0]["subnets"][0]["cidr"] = json!("81.1.180.0/33")),
            needles: vec![id.clone(), "cidr".into(), "81.1.180.0/33".into()],
        },
        Bad {
            what: "bad MAC",
            text: edit(&|r| r["_interfaces"][1]["mac_address"] = json!("fa:16:3e:zz:00:01")),
            needles: vec![id.clone(), "mac_address".into(), "fa:16:3e:zz:00:01".into()],
        },
        Bad {
            what: "MTU beyond 64 bits",
            text: edit_number(
                &|r| r["_interfaces"][0]["mtu"] = json!("NUMBER"),
                "18446744073709551616",
            ),
            needles: vec![
                id.clone(),
                "_interfaces[0].mtu".into(),
                "18446744073709551616 is outside the allowed range 68-65535".into(),
            ],
        },
        Bad {
            what: "MTU with an exponent",
            text: edit_number(&|r| r["_interfaces"][0]["mtu"] = json!("NUMBER"), "1e3"),
            needles: vec![
                id.clone(),
                "_interfaces[0].mtu".into(),
                "1e3 is not an integer".into(),
            ],
        },
        Bad {
            what: "floating IP outside the external subnet",
            text: edit(&|r| r["_floatingips"][0]["floating_ip_address"] = json!("10.99.0.4")),
            needles: vec![id.clone(), "floating_ip_address".into(), "10.99.0.4".into()],
        },
        Bad {
            what: "duplicate router IDs",
            text: dup_text,
            needles: vec![id.clone(), "duplicate".into()],
        },
        Bad {
            what: "port without fixed_ips",
            text: edit(&|r| r["_interfaces"][0]["fixed_ips"] = json!([])),
            needles: vec![id.clone(), "fixed_ips".into(), port0.clone()],
        },
        Bad {
            what: "floating IP is the external network's address",
            text: edit(&|r| r["_floatingips"][0]["floating_ip_address"] = json!("192.168.1.0")),
            needles: vec![
                id.clone(),
                "floating_ip_address".into(),
                "192.168.1.0".into(),
                "network address".into(),
            ],
        },
        Bad {
            what: "floating IP is the gateway IP",
            text: edit(&|r| r["_floatingips"][0]["floating_ip_address"] = json!(QG)),
            needles: vec![id.clone(), "floating_ip_address".into(), QG.into()],
        },
        Bad {
            what: "fixed IP reachable only through an extra route",
            text: edit(&|r| {
                r["routes"] = json!([{"destination": "172.16.0.0/16", "nexthop": VM1}]);
                r["_floatingips"][0]["fixed_ip_address"] = json!("172.16.0.5");
            }),
            needles: vec![id.clone(), "fixed_ip_address".into(), "172.16.0.5".into()],
        },
        Bad {
            what: "fixed IP is the router's own",
            text: edit(&|r| r["_floatingips"][0]["fixed_ip_address"] = json!(QR2)),
            needles: vec![id.clone(), "fixed_ip_address".into(), QR2.into()],
        },
        Bad {
            what: "port address is its subnet's network address",
            text: edit(&|r| {
                r["_interfaces"][0]["fixed_ips"][0]["ip_address"] = json!("81.1.180.0")
            }),
            needles: vec![
                id.clone(),
                "_interfaces[0].fixed_ips[0].ip_address".into(),
                "81.1.180.0 is the network address".into(),
            ],
        },
        Bad {
            what: "floating IP is the external subnet's gateway",
            text: edit(&|r| r["_floatingips"][0]["floating_ip_address"] = json!(EXT_GW)),
            needles: vec![
                id.clone(),
                "_floatingips[0].floating_ip_address".into(),
                format!("{EXT_GW} is the gateway_ip"),
            ],
        },
        Bad {
            what: "two internal subnets overlap",
            text: edit(&|r| {
                r["_interfaces"][1]["subnets"][0]["cidr"] = json!(NET1);
                r["_interfaces"][1]["fixed_ips"][0]["ip_address"] = json!("81.1.180.2");
            }),
            needles: vec![
                id.clone(),
                "_interfaces[1].subnets[0].cidr".into(),
                format!("{NET1} overlaps"),
            ],
        },
        Bad {
            what: "extra route through no neighbour",
            text: edit(&|r| {
                r["routes"] = json!([{"destination": "172.16.0.0/16", "nexthop": "10.9.9.9"}])
            }),
            needles: vec![
                id.clone(),
                "routes[0].nexthop".into(),
                "10.9.9.9 is on none of the router's subnets".into(),
            ],
        },
        Bad {
            what: "extra route through the router itself",
            text: edit(&|r| {
                r["routes"] = json!([{"destination": "172.16.0.0/16", "nexthop": QR1}])
            }),
            needles: vec![
                id.clone(),
                "routes[0].nexthop".into(),
                format!("{QR1} is the router's own address"),
            ],
        },
        Bad {
            what: "router id not a UUID",
            text: edit(&|r| r["id"] = json!("r1")),
            needles: vec!["router #0".into(), "id".into(), "\"r1\"".into()],
        },
        Bad {
            what: "port id climbing out of a directory",
            text: edit(&|r| r["_interfaces"][0]["id"] = json!("../../x")),
            needles: vec![id.clone(), "_interfaces[0].id".into(), "../../x".into()],
        },
        Bad {
            what: "network id with a space",
            text: edit(&|r| r["gw_port"]["network_id"] = json!("ext net")),
            needles: vec![id.clone(), "gw_port.network_id".into(), "ext net".into()],
        },
        Bad {
            what: "two routers with one gateway IP on one network",
            text: two_gateways,
            needles: vec![
                "gw_port.fixed_ips[0].ip_address".into(),
                QG.into(),
                id.clone(),
            ],
        },
        Bad {
            what: "unparseable JSON",
            text: serde_json::to_string_pretty(&base).unwrap()[..40].to_string(),
            needles: vec!["json".into()],
        },
    ]
}

fn names_all(stderr: &str, needles: &[String]) -> bool {
    let s = stderr.to_lowercase();
    needles.iter().all(|n| s.contains(&n.to_lowercase()))
}

/// `xrouter check` accepts the article's file and rejects each invalid one.
#[test]
fn check_rejects_invalid() {
    let tag = names::tag();
    let ext = tests::Network::new("ext", EXT, Some(EXT_GW));
    let net1 = tests::Network::new("net1", NET1, Some(QR1));
    let net2 = tests::Network::new("net2", NET2, Some(QR2));
    let router = RouterSpec::article(&tag, &ext, &net1, &net2);
    let mut c = Checks::new("check_rejects_invalid");
    let good = serde_json::to_string_pretty(&routers_json(std::slice::from_ref(&router))).unwrap();
    let out = xrouter_check(&good);
    c.ok(out.success(), "the article's file passes", out.describe());
    for bad in bad_files(&router) {
        let out = xrouter_check(&bad.text);
        println!("{}: {}", bad.what, out.stderr.trim());
        c.ok(
            !out.success() && !out.timed_out,
            &format!("{}: check fails", bad.what),
            out.describe(),
        );
        c.ok(
            names_all(&out.stderr, &bad.needles),
            &format!("{}: stderr names {:?}", bad.what, bad.needles),
            &out.stderr,
        );
    }
    c.finish();
}

/// A failed reload reports the error and leaves the old state forwarding.
fn reload_rejects_invalid_and_keeps_state(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.start();
    rig.vm("vm1", "net1", &format!("{VM1}/24"), QR1);
    rig.external("ext", &format!("{EXT_HOST}/24"), &[]);
    let _s = TcpServer::start(&rig.ns("ext"), "ext", 8080).unwrap();
    let mut c = Checks::new("reload_rejects_invalid_and_keeps_state");
    let show = rig.show();
    c.reply(
        "before: vm1 -> ext",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, 8080)),
        "ext",
        QG,
    );
    for bad in bad_files(rig.router()) {
        let out = rig.reload_text(&bad.text);
        println!("{}: {}", bad.what, out.stderr.trim());
        c.ok(
            !out.success() && !out.timed_out,
            &format!("{}: reload fails", bad.what),
            out.describe(),
        );
        c.ok(
            names_all(&out.stderr, &bad.needles),
            &format!("{}: stderr names {:?}", bad.what, bad.needles),
            &out.stderr,
        );
        c.reply(
            &format!("{}: vm1 -> ext still works", bad.what),
            tcp_request(&rig.ns("vm1"), sa(EXT_HOST, 8080)),
            "ext",
            QG,
        );
        c.eq(
            &format!("{}: show --json unchanged", bad.what),
            rig.show(),
            show.clone(),
        );
    }
    c.ok(rig.daemon_alive(), "the daemon is still running", ());
    let out = rig.reload();
    c.ok(out.success(), "a valid file reloads again", out.describe());
    c.eq("show --json as before", rig.show(), show);
    c.finish();
}

/// The article's router alone, as a routers file's JSON value.
fn article_value() -> Value {
    let ext = tests::Network::new("ext", EXT, Some(EXT_GW));
    let net1 = tests::Network::new("net1", NET1, Some(QR1));
    let net2 = tests::Network::new("net2", NET2, Some(QR2));
    routers_json(&[RouterSpec::article(&names::tag(), &ext, &net1, &net2)])
}

/// Whatever a file or the command line holds, `xrouter` reports it on one
/// line of reasonable length: values are escaped (a newline cannot forge a
/// second message) and cut (a 1 MB value is not echoed whole).
#[test]
fn errors_are_one_short_line() {
    let mut c = Checks::new("errors_are_one_short_line");
    let dir = TempDir::new(&format!("msg-{}", names::tag()));
    let big = "f".repeat(1 << 20);
    let routers = dir.path().join("routers.json");
    let node = dir.path().join("node.toml");
    let forged = "router 00000000-0000-0000-0000-000000000000: field x: forged";
    // (what, routers file, node config, extra arguments, what stderr must contain)
    let mut cases: Vec<(&str, Value, String, Vec<String>, &str)> = Vec::new();
    let mut v = article_value();
    v[0]["id"] = json!(format!("x\n{forged}"));
    cases.push((
        "newline in the router id",
        v,
        String::new(),
        vec![],
        r"x\nrouter",
    ));
    let mut v = article_value();
    v[0]["_interfaces"][0]["id"] = json!(format!("p\r\n{forged}"));
    cases.push((
        "newline in a port id",
        v,
        String::new(),
        vec![],
        r"p\r\nrouter",
    ));
    let mut v = article_value();
    v[0]["gw_port"]["mac_address"] = json!(big);
    cases.push(("1 MB MAC", v, String::new(), vec![], "(1048576 bytes)"));
    let mut v = article_value();
    v[0]["_interfaces"][0]["mtu"] = json!(big);
    cases.push(("1 MB string as MTU", v, String::new(), vec![], "mtu"));
    cases.push((
        "1 MB node config value",
        article_value(),
        format!("bridge_prefix = \"{big}\"\n"),
        vec![],
        "(1048576 bytes)",
    ));
    cases.push((
        "newline in a node config key",
        article_value(),
        format!("\"a\\n{forged}\" = 1\n"),
        vec![],
        r"a\nrouter",
    ));
    for (what, text, config, extra, needle) in cases {
        std::fs::write(&routers, serde_json::to_string(&text).unwrap()).unwrap();
        let mut args: Vec<String> = vec![];
        if !config.is_empty() {
            std::fs::write(&node, &config).unwrap();
            args.extend(["--config".into(), node.display().to_string()]);
        }
        args.extend([
            "check".into(),
            "--routers".into(),
            routers.display().to_string(),
        ]);
        args.extend(extra);
        let out = xrouter_plain(&args);
        let err = out.stderr.trim_end();
        c.ok(
            !out.success() && !out.timed_out,
            &format!("{what}: check fails"),
            out.describe().chars().take(2000).collect::<String>(),
        );
        c.ok(
            err.lines().count() == 1 && err.len() < 1000,
            &format!("{what}: one line of under 1000 bytes"),
            format!(
                "{} lines, {} bytes: {}",
                err.lines().count(),
                err.len(),
                err.chars().take(600).collect::<String>()
            ),
        );
        c.ok(
            err.contains(needle),
            &format!("{what}: shows {needle}"),
            err.chars().take(600).collect::<String>(),
        );
    }

    // Command-line values clap echoes: escaped and cut too (clap's own
    // message has several lines; none of them may come from the value).
    let long = "9".repeat(100_000);
    for (what, value, needle) in [
        (
            "newline in an option value",
            format!("1\n{forged}"),
            r"1\nrouter",
        ),
        ("100 kB option value", long, "(100000 bytes)"),
    ] {
        let out = xrouter_plain(&["run", "--routers", "/nonexistent", "--dataplane", &value]);
        let err = out.stderr.as_str();
        c.ok(
            !out.success(),
            &format!("{what}: refused"),
            out.describe().chars().take(600).collect::<String>(),
        );
        c.ok(
            !err.lines().any(|l| l.starts_with("router ")) && err.len() < 2000,
            &format!("{what}: no forged line, under 2000 bytes"),
            err.chars().take(600).collect::<String>(),
        );
        c.ok(
            err.contains(needle),
            &format!("{what}: shows {needle}"),
            err.chars().take(600).collect::<String>(),
        );
    }
    c.finish();
}

/// A number out of range in the node config is refused by `check` and by
/// `run` alike, before anything is built, with the file, the key, the value
/// and the range; `run` never gets as far as a panic.
#[test]
fn node_config_out_of_range_refused_by_check_and_run() {
    let mut c = Checks::new("node_config_out_of_range_refused_by_check_and_run");
    // Not started: the node namespace only, where `run` would build.
    let rig = Rig::new(Dataplane::Iptables);
    let routers = rig.dir.join("routers.json");
    std::fs::write(&routers, "[]").unwrap();
    let node = rig.dir.join("bad.toml");
    let node_s = node.display().to_string();
    let routers_s = routers.display().to_string();
    for (key, value, range) in [
        ("resync_interval", "9223372036854775807", "0-86400"),
        ("metadata_port", "70000", "1-65535"),
        ("conntrack_size", "4294967295", "1024-16777216"),
        // Too large for TOML itself (64 bits): named all the same.
        ("conntrack_size", "99999999999999999999999", "1024-16777216"),
    ] {
        std::fs::write(
            &node,
            format!(
                "state_dir = \"{}\"\npin_dir = \"{}\"\ndataplane = \"iptables\"\n{key} = {value}\n",
                rig.dir.display(),
                rig.pin_dir.display()
            ),
        )
        .unwrap();
        for cmd in [
            vec!["--config", &node_s, "check", "--routers", &routers_s],
            vec!["--config", &node_s, "run", "--routers", &routers_s],
        ] {
            let what = format!("{key} = {value}: xrouter {}", cmd[2]);
            let out = rig.xrouter(&cmd);
            c.eq(&format!("{what}: exits 1"), out.code, Some(1));
            c.ok(
                !out.stderr.contains("panicked"),
                &format!("{what}: no panic"),
                &out.stderr,
            );
            c.ok(
                [node_s.as_str(), key, value, range]
                    .iter()
                    .all(|n| out.stderr.contains(n)),
                &format!("{what}: names the file, key, value and range"),
                &out.stderr,
            );
            c.ok(
                !rig.socket_path().exists(),
                &format!("{what}: no control socket"),
                (),
            );
        }
    }
    c.finish();
}

/// Node config values that cannot name a device or a directory are refused
/// by `check`, naming the file, the key and the value; so is a relative
/// `--state-dir`.
#[test]
fn node_config_names_and_directories_refused() {
    let mut c = Checks::new("node_config_names_and_directories_refused");
    let dir = TempDir::new(&format!("names-{}", names::tag()));
    let routers = dir.path().join("routers.json");
    std::fs::write(&routers, "[]").unwrap();
    let node = dir.path().join("node.toml");
    for (line, key, value) in [
        ("bridge_prefix = \"b/\"", "bridge_prefix", "\"b/\""),
        ("bridge_prefix = \"tap\"", "bridge_prefix", "\"tap\""),
        (
            "[bridge_mappings]\nnet1 = \"br ex\"",
            "bridge_mappings.net1",
            "\"br ex\"",
        ),
        (
            "[bridge_mappings]\nnet1 = \"..\"",
            "bridge_mappings.net1",
            "\"..\"",
        ),
        ("pin_dir = \"xrouter\"", "pin_dir", "\"xrouter\""),
        (
            "state_dir = \"/run/../etc\"",
            "state_dir",
            "\"/run/../etc\"",
        ),
        ("state_dir = \"/run/x\\ny\"", "state_dir", r#""/run/x\ny""#),
    ] {
        std::fs::write(&node, line).unwrap();
        let out = xrouter_plain(&[
            "--config".as_ref(),
            node.as_os_str(),
            "check".as_ref(),
            "--routers".as_ref(),
            routers.as_os_str(),
        ]);
        c.ok(
            !out.success() && !out.timed_out,
            &format!("{line}: refused"),
            out.describe(),
        );
        let named = [node.to_str().unwrap(), key, value]
            .iter()
            .all(|n| out.stderr.contains(n));
        c.ok(
            named,
            &format!("{line}: names file, key and value"),
            &out.stderr,
        );
    }
    let out = xrouter_plain(&["--state-dir", "run/xrouter", "show"]);
    c.ok(
        !out.success(),
        "--state-dir run/xrouter: refused",
        out.describe(),
    );
    c.ok(
        out.stderr.contains("--state-dir") && out.stderr.contains("run/xrouter"),
        "--state-dir run/xrouter: named",
        &out.stderr,
    );
    c.finish();
}

/// `ip netns exec` runs a command in a mount namespace of its own with
/// /sys mounted anew, where /sys/fs/bpf is no bpffs. `run` on an eBPF data
/// plane (xdp, tc, or auto choosing eBPF) refuses to start there, naming
/// pin_dir and saying to use `nsenter --net` instead, before it creates
/// anything: no router namespace, no bridge, no state.
#[test]
fn run_under_ip_netns_exec_refuses_ebpf_before_building() {
    let mut c = Checks::new("run_under_ip_netns_exec_refuses_ebpf_before_building");
    for dataplane in ["xdp", "tc", "auto"] {
        let mut rig = Rig::new(Dataplane::Iptables);
        rig.write_routers();
        let state = rig.dir.join("state");
        let node = rig.dir.join("ebpf.toml");
        std::fs::write(
            &node,
            format!(
                "state_dir = \"{}\"\npin_dir = \"{}\"\ndataplane = \"{dataplane}\"\n",
                state.display(),
                rig.pin_dir.display()
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &rig.node])
            .arg(tests::xrouter_bin())
            .arg("--config")
            .arg(&node)
            .arg("run")
            .arg("--routers")
            .arg(rig.routers_path());
        let out = tests::cmd::run(&mut cmd, Duration::from_secs(20)).expect("ip netns exec");
        let what = format!("dataplane {dataplane}");
        c.eq(&format!("{what}: exits 1"), out.code, Some(1));
        let pin_dir = format!("pin_dir {}", rig.pin_dir.display());
        for needle in [
            pin_dir.as_str(),
            "not on a bpffs",
            "`ip netns exec`",
            "nsenter --net=/run/netns/NAME",
        ] {
            c.ok(
                out.stderr.contains(needle),
                &format!("{what}: says {needle:?}"),
                out.describe(),
            );
        }
        let ns = rig.router().namespace();
        c.ok(
            !std::path::Path::new("/run/netns").join(&ns).exists(),
            &format!("{what}: no router namespace, not even its file"),
            &ns,
        );
        let bridges = tests::ip_json(&rig.node, "link show type bridge").unwrap();
        c.eq(
            &format!("{what}: no bridge in the node namespace"),
            bridges.as_array().map_or(0, Vec::len),
            0,
        );
        c.ok(
            !state.exists(),
            &format!("{what}: no state directory"),
            &state,
        );
    }
    c.finish();
}

/// `check --config-file` refuses what `agent` refuses at start (Neutron's
/// options, named by file, section and key), and says what it checked:
/// an operator can check an agent's files without starting it.
#[test]
fn check_refuses_what_the_agent_refuses_at_start() {
    let dir = TempDir::new(&format!("check-agent-{}", names::tag()));
    let mut c = Checks::new("check_refuses_what_the_agent_refuses_at_start");
    let url = "[DEFAULT]\ntransport_url = rabbit://u:p@127.0.0.1:5672/\n";
    let ini = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = ini("good.ini", url);
    let out = xrouter_plain(&["check", "--config-file", &good]);
    c.ok(
        out.success() && out.stdout.contains("good.ini: agent options valid"),
        "a good agent config passes, and says so",
        out.describe(),
    );
    let missing = dir.path().join("nowhere.pem").display().to_string();
    for (what, text, needle) in [
        (
            "report interval out of range",
            format!("{url}[AGENT]\nreport_interval = 1e400\n"),
            "bad.ini: [AGENT] report_interval: \"1e400\" is not a number of seconds",
        ),
        (
            "a DVR agent",
            format!("{url}agent_mode = dvr\n"),
            "[DEFAULT] agent_mode: \"dvr\": xrouter serves legacy routers only",
        ),
        (
            "no transport URL",
            "[AGENT]\nreport_interval = 30\n".to_string(),
            "no [DEFAULT] transport_url in",
        ),
        (
            "a TLS file that is not there",
            format!("{url}[oslo_messaging_rabbit]\nssl = true\nssl_ca_file = {missing}\n"),
            "[oslo_messaging_rabbit] ssl_ca_file:",
        ),
    ] {
        let bad = ini("bad.ini", &text);
        let out = xrouter_plain(&["check", "--config-file", &bad]);
        c.ok(
            !out.success() && !out.timed_out && out.stderr.contains(needle),
            &format!("{what}: refused, naming {needle}"),
            out.describe(),
        );
    }
    // The TLS files hold what their options say: certificates, a key,
    // and the key of the certificate (the TLS library would only find out
    // at every handshake, naming no option).
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        tests::broker::make_ca(d, "xrouter check test");
    }
    let f = |d: &std::path::Path, n: &str| d.join(n).display().to_string();
    let tls = |opts: &str| format!("{url}[oslo_messaging_rabbit]\nssl = true\n{opts}");
    let out = xrouter_plain(&[
        "check",
        "--config-file",
        &ini(
            "tls.ini",
            &tls(&format!(
                "ssl_ca_file = {}\nssl_cert_file = {}\nssl_key_file = {}\n",
                f(&a, "ca.pem"),
                f(&a, "ca.pem"),
                f(&a, "ca.key")
            )),
        ),
    ]);
    c.ok(
        out.success() && out.stdout.contains("agent options valid"),
        "a CA, a certificate and its key pass",
        out.describe(),
    );
    for (what, opts, needle) in [
        (
            "a key file holding a certificate",
            format!(
                "ssl_cert_file = {}\nssl_key_file = {}\n",
                f(&a, "ca.pem"),
                f(&a, "ca.pem")
            ),
            format!("ssl_key_file: {}: holds no private key", f(&a, "ca.pem")),
        ),
        (
            "another certificate's key",
            format!(
                "ssl_cert_file = {}\nssl_key_file = {}\n",
                f(&a, "ca.pem"),
                f(&b, "ca.key")
            ),
            format!(
                "ssl_key_file: {}: is not the key of ssl_cert_file's certificate",
                f(&b, "ca.key")
            ),
        ),
        (
            "a CA file holding a key",
            format!("ssl_ca_file = {}\n", f(&a, "ca.key")),
            format!("ssl_ca_file: {}: holds no certificate", f(&a, "ca.key")),
        ),
        (
            "a certificate without its key",
            format!("ssl_cert_file = {}\n", f(&a, "ca.pem")),
            "ssl_cert_file: is set without ssl_key_file".to_string(),
        ),
    ] {
        let out = xrouter_plain(&["check", "--config-file", &ini("tls-bad.ini", &tls(&opts))]);
        c.ok(
            !out.success()
                && out.stderr.contains("tls-bad.ini: [oslo_messaging_rabbit] ")
                && out.stderr.contains(&needle),
            &format!("{what}: refused, naming {needle}"),
            out.describe(),
        );
    }
    // An option is blamed on the file that sets it, not on every file.
    let out = xrouter_plain(&[
        "check",
        "--config-file",
        &good,
        "--config-file",
        &ini("mode.ini", "[DEFAULT]\nagent_mode = dvr_snat\n"),
    ]);
    c.ok(
        !out.success()
            && out.stderr.contains("mode.ini: [DEFAULT] agent_mode:")
            && !out.stderr.contains("good.ini"),
        "agent_mode's error names the file that sets it",
        out.describe(),
    );
    // With a routers file too: both checked, a line each.
    let routers = dir.path().join("routers.json");
    std::fs::write(&routers, serde_json::to_string(&article_value()).unwrap()).unwrap();
    let routers = routers.display().to_string();
    let out = xrouter_plain(&["check", "--config-file", &good, "--routers", &routers]);
    c.ok(
        out.success()
            && out.stdout.contains("agent options valid")
            && out.stdout.contains("routers.json: 1 router, valid"),
        "agent config and routers file: both valid, both said",
        out.describe(),
    );
    let node = ini("node.toml", "dataplane = \"tc\"\n");
    let out = xrouter_plain(&["--config", &node, "check", "--routers", &routers]);
    c.ok(
        out.success()
            && out.stdout.contains("node.toml: node config valid")
            && out.stdout.contains("routers.json: 1 router, valid"),
        "node config and routers file: a line each",
        out.describe(),
    );
    let out = xrouter_plain(&["check"]);
    c.ok(
        out.success() && out.stdout.contains("the defaults, valid"),
        "check alone checks the node config (defaults)",
        out.describe(),
    );
    let out = xrouter_plain(&["check", "--plan"]);
    c.ok(
        !out.success() && out.stderr.contains("--routers"),
        "--plan without --routers is refused, naming --routers",
        out.describe(),
    );
    c.finish();
}
