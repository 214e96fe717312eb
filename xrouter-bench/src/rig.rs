//! The rigs and one measurement.
//!
//! [`RouterRig`]: a node namespace where `xrouter run` builds the router
//! from a routers file (as `tests/src/rig.rs` does; linuxbridge plugging:
//! each port's tap is enslaved to its network's bridge `brq…`): internal
//! networks A (10.91.1.0/24) and B (10.91.2.0/24), external network
//! 172.31.91.0/24 (gateway 172.31.91.1, router 172.31.91.10, floating IP
//! 172.31.91.100 -> 10.91.2.100). Next hops are permanent neighbour entries
//! in the router namespace: nothing answers ARP, nothing leaves the rig.
//! Two ways in and out ([`RigKind`]):
//!
//! - direct: the generator, in the node namespace, redirects its frames
//!   straight into the tap of the ingress port (the bridge is not crossed);
//!   the sink is an XDP program on the tap of the egress port (on the eBPF
//!   planes it takes over the `xr_pass` link xrouter pinned there). The fast
//!   path alone.
//! - production: per network a NIC stand-in, a veth pair in the node
//!   namespace: its NIC end (GRO on, so it has a NAPI and builds skbs, as a
//!   NIC driver does) is enslaved to the network's bridge, the generator
//!   redirects into its wire end and the sink counts on the wire end (a tc
//!   program: an XDP one would have the veth copy each skb first). The
//!   generator leaves `--nic-headroom` bytes (64: NET_SKB_PAD) in front of
//!   its frames, so the NIC's skbs have a driver's headroom. Frames cross
//!   the bridge as skbs to the router's tap (static FDB entries for the
//!   router's and the next hops' MACs: unicast forwarding, never a flood or
//!   a clone), and leave through the egress network's bridge to its NIC.
//!   Nothing is added to the router's ports (on the non-XDP planes they
//!   carry no XDP program, as on a node).
//!
//! [`RawRig`]: the rig's own ceilings, without a router, per kind. Direct:
//! the generator straight into a veth whose peer is the sink, and a bare
//! XDP_REDIRECT between two veths. Production: generator -> NIC -> bridge ->
//! a plain veth pair -> bridge -> NIC -> sink (the router's path without
//! the router), and the same path with a bare XDP_REDIRECT in the router's
//! place (tap -> port with the redirect -> port -> tap with `xr_pass`, as
//! the xdp plane's ports are).
//!
//! NAPI threads by role, the same for the ceilings and the router cases and
//! re-pinned before every measurement. Direct rig: the router's CPU takes
//! the router's ports (the redirecting veth of the bare redirect), the
//! sink's CPU the devices the sink counts on. Production rig: only the NIC
//! stand-ins' receive is threaded, on the router's CPU; everything behind
//! it runs in softirq there, as on a node (see `production_napi`), the
//! sink too unless `--sink-cpu` gives it a CPU of its own (RPS).
//!
//! Everything is removed in Drop, also on error and interruption.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use router_common::bench::GenConfig;
use testkit::ovs::Ovs;

use super::{
    Case, Opts, Plane, RigKind, Sample,
    cpu::{self, busy_ns},
    drops, nap,
    progs::{PROG_PASS, PROG_REDIRECT, PROG_SINK, Progs, in_ns},
    progstats,
    report::SweepStep,
};
use router_user::{
    backend::netns,
    fixtures::{Network, PortSpec, RouterSpec, routers_json},
};

const NET_A: &str = "10.91.1";
const NET_B: &str = "10.91.2";
const EXT: &str = "172.31.91";
/// An external host, beyond the external gateway (never reached: the sink
/// takes every frame at the tap).
const REMOTE: [u8; 4] = [198, 18, 0, 1];
const MAC_GW: &str = "02:00:00:00:91:01";
const MAC_VM: &str = "02:00:00:00:92:14";
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x90, 0x01];

/// The router's address on the external network (its SNAT address).
pub(super) fn gateway_ip() -> [u8; 4] {
    ip4(&format!("{EXT}.10"))
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>()
        .expect("literal address")
        .octets()
}

/// A unique tag per rig: the process id and a sequence number.
fn tag() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:04x}{:x}", std::process::id() & 0xffff, n & 0xf)
}

/// `ip ARGS` (with `-n NS` when given); error with its stderr.
fn ip(ns: Option<&str>, args: &str) -> Result<()> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(args.split_whitespace()).stdin(Stdio::null());
    let out = c.output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `CMD ARGS` run in namespace `ns` (`ip netns exec`, for tools without
/// a namespace option of their own); error with its stderr.
fn exec_in(ns: &str, cmd: &str, args: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {args} (in {ns}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What a NIC stand-in or a veth is plugged into.
#[derive(Clone, Copy)]
enum Switch<'a> {
    /// A Linux bridge, by name.
    Bridge(&'a str),
    /// Open vSwitch's integration bridge, on a VLAN (an access port, as
    /// the OVS agent binds a network's ports).
    Ovs(&'a Ovs, u16),
}

impl Switch<'_> {
    fn plug(self, ns: &str, dev: &str) -> Result<()> {
        match self {
            Switch::Bridge(b) => ip(Some(ns), &format!("link set {dev} master {b}")),
            Switch::Ovs(o, tag) => o.add_host_port(dev, tag),
        }
    }

    /// A static MAC entry: frames to `mac` leave by `dev` only (unicast
    /// forwarding, never a flood or a clone).
    fn fdb(self, ns: &str, mac: &str, dev: &str) -> Result<()> {
        match self {
            Switch::Bridge(_) => fdb(ns, mac, dev),
            Switch::Ovs(o, tag) => o.fdb_add(dev, tag, mac),
        }
    }
}

/// A NIC stand-in: veth `wire` <-> `nic`, `nic` plugged into `switch`, GRO
/// on `nic` (a frame redirected into `wire` arrives at `nic`, which builds
/// an skb and hands it to the switch, as a NIC driver's receive does).
fn add_nic(ns: &str, wire: &str, nic: &str, switch: Switch) -> Result<()> {
    let ns_ = Some(ns);
    ip(ns_, &format!("link add {wire} type veth peer name {nic}"))?;
    switch.plug(ns, nic)?;
    ip(ns_, &format!("link set {wire} up"))?;
    ip(ns_, &format!("link set {nic} up"))?;
    exec_in(ns, "ethtool", &format!("-K {nic} gro on"))
}

/// Starts the rig's Open vSwitch in `ns`, its files in `dir`, and pins its
/// threads to the router's CPU (a node's NIC interrupt and switching work
/// go there; with the userspace datapath the switching is ovs-vswitchd's
/// own threads).
fn start_ovs(ns: &str, dir: &Path, opts: &Opts) -> Result<Ovs> {
    let o = Ovs::start(ns, dir).with_context(|| {
        if super::stopped() {
            "starting Open vSwitch: interrupted"
        } else {
            "starting Open vSwitch (is openvswitch-switch installed?)"
        }
    })?;
    cpu::pin_threads(vswitchd_pid(&o)?, opts.router_cpu)?;
    Ok(o)
}

/// ovs-vswitchd's process id, from its pidfile.
fn vswitchd_pid(o: &Ovs) -> Result<u32> {
    let f = o.dir.join("ovs-vswitchd.pid");
    let t0 = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(&f)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(pid);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("no pid in {} after 10 s", f.display());
        }
        nap(Duration::from_millis(20))?;
    }
}

/// Bridged IPv4/IPv6 through the namespace's netfilter hooks
/// (br_netfilter), as Neutron's linuxbridge agent requires for security
/// groups: the kernel's default where br_netfilter is loaded, said
/// explicitly so the rig does not depend on it (best effort: without
/// br_netfilter there is nothing to set).
fn bridge_nf(ns: &str) {
    let _ = exec_in(
        ns,
        "sysctl",
        "-qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1",
    );
}

/// A static FDB entry: the bridge of `dev` forwards frames to `mac` out of
/// `dev` only (never floods them, never learns it elsewhere).
fn fdb(ns: &str, mac: &str, dev: &str) -> Result<()> {
    exec_in(
        ns,
        "bridge",
        &format!("fdb replace {mac} dev {dev} master static"),
    )
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ifindex(ns: &str, dev: &str) -> Result<u32> {
    let d = dev.to_string();
    in_ns(ns, move || nix::net::if_::if_nametoindex(d.as_str()))?
        .with_context(|| format!("device {dev} in {ns}"))
}

/// What a measurement needs to know of the rig.
struct Target<'a> {
    rig: RigKind,
    /// Namespace the generator runs in (its target's).
    ns: &'a str,
    cfg: GenConfig,
    /// Headroom the generator leaves (0: a live frame's own).
    headroom: u32,
    /// Devices whose NAPI threads go to the router's CPU.
    napi: &'a [String],
    /// Devices whose NAPI threads go to the sink's CPU.
    sink_napi: &'a [String],
    /// For the eBPF planes: (pin dir, router id) of the outcome counters.
    counters: Option<(&'a Path, &'a str)>,
    /// The router's daemon, whose CPU time is measured too.
    daemon: Option<u32>,
    /// The switch's process (ovs-vswitchd): its threads are pinned with
    /// the router-side NAPIs and their run time counts in the path's.
    switch: Option<u32>,
    /// `--prog-stats`: the router's pinned links (their programs' run
    /// time is read).
    links: Option<PathBuf>,
    /// Namespaces whose kernel drop counters are read: (namespace, label).
    drop_ns: Vec<(&'a str, &'static str)>,
    /// Device names shown by role in the drop reasons: (device, role).
    roles: Vec<(String, String)>,
}

#[derive(Default)]
struct Snap {
    t: Option<Instant>,
    /// The flows' frames delivered (a flood's aside).
    sink: u64,
    /// A flood's frames delivered.
    flood: u64,
    other: u64,
    sent: u64,
    busy: u64,
    /// Run time of the router-side NAPI threads.
    path_ns: u64,
    daemon_ns: u64,
    outcomes: Vec<(String, u64)>,
    drops: drops::Drops,
    progs: Vec<progstats::ProgRuns>,
}

fn snap(progs: &Progs, t: &Target, opts: &Opts) -> Result<Snap> {
    let cpu = opts.router_cpu;
    let outcomes = match t.counters {
        Some((dir, id)) => router_user::backend::bpf::pinned::counters(dir, id)?
            .into_iter()
            .map(|(o, c)| (o.name().to_string(), c.packets))
            .collect(),
        None => vec![],
    };
    let mut drops = drops::softnet();
    for (ns, label) in &t.drop_ns {
        drops.extend(drops::snapshot(ns, label)?);
    }
    let drops = drops
        .into_iter()
        .map(|(mut k, v)| {
            for (dev, role) in &t.roles {
                k = k.replace(dev.as_str(), role);
            }
            (k, v)
        })
        .collect();
    let s = progs.sink()?;
    Ok(Snap {
        t: Some(Instant::now()),
        sink: s.packets - s.flood,
        flood: s.flood,
        other: s.other,
        sent: progs.gen_state()?.sent,
        busy: busy_ns(cpu)?,
        path_ns: cpu::napi_run_ns(t.napi)
            + cpu::thread_run_ns(&format!("ksoftirqd/{cpu}"))
            + t.switch.map_or(0, cpu::threads_run_ns),
        daemon_ns: t.daemon.map_or(0, cpu::process_ns),
        outcomes,
        drops,
        progs: match (&t.links, opts.prog_stats) {
            (Some(l), true) => progstats::snapshot(&progstats::prog_ids(l)),
            _ => vec![],
        },
    })
}

/// Delivered and offered packets per second, CPU ns per packet, outcomes.
struct Window {
    pps: f64,
    /// A flood's frames delivered a second.
    flood_pps: f64,
    offered: f64,
    cpu_ns: Option<f64>,
    path_ns: Option<f64>,
    /// The daemon's CPU time over the window, in CPUs.
    daemon_cpu: Option<f64>,
    other: u64,
    outcomes: Vec<(String, u64)>,
    sent: u64,
    delivered: u64,
    drops: drops::Drops,
    progs: Vec<progstats::ProgRuns>,
}

fn window(progs: &Progs, t: &Target, opts: &Opts, d: Duration) -> Result<Window> {
    let a = snap(progs, t, opts)?;
    nap(d)?;
    let b = snap(progs, t, opts)?;
    let dt = (b.t.unwrap() - a.t.unwrap()).as_secs_f64();
    let n = b.sink - a.sink;
    let outcomes = b
        .outcomes
        .iter()
        .zip(&a.outcomes)
        .map(|((k, x), (_, y))| (k.clone(), x - y))
        .filter(|(_, v)| *v > 0)
        .collect();
    let flood = b.flood - a.flood;
    // Costs per packet of the flows; of the flood when it is all there is.
    let per = if n > 0 { n } else { flood };
    Ok(Window {
        pps: n as f64 / dt,
        flood_pps: flood as f64 / dt,
        offered: (b.sent - a.sent) as f64 / dt,
        cpu_ns: (per > 0).then(|| (b.busy - a.busy) as f64 / per as f64),
        path_ns: (per > 0).then(|| b.path_ns.saturating_sub(a.path_ns) as f64 / per as f64),
        daemon_cpu: t
            .daemon
            .map(|_| b.daemon_ns.saturating_sub(a.daemon_ns) as f64 / 1e9 / dt),
        other: b.other - a.other,
        outcomes,
        sent: b.sent - a.sent,
        delivered: n + flood,
        drops: drops::delta(&a.drops, &b.drops),
        progs: progstats::delta(&a.progs, &b.progs),
    })
}

/// Pins the NAPI threads by role; `check`: every device must have one (a
/// rig whose threads are not where the options say measures something
/// else).
fn pin_all(t: &Target, opts: &Opts, check: bool) -> Result<()> {
    for (devs, cpu) in [(t.napi, opts.router_cpu), (t.sink_napi, opts.sink_cpu())] {
        let missing = cpu::pin_napi_each(devs, cpu)?;
        if check && !missing.is_empty() {
            bail!("no NAPI thread of {missing:?} to pin to CPU {cpu}");
        }
    }
    if let Some(pid) = t.switch {
        cpu::pin_threads(pid, opts.router_cpu)?;
    }
    Ok(())
}

/// Runs one case: warm-up, the flooded window, then the paced sweep.
fn measure(progs: &mut Progs, t: &Target, case: Case, opts: &Opts) -> Result<Sample> {
    let mut cfg = t.cfg;
    cfg.gap_ns = 0;
    progs.set_gen(&cfg)?;
    progs.set_headroom(t.headroom)?;
    pin_all(t, opts, false)?;
    let run = progs.start(t.ns, opts.gen_cpu, opts.frame)?;
    let r = (|| -> Result<Sample> {
        nap(Duration::from_millis(400))?;
        Progs::check(&run)?;
        // The threads may have been re-created by the first frames.
        pin_all(t, opts, true)?;
        nap(Duration::from_millis(200))?;
        let dur = Duration::from_secs_f64(opts.duration);
        let mut w = window(progs, t, opts, dur)?;
        // Every frame the flood's: those are the case's packets.
        let all_new = cfg.flood_every == 1;
        if all_new {
            w.pps += w.flood_pps;
        }
        Progs::check(&run)?;
        let mut paced = Vec::new();
        let n = opts.sweep;
        if n > 0 && w.pps > 10_000.0 {
            let step = dur / 3;
            for k in 0..n {
                let f = if n == 1 {
                    1.0
                } else {
                    0.9 * (2.6f64 / 0.9).powf(k as f64 / (n - 1) as f64)
                };
                let rate = w.pps * f;
                cfg.gap_ns = (1e9 / rate).max(1.0) as u64;
                progs.set_gen(&cfg)?;
                nap(Duration::from_millis(150))?;
                let mut p = window(progs, t, opts, step)?;
                if all_new {
                    p.pps += p.flood_pps;
                }
                paced.push(SweepStep {
                    target_mpps: rate / 1e6,
                    sent_mpps: p.offered / 1e6,
                    mpps: p.pps / 1e6,
                });
            }
        }
        Ok(Sample {
            round: 0,
            rig: t.rig,
            plane: None,
            case,
            mpps: w.pps / 1e6,
            flood_mpps: (cfg.flood_every > 1).then_some(w.flood_pps / 1e6),
            offered_mpps: w.offered / 1e6,
            cpu_ns: w.cpu_ns,
            path_ns: w.path_ns,
            daemon_cpu: w.daemon_cpu,
            scale: None,
            paced_mpps: paced
                .iter()
                .map(|p| p.mpps)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
            sweep: paced,
            other_frames: w.other,
            outcomes: w.outcomes,
            sent: w.sent,
            delivered: w.delivered,
            drops: w.drops.into_iter().collect(),
            progs: w.progs,
        })
    })();
    let stopped = progs.stop(run);
    let s = r?;
    stopped?;
    Ok(s)
}

/// The rig's ceilings: no router.
pub struct RawRig {
    kind: RigKind,
    ns: String,
    tag: String,
    napi: Vec<String>,
    sink_napi: Vec<String>,
    /// The ovs rig's switch (its files in `dir`).
    ovs: Option<Ovs>,
    dir: PathBuf,
}

/// Where the generator sends the rig cases' frames.
const RAW_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x91, 0x02];

impl RawRig {
    pub fn new(progs: &mut Progs, opts: &Opts, kind: RigKind) -> Result<RawRig> {
        let tag = tag();
        let mut rig = RawRig {
            kind,
            ns: format!("xrb-{tag}-raw"),
            tag: tag.clone(),
            napi: vec![],
            sink_napi: vec![],
            ovs: None,
            dir: std::env::temp_dir().join(format!("xrouter-bench-{tag}-raw")),
        };
        netns::create(&rig.ns)?;
        ip(Some(&rig.ns), "link set lo up")?;
        match kind {
            RigKind::Direct => rig.direct(progs)?,
            RigKind::Production | RigKind::Ovs => rig.production(progs, opts)?,
        }
        cpu::threaded(&rig.ns, &rig.napi)?;
        cpu::threaded(&rig.ns, &rig.sink_napi)?;
        cpu::pin_napi(&rig.napi, opts.router_cpu)?;
        cpu::pin_napi(&rig.sink_napi, opts.sink_cpu())?;
        Ok(rig)
    }

    /// c0 -> c1 (sink); b0 -> b1 (redirect to b2) -> b3 (sink).
    fn direct(&mut self, progs: &mut Progs) -> Result<()> {
        let ns = Some(self.ns.as_str());
        for (a, b) in [("c0", "c1"), ("b0", "b1"), ("b2", "b3")] {
            ip(
                ns,
                &format!(
                    "link add {} type veth peer name {}",
                    self.dev(a),
                    self.dev(b)
                ),
            )?;
            ip(ns, &format!("link set {} up", self.dev(a)))?;
            ip(ns, &format!("link set {} up", self.dev(b)))?;
        }
        progs.attach(PROG_SINK, &self.ns, &self.dev("c1"))?;
        progs.attach(PROG_SINK, &self.ns, &self.dev("b3"))?;
        progs.attach(PROG_REDIRECT, &self.ns, &self.dev("b1"))?;
        progs.set_redirect(ifindex(&self.ns, &self.dev("b2"))?)?;
        self.napi = vec![self.dev("b1")];
        self.sink_napi = vec![self.dev("c1"), self.dev("b3")];
        Ok(())
    }

    /// Ceiling: wa -> na [bridge ba] j0 -> j1 [bridge bb] nb -> wb (sink).
    /// Bare redirect: wc -> nc [bridge bc] tc -> pc (redirect to pd) ->
    /// td (`xr_pass`) [bridge bd] nd -> wd (sink). On the ovs rig each
    /// bridge is a VLAN of the integration bridge (two ports each: what
    /// enters one leaves by the other, learnt or flooded alike).
    fn production(&mut self, progs: &mut Progs, opts: &Opts) -> Result<()> {
        let ns = self.ns.clone();
        let ns_ = Some(ns.as_str());
        let bridges = ["ba", "bb", "bc", "bd"];
        if self.kind == RigKind::Ovs {
            self.ovs = Some(start_ovs(&ns, &self.dir.join("ovs"), opts)?);
        } else {
            bridge_nf(&ns);
            for b in bridges {
                ip(ns_, &format!("link add {} type bridge", self.dev(b)))?;
                ip(ns_, &format!("link set {} up", self.dev(b)))?;
            }
        }
        let names: Vec<String> = bridges.iter().map(|b| self.dev(b)).collect();
        let switch = |b: &str| -> Switch {
            let i = bridges.iter().position(|x| *x == b).expect("a rig bridge");
            match &self.ovs {
                Some(o) => Switch::Ovs(o, 11 + i as u16),
                None => Switch::Bridge(&names[i]),
            }
        };
        for (w, n, b) in [
            ("wa", "na", "ba"),
            ("wb", "nb", "bb"),
            ("wc", "nc", "bc"),
            ("wd", "nd", "bd"),
        ] {
            add_nic(&ns, &self.dev(w), &self.dev(n), switch(b))?;
        }
        // Veth pairs between the bridges: j0/j1 plain (the router's path
        // without the router), tc/pc and pd/td as a router's two ports.
        for (a, b, ba, bb) in [
            ("j0", "j1", Some("ba"), Some("bb")),
            ("tc", "pc", Some("bc"), None),
            ("td", "pd", Some("bd"), None),
        ] {
            ip(
                ns_,
                &format!(
                    "link add {} type veth peer name {}",
                    self.dev(a),
                    self.dev(b)
                ),
            )?;
            for (d, br) in [(a, ba), (b, bb)] {
                if let Some(br) = br {
                    switch(br).plug(&ns, &self.dev(d))?;
                }
                ip(ns_, &format!("link set {} up", self.dev(d)))?;
            }
        }
        let dst = mac_str(RAW_DST_MAC);
        for (bridge_port, in_bridge, nic_port, out_bridge) in
            [("j0", "ba", "nb", "bb"), ("tc", "bc", "nd", "bd")]
        {
            switch(in_bridge).fdb(&ns, &dst, &self.dev(bridge_port))?;
            switch(out_bridge).fdb(&ns, &dst, &self.dev(nic_port))?;
        }
        // j1 is in bb: the FDB entry on nb does its bridge's forwarding.
        for w in ["wa", "wb", "wc", "wd"] {
            progs.attach_tc_sink(&ns, &self.dev(w))?;
        }
        progs.attach(PROG_REDIRECT, &ns, &self.dev("pc"))?;
        progs.attach(PROG_PASS, &ns, &self.dev("td"))?;
        progs.set_redirect(ifindex(&ns, &self.dev("pd"))?)?;
        (self.napi, self.sink_napi) =
            production_napi(self.kind, vec![self.dev("na"), self.dev("nc")]);
        sink_rps(&ns, &[self.dev("wb"), self.dev("wd")], opts)
    }

    fn dev(&self, d: &str) -> String {
        format!("xb{}{d}", self.tag)
    }

    pub fn measure(&mut self, progs: &mut Progs, case: Case, opts: &Opts) -> Result<Sample> {
        let into = match (self.kind, case) {
            (RigKind::Direct, Case::Ceiling) => "c0",
            (RigKind::Direct, Case::BareRedirect) => "b0",
            (RigKind::Production | RigKind::Ovs, Case::Ceiling) => "wa",
            (RigKind::Production | RigKind::Ovs, Case::BareRedirect) => "wc",
            _ => bail!("{} is not a rig case", case.name()),
        };
        let cfg = GenConfig {
            dst_mac: RAW_DST_MAC,
            src_mac: GEN_MAC,
            src: ip4("10.90.0.1"),
            dst: ip4("10.90.0.2"),
            sport: 10000,
            dport: 5001,
            flows: 1,
            nports: 1,
            ifindex: ifindex(&self.ns, &self.dev(into))?,
            frame_len: opts.frame,
            ttl: 64,
            flood_syn: 0,
            gap_ns: 0,
            flood_every: 0,
            flood_dsts: 0,
        };
        // The devices of this case's path by role (each name once: the
        // drop counters are keyed by it).
        let path: &[(&str, &str)] = match (self.kind, case) {
            (RigKind::Direct, _) => &[],
            (RigKind::Production | RigKind::Ovs, Case::Ceiling) => &[
                ("wa", "wire A"),
                ("na", "nic A"),
                ("j0", "join A"),
                ("j1", "join B"),
                ("nb", "nic B"),
                ("wb", "wire B"),
            ],
            _ => &[
                ("wc", "wire A"),
                ("nc", "nic A"),
                ("tc", "tap A"),
                ("pc", "port A"),
                ("pd", "port B"),
                ("td", "tap B"),
                ("nd", "nic B"),
                ("wd", "wire B"),
            ],
        };
        let roles = path
            .iter()
            .map(|(d, r)| (self.dev(d), r.to_string()))
            .collect();
        let t = Target {
            rig: self.kind,
            ns: &self.ns,
            cfg,
            headroom: headroom(self.kind, opts),
            napi: &self.napi,
            sink_napi: &self.sink_napi,
            counters: None,
            daemon: None,
            switch: self.ovs.as_ref().map(vswitchd_pid).transpose()?,
            links: None,
            drop_ns: vec![(&self.ns, "rig")],
            roles,
        };
        measure(progs, &t, case, opts)
    }

    pub fn teardown(self, progs: &mut Progs) {
        progs.detach_all();
        drop(self);
    }
}

/// The threaded NAPIs of the production rig (all on the router's CPU):
/// only the NICs' receive, pinned to the router's CPU (where a node's NIC
/// interrupt would be); everything behind it (the bridge, the ports' NAPIs
/// on the xdp plane, the taps', the backlog on the other planes) runs in
/// softirq on that CPU, scheduled from there, as on a node. Threaded NAPIs
/// of their own on the same CPU would only run when the scheduler switches
/// to them, and the NIC's thread would fill their 256-frame rings and drop
/// the rest in between: an artefact that costs XDP on the ports (which has
/// a NAPI) and not TC (which has none). The sink, a tc program on the wire
/// ends (no NAPI), runs in the backlog of the CPU that hands it the skb, or
/// of `--sink-cpu` through RPS ([`sink_rps`]).
///
/// On the ovs rig no NAPI is threaded: the NICs' receive runs in softirq
/// on the CPU that hands them the frame, the generator's (as a NIC's
/// receive queue on another core would), and the router's CPU holds
/// ovs-vswitchd (the userspace datapath forwards in its own threads,
/// pinned there), the taps, the router and the egress. Sharing one CPU
/// with a flooded NIC's receive thread, ovs-vswitchd would get a share
/// of it as the scheduler sees fit and measure that share.
fn production_napi(kind: RigKind, nics: Vec<String>) -> (Vec<String>, Vec<String>) {
    match kind {
        RigKind::Ovs => (vec![], vec![]),
        _ => (nics, vec![]),
    }
}

/// Production rig: the wire ends' receive steered to the sink's CPU (RPS)
/// when it has one of its own; else it stays on the router's CPU.
fn sink_rps(ns: &str, wires: &[String], opts: &Opts) -> Result<()> {
    if opts.sink_cpu() == opts.router_cpu {
        return Ok(());
    }
    let mask = cpu_mask(opts.sink_cpu());
    for w in wires {
        // sysfs is the namespace's own under `ip netns exec`.
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!(
                "echo {mask} > /sys/class/net/{w}/queues/rx-0/rps_cpus"
            ))
            .stdin(Stdio::null())
            .output()
            .context("ip netns exec")?;
        if !out.status.success() {
            bail!(
                "RPS of {w} to CPU {}: {}",
                opts.sink_cpu(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// The hexadecimal CPU mask of `cpu` as sysfs takes it (comma-separated
/// 32-bit words, most significant first).
fn cpu_mask(cpu: usize) -> String {
    let words = cpu / 32 + 1;
    (0..words)
        .rev()
        .map(|w| {
            let v: u32 = if w == cpu / 32 { 1 << (cpu % 32) } else { 0 };
            format!("{v:08x}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The generator's headroom on a rig: a NIC driver's on the production
/// rig, a live frame's own on the direct one (as XDP gets it there).
fn headroom(kind: RigKind, opts: &Opts) -> u32 {
    match kind {
        RigKind::Direct => 0,
        RigKind::Production | RigKind::Ovs => opts.nic_headroom,
    }
}

impl Drop for RawRig {
    fn drop(&mut self) {
        // The switch first: its daemons run in the namespace.
        drop(self.ovs.take());
        let _ = netns::delete(&self.ns);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A router built by xrouter on one data plane.
pub struct RouterRig {
    kind: RigKind,
    tag: String,
    plane: Plane,
    router: RouterSpec,
    node: String,
    dir: PathBuf,
    pin_dir: PathBuf,
    bin: PathBuf,
    daemon: Option<Child>,
    napi: Vec<String>,
    sink_napi: Vec<String>,
    /// The ovs rig's switch (its files in `dir`).
    ovs: Option<Ovs>,
}

/// The router's ports: A and B internal, G the gateway.
#[derive(Clone, Copy)]
enum Port {
    A,
    B,
    G,
}

/// The rig's router: ports A and B on two internal networks, G on the
/// external one, one floating IP for `NET_B.100`. IDs are random UUIDs that
/// start with the rig's tag; port IDs differ in their first characters, so
/// device names (and the NAPI thread names that keep 10 of them) differ.
fn rig_router(tag: &str) -> RouterSpec {
    let net = |name: &str, prefix: &str, gw: &str| {
        Network::new(
            name,
            &format!("{prefix}.0/24"),
            Some(&format!("{prefix}.{gw}")),
        )
    };
    let (a, b, ext) = (
        net("a", NET_A, "1"),
        net("b", NET_B, "1"),
        net("ext", EXT, "1"),
    );
    let mut r = RouterSpec::empty(tag);
    let port = |n: &Network, ip: String, p: Port| {
        let mut spec = PortSpec::new(n, &ip);
        spec.mac = RouterRig::port_mac(p)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        spec
    };
    r.gateway = Some(port(&ext, format!("{EXT}.10"), Port::G));
    r.interfaces.push(port(&a, format!("{NET_A}.1"), Port::A));
    r.interfaces.push(port(&b, format!("{NET_B}.1"), Port::B));
    r.add_fip(&format!("{EXT}.100"), &format!("{NET_B}.100"));
    r
}

impl RouterRig {
    fn router_id(&self) -> String {
        self.router.id.clone()
    }
    fn router_ns(&self) -> String {
        self.router.namespace()
    }
    fn port(&self, p: Port) -> &PortSpec {
        match p {
            Port::A => self.router.interface("a"),
            Port::B => self.router.interface("b"),
            Port::G => self
                .router
                .gateway
                .as_ref()
                .expect("the rig's router has a gateway"),
        }
    }
    fn dev(&self, p: Port) -> String {
        match p {
            Port::G => self.port(p).qg(),
            _ => self.port(p).qr(),
        }
    }
    fn tap(&self, p: Port) -> String {
        self.port(p).tap()
    }
    /// Production rig: the NIC stand-in of port `p`'s network, its wire
    /// end (where the generator sends and the sink counts) and its NIC end
    /// (in the network's bridge).
    fn wire(&self, p: Port) -> String {
        format!("xn{}w{}", self.tag, Self::letter(p))
    }
    fn nic(&self, p: Port) -> String {
        format!("xn{}n{}", self.tag, Self::letter(p))
    }
    fn letter(p: Port) -> char {
        match p {
            Port::A => 'a',
            Port::B => 'b',
            Port::G => 'g',
        }
    }
    /// The VLAN of port `p`'s network on the ovs rig's integration bridge.
    fn vlan(p: Port) -> u16 {
        match p {
            Port::A => 1,
            Port::B => 2,
            Port::G => 3,
        }
    }

    /// The OVS agent's part (outside xrouter): every router port xrouter
    /// plugged, found by its `iface-id`, gets its network's VLAN; waits
    /// (10 s at most) for all three to be on the bridge.
    fn bind_ovs(&self, o: &Ovs) -> Result<()> {
        let tags = [Port::A, Port::B, Port::G]
            .into_iter()
            .map(|p| (self.port(p).id.clone(), Self::vlan(p)))
            .collect();
        let t0 = Instant::now();
        loop {
            let missing = o.bind(&tags)?;
            if missing.is_empty() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "router ports {missing:?} not on {} after 10 s",
                    testkit::ovs::BRIDGE
                );
            }
            nap(Duration::from_millis(100))?;
        }
    }

    fn port_mac(p: Port) -> [u8; 6] {
        match p {
            Port::A => [0xfa, 0x16, 0x3e, 0x91, 0, 0x0a],
            Port::B => [0xfa, 0x16, 0x3e, 0x91, 0, 0x0b],
            Port::G => [0xfa, 0x16, 0x3e, 0x91, 0, 0x0c],
        }
    }
    fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    /// Where the daemon pins the router's maps (`<pin_dir>/<router id>/`).
    pub fn maps_dir(&self) -> PathBuf {
        self.pin_dir.join(self.router_id())
    }
    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// A router on the direct rig. `ct_conns`: the connection table's
    /// size in connections (the node config's `conntrack_size`; two entries
    /// each).
    pub fn new(
        progs: &mut Progs,
        plane: Plane,
        opts: &Opts,
        bin: &Path,
        ct_conns: u32,
    ) -> Result<RouterRig> {
        Self::on(RigKind::Direct, progs, plane, opts, bin, ct_conns)
    }

    /// A router on the rig of `kind`.
    pub fn on(
        kind: RigKind,
        progs: &mut Progs,
        plane: Plane,
        opts: &Opts,
        bin: &Path,
        ct_conns: u32,
    ) -> Result<RouterRig> {
        let tag = tag();
        let dir = std::env::temp_dir().join(format!("xrouter-bench-{tag}"));
        let mut rig = RouterRig {
            kind,
            tag: tag.clone(),
            plane,
            node: format!("xrb-{tag}-node"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/xrb-{tag}")),
            dir,
            router: rig_router(&tag),
            bin: bin.to_path_buf(),
            daemon: None,
            napi: vec![],
            sink_napi: vec![],
            ovs: None,
        };
        std::fs::create_dir_all(&rig.dir)?;
        netns::create(&rig.node)?;
        ip(Some(&rig.node), "link set lo up")?;
        // openvswitch plugging: the taps become ports of the integration
        // bridge, on Neutron's dead VLAN until bound (`prepare`).
        let plugging = if kind == RigKind::Ovs {
            let o = start_ovs(&rig.node, &rig.dir.join("ovs"), opts)?;
            let p = format!(
                "interface_driver = \"openvswitch\"\novs_integration_bridge = \"{}\"\n\
                 ovsdb_connection = \"{}\"\n",
                testkit::ovs::BRIDGE,
                o.db()
            );
            rig.ovs = Some(o);
            p
        } else {
            String::new()
        };
        std::fs::write(
            rig.dir.join("routers.json"),
            routers_json(std::slice::from_ref(&rig.router)).to_string(),
        )?;
        let dataplane = match plane {
            Plane::Xdp => "xdp",
            Plane::Tc => "tc",
            Plane::Iptables | Plane::Kernel => "iptables",
        };
        std::fs::write(
            rig.config_path(),
            format!(
                "state_dir = {:?}\npin_dir = {:?}\ndataplane = \"{dataplane}\"\n\
                 resync_interval = 3600\nsend_garp = false\nconntrack_size = {ct_conns}\n\
                 new_connection_rate = {}\n{plugging}",
                rig.dir.join("state"),
                rig.pin_dir,
                opts.new_connection_rate.unwrap_or(
                    router_user::config::node::NodeConfig::default().new_connection_rate
                ),
            ),
        )?;
        rig.start_daemon()?;
        rig.prepare(progs, opts)
            .with_context(|| format!("daemon log:\n{}", rig.log_tail()))?;
        Ok(rig)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn start_daemon(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(self.config_path())
            .arg("run")
            .arg("--routers")
            .arg(self.dir.join("routers.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        netns::command_in(&self.node, &mut c)?;
        self.daemon = Some(
            c.spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?,
        );
        let sock = self.dir.join("state").join("xrouter.sock");
        let t0 = Instant::now();
        while !sock.exists() {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|d| d.try_wait()) {
                self.daemon = None;
                bail!("xrouter run exited ({st}):\n{}", self.log_tail());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "xrouter run did not come up within 30 s:\n{}",
                    self.log_tail()
                );
            }
            nap(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Neighbours, the ruleset of the kernel plane, programs, NAPI threads.
    fn prepare(&mut self, progs: &mut Progs, opts: &Opts) -> Result<()> {
        let rns = self.router_ns();
        let ports = [Port::A, Port::B, Port::G];
        for p in ports {
            ifindex(&rns, &self.dev(p))?;
            ifindex(&self.node, &self.tap(p))?;
        }
        if self.plane == Plane::Kernel {
            // Neutron's rules gone: no netfilter hook, no conntrack (nft
            // backend; iptables-legacy would keep its hooks).
            let out = Command::new("ip")
                .args(["netns", "exec", &rns, "nft", "flush", "ruleset"])
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!(
                    "nft flush ruleset: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        for (addr, dev, m) in [
            (format!("{NET_B}.20"), self.dev(Port::B), MAC_VM),
            (format!("{NET_B}.100"), self.dev(Port::B), MAC_VM),
            (format!("{EXT}.1"), self.dev(Port::G), MAC_GW),
        ] {
            ip(
                Some(&rns),
                &format!("neigh replace {addr} lladdr {m} dev {dev} nud permanent"),
            )?;
        }
        if self.kind == RigKind::Direct && self.plane != Plane::Xdp {
            // Frames redirected into a veth need an XDP program on its peer
            // (xr_xdp is that program on the xdp plane). Not on the
            // production rig: skbs need none, and a node has none there.
            for p in ports {
                progs.attach(PROG_PASS, &rns, &self.dev(p))?;
            }
        }
        if matches!(self.plane, Plane::Xdp | Plane::Tc) {
            // The daemon mirrors neighbours every second.
            nap(Duration::from_millis(1500))?;
        }
        match self.kind {
            RigKind::Direct => {
                let links = self.pin_dir.join(self.router_id()).join("links");
                for p in [Port::B, Port::G] {
                    let pin = links.join(format!("{}_pass", self.tap(p)));
                    if pin.exists() {
                        progs.take_over(PROG_SINK, &pin)?;
                    } else {
                        progs.attach(PROG_SINK, &self.node, &self.tap(p))?;
                    }
                }
                self.napi = ports.iter().map(|p| self.dev(*p)).collect();
                self.sink_napi = vec![self.tap(Port::B), self.tap(Port::G)];
            }
            RigKind::Production | RigKind::Ovs => {
                if let Some(o) = &self.ovs {
                    self.bind_ovs(o)?;
                } else {
                    bridge_nf(&self.node);
                }
                let bridges: Vec<String> = ports
                    .iter()
                    .map(|p| self.port(*p).network.bridge())
                    .collect();
                let switch = |i: usize| match &self.ovs {
                    Some(o) => Switch::Ovs(o, Self::vlan(ports[i])),
                    None => Switch::Bridge(&bridges[i]),
                };
                for (i, p) in ports.into_iter().enumerate() {
                    add_nic(&self.node, &self.wire(p), &self.nic(p), switch(i))?;
                    progs.attach_tc_sink(&self.node, &self.wire(p))?;
                    switch(i).fdb(&self.node, &mac_str(Self::port_mac(p)), &self.tap(p))?;
                }
                switch(1).fdb(&self.node, MAC_VM, &self.nic(Port::B))?;
                switch(2).fdb(&self.node, MAC_GW, &self.nic(Port::G))?;
                // Only the NICs' receive is threaded (see `production_napi`).
                (self.napi, self.sink_napi) =
                    production_napi(self.kind, ports.iter().map(|p| self.nic(*p)).collect());
                let wires: Vec<String> = ports.iter().map(|p| self.wire(*p)).collect();
                sink_rps(&self.node, &wires, opts)?;
            }
        }
        let (in_router, in_node): (Vec<String>, Vec<String>) = self
            .napi
            .iter()
            .chain(&self.sink_napi)
            .cloned()
            .partition(|d| ports.iter().any(|p| self.dev(*p) == *d));
        if !in_router.is_empty() {
            cpu::threaded(&rns, &in_router)?;
        }
        cpu::threaded(&self.node, &in_node)?;
        cpu::pin_napi(&self.napi, opts.router_cpu)?;
        cpu::pin_napi(&self.sink_napi, opts.sink_cpu())?;
        Ok(())
    }

    pub fn measure(&mut self, progs: &mut Progs, case: Case, opts: &Opts) -> Result<Sample> {
        // (ingress, source, destination, flows, ports per source address)
        let vm_a = ip4(&format!("{NET_A}.10"));
        let (into, src, dst, flows, nports) = match case {
            Case::EastWest => (Port::A, vm_a, ip4(&format!("{NET_B}.20")), 1, 1),
            Case::EastWest1k => (Port::A, vm_a, ip4(&format!("{NET_B}.20")), 1000, 1000),
            Case::Snat1 => (Port::A, vm_a, REMOTE, 1, 1),
            Case::Snat1k => (Port::A, vm_a, REMOTE, 1000, 1000),
            Case::Snat64k => (Port::A, vm_a, REMOTE, 64000, 16000),
            Case::DnatIn | Case::DnatFlood | Case::SynFlood => {
                (Port::G, REMOTE, ip4(&format!("{EXT}.100")), 1000, 1000)
            }
            Case::FipOut => (Port::B, ip4(&format!("{NET_B}.100")), REMOTE, 1000, 1000),
            // Every frame is the flood's: a new source each time.
            Case::SnatNew => (Port::A, vm_a, REMOTE, 1, 1),
            Case::Ceiling | Case::BareRedirect => bail!("{} is a rig case", case.name()),
        };
        let target = match self.kind {
            RigKind::Direct => self.tap(into),
            RigKind::Production | RigKind::Ovs => self.wire(into),
        };
        let cfg = GenConfig {
            dst_mac: Self::port_mac(into),
            src_mac: GEN_MAC,
            src,
            dst,
            sport: 10000,
            dport: 5001,
            flows,
            nports,
            ifindex: ifindex(&self.node, &target)?,
            frame_len: opts.frame,
            ttl: 64,
            flood_syn: (case == Case::SynFlood) as u8,
            gap_ns: 0,
            // Every other frame a new client; or every frame.
            flood_every: match case {
                Case::DnatFlood | Case::SynFlood => 2,
                Case::SnatNew => 1,
                _ => 0,
            },
            flood_dsts: if case == Case::SnatNew { 4096 } else { 0 },
        };
        let id = self.router_id();
        let router_ns = self.router_ns();
        let t = Target {
            rig: self.kind,
            ns: &self.node,
            cfg,
            headroom: headroom(self.kind, opts),
            napi: &self.napi,
            sink_napi: &self.sink_napi,
            counters: matches!(self.plane, Plane::Xdp | Plane::Tc)
                .then_some((self.pin_dir.as_path(), id.as_str())),
            daemon: self.daemon_pid(),
            switch: self.ovs.as_ref().map(vswitchd_pid).transpose()?,
            links: Some(self.maps_dir().join("links")),
            drop_ns: vec![(&self.node, "node"), (&router_ns, "router")],
            roles: [(Port::A, "A"), (Port::B, "B"), (Port::G, "G")]
                .into_iter()
                .flat_map(|(p, n)| {
                    [
                        (self.dev(p), format!("port {n}")),
                        (self.tap(p), format!("tap {n}")),
                        (self.wire(p), format!("wire {n}")),
                        (self.nic(p), format!("nic {n}")),
                    ]
                })
                .collect(),
        };
        measure(progs, &t, case, opts)
    }

    pub fn teardown(self, progs: &mut Progs) {
        progs.detach_all();
        drop(self);
    }

    fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            super::shell::stop_child(d, Duration::from_secs(5));
        }
    }
}

impl Drop for RouterRig {
    fn drop(&mut self) {
        self.stop_daemon();
        // `xrouter cleanup` in the node namespace, bounded.
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(self.config_path())
            .arg("cleanup")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if netns::command_in(&self.node, &mut c).is_ok()
            && let Ok(mut child) = c.spawn()
        {
            let t0 = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if t0.elapsed() > Duration::from_secs(20) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // After cleanup, which takes the router's ports off the bridge.
        drop(self.ovs.take());
        let _ = netns::delete(&self.router_ns());
        let _ = netns::delete(&self.node);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_masks_as_sysfs_takes_them() {
        assert_eq!(super::cpu_mask(0), "00000001");
        assert_eq!(super::cpu_mask(1), "00000002");
        assert_eq!(super::cpu_mask(35), "00000008,00000000");
    }
}
