//! fragments: a fragmented datagram is translated as its first fragment
//! was. The first fragment's translation is recorded under (src, dst, IP
//! id, protocol); later fragments, which carry no ports, look it up, for
//! as long as the kernel would wait for the datagram's fragments
//! ([`FRAG_TIMEOUT_NS`]). One overlapping the first fragment (which could
//! rewrite, at a receiver that reassembles, the headers the translation
//! was chosen by) is dropped, as the kernel's reassembly drops it: alone
//! if it lies wholly inside the first (a duplicate), else with the rest
//! of its datagram.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns};
use router_common::{
    conntrack::{FRAG_TIMEOUT_NS, FragEntry, FragKey},
    counters::Outcome,
};

use super::{
    Verdict,
    parse::{IP_OFF, Pkt},
    route::{self, Flow},
};
use crate::maps;

#[inline(always)]
fn key(pkt: &Pkt) -> FragKey {
    FragKey {
        src: pkt.src.to_ne_bytes(),
        dst: pkt.dst.to_ne_bytes(),
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    }
}

/// Records how a fragmented datagram's first fragment was translated.
#[inline(always)]
pub fn remember(pkt: &Pkt, flow: &Flow) {
    let k = key(pkt);
    let e = FragEntry {
        new_src: flow.src.to_ne_bytes(),
        new_dst: flow.dst.to_ne_bytes(),
        // SAFETY: helper without arguments.
        seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
        first_len: pkt.tot_len - (pkt.l4_off - IP_OFF) as u16,
        _pad: [0; 6],
    };
    let _ = maps::XR_FRAG.insert(&k, &e, BPF_ANY as u64);
}

/// A later fragment: the addresses its first fragment got. Unknown (the
/// first has not come through the programs): dropped, since nothing can
/// translate it as the rest of its datagram was (the kernel, reassembling
/// it, would translate it on its own, differently).
#[inline(always)]
pub fn later(pkt: &Pkt) -> Result<Flow, Verdict> {
    let k = key(pkt);
    // SAFETY: plain data.
    let Some(e) = (unsafe { maps::XR_FRAG.get(&k) }) else {
        return Err(Verdict::Drop(Outcome::DropFragment));
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let stale = now.wrapping_sub(e.seen_ns) > FRAG_TIMEOUT_NS;
    if stale || pkt.frag_off < e.first_len {
        // Wholly inside the first fragment, the kernel's reassembly takes
        // it for a duplicate and drops it alone; partly, for an overlap,
        // and drops the datagram: none of it goes on. Another datagram's
        // entry, long gone, serves no more.
        let end = pkt.frag_off as u32 + (pkt.tot_len as u32 - (pkt.l4_off - IP_OFF) as u32);
        if stale || end > e.first_len as u32 {
            let _ = maps::XR_FRAG.remove(&k);
        }
        return Err(Verdict::Drop(Outcome::DropFragment));
    }
    route::translated(
        pkt,
        u32::from_ne_bytes(e.new_src),
        u32::from_ne_bytes(e.new_dst),
    )
}
