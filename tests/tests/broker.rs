//! Self-tests of the agent tests' kit, without xrouter: a broker of the
//! test's own inside a namespace of the test, the stand-in neutron-server
//! (server.py), its notifier (notify.py) and the plain RPC peer (peer.py).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{
    Broker, Checks, Netns, NeutronServer, Peer, TempDir, broker, cmd, names, neutron, notify,
};

/// Ports listening in `ns` (None: the root namespace), as `ss -ltn` shows.
fn listening(ns: Option<&str>) -> Vec<String> {
    let mut c = cmd::command(ns, "ss", &["-Hltn"]).unwrap();
    let out = cmd::run(&mut c, cmd::CMD_TIMEOUT).unwrap().ok().unwrap();
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

fn is_port(addr: &str, port: u16) -> bool {
    addr.ends_with(&format!(":{port}"))
}

/// A call through notify.py's generic mode; the reply, parsed.
fn call(server: &NeutronServer, topic: &str, method: &str, version: &str, args: Value) -> Value {
    let a = args.to_string();
    let out = server.notify(&[
        "--timeout",
        "10",
        "call",
        "--topic",
        topic,
        "--method",
        method,
        "--version",
        version,
        "--args",
        &a,
    ]);
    assert!(out.success(), "{}", out.describe());
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn report_time() -> String {
    // Neutron's ISO8601_TIME_FORMAT, in UTC, as the agent sends it.
    let mut c = std::process::Command::new("date");
    c.args(["-u", "+%Y-%m-%dT%H:%M:%S.%6N"]);
    cmd::run(&mut c, cmd::CMD_TIMEOUT)
        .unwrap()
        .ok()
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn broker_listens_only_in_its_namespace() {
    let ns = Netns::new("mq");
    let b = Broker::start(ns.name());
    let mut c = Checks::new("broker");
    c.eq(
        "url",
        b.url(),
        "rabbit://xrouter:secret@127.0.0.1:5672/neutron".to_string(),
    );
    c.ok(
        b.start_time < broker::START_TIMEOUT,
        "started in time",
        format!("{:?}", b.start_time),
    );

    let inside = listening(Some(ns.name()));
    for port in [5672, 4369, 25672] {
        c.ok(
            inside.iter().any(|a| a == &format!("127.0.0.1:{port}")),
            &format!("127.0.0.1:{port} listens in the namespace"),
            &inside,
        );
    }
    let non_loopback: Vec<&String> = inside
        .iter()
        .filter(|a| !a.starts_with("127.0.0.1:") && !a.starts_with("[::1]:"))
        .collect();
    c.ok(
        non_loopback.is_empty(),
        "nothing beyond loopback in the namespace",
        &inside,
    );

    let root = listening(None);
    for port in [5672, 4369, 25672] {
        c.ok(
            !root.iter().any(|a| is_port(a, port)),
            &format!("nothing listens on {port} in the root namespace"),
            &root,
        );
    }
    c.finish();
}

#[test]
fn server_answers_calls_and_records_them() {
    let ns = Netns::new("mq");
    let dir = TempDir::new(&names::tag());
    let b = Broker::start(ns.name());
    let s = NeutronServer::start(ns.name(), &b, neutron::EXCHANGE, dir.path());
    s.set_routers(&json!([
        {"id": "r-1", "name": "one"},
        {"id": "r-2", "name": "two", "ha": true},
    ]));
    let mut c = Checks::new("server");
    let host = json!({"host": "node-1"});

    c.eq(
        "get_router_ids",
        call(&s, "q-l3-plugin", "get_router_ids", "1.9", host.clone()),
        json!(["r-1", "r-2"]),
    );
    c.eq(
        "sync_routers of r-2",
        call(
            &s,
            "q-l3-plugin",
            "sync_routers",
            "1.0",
            json!({"host": "node-1", "router_ids": ["r-2"]}),
        ),
        json!([{"id": "r-2", "name": "two", "ha": true}]),
    );
    c.eq(
        "sync_routers of all",
        call(&s, "q-l3-plugin", "sync_routers", "1.0", host.clone())
            .as_array()
            .map(Vec::len),
        Some(2),
    );
    c.eq(
        "get_host_ha_router_count",
        call(
            &s,
            "q-l3-plugin",
            "get_host_ha_router_count",
            "1.11",
            host.clone(),
        ),
        json!(1),
    );

    // report_state: "new", then "alive", then what the test says.
    let report = || {
        json!({
            "agent_state": {"agent_state": {"host": "node-1", "binary": "xrouter"}},
            "time": report_time(),
        })
    };
    c.eq(
        "first report",
        call(&s, "q-reports-plugin", "report_state", "1.4", report()),
        json!("new"),
    );
    c.eq(
        "second report",
        call(&s, "q-reports-plugin", "report_state", "1.4", report()),
        json!("alive"),
    );
    s.set_report_answer(Some("revived"));
    c.eq(
        "report when told",
        call(&s, "q-reports-plugin", "report_state", "1.4", report()),
        json!("revived"),
    );

    // Failures, then answers.
    s.set_failures("get_router_ids", 2);
    for i in 0..2 {
        let out = s.notify(&[
            "call",
            "--topic",
            "q-l3-plugin",
            "--method",
            "get_router_ids",
            "--version",
            "1.9",
            "--args",
            r#"{"host": "node-1"}"#,
        ]);
        c.ok(
            out.code == Some(3) && out.stdout.contains("stand-in failure"),
            &format!("failing get_router_ids {i}"),
            out.describe(),
        );
    }
    c.eq(
        "get_router_ids once the failures are spent",
        call(&s, "q-l3-plugin", "get_router_ids", "1.9", host.clone()),
        json!(["r-1", "r-2"]),
    );

    // A sleeping sync_routers makes the caller time out.
    s.set_sleep("sync_routers", 3.0);
    let out = s.notify(&[
        "--timeout",
        "1",
        "call",
        "--topic",
        "q-l3-plugin",
        "--method",
        "sync_routers",
        "--args",
        r#"{"host": "node-1"}"#,
    ]);
    c.ok(
        out.code == Some(2),
        "slow sync_routers times out",
        out.describe(),
    );

    // The records.
    let calls = s.calls("get_router_ids");
    c.eq("get_router_ids recorded", calls.len(), 4);
    let first = &calls[0];
    c.eq("its version", &first["version"], &json!("1.9"));
    c.eq("its args", &first["args"], &json!({"host": "node-1"}));
    c.eq("a call", &first["call"], &json!(true));
    c.eq("its topic", &first["topic"], &json!("q-l3-plugin"));
    for key in ["is_admin", "request_id", "roles", "project_id", "user_id"] {
        c.ok(
            first["context_keys"]
                .as_array()
                .is_some_and(|k| k.contains(&json!(key))),
            &format!("context has {key}"),
            &first["context_keys"],
        );
    }
    c.ok(
        s.wait_call(
            "sync_routers",
            |r| r["args"]["router_ids"] == json!(["r-2"]),
            Duration::from_secs(1),
        )
        .is_some(),
        "wait_call finds sync_routers of r-2",
        s.calls("sync_routers"),
    );
    c.eq("report_state recorded", s.calls("report_state").len(), 3);
    c.finish();
}

#[test]
fn broker_restart_and_reconnect() {
    let ns = Netns::new("mq");
    let dir = TempDir::new(&names::tag());
    let mut b = Broker::start(ns.name());
    let first = b.start_time;
    let mut s = NeutronServer::start(ns.name(), &b, neutron::EXCHANGE, dir.path());
    s.set_routers(&json!([{"id": "r-1"}]));
    let host = json!({"host": "node-1"});
    assert_eq!(
        call(&s, "q-l3-plugin", "get_router_ids", "1.9", host.clone()),
        json!(["r-1"])
    );

    let t = Instant::now();
    b.restart();
    let restart = t.elapsed();
    // oslo.messaging reconnects and declares its queues anew (they are not
    // durable); the credentials and vhost survived.
    let args = host.to_string();
    let t = Instant::now();
    let ok = tests::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        s.notify(&[
            "--timeout",
            "3",
            "call",
            "--topic",
            "q-l3-plugin",
            "--method",
            "get_router_ids",
            "--version",
            "1.9",
            "--args",
            &args,
        ])
        .success()
    });
    assert!(ok, "no answer after the restart:\n{}", b.log());
    eprintln!(
        "broker start {:.2} s; restart (graceful stop and start) {:.2} s, of it \
         the start {:.2} s; server answering again {:.2} s later",
        first.as_secs_f64(),
        restart.as_secs_f64(),
        b.start_time.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    // Down and up again: the same broker, its stand-in still there.
    b.down();
    assert!(!b.is_running());
    b.up();
    assert!(s.alive(), "server.py gone while the broker was down");
}

#[test]
fn notifications_reach_a_peer() {
    let ns = Netns::new("mq");
    let dir = TempDir::new(&names::tag());
    let b = Broker::start(ns.name());
    let p = Peer::start(
        ns.name(),
        &b,
        neutron::EXCHANGE,
        "l3_agent",
        "node-1",
        dir.path(),
    );
    let n = |args: &[&str]| notify(ns.name(), &b, neutron::EXCHANGE, args);
    let mut c = Checks::new("peer");

    let out = n(&["routers_updated", "node-1", "r-1", "r-2"]);
    c.ok(out.success(), "routers_updated sent", out.describe());
    let out = n(&["router_deleted", "r-3"]);
    c.ok(out.success(), "router_deleted sent", out.describe());
    let out = n(&["ping", "node-1"]);
    c.eq("ping", out.stdout.trim(), "\"pong\"");
    let out = n(&[
        "call",
        "--topic",
        "l3_agent",
        "--server",
        "node-1",
        "--method",
        "echo",
        "--version",
        "1.3",
        "--args",
        r#"{"value": {"a": [1, "b"]}}"#,
    ]);
    c.eq("echo", out.stdout.trim(), r#"{"a": [1, "b"]}"#);
    let out = n(&[
        "call",
        "--topic",
        "l3_agent",
        "--method",
        "fail",
        "--version",
        "1.3",
        "--args",
        r#"{"message": "boom"}"#,
    ]);
    c.ok(
        out.code == Some(3) && out.stdout.contains("ValueError"),
        "fail raises ValueError",
        out.describe(),
    );
    let out = n(&["--timeout", "2", "ping", "node-2"]);
    c.eq("ping to nobody times out", out.code, Some(2));

    let t = Duration::from_secs(5);
    let upd = p.wait_received(
        "routers_updated",
        |r| r["args"]["routers"] == json!(["r-2"]),
        t,
    );
    c.ok(
        upd.is_some(),
        "routers_updated, one router per message",
        p.received(),
    );
    if let Some(u) = upd {
        c.eq("routers_updated version", &u["version"], &json!("1.1"));
        c.eq("a cast", &u["call"], &json!(false));
        c.eq("admin context", &u["context"]["is_admin"], &json!(true));
    }
    let del = p.wait_received("router_deleted", |_| true, t);
    c.eq(
        "router_deleted by fanout",
        del.map(|d| d["args"].clone()),
        Some(json!({"router_id": "r-3"})),
    );
    c.finish();
}

#[test]
fn teardown_leaves_nothing() {
    let ns = Netns::new("mq");
    let dir = TempDir::new(&names::tag());
    let b = Broker::start(ns.name());
    let s = NeutronServer::start(ns.name(), &b, neutron::EXCHANGE, dir.path());
    let p = Peer::start(
        ns.name(),
        &b,
        neutron::EXCHANGE,
        "l3_agent",
        "node-1",
        dir.path(),
    );
    let mut pids = b.pids();
    pids.extend(s.pid());
    pids.extend(p.pid());
    assert!(pids.len() >= 4, "broker, epmd, server, peer: {pids:?}");
    let broker_dir = b.dir().to_path_buf();
    let ns_name = ns.name().to_string();
    drop(p);
    drop(s);
    drop(b);
    drop(ns);
    let left: Vec<i32> = pids.into_iter().filter(|&p| !broker::gone(p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(!broker_dir.exists(), "{} left", broker_dir.display());
    assert!(
        !router_user::backend::netns::exists(&ns_name),
        "namespace {ns_name} left"
    );
}
