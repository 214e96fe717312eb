//! The stand-ins for Neutron's side of the agent's RPC (tests/neutron/*.py,
//! real oslo.messaging in the venv scripts/setup.sh makes), run inside a
//! namespace of the test against its [`Broker`]:
//!
//! * [`NeutronServer`]: neutron-server's `q-l3-plugin` and
//!   `q-reports-plugin` consumers (server.py), serving the routers the test
//!   sets and recording every call;
//! * [`notify`]: neutron-server's notifications to the agents, and a generic
//!   call/cast (notify.py);
//! * [`Peer`]: a plain oslo.messaging RPC server (peer.py) for the RPC
//!   library's interop tests.
//!
//! Processes are killed by pid in Drop; every wait is bounded.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use router_user::backend::netns;
use serde_json::{Value, json};

use crate::{
    broker::{Broker, kill_tree},
    cmd::{self, Out},
};

/// Bound for a script to print "ready" (Python and oslo.messaging start in
/// about a second).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for a graceful stop (SIGTERM) before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for one notify.py run (its calls wait 10 s for a reply unless
/// `--timeout` says otherwise).
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(40);
/// Makes each [`NeutronServer::set_failures`] a new entry for server.py.
static FAIL_SERIAL: AtomicU64 = AtomicU64::new(1);

/// The exchange Neutron uses (its `control_exchange`).
pub const EXCHANGE: &str = "neutron";

/// The venv's python: `$XROUTER_VENV/bin/python`, default
/// `/opt/xrouter-venv/bin/python` (scripts/setup.sh).
pub fn python() -> PathBuf {
    let venv = std::env::var_os("XROUTER_VENV").unwrap_or_else(|| "/opt/xrouter-venv".into());
    let p = PathBuf::from(venv).join("bin/python");
    assert!(
        p.is_file(),
        "{} not found: run scripts/setup.sh (`cargo xtask setup`)",
        p.display()
    );
    p
}

/// `tests/neutron/<name>`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("neutron")
        .join(name)
}

/// `python SCRIPT ARGS` inside `ns`.
fn command(ns: &str, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(python());
    c.arg(script(name))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    netns::command_in(ns, &mut c).unwrap_or_else(|e| panic!("namespace {ns}: {e:#}"));
    c
}

/// A long-running script: its output goes to `<dir>/<stem>.out|.err`.
struct Script {
    what: String,
    out: PathBuf,
    err: PathBuf,
    child: Option<Child>,
}

impl Script {
    /// Spawns the script and waits (bounded) for its "ready" line.
    fn start(ns: &str, name: &str, args: &[&str], dir: &Path, stem: &str) -> Script {
        let out = dir.join(format!("{stem}.out"));
        let err = dir.join(format!("{stem}.err"));
        let file = |p: &Path| File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut c = command(ns, name, args);
        c.stdin(Stdio::null()).stdout(file(&out)).stderr(file(&err));
        let child = c.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let mut s = Script {
            what: format!("{name} [{ns}]"),
            out,
            err,
            child: Some(child),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !s.output().lines().any(|l| l == "ready") {
            if !s.alive() || Instant::now() >= deadline {
                let why = if s.alive() {
                    format!("not ready after {READY_TIMEOUT:?}")
                } else {
                    "exited".to_string()
                };
                panic!("{} {why}\n{}", s.what, s.describe());
            }
            thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!(
            "--- stdout:\n{}--- stderr:\n{}",
            self.output(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGTERM (the script stops its servers and exits), SIGKILL after
    /// [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            kill_tree(c, Signal::SIGTERM, STOP_TIMEOUT, &self.what);
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if thread::panicking() && self.child.is_some() {
            eprintln!("[{}]\n{}", self.what, self.describe());
        }
        self.stop();
    }
}

/// Reads a JSON-lines log (a line being written is skipped).
fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Writes `value` to `path` atomically (the readers re-read it at any time).
fn write_json(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).expect("json"))
        .unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Polls a JSON-lines log for a record of `method` satisfying `pred`.
fn wait_record(
    path: &Path,
    method: &str,
    pred: impl Fn(&Value) -> bool,
    timeout: Duration,
) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = read_jsonl(path)
            .into_iter()
            .find(|r| r["method"] == method && pred(r))
        {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The stand-in neutron-server (server.py) in a namespace of the test.
///
/// Its files are in `dir`: `routers.json` ([`NeutronServer::set_routers`]),
/// `control.json` (the `set_*` methods), `calls.jsonl` (every message it
/// received: `t`, `topic`, `server`, `call`, `method`, `args`, `version`,
/// `namespace`, `context_keys`, `context`), `server.out|.err`.
pub struct NeutronServer {
    pub ns: String,
    pub url: String,
    pub exchange: String,
    /// The server's own host name (its `<topic>.<host>` queues).
    pub host: String,
    dir: PathBuf,
    control: Mutex<Value>,
    script: Script,
}

impl NeutronServer {
    /// Starts server.py in `ns` against `broker` on `exchange` (Neutron's is
    /// [`EXCHANGE`]), with its files in `dir` (which must exist), serving
    /// no routers; returns once its RPC servers consume.
    pub fn start(ns: &str, broker: &Broker, exchange: &str, dir: &Path) -> NeutronServer {
        let host = "neutron-server";
        write_json(&dir.join("routers.json"), &json!([]));
        write_json(&dir.join("control.json"), &json!({}));
        let _ = std::fs::remove_file(dir.join("calls.jsonl"));
        let url = broker.url();
        let d = dir.to_string_lossy().into_owned();
        let args = [
            "--url",
            &url,
            "--exchange",
            exchange,
            "--dir",
            &d,
            "--host",
            host,
        ];
        let script = Script::start(ns, "server.py", &args, dir, "server");
        NeutronServer {
            ns: ns.to_string(),
            url,
            exchange: exchange.to_string(),
            host: host.to_string(),
            dir: dir.to_path_buf(),
            control: Mutex::new(json!({})),
            script,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn calls_path(&self) -> PathBuf {
        self.dir.join("calls.jsonl")
    }

    /// Sets the routers served (a JSON list of router dicts, as
    /// [`crate::routers_json`] makes).
    pub fn set_routers(&self, routers: &Value) {
        assert!(routers.is_array(), "routers must be a JSON list");
        write_json(&self.dir.join("routers.json"), routers);
    }

    /// Replaces the whole control file (see server.py).
    pub fn set_control(&self, control: Value) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        *c = control;
        write_json(&self.dir.join("control.json"), &c);
    }

    fn update_control(&self, f: impl FnOnce(&mut Value)) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c);
        write_json(&self.dir.join("control.json"), &c);
    }

    /// Every report_state answers `answer` ("alive", "revived", ...);
    /// None: back to Neutron's "new" the first time per host, then "alive".
    pub fn set_report_answer(&self, answer: Option<&str>) {
        self.update_control(|c| match answer {
            Some(a) => c["report_state"] = json!(a),
            None => {
                c.as_object_mut().map(|o| o.remove("report_state"));
            }
        });
    }

    /// `method` sleeps `seconds` before it answers (0: no more).
    pub fn set_sleep(&self, method: &str, seconds: f64) {
        self.update_control(|c| c["sleep"][method] = json!(seconds));
    }

    /// The next `n` calls of `method` raise (a RuntimeError, which the
    /// caller gets as a RemoteError).
    pub fn set_failures(&self, method: &str, n: u32) {
        let serial = FAIL_SERIAL.fetch_add(1, Ordering::Relaxed);
        self.update_control(|c| c["fail"][method] = json!({"n": n, "serial": serial}));
    }

    /// The VMs' ports get_ports searches (with the routers' own).
    pub fn set_ports(&self, ports: &Value) {
        write_json(&self.dir.join("ports.json"), ports);
    }

    /// What get_networks answers.
    pub fn set_networks(&self, networks: &Value) {
        self.update_control(|c| c["networks"] = networks.clone());
    }

    /// Every message received so far, in order.
    pub fn all_calls(&self) -> Vec<Value> {
        read_jsonl(&self.calls_path())
    }

    /// The messages received so far for `method`.
    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.all_calls()
            .into_iter()
            .filter(|r| r["method"] == method)
            .collect()
    }

    /// Waits (bounded) for a message for `method` satisfying `pred`.
    pub fn wait_call(
        &self,
        method: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        wait_record(&self.calls_path(), method, pred, timeout)
    }

    /// notify.py ARGS against this server's broker and exchange.
    pub fn notify(&self, args: &[&str]) -> Out {
        notify_url(&self.ns, &self.url, &self.exchange, args)
    }

    pub fn alive(&mut self) -> bool {
        self.script.alive()
    }

    pub fn pid(&self) -> Option<i32> {
        self.script.pid()
    }

    /// Stops the server (SIGTERM; what Drop does).
    pub fn stop(mut self) {
        self.script.stop();
    }
}

/// notify.py ARGS in `ns` against `broker` on `exchange`, e.g.
/// `["routers_updated", host, id]`, `["--timeout", "3", "ping", host]` or
/// `["call", "--topic", "q-l3-plugin", "--method", "get_router_ids",
/// "--version", "1.9", "--args", r#"{"host": "h"}"#]` (see notify.py).
pub fn notify(ns: &str, broker: &Broker, exchange: &str, args: &[&str]) -> Out {
    notify_url(ns, &broker.url(), exchange, args)
}

fn notify_url(ns: &str, url: &str, exchange: &str, args: &[&str]) -> Out {
    // Global options (--timeout) given first in `args` stay before the
    // command, where notify.py takes them.
    let mut all = vec!["--url", url, "--exchange", exchange];
    all.extend_from_slice(args);
    let mut c = command(ns, "notify.py", &all);
    let mut out = cmd::run(&mut c, NOTIFY_TIMEOUT).expect("running notify.py");
    out.what = format!("[{ns}] notify.py {}", args.join(" "));
    out
}

/// A plain oslo.messaging RPC server (peer.py) on `topic` with server name
/// `server`: echo(value), fail(message), slow(seconds) at version 1.3, and
/// oslo_rpc_server_ping; every message it receives is recorded.
pub struct Peer {
    pub ns: String,
    pub topic: String,
    pub server: String,
    log: PathBuf,
    script: Script,
}

impl Peer {
    /// Starts peer.py in `ns` against `broker` on `exchange`; its files
    /// (`peer-<topic>-<server>.jsonl|.out|.err`) in `dir`.
    pub fn start(
        ns: &str,
        broker: &Broker,
        exchange: &str,
        topic: &str,
        server: &str,
        dir: &Path,
    ) -> Peer {
        Self::start_with(ns, broker, exchange, topic, server, dir, &[])
    }

    /// [`Peer::start`] with more peer.py options: `--durable`
    /// (amqp_durable_queues) and/or `--quorum` (rabbit_quorum_queue).
    pub fn start_with(
        ns: &str,
        broker: &Broker,
        exchange: &str,
        topic: &str,
        server: &str,
        dir: &Path,
        options: &[&str],
    ) -> Peer {
        let stem = format!("peer-{topic}-{server}");
        let log = dir.join(format!("{stem}.jsonl"));
        let _ = std::fs::remove_file(&log);
        let url = broker.url();
        let l = log.to_string_lossy().into_owned();
        let args = [
            "--url",
            &url,
            "--exchange",
            exchange,
            "--topic",
            topic,
            "--server",
            server,
            "--log",
            &l,
        ];
        let args: Vec<&str> = args.iter().chain(options).copied().collect();
        let script = Script::start(ns, "peer.py", &args, dir, &stem);
        Peer {
            ns: ns.to_string(),
            topic: topic.to_string(),
            server: server.to_string(),
            log,
            script,
        }
    }

    /// Every message received so far (calls and casts), in order.
    pub fn received(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }

    /// Waits (bounded) for a message for `method` satisfying `pred`.
    pub fn wait_received(
        &self,
        method: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        wait_record(&self.log, method, pred, timeout)
    }

    pub fn alive(&mut self) -> bool {
        self.script.alive()
    }

    pub fn pid(&self) -> Option<i32> {
        self.script.pid()
    }

    pub fn stop(mut self) {
        self.script.stop();
    }
}

/// Neutron's own metadata agent (`neutron-metadata-agent` of the venv),
/// inside `ns`: it listens on `socket` for the proxy's requests, asks the
/// server over `broker` which instance has the requester's address on the
/// router's networks (`get_ports`), and passes the request to Nova's
/// metadata API at 127.0.0.1:`nova_port` of `ns`, signed with `secret`.
pub struct NeutronMetadataAgent {
    what: String,
    log: PathBuf,
    child: Option<Child>,
}

impl NeutronMetadataAgent {
    pub fn start(
        ns: &str,
        broker: &Broker,
        dir: &Path,
        socket: &Path,
        nova_port: u16,
        secret: &str,
    ) -> NeutronMetadataAgent {
        let conf = dir.join("metadata_agent.ini");
        let log = dir.join("metadata-agent.log");
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\ntransport_url = {}\ncontrol_exchange = {EXCHANGE}\n\
                 metadata_proxy_socket = {}\nstate_path = {}\n\
                 nova_metadata_host = 127.0.0.1\nnova_metadata_port = {nova_port}\n\
                 metadata_proxy_shared_secret = {secret}\nmetadata_workers = 1\n\
                 debug = true\n\n[AGENT]\nreport_interval = 0\n",
                broker.url(),
                socket.display(),
                dir.display(),
            ),
        )
        .unwrap();
        let _ = std::fs::remove_file(socket);
        let bin = python().with_file_name("neutron-metadata-agent");
        let mut c = Command::new(&bin);
        c.arg("--config-file")
            .arg(&conf)
            .arg("--log-file")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        netns::command_in(ns, &mut c).unwrap_or_else(|e| panic!("namespace {ns}: {e:#}"));
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut a = NeutronMetadataAgent {
            what: format!("neutron-metadata-agent [{ns}]"),
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !socket.exists() {
            let exited = a
                .child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() >= deadline {
                panic!(
                    "{} did not open {}; its log:\n{}",
                    a.what,
                    socket.display(),
                    a.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        a
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NeutronMetadataAgent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("[{}] log:\n{}", self.what, self.log());
        }
        if let Some(c) = self.child.take() {
            kill_tree(c, Signal::SIGTERM, STOP_TIMEOUT, &self.what);
        }
    }
}
