//! xrouter's data path, shared by the BPF objects built from this crate:
//! the forwarding pipeline (`pipeline/`), what differs between the XDP and
//! TC hooks (`ctx`), the router's maps (`maps`), the entry points'
//! bodies (`hooks`) and the events they report to `xrouter monitor`
//! (`monitor`). The router's object is `src/main.rs`; the benchmark's
//! (`--features bench`) is `src/bin/xrouter-bench-ebpf.rs`.
#![no_std]
// Compare-and-swap on map memory (the connection table's slots): the BPF
// target's core atomics have no CAS, the intrinsic lowers to BPF's.
#![feature(core_intrinsics)]
#![allow(internal_features)]

pub mod ctx;
pub mod hooks;
pub mod maps;
pub mod monitor;
pub mod pipeline;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
