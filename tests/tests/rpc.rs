//! Interop tests of the oslo-rpc crate against a real RabbitMQ (a broker of
//! the test's own, in a namespace of the test) and real oslo.messaging
//! (peer.py, an RPC server; notify.py, an RPC client): calls and casts both
//! ways, oslo's dispatcher errors, the duplicate filter, queue declarations
//! that must equal oslo's, and a lost connection.
//!
//! The broker listens only inside its namespace, so the Rust side runs on a
//! current-thread runtime in a thread that entered it ([`in_ns`]); a Rust
//! RPC server that Python calls runs in a thread of its own
//! ([`RustServer`]), as notify.py blocks the test's thread.

use std::{
    future::Future,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use oslo_rpc::{
    CallError, Endpoint, Failure, Object, QueueOptions, Request, Rpc, Settings, Target,
    TransportUrl,
};
use router_user::backend::netns;
use serde_json::{Value, json};
use tests::{Broker, Checks, Netns, Out, Peer, TempDir, names, notify};

const EXCHANGE: &str = "neutron";
/// Bound for a call that is answered.
const CALL: Duration = Duration::from_secs(10);
/// Bound for a message to show up at its receiver.
const ARRIVE: Duration = Duration::from_secs(10);

fn obj(v: Value) -> Object {
    v.as_object().cloned().expect("a JSON object")
}

fn settings(b: &Broker, exchange: &str, queues: QueueOptions) -> Settings {
    Settings {
        url: TransportUrl::parse(&b.url()).expect("the broker's URL"),
        exchange: exchange.into(),
        queues,
        tls: None,
        heartbeat: 10,
        prefetch: 0,
        client_name: "xrouter-rpc-tests".into(),
    }
}

/// Runs `body` to completion on a current-thread runtime, in a thread
/// inside namespace `ns` (its sockets live there).
fn in_ns<T: Send, F: Future<Output = T>>(ns: &str, body: impl FnOnce() -> F + Send) -> T {
    netns::run_in(Some(ns), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(body())
    })
    .unwrap_or_else(|e| panic!("in {ns}: {e:#}"))
}

/// The result of a call, in a comparable form: the value, or the remote
/// failure's class and message, or another error's text.
fn outcome(r: Result<Value, CallError>) -> Result<Value, (String, String)> {
    r.map_err(|e| match e {
        CallError::Remote { failure, .. } => (failure.class, failure.message),
        other => ("<not remote>".into(), other.to_string()),
    })
}

/// A plain AMQP connection (lapin) next to the library's, inside the
/// namespace: for raw publishes and declarations.
async fn amqp(b: &Broker) -> Connection {
    Connection::connect(&b.amqp_url(), ConnectionProperties::default())
        .await
        .expect("a plain AMQP connection")
}

/// Declares queue `name` as oslo.messaging declares a transient (reply or
/// fanout) queue with `ttl_ms` as x-expires, on a channel of its own:
/// RabbitMQ accepts a redeclaration only if it is equivalent to the
/// queue's (durable, auto_delete, x-expires, x-queue-type).
async fn redeclare(
    conn: &Connection,
    name: &str,
    durable: bool,
    args: &[(&str, AMQPValue)],
) -> Result<(), String> {
    let chan = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    let r = chan
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            t,
        )
        .await;
    let _ = chan.close(200, "bye".into()).await;
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// oslo's x-expires of transient queues (rabbit_transient_queues_ttl 1800 s),
/// as py-amqp encodes a small int.
fn oslo_expires() -> (&'static str, AMQPValue) {
    ("x-expires", AMQPValue::LongInt(1_800_000))
}

#[test]
fn rust_calls_and_casts_to_python() {
    let ns = Netns::new("rpc");
    let dir = TempDir::new(&names::tag());
    let b = Broker::start(ns.name());
    let peer = Peer::start(ns.name(), &b, EXCHANGE, "peer", "p1", dir.path());
    let s = settings(&b, EXCHANGE, QueueOptions::default());
    let mut c = Checks::new("rust calls python");
    let (c_, peer_, b_) = (&mut c, &peer, &b);
    in_ns(ns.name(), move || async move {
        let c = c_;
        let rpc = Rpc::connect(&s).await.expect("connecting");
        let ctx = obj(json!({"request_id": "req-rust-1", "is_admin": true, "roles": ["admin"]}));
        let topic = Target::topic("peer");
        let call = |target: Target, method: &'static str, args: Value, version: &'static str| {
            let (rpc, ctx) = (&rpc, ctx.clone());
            async move {
                outcome(
                    rpc.call(&target, method, obj(args), version, ctx, CALL)
                        .await,
                )
            }
        };

        let nested = json!({
            "list": [1, -2, 2.5, "three", null, true, {"deep": {"er": []}}],
            "unicode": "héllo ✓ \"quoted\" \\ \n",
            "big": 9_007_199_254_740_993_u64,
            "empty": {},
        });
        c.eq(
            "echo returns nested JSON unchanged",
            call(topic.clone(), "echo", json!({"value": nested}), "1.3").await,
            Ok(nested.clone()),
        );
        c.eq(
            "echo to topic.server, older minor version",
            call(
                Target::server("peer", "p1"),
                "echo",
                json!({"value": "x"}),
                "1.0",
            )
            .await,
            Ok(json!("x")),
        );
        c.eq(
            "fail comes back as the remote ValueError",
            call(topic.clone(), "fail", json!({"message": "no way"}), "1.3").await,
            Err(("ValueError".into(), "no way".into())),
        );
        let r = rpc
            .call(
                &topic,
                "fail",
                obj(json!({"message": "m"})),
                "1.3",
                ctx.clone(),
                CALL,
            )
            .await;
        c.ok(
            matches!(&r, Err(CallError::Remote { failure, .. }) if failure.module == "builtins"),
            "the remote failure names its module",
            &r,
        );
        c.eq(
            "a method the peer lacks: NoSuchMethod",
            call(topic.clone(), "frobnicate", json!({}), "1.3").await,
            Err((
                "NoSuchMethod".into(),
                "Endpoint does not support RPC method frobnicate".into(),
            )),
        );
        c.eq(
            "version 1.4 to a 1.3 peer: UnsupportedVersion",
            call(topic.clone(), "echo", json!({"value": 1}), "1.4").await,
            Err((
                "UnsupportedVersion".into(),
                "Endpoint does not support RPC version 1.4. Attempted method: echo".into(),
            )),
        );
        c.eq(
            "oslo_rpc_server_ping: pong",
            call(topic.clone(), "oslo_rpc_server_ping", json!({}), "1.0").await,
            Ok(json!("pong")),
        );
        let t0 = Instant::now();
        let short = Duration::from_secs(2);
        let r = rpc
            .call(
                &Target::topic("nobody-serves-this"),
                "echo",
                obj(json!({"value": 1})),
                "1.0",
                ctx.clone(),
                short,
            )
            .await;
        let took = t0.elapsed();
        c.ok(
            matches!(r, Err(CallError::Timeout { .. })),
            "a call nobody serves times out",
            &r,
        );
        c.ok(
            took >= short && took < short + Duration::from_secs(1),
            "... after its timeout",
            took,
        );

        // Casts: to the topic, to one server, to all (fanout).
        for (what, target) in [
            ("cast-topic", Target::topic("peer")),
            ("cast-server", Target::server("peer", "p1")),
            ("cast-fanout", Target::fanout("peer")),
        ] {
            let sent = rpc
                .cast(
                    &target,
                    "echo",
                    obj(json!({"value": what})),
                    "1.3",
                    ctx.clone(),
                )
                .await;
            c.ok(sent.is_ok(), &format!("{what} sent"), &sent);
            let got = peer_.wait_received("echo", |r| r["args"]["value"] == what, ARRIVE);
            let Some(got) = got else {
                c.ok(false, &format!("{what} arrives"), peer_.received());
                continue;
            };
            c.eq(
                &format!("{what} arrives as a cast"),
                &got["call"],
                &json!(false),
            );
            c.eq(
                &format!("{what} carries the context"),
                (
                    &got["context"]["request_id"],
                    &got["context"]["is_admin"],
                    &got["context"]["roles"],
                ),
                (&json!("req-rust-1"), &json!(true), &json!(["admin"])),
            );
            c.eq(&format!("{what} version"), &got["version"], &json!("1.3"));
        }
        let echo_calls = peer_
            .received()
            .into_iter()
            .filter(|r| r["method"] == "echo" && r["call"] == true)
            .count();
        // The nested one, the one to topic.server, the one for 1.4.
        c.eq("the peer saw each echo call once", echo_calls, 3);

        // The reply queue is declared as oslo declares its own: a
        // redeclaration with oslo's arguments is accepted, another refused.
        let conn = amqp(b_).await;
        let q = rpc.reply_queue().to_string();
        c.ok(
            q.starts_with("reply_") && q.len() == 38,
            "reply queue name",
            &q,
        );
        let same = redeclare(&conn, &q, false, &[oslo_expires()]).await;
        c.ok(
            same.is_ok(),
            "reply queue: oslo's declaration is equivalent",
            &same,
        );
        let other = redeclare(
            &conn,
            &q,
            false,
            &[("x-expires", AMQPValue::LongInt(60_000))],
        )
        .await;
        c.ok(
            other
                .as_ref()
                .is_err_and(|e| e.contains("PRECONDITION_FAILED")),
            "reply queue: another x-expires is refused",
            &other,
        );
        let _ = conn.close(200, "bye".into()).await;
        rpc.close().await;
    });
    drop(peer);
    c.finish();
}

/// What a [`RustServer`] received.
#[derive(Clone, Debug)]
struct Seen {
    request: Request,
    via: String,
}

/// A Rust RPC server (the library's `serve`) in a thread of its own inside
/// the namespace. It answers `echo(value)` with the value, `fail(message)`
/// with a ValueError, anything else it serves with null, and records what
/// it received. Stops on drop.
struct RustServer {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RustServer {
    fn start(ns: &str, s: Settings, topic: &str, server: &str, endpoint: Endpoint) -> RustServer {
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = mpsc::channel::<()>();
        let (ns, topic, server, seen2) = (
            ns.to_string(),
            topic.to_string(),
            server.to_string(),
            seen.clone(),
        );
        let thread = thread::spawn(move || {
            in_ns(&ns, move || async move {
                let rpc = Rpc::connect(&s).await.expect("connecting");
                let mut rx = rpc.serve(&topic, &server, endpoint).await.expect("serving");
                let _ = ready_tx.send(());
                loop {
                    let incoming = tokio::select! {
                        _ = &mut stopped => break,
                        i = rx.recv() => match i {
                            Some(i) => i,
                            None => break,
                        },
                    };
                    let r = &incoming.request;
                    seen2.lock().unwrap().push(Seen {
                        request: r.clone(),
                        via: incoming.via.clone(),
                    });
                    let answer = match r.method.as_str() {
                        "echo" => Ok(r.args.get("value").cloned().unwrap_or(Value::Null)),
                        "fail" => Err(Failure {
                            class: "ValueError".into(),
                            module: "builtins".into(),
                            message: r.args["message"].as_str().unwrap_or_default().into(),
                        }),
                        _ => Ok(Value::Null),
                    };
                    incoming.reply(answer).await.expect("replying");
                }
                rpc.close().await;
            })
        });
        ready
            .recv_timeout(ARRIVE)
            .expect("the Rust server serves (see the panic above)");
        RustServer {
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) for a request of `method` satisfying `pred`.
    fn wait(&self, method: &str, pred: impl Fn(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + ARRIVE;
        loop {
            let found = self
                .seen()
                .into_iter()
                .find(|s| s.request.method == method && pred(s));
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RustServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// notify.py's outcome: the exit code and what it printed, parsed.
fn py(ns: &str, b: &Broker, args: &[&str]) -> (Option<i32>, Value, Out) {
    let out = notify(ns, b, EXCHANGE, args);
    let v = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
    (out.code, v, out)
}

#[test]
fn python_calls_and_casts_to_rust() {
    let ns = Netns::new("rpc");
    let b = Broker::start(ns.name());
    let endpoint = Endpoint {
        version: "1.4".into(),
        namespace: None,
        methods: vec!["echo".into(), "fail".into(), "note".into()],
    };
    let srv = RustServer::start(
        ns.name(),
        settings(&b, EXCHANGE, QueueOptions::default()),
        "agent",
        "h1",
        endpoint,
    );
    let mut c = Checks::new("python calls rust");
    let n = ns.name();
    let call = |extra: &[&str]| {
        let mut args = vec!["--timeout", "10", "call", "--topic", "agent"];
        args.extend_from_slice(extra);
        py(n, &b, &args)
    };

    // A call to the topic: the reply, and what the server saw.
    let (code, v, out) = call(&[
        "--method",
        "echo",
        "--version",
        "1.4",
        "--args",
        r#"{"value": {"x": [1, "two", null]}}"#,
    ]);
    c.eq("call echo: exit 0", code, Some(0));
    c.eq("call echo: the value", v, json!({"x": [1, "two", null]}));
    match srv.wait("echo", |_| true) {
        Some(s) => {
            let r = &s.request;
            c.eq("echo came through the topic queue", s.via.as_str(), "agent");
            c.ok(r.reply_to.is_some(), "echo is a call", r);
            c.eq("echo version", r.version.as_str(), "1.4");
            c.eq(
                "echo args",
                &r.args,
                &obj(json!({"value": {"x": [1, "two", null]}})),
            );
            c.eq(
                "echo context (Neutron's admin context)",
                (&r.context["is_admin"], &r.context["roles"]),
                (&json!(true), &json!(["admin"])),
            );
            c.ok(
                r.context["request_id"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("req-")),
                "echo context has a request_id",
                &r.context,
            );
        }
        None => {
            c.ok(false, "the Rust server receives echo", out.describe());
        }
    }

    // A call to topic.server answered with a failure.
    let (code, v, out) = call(&[
        "--server",
        "h1",
        "--method",
        "fail",
        "--args",
        r#"{"message": "no way"}"#,
    ]);
    c.eq("call fail: exit 3", code, Some(3));
    c.ok(
        v.to_string().contains("ValueError")
            && v["message"].as_str().is_some_and(|m| m.contains("no way")),
        "call fail: a ValueError with the message",
        out.describe(),
    );
    let via = srv.wait("fail", |_| true).map(|s| s.via);
    c.eq(
        "fail came through topic.server",
        via.as_deref(),
        Some("agent.h1"),
    );

    // A fanout cast.
    let (code, _, out) = py(
        n,
        &b,
        &[
            "cast",
            "--topic",
            "agent",
            "--fanout",
            "--method",
            "note",
            "--args",
            r#"{"n": "fanout"}"#,
        ],
    );
    c.eq("fanout cast: exit 0", code, Some(0));
    let fanout = srv.wait("note", |s| s.request.args["n"] == "fanout");
    c.ok(fanout.is_some(), "the fanout cast arrives", out.describe());
    let fanout_queue = fanout.map(|s| {
        c.ok(
            s.request.reply_to.is_none(),
            "the fanout is a cast",
            &s.request,
        );
        c.ok(
            s.via.starts_with("agent_fanout_"),
            "it came through the server's fanout queue",
            &s.via,
        );
        c.eq(
            "fanout context",
            &s.request.context["is_admin"],
            &json!(true),
        );
        s.via
    });

    // What the library answers itself.
    let (code, v, _) = call(&["--method", "oslo_rpc_server_ping"]);
    c.eq("ping: pong", (code, v), (Some(0), json!("pong")));
    let dispatch_errors = [
        (vec!["--method", "frobnicate"], "NoSuchMethod"),
        (
            vec!["--method", "echo", "--version", "1.5"],
            "UnsupportedVersion",
        ),
        (
            vec!["--method", "echo", "--version", "2.0"],
            "UnsupportedVersion",
        ),
        (
            vec!["--method", "echo", "--namespace", "other"],
            "UnsupportedVersion",
        ),
    ];
    for (args, class) in dispatch_errors {
        let (code, v, out) = call(&args);
        c.ok(
            code == Some(3) && v.to_string().contains(class),
            &format!("{args:?}: exit 3 with {class}"),
            out.describe(),
        );
    }
    c.eq(
        "the server's owner never saw them",
        srv.seen()
            .iter()
            .filter(|s| {
                let r = &s.request;
                r.method == "frobnicate"
                    || r.version.starts_with('2')
                    || r.version == "1.5"
                    || r.namespace.is_some()
            })
            .count(),
        0,
    );

    // The duplicate filter: one message published twice, then a marker.
    let b_ = &b;
    in_ns(n, move || async move {
        let conn = amqp(b_).await;
        let chan = conn.create_channel().await.expect("channel");
        let ctx = obj(json!({"request_id": "req-dup"}));
        let dup = Request::new("note", obj(json!({"n": "dup"})), "1.0", ctx.clone());
        let marker = Request::new("note", obj(json!({"n": "marker"})), "1.0", ctx);
        for body in [dup.encode(None), dup.encode(None), marker.encode(None)] {
            chan.basic_publish(
                EXCHANGE.into(),
                "agent".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .expect("publishing")
            .await
            .expect("published");
        }
        let _ = conn.close(200, "bye".into()).await;
    });
    c.ok(
        srv.wait("note", |s| s.request.args["n"] == "marker")
            .is_some(),
        "the message after the duplicate arrives",
        srv.seen(),
    );
    c.eq(
        "the duplicate is delivered once",
        srv.seen()
            .iter()
            .filter(|s| s.request.args.get("n") == Some(&json!("dup")))
            .count(),
        1,
    );

    // The fanout queue is declared as oslo declares its own.
    if let Some(q) = fanout_queue {
        let r = in_ns(n, move || async move {
            let conn = amqp(b_).await;
            let same = redeclare(&conn, &q, false, &[oslo_expires()]).await;
            let durable = redeclare(&conn, &q, true, &[oslo_expires()]).await;
            let _ = conn.close(200, "bye".into()).await;
            (same, durable)
        });
        c.ok(
            r.0.is_ok(),
            "fanout queue: oslo's declaration is equivalent",
            &r.0,
        );
        c.ok(
            r.1.as_ref()
                .is_err_and(|e| e.contains("PRECONDITION_FAILED")),
            "fanout queue: a durable one is refused",
            &r.1,
        );
    }
    drop(srv);
    c.finish();
}

#[test]
fn declarations_match_oslo() {
    let ns = Netns::new("rpc");
    let dir = TempDir::new(&names::tag());
    let b = Broker::start(ns.name());
    let n = ns.name();
    // Each case on an exchange of its own: oslo declares the control
    // exchange as durable as its topic queues.
    let quorum = Peer::start_with(n, &b, "ex-q", "qq", "pq", dir.path(), &["--quorum"]);
    let durable = Peer::start_with(n, &b, "ex-d", "dd", "pd", dir.path(), &["--durable"]);
    let plain = Peer::start(n, &b, "ex-n", "nn", "pn", dir.path());
    let mut c = Checks::new("declarations");
    let ep = Endpoint {
        version: "1.0".into(),
        namespace: None,
        methods: vec!["echo".into()],
    };
    let q_quorum = QueueOptions {
        rabbit_quorum_queue: true,
        ..Default::default()
    };
    let q_durable = QueueOptions {
        amqp_durable_queues: true,
        ..Default::default()
    };
    let cases = [
        ("quorum", settings(&b, "ex-q", q_quorum.clone()), "qq", "pq"),
        (
            "durable",
            settings(&b, "ex-d", q_durable.clone()),
            "dd",
            "pd",
        ),
    ];
    let mismatches = [
        // The control exchange (and the queue) are not durable.
        (
            "durable vs plain, same exchange",
            settings(&b, "ex-n", q_durable.clone()),
            "nn",
            "'durable' for exchange 'ex-n'",
        ),
        // A new exchange, but the topic queue is not durable.
        (
            "durable vs plain, queue",
            settings(&b, "ex-n2", q_durable),
            "nn",
            "'durable' for queue 'nn'",
        ),
        // Quorum vs the durable peer's classic queue.
        (
            "quorum vs durable classic, queue",
            settings(&b, "ex-d", q_quorum),
            "dd",
            "'x-queue-type' for queue 'dd'",
        ),
    ];
    let mismatch_call = mismatches[0].1.clone();
    let (c_, plain_) = (&mut c, &plain);
    in_ns(n, move || async move {
        let c = c_;
        for (what, s, topic, peer) in cases {
            let rpc = Rpc::connect(&s).await.expect("connecting");
            let served = rpc.serve(topic, "rust", ep.clone()).await;
            c.ok(
                served.is_ok(),
                &format!("{what}: Rust serves the peer's topic"),
                served.as_ref().err(),
            );
            let peer = rpc
                .call(
                    &Target::server(topic, peer),
                    "echo",
                    obj(json!({"value": what})),
                    "1.0",
                    Object::new(),
                    CALL,
                )
                .await;
            c.eq(
                &format!("{what}: the peer still answers"),
                outcome(peer),
                Ok(json!(what)),
            );
            let own = rpc
                .call(
                    &Target::server(topic, "rust"),
                    "oslo_rpc_server_ping",
                    Object::new(),
                    "1.0",
                    Object::new(),
                    CALL,
                )
                .await;
            c.eq(
                &format!("{what}: so does Rust"),
                outcome(own),
                Ok(json!("pong")),
            );
            rpc.close().await;
        }
        for (what, s, topic, named) in mismatches {
            let rpc = Rpc::connect(&s).await.expect("connecting");
            let t0 = Instant::now();
            let served = tokio::time::timeout(CALL, rpc.serve(topic, "rust", ep.clone())).await;
            let e = match served {
                Err(_) => format!("no answer after {CALL:?}"),
                Ok(Ok(_)) => "served".to_string(),
                Ok(Err(e)) => e.to_string(),
            };
            println!("[declarations] {what}: {e}");
            c.ok(
                e.contains("PRECONDITION_FAILED") && e.contains(named),
                &format!("{what}: refused, naming the precondition and {named}"),
                &e,
            );
            c.ok(
                t0.elapsed() < Duration::from_secs(2),
                &format!("{what}: at once"),
                t0.elapsed(),
            );
            c.ok(rpc.is_connected(), &format!("{what}: still connected"), ());
            rpc.close().await;
        }
        // A call whose exchange declaration is refused fails with the
        // broker's reason, and does not break the casts that follow.
        let rpc = Rpc::connect(&mismatch_call).await.expect("connecting");
        let r = rpc
            .call(
                &Target::server("nn", "pn"),
                "echo",
                obj(json!({"value": 1})),
                "1.0",
                Object::new(),
                CALL,
            )
            .await;
        c.ok(
            matches!(&r, Err(CallError::Transport { error, .. }) if error.to_string().contains("PRECONDITION_FAILED")),
            "a call declaring the exchange durable: refused",
            &r,
        );
        let cast = rpc
            .cast(
                &Target::fanout("nn"),
                "echo",
                obj(json!({"value": "after-refusal"})),
                "1.0",
                Object::new(),
            )
            .await;
        c.ok(cast.is_ok(), "a fanout cast after it is sent", &cast);
        c.ok(
            plain_
                .wait_received("echo", |r| r["args"]["value"] == "after-refusal", ARRIVE)
                .is_some(),
            "... and arrives",
            plain_.received(),
        );
        rpc.close().await;
    });
    drop((quorum, durable, plain));
    c.finish();
}

#[test]
fn a_lost_connection_is_noticed() {
    let ns = Netns::new("rpc");
    let mut b = Broker::start(ns.name());
    let s = settings(&b, EXCHANGE, QueueOptions::default());
    let ep = Endpoint {
        version: "1.0".into(),
        namespace: None,
        methods: vec![],
    };
    let mut c = Checks::new("lost connection");
    let (c_, b_) = (&mut c, &mut b);
    in_ns(ns.name(), move || async move {
        let c = c_;
        let rpc = Rpc::connect(&s).await.expect("connecting");
        let mut rx = rpc.serve("agent", "h1", ep.clone()).await.expect("serving");
        c.ok(rpc.is_connected(), "connected", ());
        // A call in flight (nobody answers it) when the broker goes.
        let nobody = Target::topic("nobody-serves-this");
        {
            let waiting = rpc.call(
                &nobody,
                "echo",
                Object::new(),
                "1.0",
                Object::new(),
                Duration::from_secs(60),
            );
            tokio::pin!(waiting);
            let early = tokio::time::timeout(Duration::from_millis(500), &mut waiting).await;
            c.ok(
                early.is_err(),
                "the call waits for its reply",
                early.as_ref().ok(),
            );
            b_.down();
            let t0 = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(5), &mut waiting).await;
            c.ok(
                matches!(&r, Ok(Err(CallError::Transport { error, .. }))
                if error.to_string().contains("connection lost")),
                "the call in flight fails once the broker is gone, not at its timeout",
                (&r, t0.elapsed()),
            );
        }
        let t0 = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(5), rpc.closed()).await;
        c.ok(
            closed.is_ok(),
            "closed() resolves once the broker is gone",
            t0.elapsed(),
        );
        c.ok(!rpc.is_connected(), "no longer connected", ());
        let ended = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        c.ok(
            matches!(ended, Ok(None)),
            "the server's channel ends",
            ended.is_ok(),
        );
        let t0 = Instant::now();
        let r = rpc
            .call(
                &Target::topic("agent"),
                "oslo_rpc_server_ping",
                Object::new(),
                "1.0",
                Object::new(),
                Duration::from_secs(5),
            )
            .await;
        c.ok(
            matches!(r, Err(CallError::Transport { .. })) && t0.elapsed() < Duration::from_secs(2),
            "a call on the lost connection fails at once",
            (&r, t0.elapsed()),
        );
        drop(rpc);

        b_.up();
        let rpc = Rpc::connect(&s).await;
        c.ok(
            rpc.is_ok(),
            "connecting again after the broker is back",
            rpc.as_ref().err(),
        );
        if let Ok(rpc) = rpc {
            let served = rpc.serve("agent", "h1", ep).await;
            c.ok(served.is_ok(), "serving again", served.as_ref().err());
            let pong = rpc
                .call(
                    &Target::server("agent", "h1"),
                    "oslo_rpc_server_ping",
                    Object::new(),
                    "1.0",
                    Object::new(),
                    CALL,
                )
                .await;
            c.eq(
                "a call through it is answered",
                outcome(pong),
                Ok(json!("pong")),
            );
            rpc.close().await;
        }
    });
    c.finish();
}

/// `[oslo_messaging_rabbit] ssl = true` with the operator's CA: the
/// connection goes through the broker's TLS listener, and a CA that did not
/// sign its certificate is refused. A cluster URL whose first broker is
/// down is served by the next.
#[test]
fn tls_and_a_dead_first_broker() {
    let ns = Netns::new("rpctls");
    let b = Broker::start(ns.name());
    let mut c = Checks::new("tls and failover");
    let ep = Endpoint {
        version: "1.0".into(),
        namespace: None,
        methods: vec![],
    };
    let tls_url = format!(
        "rabbit://{}:{}@127.0.0.1:{}/{}",
        tests::broker::USER,
        tests::broker::PASSWORD,
        b.tls_port(),
        tests::broker::VHOST
    );
    let mut tls = settings(&b, EXCHANGE, QueueOptions::default());
    tls.url = TransportUrl::parse(&tls_url).unwrap();
    tls.tls = Some(oslo_rpc::Tls {
        ca_file: Some(b.ca_file()),
        cert_file: None,
        key_file: None,
    });
    // A CA of its own, which signed nothing the broker has.
    let other = tests::TempDir::new(&format!("ca-{}", tests::names::tag()));
    let other_ca = tests::broker::make_ca(other.path(), "other");
    let mut wrong = tls.clone();
    wrong.tls = Some(oslo_rpc::Tls {
        ca_file: Some(other_ca),
        cert_file: None,
        key_file: None,
    });
    let mut failover = settings(&b, EXCHANGE, QueueOptions::default());
    failover.url = TransportUrl::parse(&b.url().replacen(
        "127.0.0.1:",
        "127.0.0.1:5679,127.0.0.1:",
        1,
    ))
    .unwrap();
    let c_ = &mut c;
    in_ns(ns.name(), move || async move {
        let c = c_;
        match Rpc::connect(&tls).await {
            Ok(rpc) => {
                let served = rpc.serve("tls", "h1", ep.clone()).await;
                c.ok(served.is_ok(), "serving over TLS", served.as_ref().err());
                let pong = rpc
                    .call(
                        &Target::server("tls", "h1"),
                        "oslo_rpc_server_ping",
                        Object::new(),
                        "1.0",
                        Object::new(),
                        Duration::from_secs(5),
                    )
                    .await;
                c.ok(
                    matches!(&pong, Ok(v) if v == "pong"),
                    "a call through the TLS listener",
                    pong.as_ref().err(),
                );
                c.ok(
                    rpc.broker.ends_with(":5671"),
                    "connected to the TLS port",
                    &rpc.broker,
                );
            }
            Err(e) => {
                c.ok(false, "connecting with TLS and the broker's CA", e);
            }
        }
        let refused = Rpc::connect(&wrong).await;
        c.ok(
            refused.is_err(),
            "a certificate the configured CA did not sign is refused",
            refused.as_ref().err(),
        );
        match Rpc::connect(&failover).await {
            Ok(rpc) => {
                c.ok(
                    rpc.broker == "127.0.0.1:5672",
                    "the first broker down: the second one serves",
                    &rpc.broker,
                );
            }
            Err(e) => {
                c.ok(false, "a dead first broker in the URL", e);
            }
        }
    });
    c.finish();
}
