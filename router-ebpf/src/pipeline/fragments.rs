//! fragments: a fragmented datagram is translated as its first fragment
//! was. The first fragment's translation is recorded under (src, dst, IP
//! id, protocol); later fragments, which carry no ports, look it up.

use aya_ebpf::bindings::BPF_ANY;
use router_common::{
    conntrack::{FragEntry, FragKey},
    counters::Outcome,
};

use super::{
    Verdict,
    parse::Pkt,
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
    route::translated(
        pkt,
        u32::from_ne_bytes(e.new_src),
        u32::from_ne_bytes(e.new_dst),
    )
}
