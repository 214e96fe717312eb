//! Running the router's programs on one frame with BPF_PROG_TEST_RUN, in
//! the router's namespace (the kernel resolves the context's ifindex
//! there), and recording what can be observed of each run: the return
//! code, the outcome and connection events counted, the skb mark, the
//! frame as the program left it, and the connection tables before and
//! after.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use router_common::{
    conntrack::{CtEntry, CtKey},
    counters::{CtEvent, Outcome},
};

use super::sandbox::{Live, Sandbox, Seed};
use crate::backend::bpf::{PROG_TC, PROG_XDP};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// One program's run.
#[derive(Clone, Debug)]
pub struct HookRun {
    pub program: &'static str,
    pub ret: u32,
    /// Outcomes the run counted (one, normally).
    pub outcomes: Vec<Outcome>,
    pub events: Vec<CtEvent>,
    /// TC: the skb's mark afterwards.
    pub mark: Option<u32>,
    pub frame_out: Vec<u8>,
}

/// Everything observed of one packet.
#[derive(Clone, Debug)]
pub struct Observed {
    pub hooks: Vec<HookRun>,
    pub before: HashMap<CtKey, (bool, CtEntry)>,
    pub after: HashMap<CtKey, (bool, CtEntry)>,
    /// Times the run was repeated because the copy picked a SNAT port
    /// the live tables hold (a port the real program would have passed).
    pub reruns: usize,
}

/// `struct xdp_md`: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex.
fn xdp_md(ifindex: u32, len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// `struct __sk_buff` offsets: mark at 8, ifindex at 40; 192 bytes cover
/// what the kernel accepts from userspace.
const SKB_LEN: usize = 192;
const SKB_MARK: usize = 8;
const SKB_IFINDEX: usize = 40;

/// The counters of `all` (at index `at(counter)`) that grew from `before`
/// to `after`.
fn moved<T: Copy>(all: &[T], at: impl Fn(T) -> usize, before: &[u64], after: &[u64]) -> Vec<T> {
    all.iter()
        .filter(|c| after[at(**c)] > before[at(**c)])
        .copied()
        .collect()
}

fn outcomes_moved(before: &[u64], after: &[u64]) -> Vec<Outcome> {
    moved(&Outcome::ALL, |o| o as usize, before, after)
}

fn events_moved(before: &[u64], after: &[u64]) -> Vec<CtEvent> {
    moved(&CtEvent::ALL, |e| e as usize, before, after)
}

fn run_xdp(sb: &Sandbox, ifindex: u32, frame: &[u8]) -> Result<HookRun> {
    let (c0, e0) = (sb.counters()?, sb.events()?);
    let p: &Xdp = sb.ebpf.program(PROG_XDP).context(PROG_XDP)?.try_into()?;
    let ctx = xdp_md(ifindex, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN of xr_xdp")?;
    out.truncate(r.data_size_out as usize);
    Ok(HookRun {
        program: PROG_XDP,
        ret: r.return_value,
        outcomes: outcomes_moved(&c0, &sb.counters()?),
        events: events_moved(&e0, &sb.events()?),
        mark: None,
        frame_out: out,
    })
}

fn run_tc(sb: &Sandbox, ifindex: u32, frame: &[u8]) -> Result<HookRun> {
    let (c0, e0) = (sb.counters()?, sb.events()?);
    let p: &SchedClassifier = sb.ebpf.program(PROG_TC).context(PROG_TC)?.try_into()?;
    let mut ctx = [0u8; SKB_LEN];
    ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_LEN];
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN of xr_tc")?;
    out.truncate(r.data_size_out as usize);
    let mark = u32::from_ne_bytes(
        ctx_out[SKB_MARK..SKB_MARK + 4]
            .try_into()
            .unwrap_or_default(),
    );
    Ok(HookRun {
        program: PROG_TC,
        ret: r.return_value,
        outcomes: outcomes_moved(&c0, &sb.counters()?),
        events: events_moved(&e0, &sb.events()?),
        mark: Some(mark),
        frame_out: out,
    })
}

/// Runs the packet through the hooks of the port: `xr_xdp` then, when it
/// passes the packet up, `xr_tc` on what XDP left (`xdp`), or `xr_tc`
/// alone. Must run in the router's namespace.
fn once(sb: &Sandbox, xdp: bool, ifindex: u32, frame: &[u8]) -> Result<Vec<HookRun>> {
    let mut hooks = Vec::new();
    let mut frame = frame.to_vec();
    if xdp {
        let h = run_xdp(sb, ifindex, &frame)?;
        let pass = h.ret == XDP_PASS;
        frame = h.frame_out.clone();
        hooks.push(h);
        if !pass {
            return Ok(hooks);
        }
    }
    hooks.push(run_tc(sb, ifindex, &frame)?);
    Ok(hooks)
}

/// Runs the packet in the copy seeded from `seed`. A SNAT port the copy
/// chose that the live tables hold is one the real program would have
/// found taken and passed: the run is repeated with that entry copied in
/// too (a few times at most).
pub fn observe(
    sb: &mut Sandbox,
    live: &Live,
    mut seed: Seed,
    xdp: bool,
    ifindex: u32,
    frame: &[u8],
) -> Result<Observed> {
    let mut reruns = 0;
    loop {
        sb.seed(live, &seed)?;
        let before = sb.tables()?;
        let hooks = once(sb, xdp, ifindex, frame)?;
        let after = sb.tables()?;
        let clashes: Vec<CtKey> = after
            .keys()
            .filter(|k| !before.contains_key(k) && live.ct(k).is_some())
            .copied()
            .collect();
        if clashes.is_empty() || reruns == 8 {
            return Ok(Observed {
                hooks,
                before,
                after,
                reruns,
            });
        }
        seed.ct_keys.extend(clashes);
        reruns += 1;
    }
}
