//! `xrouter-bench` (`cargo xtask bench`): packet rate and cost per packet of
//! each data plane, on an isolated rig of namespaces, with a built-in
//! generator. Its BPF programs are its own object ([`OBJECT`]); the router's
//! object holds none of them.
//!
//! The rigs (per data plane, rebuilt every round, see `rig.rs`): a node
//! namespace where `xrouter run` builds the router from a routers file, as in
//! production; a generator that sends 64-byte UDP/IPv4 frames through
//! BPF_PROG_TEST_RUN with live frames. On the direct rig it redirects them
//! straight into the tap of the router's ingress port and the sink, an XDP
//! program on the tap of the egress port, counts and drops (the fast path
//! alone). On the production rig the frames go into a NIC stand-in (a veth
//! with GRO, leaving a NIC driver's headroom) enslaved to the network's
//! bridge and reach the router as skbs across it, and leave the same way,
//! through the egress network's bridge to its NIC stand-in, where the sink
//! counts. The generator runs on one CPU, the router's and the sink's NAPI
//! threads on another. Cases run in rounds (every case once per round, the
//! rigs and data planes in a rotated order) and the figures are medians
//! with min and max (`report.rs`). `--micro` measures the data path alone
//! (`micro.rs`); `--scale` measures with the connection table pre-filled
//! (`scale.rs`).

mod changes;
mod cpu;
mod drops;
mod memory;
mod micro;
mod progs;
mod progstats;
mod report;
mod rig;
mod scale;
mod shell;
mod tcp;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use clap::ValueEnum;
use serde::Serialize;

pub use report::{CaseResult, Sample, ScaleInfo};

/// The benchmark's BPF object built by `build.rs`: the generator, sink,
/// bare redirect, microbenchmark wrapper, and the pipeline they measure.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xrouter-bench-ebpf"));

/// Set on Ctrl-C / SIGTERM: every loop checks it and the run unwinds,
/// tearing down what it built.
static STOP: AtomicBool = AtomicBool::new(false);

pub(crate) fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleeps `d`, waking early (with an error) when the run is interrupted.
pub(crate) fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if stopped() {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Data planes under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plane {
    /// xrouter's XDP fast path (`dataplane = "xdp"`).
    Xdp,
    /// xrouter's TC path (`dataplane = "tc"`).
    Tc,
    /// Neutron's rule set and kernel forwarding (`dataplane = "iptables"`).
    Iptables,
    /// Plain kernel forwarding: the iptables plane's router with its
    /// ruleset removed (no netfilter hooks, no conntrack, no NAT).
    Kernel,
}

impl Plane {
    pub const ALL: [Plane; 4] = [Plane::Xdp, Plane::Tc, Plane::Iptables, Plane::Kernel];

    pub fn name(self) -> &'static str {
        match self {
            Plane::Xdp => "xdp",
            Plane::Tc => "tc",
            Plane::Iptables => "iptables",
            Plane::Kernel => "kernel",
        }
    }
}

/// The path frames take to and from the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RigKind {
    /// Generator frames redirected straight into the ingress port's tap,
    /// counted on the egress port's tap: the fast path alone.
    Direct,
    /// Through a NIC stand-in and the network's Linux bridge as skbs, out
    /// through the egress network's bridge to its NIC stand-in: the path
    /// of a real network node (linuxbridge plugging).
    Production,
    /// The production path with Open vSwitch in the bridges' place: the
    /// NIC stand-ins and the router's taps are ports of the integration
    /// bridge (userspace datapath), each network on a VLAN of its own
    /// (openvswitch plugging).
    Ovs,
}

impl RigKind {
    pub fn name(self) -> &'static str {
        match self {
            RigKind::Direct => "direct",
            RigKind::Production => "production",
            RigKind::Ovs => "ovs",
        }
    }

    /// A node's path (a NIC stand-in, a switch, skbs), not the fast path
    /// alone.
    pub fn is_node_path(self) -> bool {
        self != RigKind::Direct
    }
}

/// `--rig`: which rigs to measure on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RigChoice {
    /// Through a NIC stand-in and a Linux bridge (linuxbridge plugging).
    Production,
    /// Through a NIC stand-in and Open vSwitch (openvswitch plugging).
    Ovs,
    /// Generator frames straight into the router's tap: the fast path alone.
    Direct,
    /// production and direct, side by side in the same rounds.
    Both,
    /// production, ovs and direct, side by side in the same rounds.
    All,
}

impl RigChoice {
    pub fn kinds(self) -> Vec<RigKind> {
        match self {
            RigChoice::Production => vec![RigKind::Production],
            RigChoice::Ovs => vec![RigKind::Ovs],
            RigChoice::Direct => vec![RigKind::Direct],
            RigChoice::Both => vec![RigKind::Direct, RigKind::Production],
            RigChoice::All => vec![RigKind::Direct, RigKind::Production, RigKind::Ovs],
        }
    }
}

/// Traffic cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// Rig ceiling: the generator straight into the sink (no router).
    Ceiling,
    /// Rig ceiling for an XDP forwarder: a bare XDP_REDIRECT between two veths.
    BareRedirect,
    /// East-west routing between two internal networks, one flow.
    EastWest,
    /// East-west routing, 1k flows.
    #[value(name = "east-west-1k")]
    #[serde(rename = "east-west-1k")]
    EastWest1k,
    /// Gateway SNAT (VM without floating IP to an external host), one flow.
    #[value(name = "snat-1")]
    #[serde(rename = "snat-1")]
    Snat1,
    /// Gateway SNAT, 1k flows.
    #[value(name = "snat-1k")]
    #[serde(rename = "snat-1k")]
    Snat1k,
    /// Gateway SNAT, 64k flows (4 source addresses x 16k ports, 4
    /// destination ports).
    #[value(name = "snat-64k")]
    #[serde(rename = "snat-64k")]
    Snat64k,
    /// Floating-IP DNAT inbound, 1k flows.
    DnatIn,
    /// Floating-IP SNAT outbound (the VM with the floating IP), 1k flows.
    FipOut,
    /// `dnat-in` under a flood: every other frame a new client (a spoofed
    /// source never seen) to the floating IP. Reported: the 1k flows'
    /// rate, and the flood's let through.
    DnatFlood,
    /// `dnat-in` under a SYN flood: every other frame a TCP SYN from a new
    /// client (a spoofed source never seen) to the floating IP. Reported:
    /// the 1k flows' rate, and the SYNs let through (connections opened).
    SynFlood,
    /// New connections through gateway SNAT: every frame a new UDP flow
    /// (a source address and port never seen). Reported: the frames
    /// delivered, i.e. the connections opened per second.
    SnatNew,
}

impl Case {
    pub const ALL: [Case; 12] = [
        Case::Ceiling,
        Case::BareRedirect,
        Case::EastWest,
        Case::EastWest1k,
        Case::Snat1,
        Case::Snat1k,
        Case::Snat64k,
        Case::DnatIn,
        Case::FipOut,
        Case::DnatFlood,
        Case::SynFlood,
        Case::SnatNew,
    ];
    /// What runs unless `--cases` says otherwise.
    pub const DEFAULT: [Case; 10] = [
        Case::Ceiling,
        Case::BareRedirect,
        Case::EastWest,
        Case::Snat1k,
        Case::Snat64k,
        Case::DnatIn,
        Case::FipOut,
        Case::DnatFlood,
        Case::SynFlood,
        Case::SnatNew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Ceiling => "ceiling",
            Case::BareRedirect => "bare-redirect",
            Case::EastWest => "east-west",
            Case::EastWest1k => "east-west-1k",
            Case::Snat1 => "snat-1",
            Case::Snat1k => "snat-1k",
            Case::Snat64k => "snat-64k",
            Case::DnatIn => "dnat-in",
            Case::FipOut => "fip-out",
            Case::DnatFlood => "dnat-flood",
            Case::SynFlood => "syn-flood",
            Case::SnatNew => "snat-new",
        }
    }

    /// Cases of the rig alone (no router, no data plane).
    pub fn is_rig(self) -> bool {
        matches!(self, Case::Ceiling | Case::BareRedirect)
    }

    /// Flows (connections) the generator cycles through.
    pub fn flows(self) -> u32 {
        match self {
            Case::Ceiling | Case::BareRedirect | Case::EastWest | Case::Snat1 | Case::SnatNew => 1,
            Case::EastWest1k
            | Case::Snat1k
            | Case::DnatIn
            | Case::FipOut
            | Case::DnatFlood
            | Case::SynFlood => 1000,
            Case::Snat64k => 64000,
        }
    }

    /// Whether the case means something on `plane` (plain forwarding has no
    /// floating IP to DNAT: the packet would be delivered locally; and no
    /// connections to open).
    pub fn applies_to(self, plane: Plane) -> bool {
        !(plane == Plane::Kernel
            && matches!(
                self,
                Case::DnatIn | Case::DnatFlood | Case::SynFlood | Case::SnatNew
            ))
    }
}

/// Packet rate and cost per packet of each xrouter data plane, on a rig of
/// namespaces (built-in live-frames generator, XDP sink); `--micro`
/// measures the data path alone, `--scale` with the connection table
/// pre-filled. Needs root; tears everything down, also on Ctrl-C.
#[derive(clap::Parser)]
// Negative numbers reach the options' own checks, which name the option
// and the range, rather than clap's "unexpected argument".
#[command(name = "xrouter-bench", version, allow_negative_numbers = true)]
pub struct Cli {
    #[command(flatten)]
    pub opts: Opts,
}

/// `xrouter-bench` options.
#[derive(clap::Args, Clone, Debug)]
pub struct Opts {
    /// Data planes to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Plane::ALL)]
    pub planes: Vec<Plane>,
    /// The rig: `direct` (generator frames straight into the router's tap,
    /// the fast path alone), `production` (through a NIC stand-in and the
    /// network's Linux bridge as skbs, as on a linuxbridge node), `ovs`
    /// (the same through Open vSwitch's integration bridge, userspace
    /// datapath), `both` (production and direct) or `all`, side by side in
    /// the same rounds.
    #[arg(long, value_enum, default_value_t = RigChoice::Both)]
    pub rig: RigChoice,
    /// Production and ovs rigs: headroom of the frames the NIC stand-in receives, in
    /// bytes (64: a NIC driver's skb, NET_SKB_PAD; 256: as much as XDP
    /// wants, so a veth's XDP need not copy them).
    #[arg(long, default_value_t = 64,
          value_parser = ranged::<{ *range::HEADROOM.start() }, { *range::HEADROOM.end() }, u32>)]
    pub nic_headroom: u32,
    /// Traffic cases (default: all but east-west-1k and snat-1).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub cases: Vec<Case>,
    /// Rounds: every case runs once per round; figures are medians (by
    /// default five: this host's rates fall into fast and slow modes, and
    /// three rounds too often take their median from one mode; the figures
    /// in the docs say how many rounds they used).
    #[arg(long, default_value_t = 5,
          value_parser = ranged::<{ *range::ROUNDS.start() }, { *range::ROUNDS.end() }, u32>)]
    pub rounds: u32,
    /// Seconds each flooded measurement lasts (after a warm-up), 0.2 to 60.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Paced sweep: number of offered rates tried after the flooded run
    /// (0: flooded only). Each step lasts a third of --duration.
    #[arg(long, default_value_t = 5,
          value_parser = ranged::<{ *range::SWEEP.start() }, { *range::SWEEP.end() }, u32>)]
    pub sweep: u32,
    /// Frame size in bytes, without FCS (60 = 64-byte frames on the wire).
    #[arg(long, default_value_t = 60,
          value_parser = ranged::<{ *range::FRAME.start() }, { *range::FRAME.end() }, u16>)]
    pub frame: u16,
    /// CPU of the generator.
    #[arg(long, default_value_t = 0,
          value_parser = ranged::<{ *range::CPU.start() }, { *range::CPU.end() }, usize>)]
    pub gen_cpu: usize,
    /// CPU of the router (the NAPI threads of its ports).
    #[arg(long, default_value_t = 1,
          value_parser = ranged::<{ *range::CPU.start() }, { *range::CPU.end() }, usize>)]
    pub router_cpu: usize,
    /// CPU of the sink (the NAPI threads of the taps it counts on); default:
    /// the router's (the sink's work then counts in the router CPU figure).
    #[arg(long,
          value_parser = ranged::<{ *range::CPU.start() }, { *range::CPU.end() }, usize>)]
    pub sink_cpu: Option<usize>,
    /// Write every sample and the medians as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a chart of Mpps per data plane per case (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Run the microbenchmark instead: ns per packet of the data path
    /// through BPF_PROG_TEST_RUN, no rig (of the other options only --json
    /// applies).
    #[arg(long, conflicts_with_all = [
        "scale", "changes", "tcp", "rig", "nic_headroom", "cases", "planes", "rounds",
        "duration", "sweep", "frame", "gen_cpu", "router_cpu", "sink_cpu", "svg",
        "prog_stats", "connections", "with_gc", "new_connection_rate", "many", "streams",
        "xrouter",
    ])]
    pub micro: bool,
    /// Also measure the router's BPF programs' own time per run on the
    /// live traffic (the kernel's run-time statistics, on for the whole
    /// run: every BPF program then pays two clock reads a run, so use it
    /// to see where the time goes, not for the headline figures).
    #[arg(long, conflicts_with_all = ["scale", "changes", "tcp"])]
    pub prog_stats: bool,
    /// Scale: measure the cases (default: snat-1k) on the xdp and tc planes
    /// with the router's connection table pre-filled with --connections live
    /// connections, and report the maps' memory.
    #[arg(long, conflicts_with_all = ["changes", "tcp", "rig", "nic_headroom"])]
    pub scale: bool,
    /// --scale: pre-filled connections, one measurement per entry (k and M
    /// suffixes: 10k = 10,000; 1M = 1,000,000).
    #[arg(long, value_delimiter = ',', value_parser = parse_count,
          default_value = "0,10k,100k,1M", value_name = "N,...", requires = "scale")]
    pub connections: Vec<u32>,
    /// --scale: leave the daemon running while measuring (its GC reads the
    /// table 20 ms of each second, on the CPUs of the generator and the
    /// router); by
    /// default it is paused, so the figures are the data path's.
    #[arg(long, requires = "scale")]
    pub with_gc: bool,
    /// The routers' budget of new connections a second per CPU (node config
    /// `new_connection_rate`; 0: none, to measure what the data path can
    /// open). Default: the node config's default, 100000.
    #[arg(long, value_name = "N",
          value_parser = ranged::<0, 100_000_000, u32>)]
    pub new_connection_rate: Option<u32>,
    /// Measure live changes instead: per data plane (xdp, tc, iptables of
    /// --planes), the time to apply and release 1,000 and --many floating
    /// IPs, from reload to the first packet through a new one, and the
    /// packets a ping flow loses across a daemon restart.
    #[arg(long, conflicts_with_all = [
        "tcp", "rig", "nic_headroom", "cases", "rounds", "duration", "sweep", "frame",
        "gen_cpu", "router_cpu", "sink_cpu", "json", "svg", "new_connection_rate",
    ])]
    pub changes: bool,
    /// --changes: the large number of floating IPs (at most what the eBPF
    /// planes' floating-IP map holds).
    #[arg(long, default_value_t = 10_000,
          value_parser = ranged::<1, 16384, usize>, requires = "changes")]
    pub many: usize,
    /// Measure bulk TCP instead (iperf3 from VMs through the router: gateway
    /// SNAT, floating IP in and out) per data plane of --planes, for
    /// --duration seconds (rounded up) per run, --rounds times.
    #[arg(long, conflicts_with_all = [
        "rig", "nic_headroom", "cases", "sweep", "frame", "gen_cpu", "router_cpu", "sink_cpu",
        "svg", "new_connection_rate",
    ])]
    pub tcp: bool,
    /// --tcp: parallel streams per run (iperf3 -P), one run per entry.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 8],
          value_parser = ranged::<1, 128, u32>, requires = "tcp")]
    pub streams: Vec<u32>,
    /// The xrouter binary that runs the router (default: the one beside
    /// this program).
    #[arg(long, value_name = "FILE")]
    pub xrouter: Option<PathBuf>,
}

impl Opts {
    pub fn sink_cpu(&self) -> usize {
        self.sink_cpu.unwrap_or(self.router_cpu)
    }
}

/// Allowed values of the numeric options: what a measurement can use, and
/// small enough that nothing derived from them overflows.
pub mod range {
    use std::ops::RangeInclusive;
    pub const ROUNDS: RangeInclusive<i64> = 1..=100;
    /// Seconds of a flooded window.
    pub const DURATION: RangeInclusive<f64> = 0.2..=60.0;
    pub const SWEEP: RangeInclusive<i64> = 0..=20;
    /// Ethernet frame without FCS, from the minimum (what the generator's
    /// buffer holds).
    pub const FRAME: RangeInclusive<i64> = 60..=1500;
    /// Checked against the CPUs of this machine when the bench starts.
    pub const CPU: RangeInclusive<i64> = 0..=4095;
    /// Headroom the generator leaves (the kernel keeps an xdp_frame, 40
    /// bytes, in front; 256 is a live frame's own).
    pub const HEADROOM: RangeInclusive<i64> = 64..=256;
}

/// A whole number in `LO..=HI`: the error names the range whatever was
/// wrong (a sign, a fraction, a word, too large).
fn ranged<const LO: i64, const HI: i64, T: TryFrom<i64>>(s: &str) -> Result<T, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("want a whole number in {LO}..={HI}"))?;
    if !(LO..=HI).contains(&v) {
        return Err(format!("{v} is not in {LO}..={HI}"));
    }
    T::try_from(v).map_err(|_| format!("{v} is not in {LO}..={HI}"))
}

/// Seconds as a decimal number within [`range::DURATION`].
fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| "want seconds, such as 2 or 0.5".to_string())?;
    // NaN is in no range, so this also refuses it.
    if !range::DURATION.contains(&v) {
        return Err(format!(
            "outside the allowed range {}..={} seconds",
            range::DURATION.start(),
            range::DURATION.end()
        ));
    }
    Ok(v)
}

/// `10000`, `10k`, `1M` (k = 1000, M = 1,000,000).
fn parse_count(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000u64),
        Some((i, 'm' | 'M')) => (&t[..i], 1_000_000u64),
        _ => (t, 1u64),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "want a count from 0 to {} such as 10000, 10k or 1M",
            scale::MAX_CONNECTIONS
        )
    })?;
    let n = n.saturating_mul(mul);
    if n > scale::MAX_CONNECTIONS as u64 {
        return Err(format!("at most {} connections", scale::MAX_CONNECTIONS));
    }
    Ok(n as u32)
}

/// Runs the benchmark; Ctrl-C stops it and removes the rig.
pub async fn run(opts: Opts) -> Result<ExitCode> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("xrouter-bench needs root (namespaces, BPF)");
    }
    let sig = tokio::spawn(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("\nxrouter-bench: interrupted, tearing down");
        STOP.store(true, Ordering::Relaxed);
    });
    let r = tokio::task::spawn_blocking(move || {
        if opts.micro {
            micro::run(&opts)
        } else if opts.scale {
            scale::run(&opts)
        } else if opts.changes {
            let planes: Vec<String> = opts
                .planes
                .iter()
                .filter(|p| **p != Plane::Kernel)
                .map(|p| p.name().to_string())
                .collect();
            changes::run(&xrouter_bin(&opts)?, &planes, opts.many)
        } else if opts.tcp {
            tcp::run(&xrouter_bin(&opts)?, &opts)
        } else {
            run_rig(&opts)
        }
    })
    .await;
    sig.abort();
    r??;
    Ok(ExitCode::SUCCESS)
}

fn xrouter_bin(opts: &Opts) -> Result<PathBuf> {
    if let Some(p) = &opts.xrouter {
        return Ok(p.clone());
    }
    // Built together (`cargo xtask bench`): xrouter sits beside us.
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("xrouter");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no xrouter binary beside {}: say which with --xrouter",
        exe.display()
    )
}

/// `1 round`, `3 rounds`.
pub(crate) fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Checks the options every rig run shares.
fn check_opts(opts: &Opts) -> Result<()> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (opt, cpu) in [
        ("--gen-cpu", opts.gen_cpu),
        ("--router-cpu", opts.router_cpu),
        ("--sink-cpu", opts.sink_cpu()),
    ] {
        if cpu >= ncpu {
            bail!(
                "{opt} {cpu}: this machine has {ncpu} CPUs, numbered 0 to {}",
                ncpu - 1
            );
        }
    }
    if opts.gen_cpu == opts.router_cpu {
        eprintln!("warning: generator and router share CPU {}", opts.gen_cpu);
    }
    // The command line checks these; options built in code are checked too.
    if !range::FRAME.contains(&opts.frame.into()) {
        bail!("--frame must be {:?}", range::FRAME);
    }
    if !range::DURATION.contains(&opts.duration) {
        bail!("--duration must be {:?} seconds", range::DURATION);
    }
    if !range::HEADROOM.contains(&opts.nic_headroom.into()) {
        bail!("--nic-headroom must be {:?}", range::HEADROOM);
    }
    if !range::ROUNDS.contains(&opts.rounds.into()) || !range::SWEEP.contains(&opts.sweep.into()) {
        bail!(
            "--rounds must be {:?} and --sweep {:?}",
            range::ROUNDS,
            range::SWEEP
        );
    }
    Ok(())
}

/// The connection table of the ordinary rig, in connections.
const RIG_CONNTRACK: u32 = 262_144;

/// One rig built in a round: the rig's own cases (no router) or a router
/// on one data plane, on one kind of rig.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Raw(RigKind),
    Router(RigKind, Plane),
}

/// The rigs a round builds, before rotation: per data plane the direct rig
/// beside the production one, so the kinds run close together in every
/// round; the rigs' own cases (the ceilings) twice, before the routers and
/// halfway through them. A ceiling measured once a round meets the host
/// in one phase while the routers it bounds meet it in others; measured
/// half a round apart it brackets them, and its best holds for the round.
fn units(rigs: &[RigKind], planes: &[Plane], raw: bool, routed: bool) -> Vec<Unit> {
    let raws: Vec<Unit> = if raw {
        rigs.iter().map(|&k| Unit::Raw(k)).collect()
    } else {
        Vec::new()
    };
    let mut routers: Vec<Unit> = Vec::new();
    if routed {
        for &p in planes {
            routers.extend(rigs.iter().map(|&k| Unit::Router(k, p)));
        }
    }
    let mut u = raws.clone();
    if routers.is_empty() {
        return u;
    }
    let half = routers.len().div_ceil(2);
    u.extend_from_slice(&routers[..half]);
    u.extend_from_slice(&raws);
    u.extend_from_slice(&routers[half..]);
    u
}

/// The order of round `round`: rotated by one each round, so a slow phase
/// of the host does not always hit the same rig or data plane.
fn round_order(units: &[Unit], round: u32) -> Vec<Unit> {
    let mut order = units.to_vec();
    if !order.is_empty() {
        let k = round as usize % order.len();
        order.rotate_left(k);
    }
    order
}

fn run_rig(opts: &Opts) -> Result<()> {
    check_opts(opts)?;
    let cases: Vec<Case> = if opts.cases.is_empty() {
        Case::DEFAULT.to_vec()
    } else {
        let mut c = opts.cases.clone();
        c.sort();
        c.dedup();
        c
    };
    let mut planes = opts.planes.clone();
    planes.sort();
    planes.dedup();
    let rigs = opts.rig.kinds();
    let router_cases: Vec<Case> = cases.iter().copied().filter(|c| !c.is_rig()).collect();
    let rig_cases: Vec<Case> = cases.iter().copied().filter(|c| c.is_rig()).collect();
    let bin = if router_cases.is_empty() || planes.is_empty() {
        None
    } else {
        Some(xrouter_bin(opts)?)
    };
    let all = units(
        &rigs,
        &planes,
        !rig_cases.is_empty(),
        !router_cases.is_empty(),
    );
    let todo = |u: Unit| -> Vec<Case> {
        match u {
            Unit::Raw(_) => rig_cases.clone(),
            Unit::Router(_, p) => router_cases
                .iter()
                .copied()
                .filter(|c| c.applies_to(p))
                .collect(),
        }
    };
    let per_round: usize = all.iter().map(|&u| todo(u).len()).sum();
    let total = per_round as u32 * opts.rounds;
    println!(
        "xrouter-bench: {} of {} on the {} rig{}; generator on CPU {}, \
         router on CPU {}, sink on CPU {}; {}-byte frames, {:.1} s flooded{}",
        plural(opts.rounds as usize, "round"),
        plural(per_round, "measurement"),
        rigs.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        if rigs.len() > 1 { "s" } else { "" },
        opts.gen_cpu,
        opts.router_cpu,
        opts.sink_cpu(),
        opts.frame + 4,
        opts.duration,
        if opts.sweep > 0 {
            format!(" + paced sweep of {}", plural(opts.sweep as usize, "rate"))
        } else {
            String::new()
        }
    );
    let mut progs = progs::Progs::load()?;
    let _stats = opts.prog_stats.then(progstats::enable).transpose()?;
    let mut samples: Vec<Sample> = Vec::new();
    let mut done = 0u32;
    let t0 = Instant::now();
    for round in 0..opts.rounds {
        for unit in round_order(&all, round) {
            let cases = todo(unit);
            if cases.is_empty() {
                continue;
            }
            match unit {
                Unit::Raw(kind) => {
                    let mut raw = rig::RawRig::new(&mut progs, opts, kind)?;
                    for &case in &cases {
                        done += 1;
                        progress(done, total, t0, round, kind, None, case);
                        let s = raw.measure(&mut progs, case, opts)?;
                        samples.push(Sample {
                            round,
                            plane: None,
                            ..s
                        });
                    }
                    raw.teardown(&mut progs);
                }
                Unit::Router(kind, plane) => {
                    let bin = bin.as_ref().expect("set when there are router cases");
                    let mut r =
                        rig::RouterRig::on(kind, &mut progs, plane, opts, bin, RIG_CONNTRACK)?;
                    for &case in &cases {
                        done += 1;
                        progress(done, total, t0, round, kind, Some(plane), case);
                        // On error the rig is dropped, which removes it.
                        let s = r.measure(&mut progs, case, opts)?;
                        samples.push(Sample {
                            round,
                            plane: Some(plane),
                            ..s
                        });
                    }
                    r.teardown(&mut progs);
                }
            }
        }
    }
    end_progress();
    let results = report::summarize(&samples);
    println!("{}", report::table(&results, opts));
    write_files(&results, &samples, opts)
}

/// Writes the JSON and the chart, when asked for.
fn write_files(results: &[report::CaseResult], samples: &[Sample], opts: &Opts) -> Result<()> {
    if let Some(p) = &opts.json {
        std::fs::write(p, report::json(results, samples, opts)?)?;
        println!("JSON: {}", p.display());
    }
    if let Some(p) = &opts.svg {
        std::fs::write(p, report::svg(results))?;
        println!("chart: {}", p.display());
    }
    Ok(())
}

/// Replaces the progress line with `line`. When standard error is no
/// terminal (a log), each shown line is a line of its own, at most one
/// every two seconds, so a long run's log stays readable.
fn say(line: &str) {
    use std::io::{IsTerminal as _, Write as _};
    if std::io::stderr().is_terminal() {
        eprint!("\r{line:<79}");
        let _ = std::io::stderr().flush();
        return;
    }
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
        *last = Some(Instant::now());
        eprintln!("{}", line.trim_end());
    }
}

/// Clears the progress line (on a terminal; a log has none).
fn end_progress() {
    use std::io::IsTerminal as _;
    if std::io::stderr().is_terminal() {
        eprint!("\r{:100}\r", "");
    }
}

fn progress(
    done: u32,
    total: u32,
    t0: Instant,
    round: u32,
    kind: RigKind,
    plane: Option<Plane>,
    case: Case,
) {
    say(&format!(
        "[{done}/{total}] {:>4.0} s  round {}  {:<10} {:<9} {:<14}",
        t0.elapsed().as_secs_f64(),
        round + 1,
        kind.name(),
        plane.map_or("rig", Plane::name),
        case.name()
    ));
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Opts, String> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map(|c| c.opts)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_number_has_a_range() {
        for (args, allowed) in [
            (&["--rounds", "0"][..], "1..=100"),
            (&["--rounds", "4294967295"], "1..=100"),
            (&["--duration", "9e18"], "0.2..=60"),
            (&["--duration", "NaN"], "0.2..=60"),
            (&["--duration", "0.1"], "0.2..=60"),
            (&["--duration", "inf"], "0.2..=60"),
            (&["--sweep", "1000000"], "0..=20"),
            (&["--frame", "59"], "60..=1500"),
            (&["--frame", "9000"], "60..=1500"),
            (&["--gen-cpu", "18446744073709551615"], "0..=4095"),
            (&["--router-cpu", "4096"], "0..=4095"),
            (&["--sink-cpu", "99999"], "0..=4095"),
            (&["--connections", "5M"], "4000000"),
            (&["--connections", "99999999999999999999k"], "want a count"),
            // Negative numbers, fractions and words reach the same checks.
            (&["--rounds", "-1"], "1..=100"),
            (&["--rounds", "1.5"], "1..=100"),
            (&["--duration", "-2"], "0.2..=60"),
            (&["--sweep", "-3"], "0..=20"),
            (&["--gen-cpu", "-1"], "0..=4095"),
            (&["--sink-cpu", "abc"], "0..=4095"),
            (&["--changes", "--many", "-1"], "1..=16384"),
            (&["--tcp", "--streams", "0"], "1..=128"),
            (&["--new-connection-rate", "-5"], "0..=100000000"),
            (&["--scale", "--connections", "-5"], "4000000"),
        ] {
            let e = match parse(args) {
                Ok(o) => panic!("{args:?} accepted: {o:?}"),
                Err(e) => e,
            };
            let (opt, val) = (args[args.len() - 2], args[args.len() - 1]);
            assert!(
                e.contains(opt) && e.contains(val) && e.contains(allowed),
                "{args:?}: {e}"
            );
        }
        let o = parse(&[
            "--rounds",
            "100",
            "--duration",
            "0.2",
            "--sweep",
            "20",
            "--frame",
            "1500",
        ])
        .unwrap();
        assert_eq!(
            (o.rounds, o.duration, o.sweep, o.frame),
            (100, 0.2, 20, 1500)
        );
        let o = parse(&[]).unwrap();
        assert_eq!((o.rounds, o.duration, o.sweep, o.frame), (5, 2.0, 5, 60));
        assert_eq!((o.rig, o.nic_headroom), (RigChoice::Both, 64));
        for h in ["63", "257"] {
            let e = parse(&["--nic-headroom", h]).unwrap_err();
            assert!(e.contains("64..=256"), "{e}");
        }
        assert_eq!(
            parse(&["--rig", "production"]).unwrap().rig.kinds(),
            [RigKind::Production]
        );
        // Options of another mode are refused, not ignored.
        for (args, named) in [
            (&["--micro", "--rig", "ovs"][..], "--rig"),
            (&["--micro", "--prog-stats"][..], "--prog-stats"),
            (&["--tcp", "--micro"][..], "--micro"),
            (&["--scale", "--tcp"][..], "--tcp"),
            (&["--streams", "1"][..], "--tcp"),
            (&["--with-gc"][..], "--scale"),
            (&["--connections", "10k"][..], "--scale"),
            (&["--many", "5"][..], "--changes"),
            (&["--scale", "--prog-stats"][..], "--prog-stats"),
            (&["--scale", "--rig", "ovs"][..], "--rig"),
            (&["--scale", "--nic-headroom", "128"][..], "--nic-headroom"),
            (&["--tcp", "--rig", "direct"][..], "--rig"),
            (&["--tcp", "--cases", "snat-1k"][..], "--cases"),
            (&["--tcp", "--sweep", "2"][..], "--sweep"),
            (&["--changes", "--rig", "direct"][..], "--rig"),
            (&["--changes", "--sweep", "0"][..], "--sweep"),
            (&["--changes", "--json", "x.json"][..], "--json"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(named), "{args:?}: {e}");
        }
        assert!(parse(&["--micro", "--json", "x.json"]).is_ok());
        assert!(parse(&["--scale", "--with-gc", "--connections", "0,1M"]).is_ok());
        assert!(parse(&["--tcp", "--streams", "1"]).is_ok());
        assert_eq!(
            parse(&["--rig", "all"]).unwrap().rig.kinds(),
            [RigKind::Direct, RigKind::Production, RigKind::Ovs]
        );
        assert_eq!(
            parse(&["--rig", "ovs"]).unwrap().rig.kinds(),
            [RigKind::Ovs]
        );
    }

    #[test]
    fn both_rigs_run_in_every_round_side_by_side_and_rotate() {
        use RigKind::*;
        let both = RigChoice::Both.kinds();
        let all = units(&both, &[Plane::Xdp, Plane::Tc], true, true);
        assert_eq!(
            all,
            [
                Unit::Raw(Direct),
                Unit::Raw(Production),
                Unit::Router(Direct, Plane::Xdp),
                Unit::Router(Production, Plane::Xdp),
                Unit::Raw(Direct),
                Unit::Raw(Production),
                Unit::Router(Direct, Plane::Tc),
                Unit::Router(Production, Plane::Tc),
            ]
        );
        // Every round builds every router rig once and the ceilings twice,
        // half a round apart; the first one changes.
        let firsts: Vec<Unit> = (0..8).map(|r| round_order(&all, r)[0]).collect();
        assert_eq!(firsts, all);
        for r in 0..8 {
            let o = round_order(&all, r);
            assert_eq!(o.len(), all.len());
            for u in &all {
                let at: Vec<usize> = (0..o.len()).filter(|&i| o[i] == *u).collect();
                match u {
                    Unit::Router(..) => assert_eq!(at.len(), 1, "{u:?} in {o:?}"),
                    Unit::Raw(_) => {
                        assert_eq!(at.len(), 2, "{u:?} in {o:?}");
                        assert_eq!((at[1] - at[0]).min(o.len() - (at[1] - at[0])), 4);
                    }
                }
            }
        }
        assert_eq!(
            units(&[Production], &[Plane::Kernel], false, true),
            [Unit::Router(Production, Plane::Kernel)]
        );
        assert_eq!(
            units(&both, &[Plane::Xdp], true, false),
            [Unit::Raw(Direct), Unit::Raw(Production)]
        );
        assert!(round_order(&[], 3).is_empty());
    }
}
