//! A test's whole world: a node namespace (where xrouter runs and the tap
//! devices and bridges live), host namespaces plugged into the bridges, the
//! routers file, the node config, and the daemon. Everything is torn down in
//! Drop, also after a panic. Nothing is ever created in the root namespace.

use std::{
    collections::BTreeSet,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use nix::{sys::signal, unistd::Pid};
use router_user::{
    backend::netns,
    config::node::Dataplane,
    fixtures::{Network, RouterSpec, article, ids as names, routers_json},
};
use serde_json::Value;

use crate::cmd::{self, Out};

/// How the rig plugs router ports and hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Plugging {
    /// Linux bridges `brq<network>` (xrouter's `linuxbridge`).
    #[default]
    LinuxBridge,
    /// A private Open vSwitch's integration bridge (`openvswitch`).
    Ovs,
}

thread_local! {
    static PLUGGING: std::cell::Cell<Plugging> = const { std::cell::Cell::new(Plugging::LinuxBridge) };
}

/// Makes every [`Rig`] this thread creates from now on plug as `p` (each
/// test runs in a thread of its own).
pub fn set_plugging(p: Plugging) {
    PLUGGING.with(|c| c.set(p));
}

/// How long the daemon may take for its first apply.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for one `xrouter` CLI call.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(15);

/// The xrouter binary: `$XROUTER_BIN`, else `target/<profile>/xrouter` next
/// to the test executable's `deps/` directory.
pub fn xrouter_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XROUTER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps")
        .join("xrouter")
}

fn require_bin() -> PathBuf {
    let bin = xrouter_bin();
    assert!(
        bin.is_file(),
        "xrouter binary not found at {} (set XROUTER_BIN, or run `cargo build -p router-user` first; \
         `cargo xtask test` does both)",
        bin.display()
    );
    bin
}

/// A unique scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("xrt-{tag}"));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `xrouter check --routers FILE` on `text` (no namespaces involved).
pub fn xrouter_check(text: &str) -> Out {
    let bin = require_bin();
    let dir = TempDir::new(&names::tag());
    let file = dir.path().join("routers.json");
    std::fs::write(&file, text).expect("writing routers file");
    let mut c = Command::new(bin);
    c.arg("check").arg("--routers").arg(&file);
    cmd::run(&mut c, CLI_TIMEOUT).expect("running xrouter check")
}

/// `xrouter ARGS` outside any namespace of a rig (for commands that build
/// nothing: `check`, argument errors).
pub fn xrouter_plain<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Out {
    let mut c = Command::new(require_bin());
    c.args(args);
    cmd::run(&mut c, CLI_TIMEOUT).expect("running xrouter")
}

/// A host: a namespace with `eth0` plugged into a bridge of the node.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address (without prefix).
    pub ip: String,
    /// The veth end in the node namespace.
    pub node_dev: String,
}

impl Host {
    /// `ip ARGS` inside the host; panics on failure.
    pub fn ip(&self, args: &str) -> String {
        cmd::ip(&self.ns, args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Turns the offloads a virtio NIC or veth has by default (checksum,
    /// TSO/GSO, GRO) on or off on eth0.
    pub fn offloads(&self, on: bool) {
        let v = if on { "on" } else { "off" };
        let out = cmd::exec(
            &self.ns,
            "ethtool",
            &["-K", "eth0", "tx", v, "sg", v, "tso", v, "gso", v, "gro", v],
            cmd::CMD_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(out.success(), "ethtool: {}", out.describe());
    }

    /// Sets a sysctl inside the host; panics on failure.
    pub fn sysctl(&self, key: &str, value: &str) {
        netns::sysctl(&self.ns, key, value).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// How the daemon enters the node namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// The network namespace alone, as `nsenter --net=/run/netns/NODE`.
    Nsenter,
    /// `ip netns exec NODE`: a mount namespace of its own too, with /sys
    /// mounted anew.
    IpNetnsExec,
}

/// One test's topology and daemon.
pub struct Rig {
    pub plane: Dataplane,
    pub tag: String,
    /// The node namespace: taps, bridges, host veth ends; xrouter runs here.
    pub node: String,
    /// The daemon's state_dir, also holding the routers file, the node
    /// config and the daemon's log.
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub networks: Vec<Network>,
    /// What the next write of the routers file contains.
    pub routers: Vec<RouterSpec>,
    pub send_garp: bool,
    /// The node config's `conntrack_size`.
    pub conntrack_size: u32,
    /// The node config's `new_connection_rate` (None: the default).
    pub new_connection_rate: Option<u32>,
    /// More lines for the node config (e.g. metadata proxy settings).
    pub extra_config: Vec<String>,
    /// More environment for the daemon (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// A command the daemon is started through (e.g. `setpriv` with
    /// fewer capabilities), the daemon's command line appended.
    pub wrapper: Vec<String>,
    pub hosts: Vec<Host>,
    namespaces: Vec<String>,
    router_ids: BTreeSet<String>,
    daemon: Option<Child>,
    started: bool,
    /// Agent mode: the broker and the stand-in neutron-server, in the node
    /// namespace.
    pub broker: Option<crate::Broker>,
    pub neutron: Option<crate::NeutronServer>,
    /// How ports are plugged (from [`set_plugging`] when made).
    pub plugging: Plugging,
    /// The private OVS (OVS plugging).
    pub ovs: Option<crate::ovs::Ovs>,
}

impl Rig {
    /// An empty world: the node namespace and the article's networks (`ext`
    /// 192.168.1.0/24, `net1` 81.1.180.0/24, `net2` 91.1.180.0/24) and router,
    /// not started. Mutate `routers` / `router_mut()`, then [`Rig::start`].
    pub fn new(plane: Dataplane) -> Rig {
        let tag = names::tag();
        let node = format!("xrt-{tag}-node");
        let dir = std::env::temp_dir().join(format!("xrt-{tag}"));
        let mut rig = Rig {
            plane,
            tag: tag.clone(),
            node: node.clone(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xrt-{tag}")),
            dir: dir.clone(),
            networks: vec![],
            routers: vec![],
            send_garp: true,
            conntrack_size: 16384,
            new_connection_rate: None,
            extra_config: vec![],
            env: vec![],
            wrapper: vec![],
            hosts: vec![],
            namespaces: vec![],
            router_ids: BTreeSet::new(),
            daemon: None,
            started: false,
            broker: None,
            neutron: None,
            plugging: PLUGGING.with(|c| c.get()),
            ovs: None,
        };
        std::fs::create_dir_all(&dir).expect("creating the state dir");
        netns::create(&node).unwrap_or_else(|e| panic!("creating {node}: {e:#}"));
        rig.namespaces.push(node.clone());
        cmd::ip(&node, "link set lo up").expect("lo up in the node namespace");
        if rig.plugging == Plugging::Ovs {
            rig.ovs = Some(
                crate::ovs::Ovs::start(&node, &dir.join("ovs"))
                    .unwrap_or_else(|e| panic!("starting OVS in {node}: {e:#}")),
            );
        }
        let ext = rig.add_network("ext", article::EXT, Some(article::EXT_GW));
        let net1 = rig.add_network("net1", article::NET1, Some(article::QR1));
        let net2 = rig.add_network("net2", article::NET2, Some(article::QR2));
        rig.routers
            .push(RouterSpec::article(&tag, &ext, &net1, &net2));
        rig
    }

    /// The article's world, running: the router, `vm1` 81.1.180.12 on net1,
    /// `vm2` 91.1.180.14 on net2 (it has floating IP 192.168.1.104), `ext`
    /// 192.168.1.15 on the external network.
    pub fn article(plane: Dataplane) -> Rig {
        let mut rig = Rig::new(plane);
        rig.start();
        rig.article_hosts(&[]);
        rig
    }

    /// Adds the article's three hosts; `ext_routes` go to the external host.
    pub fn article_hosts(&mut self, ext_routes: &[(&str, &str)]) {
        self.vm("vm1", "net1", &format!("{}/24", article::VM1), article::QR1);
        self.vm("vm2", "net2", &format!("{}/24", article::VM2), article::QR2);
        self.external("ext", &format!("{}/24", article::EXT_HOST), ext_routes);
    }

    /// Declares a network (not yet used by any router).
    pub fn add_network(&mut self, name: &str, cidr: &str, gateway_ip: Option<&str>) -> Network {
        let n = Network::new(name, cidr, gateway_ip);
        self.networks.push(n.clone());
        n
    }

    pub fn network(&self, name: &str) -> &Network {
        self.networks
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no network {name}"))
    }

    /// The first router.
    pub fn router(&self) -> &RouterSpec {
        &self.routers[0]
    }

    /// The device of the router's port on network `net` (`qr-...`), or its
    /// gateway port (`qg-...`) for any other name.
    pub fn port_dev(&self, net: &str) -> String {
        let r = self.router();
        r.interfaces
            .iter()
            .find(|p| p.network.name == net)
            .map(|p| p.qr())
            .unwrap_or_else(|| r.gateway.as_ref().unwrap().qg())
    }

    /// Takes the gateway off the external subnet: the router gets no
    /// default route (packets to elsewhere are the kernel's: no-route).
    pub fn without_default_route(&mut self) {
        self.router_mut()
            .gateway
            .as_mut()
            .unwrap()
            .network
            .gateway_ip = None;
    }

    pub fn router_mut(&mut self) -> &mut RouterSpec {
        &mut self.routers[0]
    }

    /// The first router's namespace.
    pub fn router_ns(&self) -> String {
        self.router().namespace()
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        self.host(name).ns.clone()
    }

    pub fn routers_path(&self) -> PathBuf {
        self.dir.join("routers.json")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("xrouter.sock")
    }

    /// Where the metadata proxy finds the metadata agent.
    pub fn metadata_socket(&self) -> PathBuf {
        self.dir.join("metadata_proxy")
    }

    fn write_config(&self) {
        let mut text = format!(
            "state_dir = \"{}\"\npin_dir = \"{}\"\nresync_interval = 1\nconntrack_size = {}\ndataplane = \"{}\"\nsend_garp = {}\n",
            self.dir.display(),
            self.pin_dir.display(),
            self.conntrack_size,
            self.plane,
            self.send_garp
        );
        if let Some(r) = self.new_connection_rate {
            text += &format!("new_connection_rate = {r}\n");
        }
        if let Some(o) = &self.ovs {
            text += &format!(
                "interface_driver = \"openvswitch\"\novs_integration_bridge = \"{}\"\novsdb_connection = \"{}\"\n",
                crate::ovs::BRIDGE,
                o.db()
            );
        }
        // The metadata agent's socket is the test's own.
        text += &format!(
            "metadata_proxy_socket = \"{}\"\n",
            self.metadata_socket().display()
        );
        for l in &self.extra_config {
            text += l;
            text += "\n";
        }
        std::fs::write(self.config_path(), text).expect("writing the node config");
    }

    /// Writes `routers` to the routers file.
    pub fn write_routers(&mut self) {
        for r in &self.routers {
            self.router_ids.insert(r.id.clone());
        }
        let text = serde_json::to_string_pretty(&routers_json(&self.routers)).unwrap();
        self.write_routers_text(&text);
    }

    /// Writes `text` as the routers file (atomically).
    pub fn write_routers_text(&self, text: &str) {
        let tmp = self.dir.join("routers.json.tmp");
        std::fs::write(&tmp, text).expect("writing the routers file");
        std::fs::rename(&tmp, self.routers_path()).expect("renaming the routers file");
    }

    /// Writes the files and starts `xrouter run` in the node namespace;
    /// returns once its control socket exists (first apply done).
    pub fn start(&mut self) {
        self.start_with(Launch::Nsenter)
    }

    /// [`Rig::start`], the daemon entering the node namespace as `how` says.
    pub fn start_with(&mut self, how: Launch) {
        self.write_config();
        self.write_routers();
        self.spawn(how, &self.run_args());
        self.bind_ovs();
    }

    /// `xrouter run` with the rig's routers file and config.
    fn run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--routers".into(),
            self.routers_path().display().to_string(),
            "--config".into(),
            self.config_arg(),
        ]
    }

    /// OVS plugging: the VLAN tag of network `id` (one per network).
    pub fn vlan_of(&self, network_id: &str) -> u16 {
        let mut ids: Vec<&str> = self.networks.iter().map(|n| n.id.as_str()).collect();
        for r in &self.routers {
            for p in r.interfaces.iter().chain(r.gateway.as_ref()) {
                if !ids.contains(&p.network.id.as_str()) {
                    ids.push(&p.network.id);
                }
            }
        }
        let i = ids
            .iter()
            .position(|i| *i == network_id)
            .unwrap_or(ids.len());
        100 + i as u16
    }

    /// OVS plugging: plays the OVS agent, once: every router port xrouter
    /// plugged (found by its `iface-id`) gets its network's VLAN tag.
    /// Returns the port IDs not (yet) on the bridge. Nothing without OVS.
    pub fn bind_ovs(&self) -> Vec<String> {
        let Some(o) = &self.ovs else {
            return vec![];
        };
        let tags = self
            .routers
            .iter()
            .flat_map(|r| r.interfaces.iter().chain(r.gateway.as_ref()))
            .map(|p| (p.id.clone(), self.vlan_of(&p.network.id)))
            .collect();
        o.bind(&tags)
            .unwrap_or_else(|e| panic!("tagging router ports: {e:#}"))
    }

    /// The agent's host name (`[DEFAULT] host`).
    pub fn agent_host(&self) -> String {
        format!("xrt-{}", self.tag)
    }

    /// Agent mode: starts a broker and the stand-in neutron-server in the
    /// node namespace (serving `routers`), writes neutron.conf and
    /// l3_agent.ini (node settings in its `[xrouter]` section) and starts
    /// `xrouter agent` with them; returns once its control socket exists
    /// (the routers come after: wait for them).
    pub fn start_agent(&mut self) {
        if self.broker.is_none() {
            self.broker = Some(crate::Broker::start(&self.node));
        }
        if self.neutron.is_none() {
            let dir = self.dir.join("neutron");
            std::fs::create_dir_all(&dir).expect("creating the server's dir");
            self.neutron = Some(crate::NeutronServer::start(
                &self.node,
                self.broker.as_ref().unwrap(),
                crate::neutron::EXCHANGE,
                &dir,
            ));
        }
        self.write_config();
        self.write_routers();
        self.serve_routers();
        // A cluster URL whose first broker is down (nothing listens on
        // 5673): the agent must go on to the next.
        let url = self.broker.as_ref().unwrap().url().replacen(
            "127.0.0.1:",
            "127.0.0.1:5673,127.0.0.1:",
            1,
        );
        std::fs::write(
            self.dir.join("neutron.conf"),
            format!(
                "[DEFAULT]\n# as a deployment writes it\ntransport_url = {url}\nhost = {}\n\
                 rpc_response_timeout = 10\ncore_plugin = ml2\n\n[oslo_messaging_rabbit]\n\
                 rabbit_transient_queues_ttl = 600\n",
                self.agent_host()
            ),
        )
        .expect("writing neutron.conf");
        // The node config is given again as [xrouter]: the agent reads it
        // from there, `show` and `cleanup` from node.toml.
        // Plugging is set with Neutron's own options.
        let node = std::fs::read_to_string(self.config_path()).unwrap();
        let plugging = [
            "interface_driver",
            "ovs_integration_bridge",
            "ovsdb_connection",
        ];
        let xr: String = node
            .lines()
            .filter(|l| !plugging.iter().any(|k| l.starts_with(k)))
            .map(|l| l.replace('"', ""))
            .map(|l| format!("{l}\n"))
            .collect();
        let neutron_plugging = match &self.ovs {
            None => "[DEFAULT]\ninterface_driver = linuxbridge\n".to_string(),
            Some(o) => format!(
                "[DEFAULT]\ninterface_driver = openvswitch\n\n[OVS]\nintegration_bridge = {}\n\
                 ovsdb_connection = {}\n",
                crate::ovs::BRIDGE,
                o.db()
            ),
        };
        std::fs::write(
            self.dir.join("l3_agent.ini"),
            format!("{neutron_plugging}\n[AGENT]\nreport_interval = 1\n\n[xrouter]\n{xr}"),
        )
        .expect("writing l3_agent.ini");
        let args: Vec<String> = vec![
            "agent".into(),
            "--config-file".into(),
            self.dir.join("neutron.conf").display().to_string(),
            "--config-file".into(),
            self.dir.join("l3_agent.ini").display().to_string(),
        ];
        self.spawn(Launch::Nsenter, &args);
    }

    /// The stand-in neutron-server (agent mode).
    pub fn server(&self) -> &crate::NeutronServer {
        self.neutron
            .as_ref()
            .expect("agent mode: no neutron-server")
    }

    /// Agent mode: makes the server serve `routers` (not notified).
    pub fn serve_routers(&mut self) {
        for r in &self.routers {
            self.router_ids.insert(r.id.clone());
        }
        let v = routers_json(&self.routers);
        self.server().set_routers(&v);
    }

    /// [`Rig::start`] without waiting for the first apply to end.
    pub fn start_unready(&mut self) {
        self.write_config();
        self.write_routers();
        self.launch(Launch::Nsenter, &self.run_args());
    }

    fn spawn(&mut self, how: Launch, args: &[String]) {
        self.launch(how, args);
        let t0 = Instant::now();
        loop {
            if self.socket_path().exists() {
                break;
            }
            if let Some(st) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                self.daemon = None;
                panic!(
                    "xrouter {} exited ({st}) before creating its socket; log:\n{}",
                    args[0],
                    self.daemon_log()
                );
            }
            if t0.elapsed() > START_TIMEOUT {
                panic!(
                    "xrouter {} did not create {} within {START_TIMEOUT:?}; log:\n{}",
                    args[0],
                    self.socket_path().display(),
                    self.daemon_log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        println!("[rig {}] daemon up in {:?}", self.tag, t0.elapsed());
    }

    /// Spawns the daemon with `args`, entering the node namespace as `how`
    /// says; its output goes to the log.
    fn launch(&mut self, how: Launch, args: &[String]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let bin = require_bin();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("creating the daemon log");
        let mut c = match how {
            Launch::Nsenter if !self.wrapper.is_empty() => {
                let mut c = Command::new(&self.wrapper[0]);
                c.args(&self.wrapper[1..]).arg(bin);
                c
            }
            Launch::Nsenter => Command::new(bin),
            Launch::IpNetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.node]).arg(bin);
                c
            }
        };
        c.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            c.env("RUST_LOG", "debug");
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        if how == Launch::Nsenter {
            netns::command_in(&self.node, &mut c).expect("node namespace");
        }
        self.started = true;
        self.daemon = Some(c.spawn().expect("spawning xrouter"));
    }

    /// The running daemon's process id.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Whether the daemon is still running.
    pub fn daemon_alive(&mut self) -> bool {
        match self.daemon.as_mut() {
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    /// Stops the daemon: SIGTERM, then SIGKILL after 5 s. Its exit status.
    pub fn stop_daemon(&mut self) -> Option<ExitStatus> {
        self.stop_daemon_within(Duration::from_secs(5))
    }

    /// Stops the daemon: SIGTERM, then SIGKILL after `patience`.
    pub fn stop_daemon_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        let mut child = self.daemon.take()?;
        let _ = signal::kill(Pid::from_raw(child.id() as i32), signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < patience {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "[rig {}] daemon ignored SIGTERM for {patience:?}; killing it",
            self.tag
        );
        let _ = child.kill();
        child.wait().ok()
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `xrouter ARGS` in the node namespace (bounded).
    pub fn xrouter(&self, args: &[&str]) -> Out {
        let mut c = Command::new(require_bin());
        c.args(args);
        netns::command_in(&self.node, &mut c).expect("node namespace");
        cmd::run(&mut c, CLI_TIMEOUT).expect("running xrouter")
    }

    fn config_arg(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Writes `routers` and runs `xrouter reload`; the Out as it is.
    pub fn reload(&mut self) -> Out {
        self.write_routers();
        let cfg = self.config_arg();
        let out = self.xrouter(&["reload", "--config", &cfg]);
        self.bind_ovs();
        out
    }

    /// Writes `text` as the routers file and runs `xrouter reload`.
    pub fn reload_text(&self, text: &str) -> Out {
        self.write_routers_text(text);
        let cfg = self.config_arg();
        let out = self.xrouter(&["reload", "--config", &cfg]);
        self.bind_ovs();
        out
    }

    /// [`Rig::reload`], panicking unless it succeeded; its stdout.
    pub fn apply(&mut self) -> String {
        let out = self.reload();
        if !out.success() {
            panic!(
                "reload failed: {}\ndaemon log:\n{}",
                out.describe(),
                self.daemon_log()
            );
        }
        out.stdout
    }

    /// `xrouter show --json`, parsed.
    pub fn show(&self) -> Value {
        let cfg = self.config_arg();
        let out = self.xrouter(&["show", "--json", "--config", &cfg]);
        let text = out
            .clone()
            .ok()
            .unwrap_or_else(|e| panic!("xrouter show failed: {e:#}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("xrouter show --json: {e}: {text}"))
    }

    /// MTU of the router port on network `net`, if any router has one.
    fn network_mtu(&self, net: &str) -> u32 {
        for r in &self.routers {
            for p in r.interfaces.iter().chain(r.gateway.as_ref()) {
                if p.network.name == net {
                    return p.mtu;
                }
            }
        }
        1500
    }

    /// A VM on network `net`: `cidr` ("81.1.180.12/24"), default route via
    /// `gateway`.
    pub fn vm(&mut self, name: &str, net: &str, cidr: &str, gateway: &str) -> Host {
        let br = self.network(net).bridge();
        let mtu = self.network_mtu(net);
        self.host_on_bridge(name, &br, mtu, cidr, Some(gateway), &[])
    }

    /// A host on the external network `ext`, without a default route, with
    /// `routes` (destination, via).
    pub fn external(&mut self, name: &str, cidr: &str, routes: &[(&str, &str)]) -> Host {
        let br = self.network("ext").bridge();
        let mtu = self.network_mtu("ext");
        self.host_on_bridge(name, &br, mtu, cidr, None, routes)
    }

    /// A host whose eth0 is plugged into `bridge` of the node namespace
    /// (waiting, bounded, for the bridge to exist).
    pub fn host_on_bridge(
        &mut self,
        name: &str,
        bridge: &str,
        mtu: u32,
        cidr: &str,
        gateway: Option<&str>,
        routes: &[(&str, &str)],
    ) -> Host {
        let ns = format!("xrt-{}-{name}", self.tag);
        let node_dev: String = format!("h{}{name}", self.hosts.len())
            .chars()
            .take(15)
            .collect();
        let host = Host {
            name: name.to_string(),
            ns: ns.clone(),
            ip: cidr.split('/').next().unwrap().to_string(),
            node_dev: node_dev.clone(),
        };
        if let Err(e) = self.try_host(&host, bridge, mtu, cidr, gateway, routes) {
            panic!(
                "setting up host {name}: {e:#}\ndaemon log:\n{}",
                self.daemon_log()
            );
        }
        self.hosts.push(host.clone());
        host
    }

    fn try_host(
        &mut self,
        h: &Host,
        bridge: &str,
        mtu: u32,
        cidr: &str,
        gateway: Option<&str>,
        routes: &[(&str, &str)],
    ) -> Result<()> {
        netns::create(&h.ns)?;
        self.namespaces.push(h.ns.clone());
        let node = self.node.clone();
        if self.ovs.is_none() {
            let found = cmd::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                crate::probe::link_exists(&node, bridge)
            });
            anyhow::ensure!(
                found,
                "bridge {bridge} did not appear in {node} within 10 s"
            );
        }
        cmd::ip(
            &node,
            &format!(
                "link add {} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {}",
                h.node_dev, h.ns
            ),
        )?;
        if let Some(o) = &self.ovs {
            // The host's network is the one whose Linux bridge `bridge` is.
            let net = self
                .networks
                .iter()
                .find(|n| n.bridge() == bridge)
                .map(|n| n.id.clone())
                .unwrap_or_else(|| bridge.to_string());
            o.add_host_port(&h.node_dev, self.vlan_of(&net))?;
            // OVS's userspace datapath reads and writes the node end with
            // AF_PACKET: it takes neither GSO super-frames nor partial
            // checksums, so neither end may hand it one.
            let o = cmd::exec(
                &node,
                "ethtool",
                &["-K", &h.node_dev, "tx", "off", "tso", "off", "gso", "off"],
                cmd::CMD_TIMEOUT,
            )?;
            anyhow::ensure!(o.success(), "ethtool: {}", o.describe());
            cmd::ip(&node, &format!("link set {} up", h.node_dev))?;
        } else {
            cmd::ip(
                &node,
                &format!("link set {} master {bridge} up", h.node_dev),
            )?;
        }
        netns::sysctl(&h.ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        netns::sysctl(&h.ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
        cmd::ip(&h.ns, "link set lo up")?;
        cmd::ip(&h.ns, &format!("addr add {cidr} dev eth0"))?;
        cmd::ip(&h.ns, "link set eth0 up")?;
        if self.ovs.is_some() {
            let o = cmd::exec(
                &h.ns,
                "ethtool",
                &["-K", "eth0", "tx", "off", "tso", "off", "gso", "off"],
                cmd::CMD_TIMEOUT,
            )?;
            anyhow::ensure!(o.success(), "ethtool: {}", o.describe());
        } else if self.plane == Dataplane::Xdp {
            // Complete checksums, as from a NIC: XDP forwards them itself
            // (partial ones it hands to TC, which the tc plane exercises).
            let o = cmd::exec(
                &h.ns,
                "ethtool",
                &["-K", "eth0", "tx", "off"],
                cmd::CMD_TIMEOUT,
            )?;
            anyhow::ensure!(o.success(), "ethtool: {}", o.describe());
        }
        if let Some(gw) = gateway {
            cmd::ip(&h.ns, &format!("route add default via {gw}"))?;
        }
        for (dst, via) in routes {
            cmd::ip(&h.ns, &format!("route add {dst} via {via}"))?;
        }
        Ok(())
    }

    /// A Linux bridge made by hand in the node namespace (for rig self-tests).
    pub fn make_bridge(&self, name: &str) {
        cmd::ip(&self.node, &format!("link add {name} type bridge"))
            .and_then(|_| cmd::ip(&self.node, &format!("link set {name} up")))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// `ip ARGS` in the first router's namespace; panics on failure.
    pub fn router_ip(&self, args: &str) -> String {
        cmd::ip(&self.router_ns(), args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The kernel's NAT and filter rules in the first router's namespace:
    /// `iptables-save`, then `nft list ruleset` (where the eBPF planes keep
    /// the floating IPs' kernel translation).
    pub fn router_kernel_rules(&self) -> String {
        let ns = self.router_ns();
        let mut s = cmd::sh(&ns, "iptables-save", &[]).unwrap_or_else(|e| panic!("{e:#}"));
        s += &cmd::sh(&ns, "nft", &["list", "ruleset"]).unwrap_or_else(|e| panic!("{e:#}"));
        s
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        let status = self.stop_daemon();
        if panicking && self.started {
            let log = self.daemon_log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!(
                "[rig {}] daemon exit: {status:?}; last {} lines of its log:\n{}",
                self.tag,
                tail.len(),
                tail.join("\n")
            );
        }
        // The stand-in server and the broker live in the node namespace:
        // stopped (by pid) before it goes.
        drop(self.neutron.take());
        drop(self.broker.take());
        if self.started && xrouter_bin().is_file() {
            let cfg = self.config_arg();
            let out = self.xrouter(&["cleanup", "--config", &cfg]);
            if !out.success() {
                eprintln!("[rig {}] cleanup failed: {}", self.tag, out.describe());
            }
        }
        // After cleanup, which removes the router ports from OVS.
        if let Some(mut o) = self.ovs.take() {
            o.stop();
        }
        for id in &self.router_ids {
            let ns = format!("qrouter-{id}");
            if let Err(e) = netns::delete(&ns) {
                eprintln!("[rig {}] deleting {ns}: {e:#}", self.tag);
            }
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                eprintln!("[rig {}] deleting {ns}: {e:#}", self.tag);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

impl Rig {
    /// On the eBPF planes, proves the fast path carried the traffic so far:
    /// the BPF counters (read through `xrouter show stats --json`, as an
    /// operator would) show forwarded packets, TC-only mode forwarded none
    /// by XDP, and the router namespace's kernel conntrack holds no NAT
    /// entry. Does nothing on the iptables plane.
    pub fn assert_fast_path(&self, c: &mut crate::Checks) {
        self.assert_fast_path_since(c, &Value::Null)
    }

    /// [`Rig::assert_fast_path`] for the traffic since `base`, the router's
    /// counters as [`Rig::stats_json`] read them earlier (they outlive a
    /// restart, also one onto another plane).
    pub fn assert_fast_path_since(&self, c: &mut crate::Checks, base: &Value) {
        if self.plane == Dataplane::Iptables {
            return;
        }
        let out = self.xrouter(&["--config", &self.config_arg(), "show", "stats", "--json"]);
        if !c.ok(out.success(), "xrouter show stats --json", out.describe()) {
            return;
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        let id = &self.router().id;
        let stats = &v[id];
        let was = |k: &str| base[k]["packets"].as_u64().unwrap_or(0);
        let n = |k: &str| {
            stats[k]["packets"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(was(k))
        };
        c.ok(
            n("forwarded/xdp") + n("forwarded/tc") > 0,
            "packets forwarded by the BPF programs",
            &out.stdout,
        );
        if self.plane == Dataplane::Tc {
            c.eq("nothing forwarded by XDP in tc mode", n("forwarded/xdp"), 0);
        }
        if self.plane == Dataplane::Xdp && self.hosts.iter().any(|h| h.name == "vm1") {
            // XDP forwards once the next hop's MAC is mirrored into the map
            // (every second): a short ping train must see it happen.
            let dst = crate::article::EXT_HOST;
            let p = crate::ping(&self.ns("vm1"), dst, &["-c", "8", "-i", "0.2"]);
            let out = self.xrouter(&["--config", &self.config_arg(), "show", "stats", "--json"]);
            let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            let xdp = v[id]["forwarded/xdp"]["packets"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(was("forwarded/xdp"));
            // The ping only makes traffic (it may have no way out, e.g. once
            // the gateway is gone); what counts is that XDP forwarded.
            c.ok(
                xdp > 0,
                "XDP itself forwarded packets",
                (p.describe(), &out.stdout),
            );
        }
        let nat: Vec<String> = ["--src-nat", "--dst-nat"]
            .iter()
            .flat_map(|f| {
                cmd::exec(&self.router_ns(), "conntrack", &["-L", f], cmd::CMD_TIMEOUT)
                    .map(|o| o.stdout.lines().map(str::to_string).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .filter(|l| !l.trim().is_empty())
            // Traffic the router itself originates (e.g. hairpin from the
            // namespace) is the kernel's by design: Neutron's OUTPUT rules.
            .filter(|l| {
                let r = self.router();
                let own: Vec<String> = r
                    .interfaces
                    .iter()
                    .chain(r.gateway.as_ref())
                    .map(|p| format!("src={} ", p.ip))
                    .collect();
                let first_src = l
                    .split_whitespace()
                    .find(|w| w.starts_with("src="))
                    .map(|w| format!("{w} "));
                !first_src.is_some_and(|f| own.contains(&f))
            })
            .collect();
        c.ok(
            nat.is_empty(),
            "kernel conntrack of the router holds no NAT entry for forwarded traffic",
            &nat,
        );
    }
}

impl Rig {
    /// `xrouter show stats --json` of the first router (eBPF planes).
    pub fn stats_json(&self) -> Value {
        let out = self.xrouter(&["--config", &self.config_arg(), "show", "stats", "--json"]);
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        v[&self.router().id].clone()
    }

    /// The first router's counter `name` (e.g. `drop/other-host`): packets.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats_json()[name]["packets"].as_u64().unwrap_or(0)
    }

    /// The first router's connection event `name`: count.
    pub fn stat_count(&self, name: &str) -> u64 {
        self.stats_json()[name]["count"].as_u64().unwrap_or(0)
    }

    /// `xrouter show stats` as printed, for messages.
    pub fn stats_text(&self) -> String {
        self.xrouter(&["--config", &self.config_arg(), "show", "stats"])
            .stdout
    }

    /// `n` SYNs to the floating IP from spoofed sources (100.64.0.0/10),
    /// sent by host `ext` straight to the gateway port's MAC. Returns how
    /// many were sent.
    pub fn syn_flood(&self, n: u32) -> usize {
        let qg_mac = crate::frames::mac_of(&self.router_ns(), &self.router().qg()).unwrap();
        let ext_mac = crate::frames::mac_of(&self.ns("ext"), "eth0").unwrap();
        let fip: std::net::Ipv4Addr = crate::article::FIP.parse().unwrap();
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let src = std::net::Ipv4Addr::new(
                    100,
                    64 + ((i >> 16) & 63) as u8,
                    (i >> 8) as u8,
                    i as u8,
                );
                crate::frames::tcp(
                    (ext_mac, qg_mac),
                    src,
                    1024 + (i % 60000) as u16,
                    fip,
                    8080,
                    0x02,
                )
            })
            .collect();
        crate::frames::send(&self.ns("ext"), "eth0", &frames).unwrap_or(0)
    }

    /// `n` new UDP flows from host `from` to `to` (one datagram each, to
    /// ports 20000 and up). Returns how many were sent.
    pub fn udp_flows(&self, from: &str, to: &str, n: u16) -> usize {
        let sock = crate::probe::udp_socket(&self.ns(from)).expect("a UDP socket");
        let dst: std::net::Ipv4Addr = to.parse().unwrap();
        (0..n)
            .filter(|i| {
                sock.send_to(b"flow", std::net::SocketAddrV4::new(dst, 20000 + i))
                    .is_ok()
            })
            .count()
    }

    /// Connections to or from `addr` that the data plane tracks: the kernel
    /// conntrack of the router namespace, plus, on the eBPF planes, the BPF
    /// connection table as `xrouter show flows --json` lists it.
    pub fn connections_with(&self, addr: &str) -> Vec<String> {
        let mut out = crate::conntrack_with(&self.router_ns(), addr).unwrap_or_default();
        if self.plane != Dataplane::Iptables {
            let o = self.xrouter(&["--config", &self.config_arg(), "show", "flows", "--json"]);
            assert!(o.success(), "xrouter show flows: {}", o.describe());
            let v: Value = serde_json::from_str(&o.stdout).expect("show flows --json");
            let needle = format!("\"{addr}\"");
            for f in v[&self.router().id].as_array().into_iter().flatten() {
                let line = f.to_string();
                if line.contains(&needle) {
                    out.push(format!("bpf: {line}"));
                }
            }
        }
        out
    }
}

impl Rig {
    /// Whether floating IP `fip` is published on the gateway port, as each
    /// plane does it: a /32 on qg- (iptables; the kernel answers ARP for
    /// it), or an entry of the router's pinned `XR_FIP_REV` map (eBPF; the
    /// programs answer ARP for it, and qg- has no /32 of it).
    pub fn fip_published(&self, fip: &str) -> bool {
        let qg = self.router().qg();
        let on_qg = crate::addresses(&self.router_ns(), &qg)
            .unwrap_or_default()
            .contains(&format!("{fip}/32"));
        if self.plane == Dataplane::Iptables {
            return on_qg;
        }
        let path = self.pin_dir.join(&self.router().id).join("XR_FIP_REV");
        let mut c = Command::new("bpftool");
        c.args(["-j", "map", "dump", "pinned"]).arg(&path);
        let Ok(out) = cmd::run(&mut c, CLI_TIMEOUT) else {
            return false;
        };
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        let want: Vec<u64> = fip.split('.').filter_map(|o| o.parse().ok()).collect();
        let in_map = v.as_array().into_iter().flatten().any(|e| {
            let addr: Vec<u64> = e["formatted"]["key"]["addr"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect();
            addr == want
        });
        in_map && !on_qg
    }

    /// Removes floating IP `fip` from the data plane by hand, behind the
    /// daemon's back (the /32, or the BPF map entry).
    pub fn unpublish_fip_by_hand(&self, fip: &str) {
        if self.plane == Dataplane::Iptables {
            cmd::ip(
                &self.router_ns(),
                &format!("addr del {fip}/32 dev {}", self.router().qg()),
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            return;
        }
        let path = self.pin_dir.join(&self.router().id).join("XR_FIP_REV");
        let mut c = Command::new("bpftool");
        c.args(["map", "delete", "pinned"]).arg(&path).arg("key");
        c.args(fip.split('.'));
        let out = cmd::run(&mut c, CLI_TIMEOUT).expect("bpftool map delete");
        assert!(out.success(), "bpftool map delete: {}", out.describe());
    }
}
