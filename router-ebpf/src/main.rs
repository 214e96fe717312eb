//! The router's BPF object: the forwarding pipeline behind an XDP and a TC
//! entry point, a TC egress program for the router's own ICMP errors, and
//! an XDP_PASS program for veth peers. Nothing else: the
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

/// Egress of the router's ports: translates the quote of an ICMP error the
/// kernel sent about a packet handed up with its destination translated.
#[classifier]
pub fn xr_tc_out(mut ctx: TcContext) -> i32 {
    hooks::tc_out(&mut ctx)
}

/// Lets frames redirected into a veth be received by its peer.
#[xdp]
pub fn xr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
