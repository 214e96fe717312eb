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
use router_common::counters::Outcome;

/// Fast path: forwards what it can finish, hands the rest to TC.
#[xdp]
pub fn xr_xdp(mut ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match pipeline::process(&mut ctx) {
        Verdict::Forward { ifindex, .. } => {
            maps::count(Outcome::FwdXdp, len);
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        Verdict::Bounce => {
            maps::count(Outcome::ArpReplied, len);
            xdp_action::XDP_TX
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
    // Headers must be linear and writable for direct access.
    let _ = ctx.pull_data(core::cmp::min(len as u32, 64));
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
        Verdict::Kernel(why) | Verdict::Drop(why)
            if matches!(
                why,
                Outcome::DropMalformed
                    | Outcome::DropNoPort
                    | Outcome::DropMetadata
                    | Outcome::DropCtFull
            ) =>
        {
            maps::count(why, len);
            TC_ACT_SHOT
        }
        Verdict::Kernel(why) | Verdict::Drop(why) => {
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
