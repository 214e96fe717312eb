//! Events for `xrouter monitor`: a packet's outcome and tuple, written to
//! the router's ring buffer only while the monitor asks for them
//! (`XR_MON_CTL`). Off, a drop or a hand-off to the kernel costs one more
//! load of the control word, and a forwarded packet the same.
//!
//! The tuple is read again from the frame as the program leaves it, rather
//! than carried through the pipeline: the check sits at the end, in the
//! entry points, and the fast path's registers and stack stay as they are.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use router_common::{
    counters::Outcome,
    monitor::{
        EV_FRAGMENT, EV_IPV4, EV_L4, EV_VLAN, HOOK_TC, HOOK_XDP, MON_DROPS, MON_FORWARDED,
        MON_KERNEL, MonitorEvent,
    },
};

use crate::{
    ctx::Packet,
    maps::{XR_MON_CPU, XR_MON_CTL, XR_MON_RING},
    pipeline::{Verdict, parse},
};

/// Reports `v` if the monitor asks for its kind. XDP reports drops and
/// forwards only: what it hands up, TC decides and reports.
#[inline(always)]
pub fn verdict<P: Packet>(p: &P, v: &Verdict) {
    let Some(ctl) = XR_MON_CTL.get(0) else {
        return;
    };
    let flags = ctl.flags;
    if flags == 0 {
        return;
    }
    let (kind, outcome, egress) = match *v {
        Verdict::Forward { ifindex, .. } => (
            MON_FORWARDED,
            if P::TC {
                Outcome::FwdTc
            } else {
                Outcome::FwdXdp
            },
            ifindex,
        ),
        Verdict::Drop(why) => (MON_DROPS, why, 0),
        Verdict::Kernel(why)
        | Verdict::Answer(why)
        | Verdict::Translated(why)
        | Verdict::TranslatedAnswer(why)
            if P::TC =>
        {
            (MON_KERNEL, why, 0)
        }
        _ => return,
    };
    if flags & kind == 0 || !sampled(ctl.sample_every) {
        return;
    }
    emit(p, outcome, egress);
}

/// Whether this packet is the one in `every` to report (per CPU: no
/// shared counter for a flood to bounce between CPUs).
#[inline(always)]
fn sampled(every: u32) -> bool {
    if every <= 1 {
        return true;
    }
    let Some(s) = XR_MON_CPU.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    unsafe {
        if (*s).skip == 0 {
            (*s).skip = every as u64 - 1;
            true
        } else {
            (*s).skip -= 1;
            false
        }
    }
}

#[inline(always)]
fn emit<P: Packet>(p: &P, outcome: Outcome, egress: u32) {
    let Some(mut entry) = XR_MON_RING.reserve(0) else {
        // The ring is full: the reader is behind. Counted, never waited for.
        if let Some(s) = XR_MON_CPU.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { (*s).lost += 1 };
        }
        return;
    };
    let mut ev = MonitorEvent {
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: p.ifindex(),
        egress,
        outcome: outcome as u32,
        len: p.len() as u32,
        hook: if P::TC { HOOK_TC } else { HOOK_XDP },
        ..MonitorEvent::default()
    };
    if p.vlan_tagged() {
        ev.flags |= EV_VLAN;
    }
    tuple(p, &mut ev);
    entry.write(ev);
    entry.submit(0);
}

/// The frame's ethertype, and for IPv4 its addresses, protocol, TTL and
/// ports (or ICMP type, code and echo id), as far as the frame holds them.
#[inline(always)]
fn tuple<P: Packet>(p: &P, ev: &mut MonitorEvent) {
    let Some(eth) = p.ptr::<[u8; parse::ETH_LEN]>(0) else {
        return;
    };
    // SAFETY: bounds checked by ptr().
    let eth = unsafe { &*eth };
    ev.ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ev.ethertype != 0x0800 {
        return;
    }
    let Some(ip) = p.ptr::<[u8; 20]>(parse::IP_OFF) else {
        return;
    };
    // SAFETY: bounds checked by ptr().
    let ip = unsafe { &*ip };
    ev.flags |= EV_IPV4;
    ev.ttl = ip[8];
    ev.proto = ip[9];
    ev.src = [ip[12], ip[13], ip[14], ip[15]];
    ev.dst = [ip[16], ip[17], ip[18], ip[19]];
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        ev.flags |= EV_FRAGMENT;
        return;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return;
    }
    let l4 = parse::IP_OFF + ihl;
    match ev.proto {
        parse::PROTO_TCP => {
            if let Some(h) = p.ptr::<[u8; 14]>(l4) {
                // SAFETY: bounds checked by ptr().
                let h = unsafe { &*h };
                ev.sport = u16::from_ne_bytes([h[0], h[1]]);
                ev.dport = u16::from_ne_bytes([h[2], h[3]]);
                ev.tcp_flags_or_icmp_type = h[13];
                ev.flags |= EV_L4;
            }
        }
        parse::PROTO_UDP => {
            if let Some(h) = p.ptr::<[u8; 4]>(l4) {
                // SAFETY: bounds checked by ptr().
                let h = unsafe { &*h };
                ev.sport = u16::from_ne_bytes([h[0], h[1]]);
                ev.dport = u16::from_ne_bytes([h[2], h[3]]);
                ev.flags |= EV_L4;
            }
        }
        parse::PROTO_ICMP => {
            if let Some(h) = p.ptr::<[u8; 8]>(l4) {
                // SAFETY: bounds checked by ptr().
                let h = unsafe { &*h };
                ev.tcp_flags_or_icmp_type = h[0];
                ev.icmp_code = h[1];
                if h[0] == parse::ICMP_ECHO_REQUEST || h[0] == parse::ICMP_ECHO_REPLY {
                    ev.sport = u16::from_ne_bytes([h[4], h[5]]);
                }
                ev.flags |= EV_L4;
            }
        }
        _ => {}
    }
}
