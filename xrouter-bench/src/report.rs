//! Samples, their medians, and the three outputs: a terminal table, JSON,
//! and an SVG chart of Mpps per data plane per case.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::{Case, Opts, Plane, RigKind, progstats::ProgRuns};

/// One measurement of one case on one data plane in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: u32,
    /// The path to and from the router (or, for a rig case, the path the
    /// ceiling stands for).
    pub rig: RigKind,
    /// None: a rig case (no router).
    pub plane: Option<Plane>,
    pub case: Case,
    /// Delivered at the sink, flooded (a flood's own frames aside).
    pub mpps: f64,
    /// A case with a flood: its frames delivered at the sink (let through).
    pub flood_mpps: Option<f64>,
    /// Sent by the generator, flooded.
    pub offered_mpps: f64,
    /// Busy time of the router's CPU per delivered packet (flooded).
    pub cpu_ns: Option<f64>,
    /// Run time of the router-side NAPI threads (the router's ports and,
    /// on the production rig, the NIC stand-ins' receive and the taps: all
    /// but the generator and the sink; on the ovs rig ovs-vswitchd's
    /// threads, the NICs' receive being the generator's CPU's) per
    /// delivered packet (flooded); not
    /// skewed by other work on the router's CPU.
    pub path_ns: Option<f64>,
    /// CPU time of the router's daemon over the flooded window, in CPUs.
    pub daemon_cpu: Option<f64>,
    /// `--scale`: the connection table the case ran against.
    pub scale: Option<ScaleInfo>,
    /// Best delivered rate over the paced sweep.
    pub paced_mpps: Option<f64>,
    /// The paced sweep, step by step.
    pub sweep: Vec<SweepStep>,
    /// Frames at the sink that were not the generator's (ARP, IPv6, ...).
    pub other_frames: u64,
    /// eBPF planes: what the programs did during the flooded window, by
    /// outcome (packets).
    pub outcomes: Vec<(String, u64)>,
    /// Sent by the generator and delivered at the sink in the flooded
    /// window (packets).
    pub sent: u64,
    pub delivered: u64,
    /// What the kernel counted as dropped in that window, by reason
    /// (`bench::drops`), all planes.
    pub drops: Vec<(String, u64)>,
    /// `--prog-stats`: the router's programs' runs and run time in that
    /// window.
    pub progs: Vec<ProgRuns>,
}

/// `--scale`: the pre-filled connection table of one measurement.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ScaleInfo {
    /// Connections pre-filled (two entries each), beside the case's own.
    pub connections: u32,
    /// The table's size in entries (twice the node's `conntrack_size`).
    pub ct_max_entries: u32,
    /// Seconds the fill took.
    pub fill_s: f64,
    /// Memory of `XR_CT` and of all the router's maps (the kernel's
    /// `memlock` figure of each map, from fdinfo).
    pub ct_bytes: u64,
    pub maps_bytes: u64,
    /// Share of a sample of the pre-filled entries still present after the
    /// measurement (1: GC and LRU eviction took none).
    pub kept: f64,
    /// One whole pass over the table the daemon's GC's way, at once:
    /// seconds, and the entries it read.
    pub scan_s: f64,
    pub scanned: usize,
}

/// One rate of the paced sweep.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SweepStep {
    /// The rate the generator was told to send.
    pub target_mpps: f64,
    /// What it sent (its pacer cannot catch up after a stall of more than
    /// 32 frame gaps).
    pub sent_mpps: f64,
    /// Delivered at the sink.
    pub mpps: f64,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// A case on a data plane over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub rig: RigKind,
    pub plane: Option<Plane>,
    pub case: Case,
    pub runs: usize,
    pub mpps: Stat,
    /// A case with a flood: its frames let through.
    pub flood_mpps: Option<Stat>,
    pub paced_mpps: Option<Stat>,
    pub cpu_ns: Option<Stat>,
    pub path_ns: Option<Stat>,
    /// The daemon's CPU time over the flooded windows, in CPUs.
    pub daemon_cpu: Option<Stat>,
    /// `--scale`: pre-filled connections (None: an ordinary case).
    pub connections: Option<u32>,
    pub scale: Option<ScaleSummary>,
    /// Outcomes other than forwarded, summed over rounds, as a share of
    /// all the programs saw.
    pub not_forwarded: Vec<(String, f64)>,
    /// Share of the generator's packets not delivered at the sink (flooded,
    /// over all rounds), and the kernel's drop counters as shares of the
    /// packets sent, largest first.
    pub lost: f64,
    pub drops: Vec<(String, f64)>,
    /// `--prog-stats`: ns per run of each of the router's programs that
    /// ran (median over the rounds).
    pub prog_ns: Vec<(String, Stat)>,
}

/// `--scale` figures of a case over all rounds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ScaleSummary {
    pub ct_max_entries: u32,
    /// Memory of the maps (median over rounds; the same every round: the
    /// same connections are pre-filled).
    pub ct_bytes: u64,
    pub maps_bytes: u64,
    pub fill_s: Stat,
    /// Seconds of one GC-like pass over the table.
    pub scan_s: Stat,
    /// The lowest share of probed pre-filled entries kept.
    pub kept_min: f64,
}

fn plane_name(p: Option<Plane>) -> &'static str {
    p.map_or("rig", Plane::name)
}

fn connections(s: &Sample) -> Option<u32> {
    s.scale.map(|x| x.connections)
}

/// `n` as 10k, 1M, 1.5M, or the plain number.
pub fn count(n: u32) -> String {
    if n >= 1_000_000 && n.is_multiple_of(100_000) {
        let m = n as f64 / 1e6;
        format!("{m}M")
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// ns per run of each program, over the samples where it ran; programs
/// that ran for fewer than 1% of the packets delivered (ARP, a stray
/// frame: a handful of runs, whose average means nothing) left out.
fn prog_ns(ss: &[&Sample]) -> Vec<(String, Stat)> {
    let mut names: Vec<&str> = ss
        .iter()
        .flat_map(|s| s.progs.iter().map(|p| p.name.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let delivered: u64 = ss.iter().map(|s| s.delivered).sum();
    names
        .into_iter()
        .filter(|n| {
            let runs: u64 = ss
                .iter()
                .flat_map(|s| s.progs.iter().filter(|p| p.name == *n))
                .map(|p| p.runs)
                .sum();
            runs * 100 >= delivered
        })
        .filter_map(|n| {
            let v: Vec<f64> = ss
                .iter()
                .flat_map(|s| s.progs.iter().filter(|p| p.name == n))
                .map(|p| p.ns as f64 / p.runs as f64)
                .collect();
            Some((n.to_string(), Stat::of(&v)?))
        })
        .collect()
}

pub fn summarize(samples: &[Sample]) -> Vec<CaseResult> {
    let mut keys: Vec<(Case, RigKind, Option<Plane>, Option<u32>)> = samples
        .iter()
        .map(|s| (s.case, s.rig, s.plane, connections(s)))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|(case, rig, plane, conns)| {
            let ss: Vec<&Sample> = samples
                .iter()
                .filter(|s| {
                    s.case == case && s.rig == rig && s.plane == plane && connections(s) == conns
                })
                .collect();
            let v = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
                ss.iter().filter_map(|s| f(s)).collect()
            };
            let totals = sum_by_name(ss.iter().map(|s| &s.outcomes[..]));
            let all: u64 = totals
                .iter()
                .filter(|(k, _)| k != "xdp->tc")
                .map(|t| t.1)
                .sum();
            let not_forwarded = totals
                .iter()
                .filter(|(k, _)| !k.starts_with("forwarded/") && k != "xdp->tc")
                .map(|(k, n)| (k.clone(), *n as f64 / all.max(1) as f64))
                .collect();
            let sent: u64 = ss.iter().map(|s| s.sent).sum();
            let delivered: u64 = ss.iter().map(|s| s.delivered).sum();
            let mut drops = pair_veth_drops(sum_by_name(ss.iter().map(|s| &s.drops[..])));
            drops.sort_by_key(|d| std::cmp::Reverse(d.1));
            let share = |n: u64| n as f64 / sent.max(1) as f64;
            let sc: Vec<ScaleInfo> = ss.iter().filter_map(|s| s.scale).collect();
            let scale = (!sc.is_empty()).then(|| {
                let med = |f: &dyn Fn(&ScaleInfo) -> u64| -> u64 {
                    let mut v: Vec<u64> = sc.iter().map(f).collect();
                    v.sort();
                    v[v.len() / 2]
                };
                ScaleSummary {
                    ct_max_entries: sc[0].ct_max_entries,
                    ct_bytes: med(&|x| x.ct_bytes),
                    maps_bytes: med(&|x| x.maps_bytes),
                    fill_s: Stat::of(&sc.iter().map(|x| x.fill_s).collect::<Vec<_>>())
                        .expect("not empty"),
                    scan_s: Stat::of(&sc.iter().map(|x| x.scan_s).collect::<Vec<_>>())
                        .expect("not empty"),
                    kept_min: sc.iter().map(|x| x.kept).fold(1.0, f64::min),
                }
            });
            CaseResult {
                rig,
                plane,
                case,
                runs: ss.len(),
                mpps: Stat::of(&v(&|s| Some(s.mpps))).expect("at least one sample"),
                flood_mpps: Stat::of(&v(&|s| s.flood_mpps)),
                paced_mpps: Stat::of(&v(&|s| s.paced_mpps)),
                cpu_ns: Stat::of(&v(&|s| s.cpu_ns)),
                path_ns: Stat::of(&v(&|s| s.path_ns)),
                daemon_cpu: Stat::of(&v(&|s| s.daemon_cpu)),
                connections: conns,
                scale,
                not_forwarded,
                lost: share(sent.saturating_sub(delivered)),
                drops: drops.into_iter().map(|(k, n)| (k, share(n))).collect(),
                prog_ns: prog_ns(&ss),
            }
        })
        .collect()
}

/// Counts of the same name added up, in order of first appearance.
fn sum_by_name<'a>(lists: impl Iterator<Item = &'a [(String, u64)]>) -> Vec<(String, u64)> {
    let mut totals: Vec<(String, u64)> = Vec::new();
    for (k, n) in lists.flatten() {
        match totals.iter_mut().find(|(t, _)| t == k) {
            Some(t) => t.1 += n,
            None => totals.push((k.clone(), *n)),
        }
    }
    totals
}

/// A veth that cannot hand a packet to its peer counts it twice: as its
/// own tx_drop and as the peer's rx_drop. Equal counts (within 3%: the two
/// namespaces' counters are read one after the other, while packets keep
/// being dropped) are shown once, as "A -> B".
fn pair_veth_drops(drops: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut used = vec![false; drops.len()];
    for (i, (tx, a)) in drops.iter().enumerate() {
        let Some(from) = tx.strip_suffix(" tx_drop") else {
            continue;
        };
        let peer = drops.iter().enumerate().position(|(j, (rx, b))| {
            !used[j] && rx.ends_with(" rx_drop") && a.abs_diff(*b) * 100 <= 3 * (*a).max(*b)
        });
        if let Some(j) = peer {
            used[i] = true;
            used[j] = true;
            let to = drops[j].0.trim_end_matches(" rx_drop");
            out.push((format!("{from} -> {to}"), (*a).max(drops[j].1)));
        }
    }
    out.extend(
        drops
            .into_iter()
            .zip(used)
            .filter(|(_, u)| !u)
            .map(|(d, _)| d),
    );
    out
}

fn range(s: &Stat) -> String {
    format!("{} ({}-{})", mpps(s.median), mpps(s.min), mpps(s.max))
}

/// A rate in Mpps: two decimals, more below 0.01 (a trickle is not 0.00).
fn mpps(v: f64) -> String {
    if v > 0.0 && v < 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    }
}

/// What the notes column of the tables may hold.
const NOTES_LEGEND: &str = "notes: the programs' outcomes other than forwarded and \
     `lost N%` (the share of frames sent that did not arrive; in brackets where the kernel \
     counted drops: a device's drop counter, or `A -> B` between a device and its peer), \
     `<program> N ns a run` (--prog-stats), `flood let through` (the flood cases); \
     RIG ERROR: a router case above its rig's ceiling, so the rig, not the router, was \
     measured; `-`: not measured";

/// The terminal table.
pub fn table(results: &[CaseResult], opts: &Opts) -> String {
    let mut out = String::new();
    // Beside router cases the ceilings run twice a round (`units`).
    let twice = results.iter().any(|r| r.case.is_rig()) && results.iter().any(|r| !r.case.is_rig());
    let _ = writeln!(
        out,
        "\nMpps delivered at the sink: median (min-max) of {}{}; {}-byte frames; \
         router CPU = busy time of CPU {} per packet; path = run time of the router-side \
         NAPI threads (and, on the ovs rig, of ovs-vswitchd) per packet",
        super::plural(opts.rounds as usize, "round"),
        if twice {
            " (the ceilings: twice a round)"
        } else {
            ""
        },
        opts.frame + 4,
        opts.router_cpu
    );
    let _ = writeln!(out, "{NOTES_LEGEND}");
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:<9} {:<22} {:<22} {:>12} {:>9}  notes",
        "case", "rig", "plane", "flooded Mpps", "paced best Mpps", "router CPU", "path"
    );
    let _ = writeln!(out, "{}", "-".repeat(113));
    let mut last = None;
    for r in results {
        if last.is_some() && last != Some(r.case) {
            let _ = writeln!(out);
        }
        last = Some(r.case);
        let mut notes = notes(r);
        if let Some(above) = above_ceiling(r, results) {
            notes = if notes.is_empty() {
                above
            } else {
                format!("{above}; {notes}")
            };
        }
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:<9} {:<22} {:<22} {:>12} {:>9}  {}",
            r.case.name(),
            r.rig.name(),
            plane_name(r.plane),
            range(&r.mpps),
            r.paced_mpps.as_ref().map_or("-".into(), range),
            r.cpu_ns
                .as_ref()
                .map_or("-".into(), |c| format!("{:.0} ns/pkt", c.median)),
            r.path_ns
                .as_ref()
                .map_or("-".into(), |c| format!("{:.0} ns", c.median)),
            notes
        );
    }
    out
}

/// The ceiling a router case is bound by, on its own rig: the bare XDP
/// redirect for the XDP plane (a router does that and more), the generator
/// to the sink without a router for every plane. Compared at their best,
/// flooded or paced: a flood overfills the rings behind a forwarder the
/// more the faster it is, so a bare redirect flooded can deliver less than
/// a router while it can carry more. The router case's median is held to
/// the most the ceiling delivered in any of its runs (twice a round; where
/// a switch bounds both, as on the ovs rig, the two are level and only the
/// runs' spread tells them apart). A router case above one is a rig error
/// (the ceiling ran under other conditions): said so, loudly.
fn above_ceiling(r: &CaseResult, results: &[CaseResult]) -> Option<String> {
    if r.case.is_rig() {
        return None;
    }
    let best = |x: &CaseResult| x.mpps.median.max(x.paced_mpps.map_or(0.0, |p| p.median));
    let most = |x: &CaseResult| x.mpps.max.max(x.paced_mpps.map_or(0.0, |p| p.max));
    let median = |c: Case| {
        results
            .iter()
            .find(|x| x.case == c && x.rig == r.rig)
            .map(most)
    };
    let mine = best(r);
    let mut bounds = vec![(Case::Ceiling, median(Case::Ceiling))];
    if r.plane == Some(Plane::Xdp) {
        bounds.push((Case::BareRedirect, median(Case::BareRedirect)));
    }
    bounds
        .into_iter()
        .filter_map(|(c, m)| Some((c, m?)))
        .find(|(_, m)| mine > *m)
        .map(|(c, m)| {
            let which = match c {
                Case::Ceiling => "ceiling".to_string(),
                c => format!("{} ceiling", c.name()),
            };
            format!(
                "RIG ERROR: above the {} rig's {which} ({} Mpps)",
                r.rig.name(),
                mpps(m)
            )
        })
}

/// The programs' outcomes other than forwarded, then what did not arrive
/// and the kernel's largest drop counts (shares of the packets sent).
fn notes(r: &CaseResult) -> String {
    let pct = |(k, f): &(String, f64)| format!("{k} {:.1}%", f * 100.0);
    let mut parts: Vec<String> = Vec::new();
    if let Some(f) = &r.flood_mpps {
        parts.push(format!("flood let through {} Mpps", mpps(f.median)));
    }
    parts.extend(
        r.prog_ns
            .iter()
            .map(|(n, s)| format!("{n} {:.0} ns a run", s.median)),
    );
    parts.extend(r.not_forwarded.iter().filter(|(_, f)| *f >= 0.001).map(pct));
    if r.lost >= 0.001 {
        let why: Vec<String> = r
            .drops
            .iter()
            .filter(|(_, f)| *f >= 0.001)
            .take(3)
            .map(pct)
            .collect();
        parts.push(if why.is_empty() {
            format!("lost {:.1}%", r.lost * 100.0)
        } else {
            format!("lost {:.1}% ({})", r.lost * 100.0, why.join(", "))
        });
    }
    parts.join(", ")
}

/// The terminal table of `--scale`: per case and data plane, one row per
/// pre-filled table, with its rate against the row without pre-filled
/// connections, the maps' memory, the fill time and the daemon's CPU.
pub fn scale_table(results: &[CaseResult], opts: &Opts) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMpps delivered at the sink with the connection table pre-filled (+N live TCP \
         connections, two entries each): median (min-max) of {}; {}-byte frames; \
         router CPU = busy time of CPU {} per packet; memory = the kernel's memlock figure; \
         GC pass = one whole read of the table the daemon's way (it spreads it, 20 ms each second); daemon = \
         its CPU use while measuring ({})",
        super::plural(opts.rounds as usize, "round"),
        opts.frame + 4,
        opts.router_cpu,
        if opts.with_gc {
            "--with-gc: running"
        } else {
            "paused"
        }
    );
    let _ = writeln!(out, "{NOTES_LEGEND}");
    let _ = writeln!(
        out,
        "{:<9} {:<5} {:>6} {:<22} {:>6} {:>12} {:>6} {:>11} {:>11} {:>7} {:>7} {:>7}  notes",
        "case",
        "plane",
        "+conns",
        "flooded Mpps",
        "vs +0",
        "router CPU",
        "paced",
        "XR_CT",
        "all maps",
        "fill",
        "GC pass",
        "daemon"
    );
    let _ = writeln!(out, "{}", "-".repeat(128));
    let mut last = None;
    for r in results {
        let (Some(n), Some(sc)) = (r.connections, r.scale) else {
            continue;
        };
        if last.is_some() && last != Some((r.case, r.plane)) {
            let _ = writeln!(out);
        }
        last = Some((r.case, r.plane));
        let base = results
            .iter()
            .find(|b| b.case == r.case && b.plane == r.plane && b.connections == Some(0));
        let mut note = notes(r);
        if sc.kept_min < 1.0 {
            if !note.is_empty() {
                note.push_str(", ");
            }
            let _ = write!(
                note,
                "pre-filled entries lost: {:.1}%",
                (1.0 - sc.kept_min) * 100.0
            );
        }
        let _ = writeln!(
            out,
            "{:<9} {:<5} {:>6} {:<22} {:>6} {:>12} {:>6} {:>11} {:>11} {:>7} {:>7} {:>7}  {}",
            r.case.name(),
            plane_name(r.plane),
            format!("+{}", count(n)),
            range(&r.mpps),
            base.map_or("-".into(), |b| format!(
                "{:+.0}%",
                (r.mpps.median / b.mpps.median - 1.0) * 100.0
            )),
            r.cpu_ns
                .as_ref()
                .map_or("-".into(), |c| format!("{:.0} ns/pkt", c.median)),
            r.paced_mpps
                .as_ref()
                .map_or("-".into(), |p| format!("{:.2}", p.median)),
            mib(sc.ct_bytes),
            mib(sc.maps_bytes),
            format!("{:.1} s", sc.fill_s.median),
            format!("{:.2} s", sc.scan_s.median),
            match &r.daemon_cpu {
                Some(c) if opts.with_gc => format!("{:.0}%", c.median * 100.0),
                Some(_) => "paused".into(),
                None => "-".into(),
            },
            note
        );
    }
    out
}

/// Everything as JSON: the options, the medians and every sample.
pub fn json(results: &[CaseResult], samples: &[Sample], opts: &Opts) -> Result<String> {
    // Each result with its rig error, if any (as the table's notes say).
    let results: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r)?;
            v["rig_error"] = json!(above_ceiling(r, results));
            Ok(v)
        })
        .collect::<Result<_>>()?;
    let v = json!({
        "machine": {
            "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default().trim(),
        },
        "options": {
            "rounds": opts.rounds,
            "duration_s": opts.duration,
            "sweep_steps": opts.sweep,
            "frame_bytes": opts.frame + 4,
            "gen_cpu": opts.gen_cpu,
            "router_cpu": opts.router_cpu,
            "sink_cpu": opts.sink_cpu(),
            "rigs": opts.rig.kinds(),
            "planes": opts.planes,
            "cases": opts.cases,
            "new_connection_rate": opts.new_connection_rate,
            "prog_stats": opts.prog_stats,
            "nic_headroom": opts.nic_headroom,
            "scale_connections": opts.scale.then_some(&opts.connections),
            "scale_with_gc": opts.scale.then_some(opts.with_gc),
        },
        "results": results,
        "samples": samples,
    });
    Ok(serde_json::to_string_pretty(&v)?)
}

fn color(p: Option<Plane>) -> &'static str {
    match p {
        None => "#2ca02c",
        Some(Plane::Xdp) => "#1f77b4",
        Some(Plane::Tc) => "#ff7f0e",
        Some(Plane::Iptables) => "#d62728",
        Some(Plane::Kernel) => "#7f7f7f",
    }
}

/// A grouped bar chart: one group per case, one bar per data plane (the
/// flooded median, whiskers min-max), a dot for the paced median.
pub fn svg(results: &[CaseResult]) -> String {
    let mut cases: Vec<(Case, Option<u32>)> =
        results.iter().map(|r| (r.case, r.connections)).collect();
    cases.sort();
    cases.dedup();
    let bar = 22.0;
    let gap = 26.0;
    let (left, top, height) = (60.0, 40.0, 300.0);
    let groups: Vec<(String, Vec<&CaseResult>)> = cases
        .iter()
        .map(|&(c, n)| {
            let label = match n {
                Some(n) => format!("{} +{}", c.name(), count(n)),
                None => c.name().to_string(),
            };
            let rs = results
                .iter()
                .filter(|r| r.case == c && r.connections == n)
                .collect();
            (label, rs)
        })
        .collect();
    let width: f64 = left
        + groups
            .iter()
            .map(|(_, rs)| rs.len() as f64 * bar + gap)
            .sum::<f64>()
        + 20.0;
    let ymax = results
        .iter()
        .map(|r| r.mpps.max.max(r.paced_mpps.map_or(0.0, |p| p.max)))
        .fold(0.5f64, f64::max);
    let ymax = (ymax * 1.1).ceil();
    let y = |v: f64| top + height - v / ymax * height;
    let mut s = String::new();
    let total_w = width.max(420.0);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        top + height + 90.0
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14">xrouter-bench: Mpps delivered per data plane (bar: flooded median, whiskers: min-max, dot: paced best)</text>"#
    );
    let step = if ymax > 8.0 { 2.0 } else { 1.0 };
    let mut t = 0.0;
    while t <= ymax + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{:.0}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{t}</text>"##,
            width - 10.0,
            y(t),
            y(t),
            left - 6.0,
            y(t) + 4.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.0}" transform="rotate(-90 14 {:.0})" text-anchor="middle">Mpps</text>"#,
        top + height / 2.0,
        top + height / 2.0
    );
    let mut x = left + gap / 2.0;
    for (label, rs) in &groups {
        let gx = x;
        for r in rs {
            let c = color(r.plane);
            let h = y(0.0) - y(r.mpps.median);
            // The node rigs' bars pale (OVS palest), outlined.
            let opacity = match r.rig {
                RigKind::Direct => 1.0,
                RigKind::Production => 0.45,
                RigKind::Ovs => 0.2,
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{c}" fill-opacity="{opacity}" stroke="{c}"><title>{} rig, {} {}: {:.2} Mpps ({:.2}-{:.2})</title></rect>"#,
                y(r.mpps.median),
                bar - 3.0,
                r.rig.name(),
                plane_name(r.plane),
                label,
                r.mpps.median,
                r.mpps.min,
                r.mpps.max
            );
            let cx = x + (bar - 3.0) / 2.0;
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
                y(r.mpps.min),
                y(r.mpps.max)
            );
            if let Some(p) = r.paced_mpps {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{cx:.1}" cy="{:.1}" r="3.5" fill="white" stroke="{c}" stroke-width="2"><title>paced best {:.2} Mpps</title></circle>"#,
                    y(p.median),
                    p.median
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="9">{:.1}</text>"#,
                y(r.mpps.median) - 4.0,
                r.mpps.median
            );
            x += bar;
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (gx + x) / 2.0,
            top + height + 16.0,
            label
        );
        x += gap;
    }
    let mut lx = left;
    let ly = top + height + 45.0;
    let mut planes: Vec<Option<Plane>> = results.iter().map(|r| r.plane).collect();
    planes.sort();
    planes.dedup();
    for p in planes {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.0}" y="{:.0}" width="12" height="12" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"#,
            ly - 10.0,
            color(p),
            lx + 16.0,
            ly,
            plane_name(p)
        );
        lx += 90.0;
    }
    if results.iter().any(|r| r.rig == RigKind::Production) {
        let _ = writeln!(
            s,
            r#"<text x="{lx:.0}" y="{ly:.0}">pale bars: production rig (NIC, bridge, skbs)</text>"#
        );
    }
    if results.iter().any(|r| r.rig == RigKind::Ovs) {
        let _ = writeln!(
            s,
            r#"<text x="{lx:.0}" y="{:.0}">palest bars: ovs rig (NIC, Open vSwitch, skbs)</text>"#,
            ly + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(case: Case, plane: Option<Plane>, median: f64) -> CaseResult {
        on(RigKind::Direct, case, plane, median)
    }

    fn on(rig: RigKind, case: Case, plane: Option<Plane>, median: f64) -> CaseResult {
        CaseResult {
            rig,
            plane,
            case,
            runs: 1,
            mpps: Stat {
                median,
                min: median,
                max: median,
            },
            flood_mpps: None,
            paced_mpps: None,
            cpu_ns: None,
            path_ns: None,
            daemon_cpu: None,
            connections: None,
            scale: None,
            not_forwarded: vec![],
            lost: 0.0,
            drops: vec![],
            prog_ns: vec![],
        }
    }

    #[test]
    fn a_router_case_above_its_ceiling_is_flagged_as_a_rig_error() {
        let results = vec![
            result(Case::Ceiling, None, 3.0),
            result(Case::BareRedirect, None, 1.31),
            result(Case::EastWest, Some(Plane::Xdp), 1.84),
            result(Case::EastWest, Some(Plane::Tc), 1.2),
            result(Case::Snat1, Some(Plane::Iptables), 3.5),
        ];
        let flag = |i: usize| above_ceiling(&results[i], &results);
        assert_eq!(flag(0), None, "a ceiling is not measured against itself");
        assert!(flag(2).is_some_and(|f| f.contains("bare-redirect ceiling (1.31 Mpps)")));
        assert!(
            flag(4).is_some_and(|f| f.contains("direct rig's ceiling (3.00")),
            "{:?}",
            flag(4)
        );
        assert_eq!(
            flag(3),
            None,
            "tc is bound by the generator-sink ceiling only"
        );
        assert!(flag(4).is_some_and(|f| f.contains("RIG ERROR") && f.contains("ceiling (3.00")));
        let opts = <crate::Cli as clap::Parser>::parse_from(["bench"]).opts;
        let t = table(&results, &opts);
        assert!(t.contains("RIG ERROR"), "{t}");
        // The header says what the notes column holds.
        assert!(t.contains("notes: ") && t.contains("`A -> B`"), "{t}");
    }

    /// A trickle shows its digits, not 0.00.
    #[test]
    fn low_rates_keep_their_digits() {
        assert_eq!(mpps(1.234), "1.23");
        assert_eq!(mpps(0.0123), "0.01");
        assert_eq!(mpps(0.00412), "0.0041");
        assert_eq!(mpps(0.0), "0.00");
        let mut r = result(Case::Snat1, Some(Plane::Tc), 0.0021);
        r.mpps.min = 0.0019;
        assert_eq!(range(&r.mpps), "0.0021 (0.0019-0.0021)");
    }

    /// Where a switch bounds the ceiling and the router alike (the ovs
    /// rig), their medians are level: the router's median is held to the
    /// most the ceiling delivered in a round.
    #[test]
    fn a_ceiling_s_spread_over_rounds_counts() {
        let mut ceiling = on(RigKind::Ovs, Case::Ceiling, None, 0.040);
        ceiling.mpps.min = 0.036;
        ceiling.mpps.max = 0.044;
        let results = vec![
            ceiling,
            on(RigKind::Ovs, Case::EastWest, Some(Plane::Tc), 0.042),
            on(RigKind::Ovs, Case::Snat1k, Some(Plane::Tc), 0.046),
        ];
        assert_eq!(above_ceiling(&results[1], &results), None);
        assert!(
            above_ceiling(&results[2], &results)
                .is_some_and(|f| f.contains("ovs rig's ceiling (0.04")),
        );
    }

    /// A flooded bare redirect can deliver less than a router (its rings
    /// overfill); its paced best is what the rig carries, and a router's
    /// best, flooded or paced, is held to that.
    #[test]
    fn ceilings_count_at_their_best_flooded_or_paced() {
        let paced = |mut r: CaseResult, p: f64| {
            r.paced_mpps = Some(Stat {
                median: p,
                min: p,
                max: p,
            });
            r
        };
        let results = vec![
            paced(result(Case::Ceiling, None, 5.5), 5.0),
            paced(result(Case::BareRedirect, None, 1.79), 3.59),
            result(Case::EastWest, Some(Plane::Xdp), 1.87),
            paced(result(Case::Snat1, Some(Plane::Xdp), 1.5), 3.7),
        ];
        let flag = |i: usize| above_ceiling(&results[i], &results);
        assert_eq!(flag(2), None, "below the bare redirect's paced 3.59");
        assert!(
            flag(3).is_some_and(|f| f.contains("bare-redirect ceiling (3.59")),
            "a router's paced best above the ceiling's: {:?}",
            flag(3)
        );
    }

    #[test]
    fn each_rig_s_cases_are_held_to_that_rig_s_ceilings() {
        use RigKind::*;
        let results = vec![
            on(Direct, Case::Ceiling, None, 3.0),
            on(Direct, Case::BareRedirect, None, 1.3),
            on(Production, Case::Ceiling, None, 0.9),
            on(Production, Case::BareRedirect, None, 0.5),
            on(Direct, Case::EastWest, Some(Plane::Xdp), 1.0),
            on(Production, Case::EastWest, Some(Plane::Xdp), 0.6),
            on(Production, Case::EastWest, Some(Plane::Tc), 0.7),
            on(Production, Case::EastWest, Some(Plane::Iptables), 0.95),
        ];
        let flag = |i: usize| above_ceiling(&results[i], &results);
        assert_eq!(flag(4), None, "direct xdp below the direct ceilings");
        assert!(
            flag(5).is_some_and(|f| f.contains("production rig's bare-redirect ceiling (0.50")),
            "{:?}",
            flag(5)
        );
        assert_eq!(flag(6), None, "tc is bound by the ceiling only");
        assert!(flag(7).is_some_and(|f| f.contains("production rig's ceiling (0.90")));
        // Without a production ceiling measured, nothing to hold it to.
        let only_direct = &results[..2];
        let r = on(Production, Case::EastWest, Some(Plane::Xdp), 5.0);
        assert_eq!(above_ceiling(&r, only_direct), None);
        // Rows are per rig, labelled.
        let samples: Vec<Sample> = [Direct, Production, Production]
            .iter()
            .enumerate()
            .map(|(i, &rig)| Sample {
                round: i as u32,
                rig,
                plane: Some(Plane::Xdp),
                case: Case::EastWest,
                mpps: 1.0 + i as f64,
                flood_mpps: None,
                offered_mpps: 5.0,
                cpu_ns: None,
                path_ns: None,
                daemon_cpu: None,
                scale: None,
                paced_mpps: None,
                sweep: vec![],
                other_frames: 0,
                outcomes: vec![],
                sent: 10,
                delivered: 5,
                drops: vec![],
                progs: vec![],
            })
            .collect();
        let sum = summarize(&samples);
        assert_eq!(sum.len(), 2);
        assert_eq!((sum[0].rig, sum[0].runs), (Direct, 1));
        assert_eq!(
            (sum[1].rig, sum[1].runs, sum[1].mpps.median),
            (Production, 2, 2.5)
        );
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            opts: Opts,
        }
        let opts = <Cli as clap::Parser>::parse_from(["bench"]).opts;
        let t = table(&sum, &opts);
        assert!(t.contains(" direct ") && t.contains(" production "), "{t}");
        assert!(svg(&sum).contains("production rig"));
    }

    #[test]
    fn veth_drops_counted_once() {
        let d = |k: &str, n| (k.to_string(), n);
        let got = pair_veth_drops(vec![
            d("node: tapA tx_drop", 1000),
            d("router: qg tx_drop", 50),
            // Read a moment after the tap's: 2.5% more.
            d("router: qrA rx_drop", 1025),
            d("cpu backlog full", 7),
        ]);
        assert_eq!(
            got,
            vec![
                d("node: tapA -> router: qrA", 1025),
                d("router: qg tx_drop", 50),
                d("cpu backlog full", 7)
            ]
        );
    }
}
