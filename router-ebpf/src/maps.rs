//! Map statics of the programs.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use router_common::counters::{Counter, OUTCOME_COUNT, Outcome};

/// Per-CPU packet and byte counters by outcome.
#[btf_map]
static COUNTERS: PerCpuArray<Counter, OUTCOME_COUNT> = PerCpuArray::new();

#[inline(always)]
pub fn count(outcome: Outcome, bytes: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
