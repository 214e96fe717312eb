//! Types shared by the eBPF programs and the userspace controller.
//!
//! Everything here is `#[repr(C)]` and plain data so both sides agree on the
//! layout; `aya::Pod` impls sit behind the `user` feature.
#![no_std]

pub mod counters;
