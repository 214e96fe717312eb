//! `xrouter-bench --micro`: ns per packet of the data path alone, through
//! BPF_PROG_TEST_RUN (a million repetitions per run), with the maps the
//! daemon writes for the article's router, as `tests/datapath.rs` has them.
//!
//! The pipeline rewrites packets in place and a repeated test run does not
//! restore its input, so the measured program is `xr_bench_micro`: the
//! frame's 64 header bytes restored from a map, then exactly `xr_xdp`'s body.
//! The cost of the restore alone (same program, pipeline skipped) is
//! measured too and subtracted.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use router_common::{
    bench::{
        MICRO_HDR, MicroConfig, NEW_CLIENT, NEW_PORTS, STAGE_CLASSIFY, STAGE_CONNTRACK,
        STAGE_EMPTY, STAGE_FULL, STAGE_NEIGHBOUR, STAGE_PARSE, STAGE_RESTORE,
    },
    conntrack::{CT_F_ASSURED, CtEntry, CtKey, ESTABLISH_AFTER_NS, ct_entries, ct_slots},
    counters::CtEvent,
    port::{Neigh, NeighKey},
};
use serde_json::json;

use super::{Opts, progs::in_ns, scale};
use crate::OBJECT;
use router_user::{
    backend::{
        bpf::{CT_MASK_GLOBAL, CtTable, NotInserted, bump_generation, write_maps},
        netns,
    },
    config::node::NodeConfig,
    fixtures::{self, RouterSpec},
};

const MAC_QR1: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const MAC_QR2: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const MAC_QG: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const MAC_VM1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const MAC_VM2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
const MAC_EXT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
const XDP_DROP: u32 = 1;
const XDP_REDIRECT: u32 = 4;
pub(crate) const REPEAT: u32 = 1_000_000;
/// New flows: fewer runs, each creates a connection (two entries).
pub(crate) const REPEAT_NEW: u32 = 200_000;
pub(crate) const RUNS: usize = 5;
/// New flows into a table with room: at most this many a run (the
/// connections a run opens are removed after it).
const REPEAT_ROOM: u32 = 16_384;
/// Connections of the `snat-64k` case (`snat-1k`: 1024).
const SPREAD_FLOWS: u32 = 65_536;

fn ip(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().expect("literal address").octets()
}

fn csum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A 64-byte UDP frame (UDP checksum 0).
fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(MICRO_HDR);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let tot = (MICRO_HDR - 14) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0]);
    h.extend_from_slice(&ip(src));
    h.extend_from_slice(&ip(dst));
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(tot - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(MICRO_HDR, 0xab);
    f
}

/// A TCP SYN, padded to `MICRO_HDR` bytes (checksums as `udp`'s: the
/// pipeline updates them incrementally, never checks them).
fn syn(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
) -> Vec<u8> {
    let mut f = udp(src_mac, dst_mac, src, sport, dst, dport);
    // Protocol TCP, and the IP header's checksum again.
    f[23] = 6;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    // Sequence and acknowledgment numbers, data offset 5, flags SYN,
    // window, checksum, urgent pointer.
    let tcp = [
        0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    f[38..54].copy_from_slice(&tcp);
    f
}

pub(crate) fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("map {name}"))
}

/// The maps the daemon writes for the article's router (the same fixture
/// and path as `router-user/tests/datapath.rs`), with a budget of `rate`
/// new connections a second (0: none, the pipeline's cost alone).
fn write_router(ebpf: &mut Ebpf, ifx: [u32; 3], spec: &RouterSpec, rate: u32) -> Result<()> {
    let node = NodeConfig {
        new_connection_rate: rate,
        ..NodeConfig::default()
    };
    write_maps(ebpf, &fixtures::bpf_maps(spec, &node, (1024, 65535), ifx))?;
    Ok(())
}

/// The report: per table state, per case the pipeline's ns per packet and
/// each stage's share, with the empty program's and the restore's cost.
fn table(rows: &[Row], reads: &ColdReads) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "data path alone: xr_xdp's pipeline through BPF_PROG_TEST_RUN, median of {RUNS}\n\
             runs of {REPEAT} repetitions ({REPEAT_NEW} for new flows, at most {REPEAT_ROOM}\n\
             with room), 64-byte UDP frames. ns/pkt: the whole pipeline less the wrapper's\n\
             header restore. Each stage: the difference to the stage before (a stage\n\
             smaller than the runs' spread can come out negative: noise, not a gain)."
        );
    }
    if let (Some(big), Some(small)) = (reads.big, reads.small) {
        let _ = writeln!(
            out,
            "A read of a random line costs {big:.0} ns from {} MiB, {small:.0} ns from {} KiB\n\
             (4 KiB pages, dependent loads): the unit of a table that outgrows the caches.",
            ColdReads::BIG >> 20,
            ColdReads::SMALL >> 10,
        );
    }
    let slots = table_slots();
    let mut last = "";
    for r in rows {
        if r.table != last {
            last = &r.table;
            let _ = writeln!(
                out,
                "\nconnection table {} (XR_CT: {slots} slots);\n\
                 an empty program costs {:.0} ns, the restore {:.0} more",
                r.table,
                r.at(STAGE_EMPTY),
                r.at(STAGE_RESTORE) - r.at(STAGE_EMPTY)
            );
            let _ = write!(out, "{:<16} {:>7}", "path", "ns/pkt");
            for (name, _) in r.deltas() {
                let _ = write!(out, " {:>9}", short(name));
            }
            let _ = writeln!(out, " out");
        }
        let _ = write!(out, "{:<16} {:>7.0}", r.name, r.ns());
        for (_, v) in r.deltas() {
            // Not measured (XRB_MICRO_WHOLE): a dash, not NaN.
            if v.is_nan() {
                let _ = write!(out, " {:>9}", "-");
            } else {
                let _ = write!(out, " {v:>9.0}");
            }
        }
        let verdict = match r.verdict {
            XDP_REDIRECT => "redir".to_string(),
            XDP_DROP => "drop".to_string(),
            v => format!("ret {v}"),
        };
        let _ = writeln!(out, " {verdict}");
    }
    if !rows.is_empty() {
        let _ = writeln!(
            out,
            "\nsend: the rewrite, the counter and the redirect. out: redir, forwarded\n\
             (XDP_REDIRECT), or drop, dropped (shed). The paths:"
        );
        let mut seen = Vec::new();
        for r in rows.iter().filter(|r| {
            let new = !seen.contains(&r.name);
            seen.push(r.name);
            new
        }) {
            let _ = writeln!(out, "  {}: {}", r.name, r.what);
        }
    }
    out
}

/// A stage's name in the report's narrow columns.
fn short(stage: &str) -> &str {
    if stage == "rewrite+send" {
        "send"
    } else {
        stage
    }
}

/// The next hops' MACs: the kernel's neighbour table, which the daemon
/// mirrors.
fn neighbours(ebpf: &mut Ebpf, ifx: [u32; 3]) -> Result<()> {
    let [qr1, qr2, qg] = ifx;
    let mut neigh: HashMap<_, NeighKey, Neigh> = HashMap::try_from(map(ebpf, "XR_NEIGH")?)?;
    for (i, a, mac) in [
        (qr1, "81.1.180.12", MAC_VM1),
        (qr2, "91.1.180.14", MAC_VM2),
        (qg, "192.168.1.15", MAC_EXT),
        (qg, "192.168.1.1", MAC_EXT),
    ] {
        let k = NeighKey {
            ifindex: i,
            addr: ip(a),
        };
        neigh.insert(k, Neigh::at(mac), 0)?;
    }
    // As the daemon does after writing neighbours.
    bump_generation(map(ebpf, "XR_GEN")?)?;
    Ok(())
}

struct MicroCase {
    name: &'static str,
    what: &'static str,
    ingress: usize,
    frame: Vec<u8>,
    /// A new flow each run: 0 (none), `NEW_PORTS`, or `NEW_CLIENT` (its
    /// source address too, as a flood's spoofed clients).
    new_flow: u32,
    /// Budget of new connections a second (0: none).
    rate: u32,
    /// The connection is established before it is measured (answered,
    /// then used past `ESTABLISH_AFTER_NS`: established, as a real one);
    /// otherwise a one-way flow stays embryonic.
    established: bool,
    /// Nonzero: the established connection is copied to this many flows
    /// (other destination ports) and each run takes one of them, in a
    /// scattered order.
    flows: u32,
    /// New flows into a table with room: few enough per run
    /// that no insert evicts (as when connections are answered and leave
    /// it); otherwise the table fills and every insert evicts, as in a
    /// flood.
    room: bool,
}

/// The gateway-SNAT cases' first packet: VM1 to an external host.
pub(crate) fn snat_frame() -> Vec<u8> {
    udp(MAC_VM1, MAC_QR1, "81.1.180.12", 40000, "192.168.1.15", 80)
}

fn cases() -> Vec<MicroCase> {
    vec![
        MicroCase {
            name: "route-only",
            what: "east-west, no NAT (stateless)",
            ingress: 0,
            frame: udp(MAC_VM1, MAC_QR1, "81.1.180.12", 40000, "91.1.180.14", 80),
            new_flow: 0,
            rate: 0,
            established: false,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "snat-established",
            what: "gateway SNAT, connection established",
            ingress: 0,
            frame: snat_frame(),
            new_flow: 0,
            rate: 0,
            established: true,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "snat-1k",
            what: "gateway SNAT, established, packets spread over 1k connections",
            ingress: 0,
            frame: snat_frame(),
            new_flow: 0,
            rate: 0,
            established: true,
            flows: 1024,
            room: false,
        },
        MicroCase {
            name: "snat-64k",
            what: "gateway SNAT, established, packets spread over 64k connections",
            ingress: 0,
            frame: snat_frame(),
            new_flow: 0,
            rate: 0,
            established: true,
            flows: SPREAD_FLOWS,
            room: false,
        },
        MicroCase {
            name: "snat-new-room",
            what: "SNAT, a new connection a packet, into a table with room",
            ingress: 0,
            frame: snat_frame(),
            new_flow: NEW_PORTS,
            rate: 0,
            established: false,
            flows: 0,
            room: true,
        },
        MicroCase {
            name: "snat-new",
            what: "SNAT, a new connection a packet, table full (each evicts an embryonic one)",
            ingress: 0,
            frame: snat_frame(),
            new_flow: NEW_PORTS,
            rate: 0,
            established: false,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "syn-new",
            what: "a SYN to a floating IP from a new client a packet, table full (each evicts)",
            ingress: 2,
            frame: syn(MAC_EXT, MAC_QG, "192.168.1.15", 5555, "192.168.1.104", 22),
            new_flow: NEW_CLIENT,
            rate: 0,
            established: false,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "snat-new-shed",
            what: "a new connection a packet, over the budget: dropped, counted",
            ingress: 0,
            frame: snat_frame(),
            new_flow: NEW_PORTS,
            // One a second: the first run takes it, every later one is shed.
            rate: 1,
            established: false,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "syn-shed",
            what: "a SYN to a floating IP, over the budget: shed before lookups",
            ingress: 2,
            frame: syn(MAC_EXT, MAC_QG, "192.168.1.15", 5555, "192.168.1.104", 22),
            new_flow: NEW_PORTS,
            rate: 1,
            established: false,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "dnat",
            what: "floating IP inbound, connection established",
            ingress: 2,
            frame: udp(MAC_EXT, MAC_QG, "192.168.1.15", 5555, "192.168.1.104", 22),
            new_flow: 0,
            rate: 0,
            established: true,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "fip-out",
            what: "the VM with a floating IP outbound, connection established",
            ingress: 1,
            frame: udp(MAC_VM2, MAC_QR2, "91.1.180.14", 40002, "192.168.1.15", 80),
            new_flow: 0,
            rate: 0,
            established: true,
            flows: 0,
            room: false,
        },
        MicroCase {
            name: "hairpin",
            what: "VM to a floating IP from inside, connection established",
            ingress: 0,
            frame: udp(MAC_VM1, MAC_QR1, "81.1.180.12", 40001, "192.168.1.104", 80),
            new_flow: 0,
            rate: 0,
            established: true,
            flows: 0,
            room: false,
        },
    ]
}

/// `struct xdp_md` for test runs: data_end = frame length, ingress ifindex.
fn xdp_md(ingress: u32, len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    ctx
}

/// One test run: (return value, ns per repetition).
/// Loads the object's XDP program `prog` into the kernel.
pub(crate) fn load_xdp(ebpf: &mut Ebpf, prog: &str) -> Result<()> {
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .with_context(|| format!("no {prog}"))?
        .try_into()?;
    p.load()
        .with_context(|| format!("verifier rejected {prog}"))?;
    Ok(())
}

pub(crate) fn run_once(
    ebpf: &Ebpf,
    prog: &str,
    ingress: u32,
    frame: &[u8],
    repeat: u32,
) -> Result<(u32, f64)> {
    let (ret, ns, _) = run_out(ebpf, prog, ingress, frame, repeat)?;
    Ok((ret, ns))
}

/// One test run: (return value, ns per repetition, the frame as it left).
fn run_out(
    ebpf: &Ebpf,
    prog: &str,
    ingress: u32,
    frame: &[u8],
    repeat: u32,
) -> Result<(u32, f64, Vec<u8>)> {
    let p: &Xdp = ebpf
        .program(prog)
        .with_context(|| format!("no {prog}"))?
        .try_into()?;
    let ctx = xdp_md(ingress, frame.len());
    let mut out = vec![0u8; frame.len() + 64];
    let mut ctx_out = [0u8; 24];
    let r = p.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ctx_out: Some(&mut ctx_out),
        repeat,
        ..Default::default()
    })?;
    out.truncate(frame.len());
    Ok((r.return_value, r.duration.as_nanos() as f64, out))
}

/// The answer to a forwarded frame: addresses, ports and MACs swapped
/// (from the next hop to the router port it left by), TTL 64.
fn reply_to(out: &[u8]) -> Vec<u8> {
    let mut f = out.to_vec();
    f[0..6].copy_from_slice(&out[6..12]);
    f[6..12].copy_from_slice(&out[0..6]);
    f[22] = 64;
    f[26..30].copy_from_slice(&out[30..34]);
    f[30..34].copy_from_slice(&out[26..30]);
    f[34..36].copy_from_slice(&out[36..38]);
    f[36..38].copy_from_slice(&out[34..36]);
    f[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    f
}

/// Sets the frame the programs restore, the stage they stop after, and
/// (with a case) whether each run is a new flow or the next of its flows.
fn set_micro(ebpf: &mut Ebpf, frame: &[u8], stage: u32, c: Option<&MicroCase>) -> Result<()> {
    let mut m: Array<_, MicroConfig> = Array::try_from(map(ebpf, "XRB_MICRO")?)?;
    let mut cfg = MicroConfig {
        frame: [0; MICRO_HDR],
        stage,
        new_flow: c.map_or(0, |c| c.new_flow),
        flows: c.map_or(0, |c| c.flows),
        _pad: 0,
    };
    cfg.frame.copy_from_slice(frame);
    m.set(0, cfg, 0)?;
    Ok(())
}

/// Establishes the connections of the cases that measure one: the first
/// packet, its answer, and after `ESTABLISH_AFTER_NS` one more packet,
/// which moves the connection to `XR_CT`. Checked there.
fn establish(ebpf: &mut Ebpf, ifx: [u32; 3], cases: &[MicroCase]) -> Result<()> {
    let ports = [MAC_QR1, MAC_QR2, MAC_QG];
    let cases: Vec<_> = cases.iter().filter(|c| c.established).collect();
    for c in &cases {
        set_micro(ebpf, &c.frame, STAGE_FULL, None)?;
        let (ret, _, out) = run_out(ebpf, MICRO, ifx[c.ingress], &c.frame, 1)?;
        let left = ports.iter().position(|m| out[6..12] == m[..]);
        let (XDP_REDIRECT, Some(left)) = (ret, left) else {
            bail!(
                "micro case {}: the first packet was not forwarded (return {ret})",
                c.name
            );
        };
        let reply = reply_to(&out);
        set_micro(ebpf, &reply, STAGE_FULL, None)?;
        let (ret, _) = run_once(ebpf, MICRO, ifx[left], &reply, 1)?;
        if ret != XDP_REDIRECT {
            bail!(
                "micro case {}: the answer was not forwarded (return {ret})",
                c.name
            );
        }
    }
    if cases.is_empty() {
        return Ok(());
    }
    super::nap(Duration::from_nanos(ESTABLISH_AFTER_NS) + Duration::from_millis(200))?;
    let keys: Vec<CtKey> = cases
        .iter()
        .map(|c| {
            let f = &c.frame;
            let a = |o: usize| [f[o], f[o + 1], f[o + 2], f[o + 3]];
            let p = |o: usize| u16::from_ne_bytes([f[o], f[o + 1]]);
            CtKey::new(a(26), a(30), p(34), p(36), f[23])
        })
        .collect();
    for (c, k) in cases.iter().zip(&keys) {
        set_micro(ebpf, &c.frame, STAGE_FULL, None)?;
        run_once(ebpf, MICRO, ifx[c.ingress], &c.frame, 1)?;
        if ct_table(ebpf)?
            .get(k)
            .is_none_or(|e| e.flags & CT_F_ASSURED == 0)
        {
            bail!("micro case {}: the connection was not established", c.name);
        }
        if c.flows != 0 {
            spread(ebpf, k, c.flows)?;
        }
    }
    Ok(())
}

/// Connections created so far (`XR_CT_EVENTS`, all CPUs).
fn created(ebpf: &mut Ebpf) -> Result<u64> {
    event(ebpf, CtEvent::Created)
}

fn event(ebpf: &mut Ebpf, e: CtEvent) -> Result<u64> {
    let ev: PerCpuArray<_, u64> = PerCpuArray::try_from(map(ebpf, "XR_CT_EVENTS")?)?;
    let per_cpu = ev.get(&(e as u32), 0)?;
    Ok(per_cpu.iter().sum())
}

/// The connection table, mapped.
fn ct_table(ebpf: &Ebpf) -> Result<CtTable> {
    match ebpf.map("XR_CT") {
        Some(aya::maps::Map::Array(d)) => CtTable::of(d),
        _ => bail!("the BPF object has no connection table XR_CT"),
    }
}

/// Repetitions per run of a case with room: a run opens connections
/// (two entries each) in at most a 64th of the table's slots, so that no
/// window fills; they are removed after the run ([`forget_run`]).
fn room_repeat(slots: u32, case: &str) -> Result<u32> {
    let repeat = (slots / 128).min(REPEAT_ROOM);
    if repeat < 16 {
        bail!("micro case {case}: XR_CT ({slots} slots) is too small to measure it");
    }
    Ok(repeat)
}

/// Which slots of the connection table hold an entry.
fn held_slots(ebpf: &Ebpf) -> Result<Vec<bool>> {
    let t = ct_table(ebpf)?;
    Ok((0..t.slots()).map(|i| t.read(i).is_some()).collect())
}

/// After a run of a case with room: removes what the run added (the
/// entries of slots not `held` before it) and reclaims the freed slots as
/// the daemon's GC does, so that every run finds the table as the first
/// did. Every connection the run opened must have both its entries there:
/// fewer means an insert evicted, and the case did not measure room.
fn forget_run(ebpf: &mut Ebpf, held: &[bool], opened_before: u64, case: &str) -> Result<()> {
    let opened = created(ebpf)? - opened_before;
    let t = ct_table(ebpf)?;
    let added: Vec<CtKey> = (0..t.slots())
        .filter(|&i| !held[i as usize])
        .filter_map(|i| t.read(i).map(|(k, _)| k))
        .collect();
    if added.len() as u64 != 2 * opened {
        bail!(
            "micro case {case}: a run opened {opened} connections and XR_CT holds {} new \
             entries: it evicted",
            added.len()
        );
    }
    for k in &added {
        t.remove(k);
    }
    t.reclaim(0..t.slots());
    Ok(())
}

/// Copies the established connection of `key` (both entries, its cached
/// route included) to `flows` connections that differ in the destination
/// port as `xr_bench_micro` varies it, as if each had been opened by
/// packets: the case then measures established packets whose entries are
/// spread over the table's memory.
fn spread(ebpf: &mut Ebpf, key: &CtKey, flows: u32) -> Result<()> {
    let ct = ct_table(ebpf)?;
    let orig = ct.get(key).context("the connection to spread")?;
    let rkey = orig.partner(key);
    let reply = ct.get(&rkey).context("the connection's reply entry")?;
    for j in 0..flows {
        let dport = 1024u16.wrapping_add(j as u16).to_be();
        if dport == key.dport {
            continue; // the connection itself
        }
        let k = CtKey { dport, ..*key };
        let o = CtEntry {
            new_dport: dport,
            ..orig
        };
        let rk = CtKey {
            sport: dport,
            ..rkey
        };
        let r = CtEntry {
            new_sport: dport,
            ..reply
        };
        // Present: spread already, by a case of the same connection.
        for (k, e) in [(k, o), (rk, r)] {
            match ct.insert(&k, &e) {
                Ok(()) | Err(NotInserted::Present) => {}
                Err(why) => bail!("spreading a connection: flow {j}: {why:?}"),
            }
        }
    }
    Ok(())
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The stages measured, cumulative, in order: (name, `MicroConfig::stage`).
const STAGES: [(&str, u32); 7] = [
    ("empty", STAGE_EMPTY),
    ("restore", STAGE_RESTORE),
    ("parse", STAGE_PARSE),
    ("classify", STAGE_CLASSIFY),
    ("conntrack", STAGE_CONNTRACK),
    ("neighbour", STAGE_NEIGHBOUR),
    ("rewrite+send", STAGE_FULL),
];

/// The program of the whole pipeline (and of the empty and restore-only
/// runs), and the one that stops after a stage.
const MICRO: &str = "xr_bench_micro";
const STAGED: &str = "xr_bench_stage";

fn is_staged(stage: u32) -> bool {
    !matches!(stage, STAGE_EMPTY | STAGE_RESTORE | STAGE_FULL)
}

/// Connection-table states measured: entries pre-filled in `XR_CT` (at
/// most half the table).
const TABLES: [u32; 2] = [0, 1_000_000];

/// A table state as the report names it.
fn label(prefill: u32) -> String {
    match prefill {
        0 => "empty".into(),
        n if n % 1_000_000 == 0 => format!("{}M entries", n / 1_000_000),
        n => format!("{}k entries", n / 1024),
    }
}

/// XRB_MICRO_CONNTRACK_SIZE: another `conntrack_size`, to see what the
/// tables' size costs (a new connection touches them at random); checked
/// as the node config checks `conntrack_size`.
fn conntrack_size() -> Result<u32> {
    const VAR: &str = "XRB_MICRO_CONNTRACK_SIZE";
    let Ok(v) = std::env::var(VAR) else {
        return Ok(NodeConfig::default().conntrack_size);
    };
    match v.trim().parse::<u32>() {
        Ok(n) if (1024..=16_777_216).contains(&n) => Ok(n),
        _ => bail!("{VAR}: {v:?} is not a number of connections from 1024 to 16777216"),
    }
}

/// XRB_MICRO_CASE: one case alone (for `perf record`); None: every case.
fn only_case() -> Result<Option<String>> {
    let Ok(v) = std::env::var("XRB_MICRO_CASE") else {
        return Ok(None);
    };
    let names: Vec<&str> = cases().iter().map(|c| c.name).collect();
    if !names.contains(&v.as_str()) {
        bail!(
            "XRB_MICRO_CASE: {v:?} is no case (the cases: {})",
            names.join(", ")
        );
    }
    Ok(Some(v))
}

/// XRB_MICRO_WHOLE=1: the whole pipeline only, no run per stage. A case
/// then takes seconds, not a minute or more: two builds can be compared
/// in runs taken in turn, which a host whose speed drifts over minutes
/// needs (one build's runs after the other's would measure the drift).
fn whole_only() -> Result<bool> {
    const VAR: &str = "XRB_MICRO_WHOLE";
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("0") => Ok(false),
        Ok("1") => Ok(true),
        Ok(v) => bail!("{VAR}: {v:?} is neither 1 (the whole pipeline only) nor 0"),
    }
}

/// `conntrack_size` as the micro cases take it (checked by `run` first).
pub(crate) fn table_connections() -> u32 {
    conntrack_size().unwrap_or(NodeConfig::default().conntrack_size)
}

/// `XR_CT`'s slots as the daemon loads it for [`table_connections`].
pub(crate) fn table_slots() -> u32 {
    ct_slots(table_connections())
}

/// The cost of one read from memory no cache holds (`memory.rs`), beside
/// one from memory the caches hold.
struct ColdReads {
    big: Option<f64>,
    small: Option<f64>,
}

impl ColdReads {
    /// Larger than any cache here (`XR_CT` is 64 MiB at the default
    /// `conntrack_size`).
    const BIG: usize = 32 << 20;
    const SMALL: usize = 256 << 10;

    fn measure() -> ColdReads {
        super::say("micro: the cost of a cold read");
        ColdReads {
            big: crate::memory::cold_read_ns(Self::BIG),
            small: crate::memory::cold_read_ns(Self::SMALL),
        }
    }
}

struct Row {
    table: String,
    name: &'static str,
    what: &'static str,
    /// Median ns per run, cumulative, per entry of [`STAGES`].
    stages: Vec<f64>,
    verdict: u32,
}

impl Row {
    fn at(&self, stage: u32) -> f64 {
        let i = STAGES
            .iter()
            .position(|(_, s)| *s == stage)
            .expect("a measured stage");
        self.stages[i]
    }
    /// The pipeline's cost: the whole run less the wrapper's restore.
    fn ns(&self) -> f64 {
        self.at(STAGE_FULL) - self.at(STAGE_RESTORE)
    }
    /// Each pipeline stage's share: the difference to the stage before.
    fn deltas(&self) -> Vec<(&'static str, f64)> {
        STAGES[2..]
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (*name, self.stages[i + 2] - self.stages[i + 1]))
            .collect()
    }
}

/// Fills `XR_CT` with `entries` live entries (gateway-SNATed TCP
/// connections, both directions, on addresses the cases never use).
fn fill(ebpf: &mut Ebpf, entries: u32) -> Result<()> {
    let ct = ct_table(ebpf)?;
    let now = router_user::backend::bpf::monotonic_ns();
    for i in 0..entries / 2 {
        if i % 65_536 == 0 && super::stopped() {
            bail!("interrupted");
        }
        for (k, e) in scale::connection(i, ip("192.168.1.100"), now) {
            ct.insert(&k, &e)
                .map_err(|why| anyhow::anyhow!("filling XR_CT: entry {}: {why:?}", 2 * i))?;
        }
    }
    Ok(())
}

/// The cases (`only`: that one alone) with `prefill` entries in `XR_CT`.
fn measure(ifx: [u32; 3], prefill: u32, only: Option<&str>) -> Result<Vec<Row>> {
    let slots = table_slots();
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("XR_CT", ct_entries(slots))
        .override_global(CT_MASK_GLOBAL, &(slots - 1), true)
        .load(OBJECT)
        .context("loading the BPF object")?;
    for prog in [MICRO, STAGED] {
        load_xdp(&mut ebpf, prog)?;
    }
    let spec = fixtures::article_router([MAC_QR1, MAC_QR2, MAC_QG]);
    write_router(&mut ebpf, ifx, &spec, 0)?;
    neighbours(&mut ebpf, ifx)?;
    // A table too small for the pre-fill gets a quarter full (as full as
    // `conntrack_size` connections make it).
    let prefill = prefill.min(slots / 4);
    let table = label(prefill);
    if prefill != 0 {
        super::say(&format!("micro: filling XR_CT with {prefill} entries"));
        fill(&mut ebpf, prefill)?;
    }
    // One case only, for profiling it (perf record -- xrouter-bench --micro):
    // nothing of the others is set up either.
    let cases: Vec<_> = cases()
        .into_iter()
        .filter(|c| only.is_none_or(|o| o == c.name))
        .collect();
    let whole = whole_only()?;
    establish(&mut ebpf, ifx, &cases)?;
    let mut rows = Vec::new();
    for c in cases {
        if super::stopped() {
            bail!("interrupted");
        }
        super::say(&format!("micro: {table}: {}", c.name));
        let set = |ebpf: &mut Ebpf, stage: u32| set_micro(ebpf, &c.frame, stage, Some(&c));
        let ingress = ifx[c.ingress];
        write_router(&mut ebpf, ifx, &spec, c.rate)?;
        set(&mut ebpf, STAGE_FULL)?;
        // The first packet creates the connection: later ones find it (or,
        // over a budget, are shed).
        let (mut verdict, _) = run_once(&ebpf, MICRO, ingress, &c.frame, 1)?;
        if c.rate != 0 {
            verdict = run_once(&ebpf, MICRO, ingress, &c.frame, 1)?.0;
        }
        let repeat = match (c.new_flow != 0, c.room) {
            (true, true) => room_repeat(slots, c.name)?,
            (true, false) => REPEAT_NEW,
            _ => REPEAT,
        };
        let opened = created(&mut ebpf)?;
        let mut stages = Vec::new();
        for (name, stage) in STAGES {
            if whole && is_staged(stage) {
                stages.push(f64::NAN);
                continue;
            }
            set(&mut ebpf, stage)?;
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                let prog = if is_staged(stage) { STAGED } else { MICRO };
                let before = if c.room {
                    Some((held_slots(&ebpf)?, created(&mut ebpf)?))
                } else {
                    None
                };
                let (ret, ns) = run_once(&ebpf, prog, ingress, &c.frame, repeat)?;
                if let Some((held, opened)) = before {
                    forget_run(&mut ebpf, &held, opened, c.name)?;
                }
                if stage != STAGE_FULL && ret != XDP_DROP {
                    bail!(
                        "micro case {}: the packet left the pipeline before stage {name} \
                         (return {ret})",
                        c.name
                    );
                }
                runs.push(ns);
            }
            stages.push(median(runs));
        }
        // An established case that opened connections measured new ones
        // (a spread connection not found), whatever its verdict says.
        if c.new_flow == 0 && created(&mut ebpf)? != opened {
            bail!("micro case {}: its packets opened new connections", c.name);
        }
        rows.push(Row {
            table: table.clone(),
            name: c.name,
            what: c.what,
            stages,
            verdict,
        });
    }
    Ok(rows)
}

pub fn run(opts: &Opts) -> Result<()> {
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    // Bad settings are refused before anything is built.
    conntrack_size()?;
    whole_only()?;
    let only = only_case()?;
    let only = only.as_deref();
    let ns = Ns(format!("xrb-micro-{}", std::process::id()));
    netns::create(&ns.0)?;
    for d in ["qr1", "qr2", "qg"] {
        let st = Command::new("ip")
            .args([
                "-n", &ns.0, "link", "add", d, "type", "veth", "peer", "name",
            ])
            .arg(format!("{d}p"))
            .status()?;
        if !st.success() {
            bail!("creating {d} in {}", ns.0);
        }
    }
    let rows = in_ns(&ns.0, || -> Result<_> {
        let idx = |d: &str| nix::net::if_::if_nametoindex(d).with_context(|| d.to_string());
        let ifx = [idx("qr1")?, idx("qr2")?, idx("qg")?];
        let mut rows = Vec::new();
        for prefill in TABLES {
            rows.extend(measure(ifx, prefill, only)?);
        }
        Ok(rows)
    })??;
    let reads = ColdReads::measure();
    print!("{}", table(&rows, &reads));
    if let Some(p) = &opts.json {
        let v = json!({
            "microbenchmark": rows.iter().map(|r| json!({
                "table": r.table,
                "path": r.name,
                "what": r.what,
                "ns_per_packet": r.ns(),
                "ns_empty_program": r.at(STAGE_EMPTY),
                "ns_restore_only": r.at(STAGE_RESTORE),
                "ns_per_stage": r.deltas().into_iter()
                    .map(|(n, v)| (n.to_string(), json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "redirected": r.verdict == XDP_REDIRECT,
                "dropped": r.verdict == XDP_DROP,
            })).collect::<Vec<_>>(),
            "repeat": REPEAT,
            "repeat_new_flows": REPEAT_NEW,
            "repeat_with_room_at_most": REPEAT_ROOM,
            "runs": RUNS,
            "xr_ct_slots": table_slots(),
            "ns_cold_read_32mib": reads.big,
            "ns_cold_read_256kib": reads.small,
        });
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
        println!("JSON: {}", p.display());
    }
    let shed = |r: &&Row| r.name.ends_with("-shed");
    if rows
        .iter()
        .any(|r| r.verdict != if shed(&r) { XDP_DROP } else { XDP_REDIRECT })
    {
        bail!("a path was not forwarded (or shed) by XDP as expected (see the out column)");
    }
    Ok(())
}
