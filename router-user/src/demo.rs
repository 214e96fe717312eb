//! `xrouter demo`: the article's topology in a throwaway sandbox of
//! namespaces, its experiments, and what each showed.
//!
//! The sandbox: a node namespace where the daemon runs (bridges and taps
//! live there), the router built by xrouter from an embedded routers file,
//! two VMs and an external host attached to the bridges.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;

use router_common::counters::Outcome;

use crate::{
    backend::{
        netlink::{Nl, Via, WantRoute},
        netns,
    },
    config::node::Dataplane,
    fixtures::{Network, RouterSpec, article, routers_json},
    probe,
};

/// Prints a line of the demo's report; a closed standard output
/// (`xrouter demo | head`) drops it, and the demo goes on to remove its
/// sandbox.
macro_rules! say {
    ($($arg:tt)*) => { let _ = crate::outln!($($arg)*); };
}

/// The article's router: internal networks with MTU 1450 (VXLAN tenant
/// networks), the external one 1500; its ID starts with `tag`.
fn article_router(tag: &str) -> RouterSpec {
    let ext = Network::new("ext", article::EXT, Some(article::EXT_GW));
    let net1 = Network::new("net1", article::NET1, Some(article::QR1));
    let net2 = Network::new("net2", article::NET2, Some(article::QR2));
    let mut r = RouterSpec::article(tag, &ext, &net1, &net2);
    for p in &mut r.interfaces {
        p.mtu = 1450;
    }
    r
}

/// A host of the sandbox: namespace suffix, network (by its name in the
/// router spec), address, default gateway.
struct Host {
    name: &'static str,
    network: &'static str,
    addr: &'static str,
    gw: &'static str,
    mtu: u32,
}

const HOSTS: &[Host] = &[
    Host {
        name: "vm1",
        network: "net1",
        addr: "81.1.180.12/24",
        gw: "81.1.180.1",
        mtu: 1450,
    },
    Host {
        name: "vm2",
        network: "net2",
        addr: "91.1.180.14/24",
        gw: "91.1.180.1",
        mtu: 1450,
    },
    Host {
        name: "ext",
        network: "ext",
        addr: "192.168.1.15/24",
        gw: "192.168.1.1",
        mtu: 1500,
    },
];

/// The bridge host `h` plugs into: its network's.
fn bridge_of(router: &RouterSpec, h: &Host) -> String {
    router
        .gateway
        .iter()
        .chain(&router.interfaces)
        .find(|p| p.network.name == h.network)
        .map(|p| p.network.bridge())
        .unwrap_or_else(|| panic!("the router has no port on {}", h.network))
}

struct Sandbox {
    tag: String,
    router: RouterSpec,
    dir: PathBuf,
    daemon: Option<Child>,
    keep: bool,
}

impl Sandbox {
    fn ns(&self, name: &str) -> String {
        format!("xrdemo-{}-{name}", self.tag)
    }
    fn node(&self) -> String {
        self.ns("node")
    }
    fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    fn teardown(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = d.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Ok(exe) = std::env::current_exe() {
            let mut c = Command::new(exe);
            c.arg("--config")
                .arg(self.config())
                .arg("cleanup")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if netns::command_in(&self.node(), &mut c).is_ok() {
                let _ = c.status();
            }
        }
        for h in HOSTS {
            let _ = netns::delete(&self.ns(h.name));
        }
        let _ = netns::delete(&self.node());
        let _ = netns::delete(&self.router.namespace());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// Runs the demo.
pub async fn run(dataplane: Dataplane, keep: bool) -> Result<ExitCode> {
    let tag = format!("{:05x}", std::process::id() & 0xfffff);
    let dir = std::env::temp_dir().join(format!("xrouter-demo-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let mut sb = Sandbox {
        tag: tag.clone(),
        router: article_router(&tag),
        dir: dir.clone(),
        daemon: None,
        keep: false,
    };

    say!("xrouter demo: the article's router in a sandbox of namespaces (tag {tag})");
    std::fs::write(
        dir.join("routers.json"),
        serde_json::to_string_pretty(&routers_json(std::slice::from_ref(&sb.router)))?,
    )?;
    std::fs::write(
        sb.config(),
        format!(
            "state_dir = {:?}\npin_dir = \"/sys/fs/bpf/xrdemo-{tag}\"\ndataplane = \"{dataplane}\"\nresync_interval = 5\nconntrack_size = 65536\n",
            dir.join("state")
        ),
    )?;
    netns::create(&sb.node())?;
    // Loopback up, as on a node (a metrics endpoint on 127.0.0.1 answers).
    let node = Nl::open(Some(&sb.node())).await?;
    let lo = node
        .link("lo")
        .await?
        .context("no lo in the node namespace")?;
    node.set_up(lo.index).await?;

    // The daemon runs in the node namespace, exactly as in production.
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--config")
        .arg(sb.config())
        .arg("run")
        .arg("--routers")
        .arg(dir.join("routers.json"));
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    netns::command_in(&sb.node(), &mut cmd)?;
    sb.daemon = Some(cmd.spawn().context("starting the daemon")?);
    let sock = dir.join("state").join("xrouter.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Some(Ok(Some(st))) = sb.daemon.as_mut().map(|d| d.try_wait()) {
            let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
            bail!("the daemon exited ({st}):\n{log}");
        }
        if Instant::now() > deadline {
            bail!("the daemon did not come up within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let used = if log.contains("data plane: ") {
        log.lines()
            .find(|l| l.contains("data plane: "))
            .map(|l| l[l.find("data plane: ").unwrap()..].to_string())
    } else {
        None
    };
    say!(
        "router {} is up; {}",
        sb.router.namespace(),
        used.unwrap_or_else(|| format!("data plane: {dataplane}"))
    );

    for h in HOSTS {
        attach_host(&sb, h)
            .await
            .with_context(|| format!("attaching {}", h.name))?;
    }
    say!(
        "hosts: vm1 81.1.180.12, vm2 91.1.180.14 (floating IP 192.168.1.104), external 192.168.1.15\n"
    );

    let mut ok = true;
    let t = Duration::from_secs(3);
    let port = 7000;
    let sa = |ip: &str| SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port);

    let ext = probe::serve(&sb.ns("ext"), sa("0.0.0.0"), 4, Duration::from_secs(30))?;
    let vm2 = probe::serve(&sb.ns("vm2"), sa("0.0.0.0"), 4, Duration::from_secs(30))?;
    let mut report = |what: &str, expect: &str, got: Result<String>| {
        let (seen, good) = match got {
            Ok(s) => (s.clone(), s == expect),
            Err(e) => (format!("no answer ({e:#})"), false),
        };
        ok &= good;
        say!(
            "{} {what}\n    server saw {seen} (expected {expect})",
            if good { "[ok]  " } else { "[FAIL]" }
        );
    };
    report(
        "1. vm1 81.1.180.12 -> external 192.168.1.15: gateway SNAT",
        "192.168.1.110",
        probe::ask(&sb.ns("vm1"), sa("192.168.1.15"), t),
    );
    let got = probe::ask(&sb.ns("ext"), sa("192.168.1.104"), t);
    let reached = vm2.seen.recv_timeout(Duration::from_millis(500)).is_ok();
    report(
        "2. external -> floating IP 192.168.1.104: DNAT to 91.1.180.14, real client kept",
        "192.168.1.15",
        got.and_then(|s| {
            if reached {
                Ok(s)
            } else {
                bail!("answered, but not by vm2")
            }
        }),
    );
    report(
        "3. vm2 91.1.180.14 -> external: seen as its floating IP",
        "192.168.1.104",
        probe::ask(&sb.ns("vm2"), sa("192.168.1.15"), t),
    );
    report(
        "4. vm1 -> vm2 (east-west): not NATed",
        "81.1.180.12",
        probe::ask(&sb.ns("vm1"), sa("91.1.180.14"), t),
    );
    drop(ext);
    if let Some(line) = fast_path_summary(&sb) {
        say!("\n{line}");
    }

    if keep {
        sb.keep = true;
        let exe = std::env::current_exe()?;
        say!("\nsandbox kept. Look around:");
        say!("  ip netns | grep {tag}");
        let rns = sb.router.namespace();
        say!("  ip netns exec {rns} iptables-save -t nat");
        say!(
            "  ip netns exec {rns} nft list table ip xrouter   # eBPF planes: the kernel's floating-IP maps"
        );
        say!(
            "  {} --config {} show",
            exe.display(),
            sb.config().display()
        );
        say!("remove it:");
        if let Some(d) = &sb.daemon {
            say!("  kill {}", d.id());
        }
        say!(
            "  nsenter --net=/run/netns/{} {} --config {} cleanup",
            sb.node(),
            exe.display(),
            sb.config().display()
        );
        for h in HOSTS {
            say!("  ip netns del {}", sb.ns(h.name));
        }
        say!("  ip netns del {}; rm -r {}", sb.node(), dir.display());
    } else {
        sb.teardown();
        say!("\nsandbox removed.");
    }
    say!(
        "{}",
        if ok {
            "all experiments behaved as in the article."
        } else {
            "SOME EXPERIMENTS FAILED."
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the eBPF programs did, from their counters, and whether the kernel
/// translated anything (it should not have): None on the iptables plane.
fn fast_path_summary(sb: &Sandbox) -> Option<String> {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xrdemo-{}", sb.tag));
    let counters = crate::backend::bpf::pinned::counters(&pin_dir, &sb.router.id).ok()?;
    let get = |o: Outcome| {
        counters
            .iter()
            .find(|(k, _)| *k == o)
            .map(|(_, c)| c.packets)
            .unwrap_or(0)
    };
    let router_ns = sb.router.namespace();
    let mut nat = 0;
    for flag in ["--src-nat", "--dst-nat"] {
        let mut c = Command::new("conntrack");
        c.args(["-L", flag])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if netns::command_in(&router_ns, &mut c).is_ok()
            && let Ok(o) = c.output()
        {
            nat += String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
        }
    }
    Some(format!(
        "fast path: {} packets forwarded by XDP, {} by TC, {} handed to the kernel (ARP, IPv6, ...); \
         NAT entries in kernel conntrack: {nat}",
        get(Outcome::FwdXdp),
        get(Outcome::FwdTc),
        counters
            .iter()
            .filter(|(k, _)| k.name().starts_with("kernel/"))
            .map(|(_, c)| c.packets)
            .sum::<u64>(),
    ))
}

/// Creates a host namespace with `eth0` on the network's bridge.
async fn attach_host(sb: &Sandbox, h: &Host) -> Result<()> {
    let ns = sb.ns(h.name);
    netns::create(&ns)?;
    let node = Nl::open(Some(&sb.node())).await?;
    let bridge_name = bridge_of(&sb.router, h);
    let bridge = node
        .link(&bridge_name)
        .await?
        .with_context(|| format!("bridge {bridge_name} missing"))?;
    let outer = format!("d{}{}", sb.tag, h.name);
    node.add_veth(&outer, "eth0").await?;
    let inner = node.link("eth0").await?.context("eth0 vanished")?;
    node.move_to(inner.index, &ns).await?;
    let o = node.link(&outer).await?.context("host veth vanished")?;
    node.set_mtu(o.index, h.mtu).await?;
    node.set_controller(o.index, bridge.index).await?;
    node.set_up(o.index).await?;

    let nl = Nl::open(Some(&ns)).await?;
    for l in nl.links().await? {
        nl.set_up(l.index).await?;
        if l.name == "eth0" {
            nl.set_mtu(l.index, h.mtu).await?;
            nl.add_address(l.index, h.addr.parse::<IpNet>()?).await?;
        }
    }
    // Hosts send complete checksums, as traffic from a NIC has them (XDP
    // hands packets with offloaded, partial checksums to TC).
    let mut c = Command::new("ethtool");
    c.args(["-K", "eth0", "tx", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    netns::command_in(&ns, &mut c)?;
    let _ = c.status();
    let gw: IpAddr = h.gw.parse()?;
    nl.replace_route(
        &WantRoute {
            dst: "0.0.0.0/0".parse()?,
            via: Via::Gateways(vec![gw]),
            dev: None,
        },
        None,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_routers_file_is_valid_and_names_what_the_demo_uses() {
        let router = article_router("0a1b2");
        let text = routers_json(std::slice::from_ref(&router)).to_string();
        let routers = crate::config::routers::parse(&text).unwrap();
        assert!(routers[0].id.starts_with("0a1b2"));
        let node = crate::config::node::NodeConfig::default();
        for h in HOSTS {
            let bridge = bridge_of(&router, h);
            assert!(
                routers[0]
                    .ports()
                    .any(|p| node.bridge_for(&p.network_id) == bridge),
                "no port on bridge {bridge} for host {}",
                h.name
            );
        }
    }
}
