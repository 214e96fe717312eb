//! A private Open vSwitch for one test: `ovsdb-server` with a fresh
//! database and `ovs-vswitchd`, both in the test's node namespace, every
//! file (database, sockets, pidfiles, logs) in the test's own directory, so
//! tests run in parallel. The integration bridge uses the userspace
//! datapath (`datapath_type=netdev`: this kernel has no openvswitch module)
//! with the NORMAL flow; its internal devices appear in the node namespace
//! only.
//!
//! The rig plays the OVS agent's part, outside xrouter's boundary: it puts
//! each network on a VLAN tag of its own (the router ports found by their
//! `iface-id`, the hosts it attaches), so networks stay apart on the
//! shared bridge. Both daemons are children of the test, stopped in Drop.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{sys::signal, unistd::Pid};
use router_user::backend::netns;
use serde_json::Value;

use crate::cmd;

/// The integration bridge's name in every test.
pub const BRIDGE: &str = "br-int";
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// A running private OVS.
pub struct Ovs {
    pub dir: PathBuf,
    pub node: String,
    daemons: Vec<(&'static str, Child)>,
}

impl Ovs {
    /// Starts OVS in namespace `node` with its files in `dir` (made), and
    /// creates the integration bridge.
    pub fn start(node: &str, dir: &Path) -> Result<Ovs> {
        std::fs::create_dir_all(dir)?;
        let mut ovs = Ovs {
            dir: dir.to_path_buf(),
            node: node.to_string(),
            daemons: vec![],
        };
        let db = dir.join("conf.db");
        let out = cmd::run(
            Command::new("ovsdb-tool")
                .arg("create")
                .arg(&db)
                .arg(SCHEMA),
            cmd::CMD_TIMEOUT,
        )?;
        anyhow::ensure!(out.success(), "{}", out.describe());
        let sock = dir.join("db.sock");
        ovs.spawn(
            "ovsdb-server",
            &[
                db.display().to_string(),
                format!("--remote=punix:{}", sock.display()),
            ],
        )?;
        let t0 = Instant::now();
        while !sock.exists() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("ovsdb-server made no {} in 10 s", sock.display());
            }
            thread::sleep(Duration::from_millis(10));
        }
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.spawn("ovs-vswitchd", &[ovs.db()])?;
        // Waits (bounded by --timeout) for ovs-vswitchd to make the bridge.
        ovs.vsctl(&[
            "add-br",
            BRIDGE,
            "--",
            "set",
            "Bridge",
            BRIDGE,
            "datapath_type=netdev",
            "fail_mode=standalone",
        ])?;
        let out = cmd::run(
            Command::new("ovs-ofctl")
                .arg("add-flow")
                .arg(format!(
                    "unix:{}",
                    dir.join(format!("{BRIDGE}.mgmt")).display()
                ))
                .arg("priority=0,actions=NORMAL"),
            cmd::CMD_TIMEOUT,
        )?;
        anyhow::ensure!(out.success(), "{}", out.describe());
        cmd::ip(node, &format!("link set {BRIDGE} up"))?;
        Ok(ovs)
    }

    /// Starts daemon `name` in the node namespace with its own files.
    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<()> {
        let d = self.dir.display();
        let mut c = Command::new(name);
        c.args(args)
            .arg(format!("--pidfile={d}/{name}.pid"))
            .arg(format!("--unixctl={d}/{name}.ctl"))
            .arg(format!("--log-file={d}/{name}.log"))
            .args(["--no-chdir", "-vconsole:off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(var, &self.dir);
        }
        netns::command_in(&self.node, &mut c)?;
        let child = c.spawn().with_context(|| format!("starting {name}"))?;
        self.daemons.push((name, child));
        Ok(())
    }

    /// The `ovsdb_connection` of the node config.
    pub fn db(&self) -> String {
        format!("unix:{}", self.dir.join("db.sock").display())
    }

    /// `ovs-vsctl ARGS` against this OVS (bounded); its stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ovs-vsctl");
        c.arg(format!("--db={}", self.db()))
            .arg("--timeout=10")
            .args(args);
        cmd::run(&mut c, Duration::from_secs(15))?.ok()
    }

    /// Adds device `dev` of the node namespace as a port of the bridge on
    /// VLAN `tag` (a host's end).
    pub fn add_host_port(&self, dev: &str, tag: u16) -> Result<()> {
        self.vsctl(&["add-port", BRIDGE, dev, &format!("tag={tag}")])?;
        Ok(())
    }

    /// A static MAC entry: the bridge forwards frames to `mac` on VLAN
    /// `vlan` out of `port` only, never flooding them (flooding would
    /// also send each one to the bridge's own internal port, a trunk).
    pub fn fdb_add(&self, port: &str, vlan: u16, mac: &str) -> Result<()> {
        let mut c = Command::new("ovs-appctl");
        c.arg("-t").arg(self.dir.join("ovs-vswitchd.ctl")).args([
            "fdb/add",
            BRIDGE,
            port,
            &vlan.to_string(),
            mac,
        ]);
        cmd::run(&mut c, cmd::CMD_TIMEOUT)?.ok()?;
        Ok(())
    }

    /// Interface name -> its `external_ids`, for every Interface.
    pub fn interfaces(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let out = self.vsctl(&[
            "--format=json",
            "--columns=name,external_ids",
            "list",
            "Interface",
        ])?;
        let v: Value = serde_json::from_str(&out)?;
        let mut m = BTreeMap::new();
        for row in v["data"].as_array().into_iter().flatten() {
            let name = row[0].as_str().unwrap_or_default().to_string();
            let ids = row[1][1]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect();
            m.insert(name, ids);
        }
        Ok(m)
    }

    /// The names of the bridge's ports.
    pub fn ports(&self) -> Result<Vec<String>> {
        Ok(self
            .vsctl(&["list-ports", BRIDGE])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The OVS agent's part: the Interface of each port ID of `tags`
    /// (found by `iface-id`) gets its network's VLAN tag, out of the dead
    /// VLAN xrouter adds it on. Returns the port IDs not found.
    pub fn bind(&self, tags: &BTreeMap<String, u16>) -> Result<Vec<String>> {
        let ifaces = self.interfaces()?;
        let mut args: Vec<String> = vec![];
        let mut missing = vec![];
        for (port_id, tag) in tags {
            let Some((name, _)) = ifaces
                .iter()
                .find(|(_, ids)| ids.get("iface-id") == Some(port_id))
            else {
                missing.push(port_id.clone());
                continue;
            };
            let have = self.vsctl(&["get", "Port", name, "tag"])?;
            if have.trim() == tag.to_string() {
                continue;
            }
            for a in [
                "--".to_string(),
                "set".into(),
                "Port".into(),
                name.clone(),
                format!("tag={tag}"),
                "vlan_mode=access".into(),
                "trunks=[]".into(),
            ] {
                args.push(a);
            }
        }
        if !args.is_empty() {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            self.vsctl(&a)?;
        }
        Ok(missing)
    }

    /// Stops both daemons (SIGTERM, SIGKILL after 5 s).
    pub fn stop(&mut self) {
        for (name, mut child) in self.daemons.drain(..).rev() {
            let _ = signal::kill(Pid::from_raw(child.id() as i32), signal::Signal::SIGTERM);
            let t0 = Instant::now();
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(5) {
                    eprintln!("[ovs] {name} ignored SIGTERM for 5 s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        self.stop();
    }
}
