//! xrouter's BPF programs: the forwarding pipeline (`pipeline/`) behind an
//! XDP and a TC entry point, and an XDP_PASS program for veth peers.
#![no_std]
#![no_main]

mod bench;
mod ctx;
mod maps;
mod pipeline;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use pipeline::Verdict;
use router_common::{
    config::{MARK_ANSWER_ONLY, MARK_MASK, MARK_TRANSLATED},
    counters::Outcome,
};

/// Fast path: forwards what it can finish, hands the rest to TC.
#[xdp]
pub fn xr_xdp(mut ctx: XdpContext) -> u32 {
    run_xdp(&mut ctx)
}

/// `xr_xdp`'s body (also measured by `xr_bench_micro`).
#[inline(always)]
pub(crate) fn run_xdp(ctx: &mut XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match pipeline::process(ctx) {
        Verdict::Forward { ifindex, .. } => {
            maps::count(Outcome::FwdXdp, len);
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        Verdict::Bounce => {
            maps::count(Outcome::ArpReplied, len);
            xdp_action::XDP_TX
        }
        // Shed here, at the lowest cost (floods, hostile frames).
        Verdict::Drop(why) => {
            maps::count(why, len);
            xdp_action::XDP_DROP
        }
        // TC runs the same pipeline and counts the final outcome.
        _ => {
            maps::count(Outcome::ToTc, len);
            xdp_action::XDP_PASS
        }
    }
}

/// The same pipeline on skbs: what XDP handed up, or devices without XDP.
#[classifier]
pub fn xr_tc(mut ctx: TcContext) -> i32 {
    let len = ctx.len() as u64;
    // Headers (IPv4 options and the quote of an ICMP error included) must
    // be linear and writable for direct access.
    let _ = ctx.pull_data(core::cmp::min(len as u32, 128));
    match pipeline::process(&mut ctx) {
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
            TC_ACT_SHOT
        }
        Verdict::Kernel(why) => {
            maps::count(why, len);
            TC_ACT_OK
        }
        Verdict::Answer(why) => {
            mark(&ctx, MARK_ANSWER_ONLY);
            maps::count(why, len);
            TC_ACT_OK
        }
        Verdict::Translated(why) => {
            mark(&ctx, MARK_TRANSLATED);
            maps::count(why, len);
            TC_ACT_OK
        }
        Verdict::Bounce => {
            maps::count(Outcome::ArpReplied, len);
            // Out of the device it came in on.
            unsafe { bpf_redirect(ctx::Packet::ifindex(&ctx), 0) as i32 }
        }
        Verdict::ToTc => TC_ACT_OK,
    }
}

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

/// Lets frames redirected into a veth be received by its peer.
#[xdp]
pub fn xr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
