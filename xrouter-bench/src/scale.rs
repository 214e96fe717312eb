//! `xrouter-bench --scale`: the packet rate with the router's connection
//! table pre-filled, and the memory of its maps.
//!
//! For every pre-filled size (`--connections`), on the xdp and tc planes, a
//! rig is built with the node's `conntrack_size` set to that size plus
//! headroom for the case's own flows (so no new connection has to evict),
//! the pinned `XR_CT` is filled from here with live connections, and the
//! cases run as usual. A pre-filled connection is what the pipeline
//! (`router-ebpf/src/pipeline/track.rs`) writes for a gateway-SNATed TCP
//! connection, both entries: ESTABLISHED (24 h idle timeout) and seen now, so
//! the daemon's GC keeps it. Its addresses cannot collide with
//! the measured flows (UDP, from 10.91.1.10 and 10.91.2.100): TCP from
//! 10.91.1.32-.112 ports 10000-59999 to 100.64.0.0/16 port 443, translated
//! to the gateway address ports 1024 and up.
//!
//! The daemon's GC reads the whole table in slices of 20 ms per second
//! (router-user's `backend::bpf::gc`): at 1M connections a pass of about
//! half a minute, and then the next. On a real node it runs on a
//! housekeeping core; here it can only take time from the generator or the
//! router, so by default the daemon is paused (SIGSTOP) while a table is
//! measured and the figures are the data path's; the GC's cost is reported
//! apart, as the time of one whole read of the table done the daemon's way.
//! `--with-gc` leaves the daemon running (unpinned, as in the ordinary rig)
//! and, from 100k pre-filled connections, starts each measurement once the
//! daemon is seen working on a pass, reporting the daemon's CPU use over
//! the window.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapData;
use router_common::conntrack::{
    CT_F_ASSURED, CT_F_REPLIED, CT_ORIGINAL, CT_REPLY, CtEntry, CtKey, NAT_SNAT, TCP_ESTABLISHED,
    ct_ticks,
};
use router_user::backend::bpf::CtTable;

use super::{
    Case, Opts, Plane, Sample, ScaleInfo, check_opts, cpu,
    progs::Progs,
    report,
    rig::{self, RouterRig},
    stopped, xrouter_bin,
};

/// Most connections `--connections` accepts (the fill's addressing holds
/// 4M; the table costs about 200 bytes per connection).
pub const MAX_CONNECTIONS: u32 = 4_000_000;
/// A fill taking longer than this stops the run.
const FILL_LIMIT: Duration = Duration::from_secs(300);
/// Pre-filled connections probed after the measurements.
const PROBES: u32 = 1000;
const PROTO_TCP: u8 = 6;

/// Connections the table holds beyond the pre-filled ones: the cases' own
/// flows twice over and at least 32768, so the LRU's free list never runs
/// low (it evicts when it does).
fn headroom(cases: &[Case]) -> u32 {
    cases
        .iter()
        .map(|c| 2 * c.flows())
        .max()
        .unwrap_or(0)
        .max(32768)
}

/// The `i`-th pre-filled connection, both entries, as track.rs writes a
/// gateway-SNATed TCP connection (see the module's comment for addresses).
pub(crate) fn connection(i: u32, gw: [u8; 4], now: u64) -> [(CtKey, CtEntry); 2] {
    let inside = [10, 91, 1, 32 + (i / 50_000) as u8];
    let sport = (10_000 + i % 50_000) as u16;
    let remote = [100, 64, (i >> 8) as u8, i as u8];
    let dport = 443u16;
    let port = (1024 + (i >> 16)) as u16;
    let key = |src, sport: u16, dst, dport: u16| {
        CtKey::new(src, dst, sport.to_be(), dport.to_be(), PROTO_TCP)
    };
    let orig = CtEntry {
        new_src: gw,
        new_dst: remote,
        new_sport: port.to_be(),
        new_dport: dport.to_be(),
        direction: CT_ORIGINAL,
        nat: NAT_SNAT,
        state: TCP_ESTABLISHED,
        flags: CT_F_REPLIED | CT_F_ASSURED,
        last_seen: now,
        created: ct_ticks(now),
        route: Default::default(),
    };
    let reply = CtEntry {
        new_src: remote,
        new_dst: inside,
        new_sport: dport.to_be(),
        new_dport: sport.to_be(),
        direction: CT_REPLY,
        ..orig
    };
    [
        (key(inside, sport, remote, dport), orig),
        (key(remote, dport, gw, port), reply),
    ]
}

fn open_ct(maps: &Path) -> Result<CtTable> {
    CtTable::from_pin(&maps.join(router_user::backend::bpf::XR_CT))
}

/// Inserts connections `0..n` (through the table's mapping); returns the
/// time it took. Bounded by [`FILL_LIMIT`] and interruptible.
fn fill(maps: &Path, n: u32, what: &str) -> Result<Duration> {
    let ct = open_ct(maps)?;
    let gw = rig::gateway_ip();
    let now = router_user::backend::bpf::monotonic_ns();
    let t0 = Instant::now();
    for i in 0..n {
        if i % 16_384 == 0 {
            if stopped() {
                bail!("interrupted");
            }
            if t0.elapsed() > FILL_LIMIT {
                bail!(
                    "filling the connection table: {i} of {n} connections after {} s",
                    FILL_LIMIT.as_secs()
                );
            }
            super::say(&format!(
                "{what} filling {:.0}% of {} connections",
                i as f64 * 100.0 / n as f64,
                report::count(n)
            ));
        }
        for (k, e) in connection(i, gw, now) {
            ct.insert(&k, &e).map_err(|why| {
                anyhow::anyhow!("filling the connection table: entry {}: {why:?}", 2 * i)
            })?;
        }
    }
    Ok(t0.elapsed())
}

/// One GC pass as the daemon runs it (read of every slot, pairing, expiry check;
/// the entries are fresh, so nothing is deleted), but at once instead of in
/// slices: its duration is the pass's whole work. Returns it and the
/// entries the table holds.
fn scan(maps: &Path) -> Result<(Duration, usize)> {
    let (pin_dir, id) = (
        maps.parent().context("pin dir")?,
        maps.file_name().context("router id")?,
    );
    let t0 = Instant::now();
    router_user::backend::bpf::pinned::gc(
        pin_dir,
        &id.to_string_lossy(),
        router_user::backend::bpf::monotonic_ns(),
    )?;
    let took = t0.elapsed();
    let entries = open_ct(maps)?.all().count();
    Ok((took, entries))
}

/// Waits (at most a GC period and a second) until the daemon is seen
/// working on a GC pass: 10 ms of CPU within a second (idle, it uses well
/// under a millisecond a second); returns whether it was.
fn await_gc(pid: u32) -> Result<bool> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(11) {
        let a = cpu::process_ns(pid);
        super::nap(Duration::from_secs(1))?;
        if cpu::process_ns(pid).saturating_sub(a) > 10_000_000 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A process stopped with SIGSTOP until dropped.
struct Paused(Option<nix::unistd::Pid>);

impl Paused {
    fn new(pid: Option<u32>) -> Result<Paused> {
        let pid = pid.map(|p| nix::unistd::Pid::from_raw(p as i32));
        if let Some(p) = pid {
            nix::sys::signal::kill(p, nix::sys::signal::SIGSTOP).context("pausing the daemon")?;
        }
        Ok(Paused(pid))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::SIGCONT);
        }
    }
}

/// Share of [`PROBES`] pre-filled connections whose two entries are present.
fn kept(maps: &Path, n: u32) -> Result<f64> {
    if n == 0 {
        return Ok(1.0);
    }
    let ct = open_ct(maps)?;
    let gw = rig::gateway_ip();
    let probes = PROBES.min(n);
    let mut found = 0u32;
    for j in 0..probes {
        let i = (j as u64 * n as u64 / probes as u64) as u32;
        for (k, _) in connection(i, gw, 0) {
            if ct.get(&k).is_some() {
                found += 1;
            }
        }
    }
    Ok(found as f64 / (2 * probes) as f64)
}

/// The kernel's `memlock` figure of a map (its memory, from fdinfo).
fn memlock(m: &MapData) -> Result<u64> {
    let fd = m.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in the map's fdinfo")
}

/// Memory of `XR_CT`, its size in slots, and the memory of all the
/// router's pinned maps.
fn memory(maps: &Path) -> Result<(u64, u32, u64)> {
    let (mut ct, mut entries, mut all) = (0, 0, 0);
    for e in std::fs::read_dir(maps)?.flatten() {
        if !e.file_type()?.is_file() {
            continue; // links/
        }
        let Ok(m) = MapData::from_pin(e.path()) else {
            continue;
        };
        let b = memlock(&m)?;
        all += b;
        if e.file_name() == router_user::backend::bpf::XR_CT {
            ct = b;
            let n = m.info()?.max_entries();
            entries = router_common::conntrack::ct_slots_of(n).unwrap_or(n);
        }
    }
    Ok((ct, entries, all))
}

pub fn run(opts: &Opts) -> Result<()> {
    check_opts(opts)?;
    let cases: Vec<Case> = if opts.cases.is_empty() {
        vec![Case::Snat1k]
    } else {
        let mut c: Vec<Case> = opts.cases.iter().copied().filter(|c| !c.is_rig()).collect();
        c.sort();
        c.dedup();
        c
    };
    let mut planes: Vec<Plane> = opts
        .planes
        .iter()
        .copied()
        .filter(|p| matches!(p, Plane::Xdp | Plane::Tc))
        .collect();
    planes.sort();
    planes.dedup();
    if cases.is_empty() || planes.is_empty() {
        bail!("--scale measures router cases on the xdp and tc planes");
    }
    let mut levels = opts.connections.clone();
    levels.sort();
    levels.dedup();
    if levels.is_empty() {
        bail!("--scale: no --connections");
    }
    let bin = xrouter_bin(opts)?;
    let room = headroom(&cases);

    let per_round = (planes.len() * levels.len() * cases.len()) as u32;
    let total = per_round * opts.rounds;
    println!(
        "xrouter-bench --scale: {} of {} ({} on {} with +{} connections; \
         table sized +{} connections; daemon {}); generator on CPU {}, router on CPU {}, sink on \
         CPU {}; {}-byte frames, {:.1} s flooded{}",
        super::plural(opts.rounds as usize, "round"),
        super::plural(per_round as usize, "measurement"),
        cases.iter().map(|c| c.name()).collect::<Vec<_>>().join(","),
        planes
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(","),
        levels
            .iter()
            .map(|n| report::count(*n))
            .collect::<Vec<_>>()
            .join("/+"),
        report::count(room),
        if opts.with_gc {
            "running"
        } else {
            "paused while measuring"
        },
        opts.gen_cpu,
        opts.router_cpu,
        opts.sink_cpu(),
        opts.frame + 4,
        opts.duration,
        if opts.sweep > 0 {
            format!(" + paced sweep of {} rates", opts.sweep)
        } else {
            String::new()
        }
    );
    let mut progs = Progs::load()?;
    let mut samples: Vec<Sample> = Vec::new();
    let mut done = 0u32;
    let t0 = Instant::now();
    for round in 0..opts.rounds {
        // Rotate planes and sizes, so a slow phase of the host does not
        // always hit the same one.
        let mut order = planes.clone();
        let k = round as usize % order.len();
        order.rotate_left(k);
        for &plane in &order {
            let mut sizes = levels.clone();
            let k = round as usize % sizes.len();
            sizes.rotate_left(k);
            for &n in &sizes {
                let what = |done: u32| {
                    format!(
                        "[{}/{total}] {:>4.0} s  round {}  {:<4} +{:<5}",
                        done + 1,
                        t0.elapsed().as_secs_f64(),
                        round + 1,
                        plane.name(),
                        report::count(n)
                    )
                };
                let ct_conns = n
                    .checked_add(room)
                    .context("connection table size overflows")?;
                let mut r = RouterRig::new(&mut progs, plane, opts, &bin, ct_conns)?;
                let maps = r.maps_dir();
                let fill_t = fill(&maps, n, &what(done))?;
                let (ct_bytes, ct_max_entries, maps_bytes) = memory(&maps)?;
                let paused = Paused::new(if opts.with_gc { None } else { r.daemon_pid() })?;
                let mut got = Vec::new();
                for &case in &cases {
                    if let Some(pid) = r.daemon_pid().filter(|_| opts.with_gc && n >= 100_000) {
                        super::say(&format!("{} waiting for a GC pass", what(done)));
                        if !await_gc(pid)? {
                            eprintln!("\nwarning: no GC pass seen within 11 s");
                        }
                    }
                    super::say(&format!("{} {}", what(done), case.name()));
                    done += 1;
                    let s = r.measure(&mut progs, case, opts)?;
                    got.push(s);
                }
                let kept = kept(&maps, n)?;
                // The read is timed alone, the daemon's GC not competing.
                let paused = match paused.0 {
                    Some(_) => paused,
                    None => Paused::new(r.daemon_pid())?,
                };
                super::say(&format!("{} scanning the table", what(done - 1)));
                let (scan_t, scanned) = scan(&maps)?;
                drop(paused);
                for s in got {
                    samples.push(Sample {
                        round,
                        plane: Some(plane),
                        scale: Some(ScaleInfo {
                            connections: n,
                            ct_max_entries,
                            fill_s: fill_t.as_secs_f64(),
                            ct_bytes,
                            maps_bytes,
                            kept,
                            scan_s: scan_t.as_secs_f64(),
                            scanned,
                        }),
                        ..s
                    });
                }
                r.teardown(&mut progs);
            }
        }
    }
    super::end_progress();
    let results = report::summarize(&samples);
    println!("{}", report::scale_table(&results, opts));
    super::write_files(&results, &samples, opts)
}

#[cfg(test)]
mod unit {
    use super::*;

    /// The other direction's key, as `ebpf::flows` pairs entries.
    fn partner(k: &CtKey, e: &CtEntry) -> CtKey {
        e.partner(k)
    }

    #[test]
    fn prefilled_connections_are_distinct_and_pair_up() {
        let gw = [172, 31, 91, 10];
        let mut seen = std::collections::HashSet::new();
        for i in (0..MAX_CONNECTIONS)
            .step_by(997)
            .chain([MAX_CONNECTIONS - 1])
        {
            let [(ok, oe), (rk, re)] = connection(i, gw, 1);
            assert_eq!(partner(&ok, &oe), rk);
            assert_eq!(partner(&rk, &re), ok);
            assert!(
                seen.insert(ok) && seen.insert(rk),
                "connection {i} collides"
            );
            // Never the measured flows' addresses.
            assert!(ok.src[3] >= 32 && ok.src[3] <= 112);
        }
    }

    #[test]
    fn counts_parse_and_print() {
        use crate::parse_count;
        assert_eq!(parse_count("0"), Ok(0));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("250000"), Ok(250_000));
        assert!(parse_count("5M").is_err());
        assert!(parse_count("lots").is_err());
        for (n, s) in [
            (0, "0"),
            (10_000, "10k"),
            (1_000_000, "1M"),
            (1_500_000, "1.5M"),
        ] {
            assert_eq!(report::count(n), s);
        }
        assert_eq!(report::count(1234), "1234");
    }
}
