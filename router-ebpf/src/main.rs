//! xrouter's BPF programs.
//!
//! For now one XDP program that counts what it sees and hands every packet to
//! the kernel: it proves the whole toolchain (nightly, bpf-linker, aya) builds,
//! embeds and loads. The forwarding pipeline grows from here.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

mod maps;

#[xdp]
pub fn xrouter_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    maps::count(router_common::counters::Outcome::Passed, len);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
