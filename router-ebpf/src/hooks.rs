//! The entry points' bodies: a pipeline verdict turned into the hook's
//! action, counted once, and reported to `xrouter monitor` when it asks
//! (`monitor::verdict`: a load of its switch, then nothing while it is
//! off). The programs (`xr_xdp`, `xr_tc`, `xr_tc_out`, and
//! the benchmark's `xr_bench_micro`) are one-line wrappers around these.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use router_common::{
    config::{MARK_MASK, MARK_TRANSLATED, answer_mark},
    counters::Outcome,
};

use crate::{
    ctx::Packet,
    maps, monitor,
    pipeline::{self, Verdict},
};

/// A debug log line about a packet's outcome (the `log` feature's builds
/// only; otherwise nothing is compiled in).
macro_rules! log_outcome {
    ($ctx:expr, $what:literal, $why:expr) => {
        #[cfg(feature = "log")]
        aya_log_ebpf::debug!($ctx, $what, $why as u32);
    };
}

/// XDP: forwards what the pipeline finished, drops what it drops, hands
/// the rest to TC (which counts its final outcome).
#[inline(always)]
pub fn xdp(ctx: &mut XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let v = pipeline::process(ctx);
    monitor::verdict(ctx, &v);
    match v {
        Verdict::Forward { ifindex, nexthop } => {
            maps::count(Outcome::FwdXdp, len);
            // The kernel never sees this packet: its neighbour is checked
            // at the daemon's request (`NeighUsed`).
            maps::neigh_used(ifindex, nexthop);
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        Verdict::Bounce => {
            maps::count(Outcome::ArpReplied, len);
            xdp_action::XDP_TX
        }
        // Shed here, at the lowest cost (floods, hostile frames).
        Verdict::Drop(why) => {
            maps::count(why, len);
            log_outcome!(ctx, "xdp: drop, outcome {}", why);
            xdp_action::XDP_DROP
        }
        // TC runs the same pipeline and counts the final outcome.
        _ => {
            maps::count(Outcome::ToTc, len);
            xdp_action::XDP_PASS
        }
    }
}

/// TC: the same pipeline on skbs (what XDP handed up, or devices without
/// XDP); packets handed to the kernel carry the mark that tells it how.
#[inline(always)]
pub fn tc(ctx: &mut TcContext) -> i32 {
    let len = ctx.len() as u64;
    // Headers (IPv4 options and the quote of an ICMP error included) must
    // be linear and writable for direct access.
    let _ = ctx.pull_data(core::cmp::min(len as u32, HEADERS));
    let v = pipeline::process(ctx);
    monitor::verdict(ctx, &v);
    match v {
        Verdict::Forward { ifindex, nexthop } => {
            let mut nh = bpf_redir_neigh {
                nh_family: 2,
                __bindgen_anon_1: unsafe { core::mem::zeroed() },
            };
            nh.__bindgen_anon_1.ipv4_nh = nexthop;
            let r = unsafe {
                bpf_redirect_neigh(
                    ifindex,
                    &mut nh,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                )
            };
            maps::count(Outcome::FwdTc, len);
            r as i32
        }
        Verdict::Drop(why) => {
            maps::count(why, len);
            log_outcome!(ctx, "tc: drop, outcome {}", why);
            TC_ACT_SHOT
        }
        Verdict::Kernel(why) => {
            maps::count(why, len);
            log_outcome!(ctx, "tc: to the kernel, outcome {}", why);
            TC_ACT_OK
        }
        Verdict::Answer(why) => {
            mark(ctx, answer_mark(why, false));
            maps::count(why, len);
            log_outcome!(ctx, "tc: to be answered, outcome {}", why);
            TC_ACT_OK
        }
        Verdict::Translated(why) => {
            mark(ctx, MARK_TRANSLATED);
            maps::count(why, len);
            log_outcome!(ctx, "tc: translated, to the kernel, outcome {}", why);
            TC_ACT_OK
        }
        Verdict::TranslatedAnswer(why) => {
            mark(ctx, answer_mark(why, true));
            maps::count(why, len);
            log_outcome!(ctx, "tc: translated back, to be answered, outcome {}", why);
            TC_ACT_OK
        }
        Verdict::Bounce => {
            maps::count(Outcome::ArpReplied, len);
            // Out of the device it came in on.
            unsafe { bpf_redirect(Packet::ifindex(ctx), 0) as i32 }
        }
        Verdict::ToTc => TC_ACT_OK,
    }
}

/// TC egress of the router's ports: only the router's own packets (a
/// forwarded one came in on a device) are looked at, for ICMP errors to
/// translate back. Never drops.
#[inline(always)]
pub fn tc_out(ctx: &mut TcContext) -> i32 {
    // SAFETY: skb is the program's context.
    if unsafe { (*ctx.skb.skb).ingress_ifindex } != 0 {
        return TC_ACT_OK;
    }
    let len = ctx.len() as u64;
    let _ = ctx.pull_data(core::cmp::min(len as u32, HEADERS));
    if pipeline::local_error(ctx) {
        maps::count(Outcome::KernelErrorTranslated, len);
    }
    TC_ACT_OK
}

/// Bytes TC makes linear and writable: Ethernet, IPv4 with options, and an
/// ICMP error's quote with its own options.
const HEADERS: u32 = 14 + 60 + 8 + 60 + 8;

/// Tells the kernel how to treat a packet handed up (the nftables rules of
/// the router namespace match it); Neutron's low 16 bits are kept.
#[inline(always)]
fn mark(ctx: &TcContext, m: u32) {
    // SAFETY: skb is the program's context. Volatile and whole: the
    // verifier accepts only 32-bit accesses to the mark, and the compiler
    // would otherwise store just the changed half.
    unsafe {
        let p = &raw mut (*ctx.skb.skb).mark;
        let old = core::ptr::read_volatile(p);
        core::ptr::write_volatile(p, (old & !MARK_MASK) | m);
    }
}
