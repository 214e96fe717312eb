//! The router's BPF object: the forwarding pipeline behind an XDP and a TC
//! entry point, and an XDP_PASS program for veth peers. Nothing else: the
//! benchmark's programs live in their own object.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use router_ebpf::hooks;

/// Fast path: forwards what it can finish, hands the rest to TC.
#[xdp]
pub fn xr_xdp(mut ctx: XdpContext) -> u32 {
    hooks::xdp(&mut ctx)
}

/// The same pipeline on skbs: what XDP handed up, or devices without XDP.
#[classifier]
pub fn xr_tc(mut ctx: TcContext) -> i32 {
    hooks::tc(&mut ctx)
}

/// Lets frames redirected into a veth be received by its peer.
#[xdp]
pub fn xr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
