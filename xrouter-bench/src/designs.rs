//! `--micro`'s last table: the connection table's work alone, in the
//! kernel's hash maps as the router uses them and in a prototype of a
//! table of xrouter's own (`xr_bench_table`, open addressing in an array,
//! a key and its entry in one cache line), for the same keys: what a table
//! of its own would buy a new connection and an established packet among
//! many flows, before it is built.

use anyhow::{Context as _, Result, bail};
use aya::{Ebpf, EbpfLoader, maps::Array};
use router_common::bench::{
    TABLE_EST, TABLE_FILL, TABLE_KEST, TABLE_KFILL, TABLE_KNEW, TABLE_NEW, TableConfig,
};

use crate::{
    OBJECT,
    micro::{
        REPEAT, REPEAT_NEW, RUNS, load_xdp, map, median, run_once, snat_frame, table_connections,
    },
};

const PROG: &str = "xr_bench_table";

/// What a run did (`table.rs` in the benchmark's BPF object).
const DONE_OPENED: u32 = 2;
const DONE_FOUND: u32 = 3;

/// Connections of the established operation (fewer if the tables hold
/// fewer: `XRB_MICRO_CONNTRACK_SIZE`).
const FLOWS: u32 = 65_536;
/// The first connection the new-connection runs open: none filled has it.
const NEW_BASE: u32 = 1 << 27;

/// Table states: connections filled in first (the established operation's
/// 64k among them).
pub const STATES: [u32; 2] = [FLOWS, 500_000];

pub struct DesignRow {
    pub table: String,
    pub op: String,
    pub kernel: f64,
    pub own: f64,
    /// The prototype's keys of filled connections evicted from full
    /// windows while filling (the kernel's map evicts none).
    pub fill_evicted: u64,
    /// The prototype's lookups of a filled connection that missed.
    pub missed: u64,
}

/// The operation, the connections the established one picks from, the
/// array's mask.
#[derive(Clone, Copy)]
struct Op {
    op: u32,
    flows: u32,
    mask: u32,
}

fn set(ebpf: &mut Ebpf, o: Op, base: u32) -> Result<()> {
    let mut cfg: Array<_, TableConfig> = Array::try_from(map(ebpf, "XRB_TABLE_CFG")?)?;
    cfg.set(
        0,
        TableConfig {
            op: o.op,
            flows: o.flows,
            mask: o.mask,
            base,
        },
        0,
    )?;
    // Every operation counts its runs, and what it evicted or missed, from 0.
    let mut seq: Array<_, u32> = Array::try_from(map(ebpf, "XRB_TABLE_SEQ")?)?;
    for i in 0..3 {
        seq.set(i, 0, 0)?;
    }
    Ok(())
}

/// Keys the prototype evicted from full windows, and lookups of filled
/// connections that missed, since the last `set`.
fn losses(ebpf: &mut Ebpf) -> Result<(u64, u64)> {
    let seq: Array<_, u32> = Array::try_from(map(ebpf, "XRB_TABLE_SEQ")?)?;
    Ok((seq.get(&1, 0)? as u64, seq.get(&2, 0)? as u64))
}

/// Median ns of [`RUNS`] runs of `op`, each of `repeat` repetitions whose
/// last must have done `want` (or, for a lookup, missed a connection that
/// is counted as missed), and the losses of all runs.
fn measure(
    ebpf: &mut Ebpf,
    ingress: u32,
    o: Op,
    repeat: u32,
    want: u32,
) -> Result<(f64, (u64, u64))> {
    let frame = snat_frame();
    let mut runs = Vec::new();
    let mut lost = (0, 0);
    for r in 0..RUNS {
        // New connections: each run opens its own.
        set(ebpf, o, NEW_BASE + r as u32 * repeat)?;
        let (ret, ns) = run_once(ebpf, PROG, ingress, &frame, repeat)?;
        let (evicted, missed) = losses(ebpf)?;
        if ret != want && !(want == DONE_FOUND && missed > 0) {
            bail!(
                "table prototype: operation {} returned {ret}, not {want}",
                o.op
            );
        }
        lost = (lost.0 + evicted, lost.1 + missed);
        runs.push(ns);
    }
    Ok((median(runs), lost))
}

/// Opens connections 0..`connections`; the keys evicted meanwhile.
fn fill(ebpf: &mut Ebpf, ingress: u32, o: Op, connections: u32) -> Result<u64> {
    set(ebpf, o, 0)?;
    let (ret, _) = run_once(ebpf, PROG, ingress, &snat_frame(), connections)?;
    if ret != DONE_OPENED {
        bail!("table prototype: filling returned {ret}");
    }
    Ok(losses(ebpf)?.0)
}

/// Both designs in each table state, a fresh object per state.
pub fn measure_all(ingress: u32) -> Result<Vec<DesignRow>> {
    // The kernel's maps sized as the router sized them before it had a
    // table of its own: `XR_CT` two entries per connection, `XR_CT_NEW`
    // as many connections up to 65536, beyond a quarter (at least 65536).
    let conns = table_connections();
    let ct = 2 * conns;
    let ct_new = 2 * if conns <= 65536 {
        conns
    } else {
        (conns / 4).max(65536)
    };
    // Load at most one half with `XR_CT` full: the same entries, twice the
    // slots (64 bytes each against a bucket and a ~128-byte element).
    let slots = (2 * ct).next_power_of_two();
    let mask = slots - 1;
    let mut rows = Vec::new();
    for connections in STATES {
        let connections = connections.min(ct / 2);
        let table = format!("{}k connections", connections / 1024);
        if super::stopped() {
            bail!("interrupted");
        }
        super::say(&format!("micro: table designs, {table}"));
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("XRB_KCT", ct)
            .map_max_entries("XRB_KNEW", ct_new)
            .map_max_entries("XRB_SLOTS", slots)
            .load(OBJECT)
            .context("loading the BPF object")?;
        load_xdp(&mut ebpf, PROG)?;
        // A power of two (the program picks by mask), all of them filled.
        let flows = FLOWS.min(1 << (31 - connections.leading_zeros()));
        let op = |op| Op { op, flows, mask };
        let evicted = fill(&mut ebpf, ingress, op(TABLE_FILL), connections)?;
        fill(&mut ebpf, ingress, op(TABLE_KFILL), connections)?;
        let (kest, (_, kmissed)) = measure(&mut ebpf, ingress, op(TABLE_KEST), REPEAT, DONE_FOUND)?;
        if kmissed != 0 {
            bail!("table prototype: the kernel's map lost {kmissed} lookups of filled connections");
        }
        let (est, (_, missed)) = measure(&mut ebpf, ingress, op(TABLE_EST), REPEAT, DONE_FOUND)?;
        let est = (kest, est);
        let new = (
            measure(&mut ebpf, ingress, op(TABLE_KNEW), REPEAT_NEW, DONE_OPENED)?.0,
            measure(&mut ebpf, ingress, op(TABLE_NEW), REPEAT_NEW, DONE_OPENED)?.0,
        );
        rows.push(DesignRow {
            table: table.clone(),
            op: format!("established, among {}k", flows / 1024),
            kernel: est.0,
            own: est.1,
            fill_evicted: evicted,
            missed,
        });
        rows.push(DesignRow {
            table,
            op: "new connection".into(),
            kernel: new.0,
            own: new.1,
            fill_evicted: evicted,
            missed: 0,
        });
    }
    Ok(rows)
}

pub fn report(rows: &[DesignRow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "\nThe connection table's work alone (no parse, NAT or rewrite), ns per operation:\n\
         the kernel's hash maps as the router uses them, and a prototype of a table of\n\
         xrouter's own (open addressing, a key and its entry in one cache line):\n",
    );
    let _ = writeln!(
        out,
        "{:<18} {:<24} {:>12} {:>12}",
        "table", "operation", "kernel maps", "own table"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<18} {:<24} {:>12.0} {:>12.0}",
            r.table, r.op, r.kernel, r.own
        );
    }
    let mut last = "";
    for r in rows.iter().filter(|r| r.fill_evicted != 0 || r.missed != 0) {
        if r.table != last {
            last = &r.table;
            let _ = writeln!(
                out,
                "own table, {}: {} keys evicted by full windows while filling;\n  \
                 {} of {} lookups of filled connections missed",
                r.table,
                r.fill_evicted,
                r.missed,
                RUNS as u32 * REPEAT
            );
        }
    }
    out
}
