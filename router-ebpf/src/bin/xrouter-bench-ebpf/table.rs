//! `xr_bench_table`: what a connection table of xrouter's own would cost,
//! against the kernel's hash maps doing the same work for the same keys
//! (`TableConfig`). Nothing of it is in the router's object.
//!
//! The prototype: an array of 64-byte slots (`XRB_SLOTS`, mmapable so its
//! slots start page-aligned and never straddle two lines), open addressing
//! with a window of [`PROBES`] slots from the key's hash, a direction's key
//! and entry in one slot. A lookup reads one line where a kernel hash map
//! reads a bucket and then an element; an insert writes the line the
//! lookup read, with no lock, free list or LRU list. A full window evicts
//! its least recently seen slot. What it leaves out, and a real table would
//! need: claiming a slot atomically (a compare-and-swap on the key, on a
//! line already read), and readers in userspace (the GC, `show flows`)
//! going through the mmap.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    btf_maps::{Array, HashMap, LruHashMap},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};
use router_common::{
    bench::{
        TABLE_EST, TABLE_FILL, TABLE_KEST, TABLE_KFILL, TABLE_KNEW, TABLE_NEW, TableConfig,
        TableSlot,
    },
    conntrack::{CtEntry, CtKey},
};

/// Settings (index 0).
#[btf_map]
pub static XRB_TABLE_CFG: Array<TableConfig, 1> = Array::new();

/// Run counter ([`SEQ`]), and the prototype's keys evicted from a full
/// window ([`EVICTED`]) and lookups of a filled connection that missed
/// ([`MISSED`]). One for all CPUs: a test run that moves to another CPU
/// half-way goes on counting where it was (the benchmark runs one test
/// run at a time).
#[btf_map]
pub static XRB_TABLE_SEQ: Array<u32, 3> = Array::new();
const SEQ: u32 = 0;
const EVICTED: u32 = 1;
const MISSED: u32 = 2;

fn count(what: u32) {
    if let Some(c) = XRB_TABLE_SEQ.get_ptr_mut(what) {
        // SAFETY: one test run at a time writes it.
        unsafe { *c = (*c).wrapping_add(1) };
    }
}

/// The prototype table; userspace sets its size (a power of two).
#[btf_map]
pub static XRB_SLOTS: Array<TableSlot, 1024, { aya_ebpf::bindings::BPF_F_MMAPABLE as usize }> =
    Array::new();

/// The kernel's maps as the router had them before its table of its own
/// (`XR_CT` a hash not preallocated, `XR_CT_NEW` an LRU hash), sized by
/// userspace as the daemon sized them.
#[btf_map]
pub static XRB_KCT: HashMap<CtKey, CtEntry, 1024, { BPF_F_NO_PREALLOC as usize }> = HashMap::new();
#[btf_map]
pub static XRB_KNEW: LruHashMap<CtKey, CtEntry, 1024> = LruHashMap::new();

/// Slots a key may sit in, from its hash on: at most a quarter of the
/// slots in use, a window is full about once in 65,000 inserts.
const PROBES: u32 = 8;
/// Reply ports tried, as the pipeline's `PORT_PROBES`.
const PORT_PROBES: u32 = 16;
const UDP: u8 = 17;
/// The server every connection goes to, and the address it is SNATed to.
const SERVER: u32 = 0xc0a8_010f;
const GATEWAY: u32 = 0xc0a8_0164;

fn key(src: u32, dst: u32, sport: u16, dport: u16) -> CtKey {
    CtKey::new(src.to_be_bytes(), dst.to_be_bytes(), sport, dport, UDP)
}

/// Connection `n`'s server port: a thousand connections a port, so that
/// the gateway's ports towards one of them are never all taken.
fn service(n: u32) -> u16 {
    1024 + ((n >> 10) & 0x7fff) as u16
}

/// Connection `n`'s original direction: a client of its own.
fn original(n: u32) -> CtKey {
    key(
        ((10 + (n >> 24)) & 0xff) << 24 | (n & 0xff_ffff),
        SERVER,
        40000,
        service(n),
    )
}

/// Connection `n`'s reply key, SNATed to the gateway's `port`.
fn reply(n: u32, port: u16) -> CtKey {
    key(SERVER, GATEWAY, service(n), port)
}

/// The reply key of a filled connection: ports of their own, past those a
/// new connection draws (1024..=65535) by using other gateway addresses.
fn filled_reply(n: u32) -> CtKey {
    key(SERVER, GATEWAY + 1 + (n >> 16), service(n), n as u16)
}

/// A 32-bit hash of a key's four words (multiply, rotate, fold).
#[inline(always)]
fn hash(k: &CtKey) -> u32 {
    let w = |b: [u8; 4]| u32::from_ne_bytes(b);
    let ports = (k.sport as u32) << 16 | k.dport as u32;
    let mut h = w(k.src).wrapping_mul(0x9e37_79b1)
        ^ w(k.dst).wrapping_mul(0x85eb_ca77).rotate_left(13)
        ^ ports.wrapping_mul(0xc2b2_ae3d).rotate_left(7)
        ^ k.proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^ (h >> 15)
}

fn slot(i: u32) -> Option<*mut TableSlot> {
    XRB_SLOTS.get_ptr_mut(i)
}

/// The slot holding `k`, if any.
#[inline(always)]
fn find(k: &CtKey, mask: u32) -> Option<*mut TableSlot> {
    let h = hash(k);
    for i in 0..PROBES {
        let s = slot(h.wrapping_add(i) & mask)?;
        // SAFETY: a slot of the array, plain data.
        let sk = unsafe { (*s).key };
        if sk == *k {
            return Some(s);
        }
        if sk.proto == 0 {
            return None;
        }
    }
    None
}

/// Writes `k` into its window: the slot it holds, else the first empty
/// one, else the least recently seen (evicted).
#[inline(always)]
fn put(k: &CtKey, mask: u32, now: u64) {
    let h = hash(k);
    let mut victim: Option<*mut TableSlot> = None;
    let mut oldest = u64::MAX;
    let mut free = false;
    for i in 0..PROBES {
        let Some(s) = slot(h.wrapping_add(i) & mask) else {
            return;
        };
        // SAFETY: as in `find`.
        let (sk, seen) = unsafe { ((*s).key, (*s).last_seen) };
        if sk == *k || sk.proto == 0 {
            victim = Some(s);
            free = true;
            break;
        }
        if seen < oldest {
            oldest = seen;
            victim = Some(s);
        }
    }
    if !free {
        count(EVICTED);
    }
    if let Some(s) = victim {
        // SAFETY: as in `find`; single writer per run in the benchmark.
        unsafe {
            (*s).key = *k;
            (*s).new_src = GATEWAY.to_be_bytes();
            (*s).new_dst = SERVER.to_be_bytes();
            (*s).new_sport = k.sport;
            (*s).new_dport = k.dport;
            (*s).flags = 0;
            (*s).last_seen = now;
            (*s).route = [0; 3];
        }
    }
}

fn entry(now: u64) -> CtEntry {
    CtEntry {
        new_src: GATEWAY.to_be_bytes(),
        new_dst: SERVER.to_be_bytes(),
        last_seen: now,
        created: router_common::conntrack::ct_ticks(now),
        ..CtEntry::default()
    }
}

/// A random port of 1024..=65535, as the pipeline draws them.
fn random_port() -> u16 {
    // SAFETY: helper without arguments.
    (1024 + unsafe { bpf_get_prandom_u32() } % 64512) as u16
}

/// Makes the next run's connection depend on this run's entry (the top
/// bit of its `last_seen`, always 0): one run's cache misses cannot overlap
/// the next's, as a packet's cannot overlap much of the next packet's on
/// a real path, where a whole pipeline and the driver lie between them.
/// Both designs pay it: for a new connection, a lookup of the key just
/// written (its lines in the cache).
#[inline(always)]
fn then(seq: *mut u32, seen: Option<u64>) {
    let dep = seen.map_or(0, |s| (s >> 63) as u32);
    // SAFETY: the counter; one test run at a time writes it.
    unsafe { *seq = (*seq).wrapping_add(dep) };
}

/// What a run did, as its return value (checked by `xrouter-bench`).
pub const DONE_NOTHING: u32 = 0;
pub const DONE_PRESENT: u32 = 1;
pub const DONE_OPENED: u32 = 2;
pub const DONE_FOUND: u32 = 3;

/// One run of the configured operation.
#[inline(always)]
pub fn run() -> u32 {
    let (Some(cfg), Some(seq)) = (XRB_TABLE_CFG.get(0), XRB_TABLE_SEQ.get_ptr_mut(SEQ)) else {
        return 0;
    };
    // SAFETY: one test run at a time writes it.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let conn = cfg.base.wrapping_add(n);
    match cfg.op {
        TABLE_FILL => {
            put(&original(conn), cfg.mask, now);
            put(&filled_reply(conn), cfg.mask, now);
            DONE_OPENED
        }
        TABLE_KFILL => {
            let e = entry(now);
            let _ = XRB_KCT.insert(&original(conn), &e, BPF_ANY as u64);
            let _ = XRB_KCT.insert(&filled_reply(conn), &e, BPF_ANY as u64);
            DONE_OPENED
        }
        TABLE_NEW => {
            let k = original(conn);
            if find(&k, cfg.mask).is_some() {
                return DONE_PRESENT;
            }
            for _ in 0..PORT_PROBES {
                let rk = reply(conn, random_port());
                if find(&rk, cfg.mask).is_none() {
                    put(&rk, cfg.mask, now);
                    put(&k, cfg.mask, now);
                    // SAFETY: as in `find`.
                    let seen = find(&k, cfg.mask).map(|s| unsafe { (*s).last_seen });
                    then(seq, seen);
                    return DONE_OPENED;
                }
            }
            DONE_NOTHING
        }
        TABLE_KNEW => {
            let k = original(conn);
            // SAFETY: plain data; presence only.
            if unsafe { XRB_KCT.get(&k).is_some() || XRB_KNEW.get(&k).is_some() } {
                return DONE_PRESENT;
            }
            let e = entry(now);
            for _ in 0..PORT_PROBES {
                let rk = reply(conn, random_port());
                // SAFETY: as above.
                if unsafe { XRB_KCT.get(&rk) }.is_some() {
                    continue;
                }
                if XRB_KNEW.insert(&rk, &e, BPF_NOEXIST as u64).is_ok() {
                    // SAFETY: as above.
                    if unsafe { XRB_KCT.get(&rk) }.is_some() {
                        let _ = XRB_KNEW.remove(&rk);
                        continue;
                    }
                    let _ = XRB_KNEW.insert(&k, &e, BPF_ANY as u64);
                    // SAFETY: plain data, copied out.
                    let seen = unsafe { XRB_KNEW.get(&k) }.map(|e| e.last_seen);
                    then(seq, seen);
                    return DONE_OPENED;
                }
            }
            DONE_NOTHING
        }
        TABLE_EST | TABLE_KEST => {
            // An odd multiplier permutes 0..flows: consecutive runs take
            // connections far apart, as `xr_bench_micro` does.
            let k = original(n.wrapping_mul(40_503) & cfg.flows.wrapping_sub(1));
            let seen = if cfg.op == TABLE_EST {
                // SAFETY: as in `find`.
                find(&k, cfg.mask).map(|s| unsafe { &mut (*s).last_seen })
            } else {
                // SAFETY: the entry stays valid while the program runs.
                XRB_KCT
                    .get_ptr_mut(&k)
                    .map(|e| unsafe { &mut (*e).last_seen })
            };
            let Some(seen) = seen else {
                count(MISSED);
                return DONE_NOTHING;
            };
            then(seq, Some(*seen));
            // Written only when the clock moved, as the pipeline does.
            if *seen != now {
                *seen = now;
            }
            DONE_FOUND
        }
        _ => DONE_NOTHING,
    }
}
