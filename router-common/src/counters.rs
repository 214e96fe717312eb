//! Per-CPU outcome counters, indexed by [`Outcome`].

/// What happened to a packet seen by a BPF program.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the kernel stack unchanged (XDP_PASS / TC pass).
    Passed = 0,
}

/// Number of counter slots; the counters array map has this many entries.
pub const OUTCOME_COUNT: usize = 1;

/// One slot of the per-CPU counters map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::align_of::<Counter>() == 8);

#[cfg(feature = "user")]
// SAFETY: plain old data, no padding (checked above), any bit pattern valid.
unsafe impl aya::Pod for Counter {}
