//! A RabbitMQ broker of the test's own, inside a network namespace of the
//! test (normally the rig's node namespace, where xrouter runs): listening
//! on 127.0.0.1:5672 there, its epmd on 127.0.0.1:4369 and its Erlang
//! distribution port on 127.0.0.1:25672 there too; nothing in the root
//! namespace. Its config, data, logs, Erlang cookie and pid file live in a
//! directory of its own; its node name is unique. Drop kills the broker
//! (and what it started) and its epmd by pid and removes the directory,
//! also after a panic.
//!
//! Needs Debian's rabbitmq-server (scripts/setup.sh installs it and keeps
//! its service from running in the root namespace).

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use router_user::{backend::netns, fixtures::ids as names};

/// The broker's start script (Debian's, without the wrapper that switches
/// to the rabbitmq user).
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Bound for a start, from nothing to accepting AMQP connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for a graceful stop ([`Broker::down`]) before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The AMQP port, in the broker's namespace.
pub const PORT: u16 = 5672;
/// The TLS listener's port (127.0.0.1, inside the namespace).
pub const TLS_PORT: u16 = 5671;
/// The default user, its password and the virtual host it owns.
pub const USER: &str = "xrouter";
pub const PASSWORD: &str = "secret";
pub const VHOST: &str = "neutron";

/// One broker and its epmd, running (or [`Broker::down`]) in a namespace.
pub struct Broker {
    ns: String,
    /// Erlang node name, e.g. `xrt1a2b3c@localhost`.
    node: String,
    dir: PathBuf,
    epmd: Option<Child>,
    beam: Option<Child>,
    /// How long the last start (or [`Broker::up`]) took until the broker
    /// accepted AMQP connections.
    pub start_time: Duration,
}

impl Broker {
    /// Starts a fresh broker in namespace `ns` (which must exist, with `lo`
    /// up) and waits until it accepts AMQP connections on 127.0.0.1:5672
    /// there. Panics with the broker's output if it does not within
    /// [`START_TIMEOUT`].
    pub fn start(ns: &str) -> Broker {
        assert!(
            Path::new(RABBITMQ_SERVER).is_file(),
            "{RABBITMQ_SERVER} not found: run scripts/setup.sh (`cargo xtask setup`)"
        );
        let tag = names::tag();
        let dir = std::env::temp_dir().join(format!("xrt-mq-{tag}"));
        std::fs::create_dir_all(dir.join("log")).expect("creating the broker's dir");
        let mut b = Broker {
            ns: ns.to_string(),
            node: format!("xrt{tag}@localhost"),
            dir,
            epmd: None,
            beam: None,
            start_time: Duration::ZERO,
        };
        b.write_config();
        b.up();
        b
    }

    /// `rabbit://xrouter:secret@127.0.0.1:5672/neutron`: valid inside the
    /// broker's namespace.
    pub fn url(&self) -> String {
        format!("rabbit://{USER}:{PASSWORD}@127.0.0.1:{PORT}/{VHOST}")
    }

    /// The same as an `amqp://` URL, as AMQP clients other than
    /// oslo.messaging spell it.
    pub fn amqp_url(&self) -> String {
        format!("amqp://{USER}:{PASSWORD}@127.0.0.1:{PORT}/{VHOST}")
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The broker's directory: config, `mnesia/` (data), `log/`, cookie.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The broker's own log, then what it printed.
    pub fn log(&self) -> String {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}--- stdout/stderr:\n{}",
            read(self.dir.join("log").join(format!("{}.log", self.node))),
            read(self.dir.join("stdout.log"))
        )
    }

    /// Whether the broker process runs (it may not accept connections yet).
    pub fn is_running(&mut self) -> bool {
        self.beam
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Pids of the broker (the Erlang VM), what it started, and its epmd.
    pub fn pids(&self) -> Vec<i32> {
        let mut v = Vec::new();
        if let Some(c) = &self.beam {
            v.push(c.id() as i32);
            v.extend(descendants(c.id() as i32));
        }
        if let Some(c) = &self.epmd {
            v.push(c.id() as i32);
        }
        v
    }

    /// Stops the broker gracefully (SIGTERM, bounded by [`STOP_TIMEOUT`],
    /// then SIGKILL), keeping its data and its epmd; clients see the broker
    /// go away. [`Broker::up`] brings it back.
    pub fn down(&mut self) {
        if let Some(child) = self.beam.take() {
            kill_tree(child, signal::Signal::SIGTERM, STOP_TIMEOUT, "broker");
        }
    }

    /// Starts the broker (again) on its data directory, as [`Broker::start`]
    /// does; does nothing if it runs.
    pub fn up(&mut self) {
        if self.is_running() {
            return;
        }
        let t0 = Instant::now();
        if self.epmd.is_none() {
            self.epmd = Some(self.spawn_epmd());
        }
        self.beam = Some(self.spawn_broker());
        let deadline = t0 + START_TIMEOUT;
        loop {
            if amqp_handshake(&self.ns) {
                break;
            }
            if !self.is_running() || Instant::now() >= deadline {
                let why = if self.is_running() {
                    format!("not accepting AMQP after {START_TIMEOUT:?}")
                } else {
                    "exited".to_string()
                };
                panic!(
                    "[broker {}] {why}; its log:\n{}",
                    self.node,
                    tail(&self.log(), 80)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.start_time = t0.elapsed();
        eprintln!(
            "[broker {}] accepting AMQP in {} after {:.2} s",
            self.node,
            self.ns,
            self.start_time.as_secs_f64()
        );
    }

    /// [`Broker::down`] then [`Broker::up`]: a broker restart, with the
    /// same users, vhost and durable state (oslo.messaging's queues are not
    /// durable: they are gone after it).
    pub fn restart(&mut self) {
        self.down();
        self.up();
    }

    /// Kills everything and removes the directory (what Drop does).
    pub fn stop(self) {}

    /// The CA that signed the TLS listener's certificate (PEM), for
    /// `[oslo_messaging_rabbit] ssl_ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `amqps` through the TLS listener (its certificate names 127.0.0.1).
    pub fn tls_port(&self) -> u16 {
        TLS_PORT
    }

    /// A CA and a server certificate for 127.0.0.1 signed by it.
    fn make_certificates(&self) {
        make_ca(&self.dir, "xrouter test CA");
        let d = |f: &str| self.dir.join(f).display().to_string();
        std::fs::write(self.dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n")
            .expect("writing san.cnf");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &d("server.key"),
            "-out",
            &d("server.csr"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-extfile",
            &d("san.cnf"),
            "-in",
            &d("server.csr"),
            "-CA",
            &d("ca.pem"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-out",
            &d("server.pem"),
        ]);
    }

    fn write_config(&self) {
        self.make_certificates();
        let dir = self.dir.display();
        let conf = format!(
            "listeners.tcp.1 = 127.0.0.1:{PORT}\n\
             listeners.ssl.1 = 127.0.0.1:{TLS_PORT}\n\
             ssl_options.cacertfile = {dir}/ca.pem\n\
             ssl_options.certfile = {dir}/server.pem\n\
             ssl_options.keyfile = {dir}/server.key\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             default_user = {USER}\n\
             default_pass = {PASSWORD}\n\
             default_vhost = {VHOST}\n\
             default_user_tags.administrator = true\n\
             default_permissions.configure = .*\n\
             default_permissions.read = .*\n\
             default_permissions.write = .*\n\
             loopback_users = none\n\
             log.console = false\n\
             log.file.level = info\n\
             disk_free_limit.absolute = 1MB\n"
        );
        let w = |name: &str, text: &str| {
            std::fs::write(self.dir.join(name), text)
                .unwrap_or_else(|e| panic!("writing the broker's {name}: {e}"))
        };
        w("rabbitmq.conf", &conf);
        // No plugins (management and the like only slow the start down).
        w("enabled_plugins", "[].\n");
        // Instead of /etc/rabbitmq/rabbitmq-env.conf.
        w("rabbitmq-env.conf", "");
    }

    fn command(&self, program: &str, log: &str) -> Command {
        let mut c = Command::new(program);
        let d = |p: &str| self.dir.join(p);
        c.env("HOME", &self.dir)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        for (k, v) in [
            ("RABBITMQ_NODENAME", self.node.clone().into()),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_PID_FILE", d("rabbitmq.pid")),
            ("RABBITMQ_PLUGINS_EXPAND_DIR", d("plugins-expand")),
        ] {
            c.env(k, v);
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(log))
            .expect("the broker's output file");
        c.stderr(out.try_clone().expect("dup"));
        c.stdout(out);
        netns::command_in(&self.ns, &mut c)
            .unwrap_or_else(|e| panic!("broker namespace {}: {e:#}", self.ns));
        c
    }

    /// epmd in the foreground (a child of ours, not a daemon), on 127.0.0.1
    /// of the namespace only.
    fn spawn_epmd(&self) -> Child {
        let mut c = self.command("epmd", "epmd.log");
        c.args(["-address", "127.0.0.1"]);
        let child = c.spawn().expect("spawning epmd");
        let addr: SocketAddr = ([127, 0, 0, 1], 4369).into();
        let up = crate::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            connect(&self.ns, addr).is_some()
        });
        assert!(up, "[broker {}] epmd not listening after 10 s", self.node);
        child
    }

    fn spawn_broker(&self) -> Child {
        let mut c = self.command(RABBITMQ_SERVER, "stdout.log");
        // The script then execs the Erlang VM: the child is the broker.
        c.env("RUNNING_UNDER_SYSTEMD", "true").env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            // The distribution port on loopback only; our epmd, never one
            // the VM would start (as a daemon) itself.
            "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false",
        );
        c.spawn().expect("spawning rabbitmq-server")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if thread::panicking() && self.beam.is_some() {
            eprintln!(
                "[broker {}] last lines of its log:\n{}",
                self.node,
                tail(&self.log(), 40)
            );
        }
        if let Some(child) = self.beam.take() {
            kill_tree(child, signal::Signal::SIGKILL, STOP_TIMEOUT, "broker");
        }
        if let Some(child) = self.epmd.take() {
            kill_tree(child, signal::Signal::SIGKILL, STOP_TIMEOUT, "epmd");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to `addr` from inside `ns` (1 s bound).
fn connect(ns: &str, addr: SocketAddr) -> Option<TcpStream> {
    netns::run_in(Some(ns), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
    })
    .ok()
    .flatten()
}

/// Whether an AMQP 0-9-1 server answers on 127.0.0.1:5672 in `ns`: it
/// answers the protocol header with a Connection.Start method frame.
fn amqp_handshake(ns: &str) -> bool {
    let Some(mut s) = connect(ns, ([127, 0, 0, 1], PORT).into()) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    // Frame type 1 (method), channel 0, size, class 10 method 10.
    let mut head = [0u8; 11];
    s.read_exact(&mut head).is_ok() && head[0] == 1 && head[7..11] == [0, 10, 0, 10]
}

/// Pids of the descendants of `pid`, by the ppid in /proc/*/stat.
fn descendants(pid: i32) -> Vec<i32> {
    let mut parent: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces and parens.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(pp) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for &(p, pp) in &parent {
            if pp == x && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// Makes a self-signed CA in `dir` (`ca.pem`, `ca.key`); its certificate.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (key, pem) = (dir.join("ca.key"), dir.join("ca.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &key.display().to_string(),
        "-out",
        &pem.display().to_string(),
    ]);
    pem
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether process `pid` is gone (or only a zombie left for its parent).
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Sends `sig` to `child` and, if it does not end within `timeout`, SIGKILL;
/// then SIGKILL to what it had started, by pid, and reaps the child.
pub(crate) fn kill_tree(mut child: Child, sig: signal::Signal, timeout: Duration, what: &str) {
    let pid = child.id() as i32;
    let kids = descendants(pid);
    let _ = signal::kill(Pid::from_raw(pid), sig);
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= deadline => {
                eprintln!("[{what} {pid}] still there {timeout:?} after {sig}; killing it");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
        }
    }
    for k in kids {
        if !gone(k) {
            let _ = signal::kill(Pid::from_raw(k), signal::Signal::SIGKILL);
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A network namespace of its own for a test (`xrt-<tag>-<what>`, `lo`
/// up), deleted on drop; for tests that need no [`crate::Rig`].
pub struct Netns(pub String);

impl Netns {
    pub fn new(what: &str) -> Netns {
        let name = format!("xrt-{}-{what}", names::tag());
        netns::create(&name).unwrap_or_else(|e| panic!("creating {name}: {e:#}"));
        let ns = Netns(name);
        crate::ip(&ns.0, "link set lo up").expect("lo up");
        ns
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = netns::delete(&self.0) {
            eprintln!("deleting {}: {e:#}", self.0);
        }
    }
}
