//! Types shared by the eBPF programs and the userspace controller.
//!
//! Everything here is `#[repr(C)]` plain data so both sides agree on the
//! layout (checked by const assertions); `aya::Pod` impls sit behind the
//! `user` feature. Addresses are stored in network byte order as they appear
//! in packets (`[u8; 4]`), ports likewise (`u16` read from the wire).
#![no_std]

pub mod bench;
pub mod config;
pub mod conntrack;
pub mod counters;
pub mod monitor;
pub mod port;
pub mod route;

/// Declares `aya::Pod` for shared types when building the userspace side.
#[macro_export]
macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        $(
            // The derived bytemuck::Pod proves the layout at compile time:
            // repr(C), no padding, every field plain data.
            const _: fn() = || {
                fn is_pod<T: bytemuck::Pod>() {}
                is_pod::<$t>();
            };
            #[cfg(feature = "user")]
            // SAFETY: bytemuck::Pod (checked above): every bit pattern is a
            // valid value and there are no padding bytes to leak.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
