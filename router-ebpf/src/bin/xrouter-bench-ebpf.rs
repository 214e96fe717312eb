//! The benchmark's BPF object (`xrouter-bench`), never loaded by a router:
//!
//! - `xr_bench_gen`: an IPv4/UDP generator for BPF_PROG_TEST_RUN with
//!   `BPF_F_TEST_XDP_LIVE_FRAMES` (the mechanism of xdp-trafficgen). The
//!   kernel recycles live-frame pages without restoring the template, so the
//!   program writes the whole Ethernet/IPv4/UDP header of every frame from
//!   `XRB_GEN`, varying the source port (and address) over N flows, then
//!   redirects it to the target device. Optional pacing drops frames that
//!   are not yet due (they are never sent). With `XRB_GEN_HEADROOM` set
//!   it first moves the frame's start towards the page's head (and trims
//!   its end by as much), so the frame leaves with that little headroom,
//!   like a NIC driver's skb (NET_SKB_PAD, 64 bytes) rather than a live
//!   frame's XDP_PACKET_HEADROOM (256): the kernel resets live frames'
//!   data pointers every iteration, so this is done for every frame.
//! - `xr_bench_sink`: counts per CPU and drops; `xr_bench_sink_tc` the
//!   same on skbs (tc ingress), for a device that receives skbs: an XDP
//!   program there would have the veth copy every skb with less than 256
//!   bytes of headroom first.
//! - `xr_bench_redirect`: a bare XDP_REDIRECT to one device (the rig's
//!   ceiling for an XDP forwarder).
//! - `xr_pass`: XDP_PASS for the router ports of the planes without XDP.
//! - `xr_bench_micro`: `xr_xdp`'s body behind a restore of the frame's
//!   header, so BPF_PROG_TEST_RUN can repeat it a million times on the same
//!   input (the pipeline rewrites packets in place; without the restore the
//!   second run would see the first one's output).
//! - `xr_bench_stage`: the same restore, then the pipeline up to one of its
//!   stages (the per-stage profile).

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action},
    btf_maps::{Array, PerCpuArray},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use router_common::bench::{
    FLOOD_DPORT, GenConfig, GenState, MICRO_HDR, MicroConfig, NEW_CLIENT, STAGE_CLASSIFY,
    STAGE_CONNTRACK, STAGE_EMPTY, STAGE_PARSE, STAGE_RESTORE, SinkCounter,
};

/// Generator settings (index 0).
#[btf_map]
pub static XRB_GEN: Array<GenConfig, 1> = Array::new();

/// Headroom the generator leaves in front of each frame, in bytes (index
/// 0; 0: the live frame's own, [`LIVE_HEADROOM`]).
#[btf_map]
pub static XRB_GEN_HEADROOM: Array<u32, 1> = Array::new();

/// Headroom of a live frame of BPF_PROG_TEST_RUN (XDP_PACKET_HEADROOM).
const LIVE_HEADROOM: u32 = 256;

/// Generator state per CPU (index 0).
#[btf_map]
pub static XRB_GEN_STATE: PerCpuArray<GenState, 1> = PerCpuArray::new();

/// Sink counters per CPU (index 0).
#[btf_map]
pub static XRB_SINK: PerCpuArray<SinkCounter, 1> = PerCpuArray::new();

/// Target ifindex of `xr_bench_redirect` (index 0).
#[btf_map]
pub static XRB_REDIRECT: Array<u32, 1> = Array::new();

/// Microbenchmark frame and mode (index 0).
#[btf_map]
pub static XRB_MICRO: Array<MicroConfig, 1> = Array::new();

/// Microbenchmark run counter per CPU (index 0), for new flows.
#[btf_map]
pub static XRB_MICRO_SEQ: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Ethernet + IPv4 (no options) + UDP.
const HDR: usize = 42;
/// A minimum Ethernet frame without FCS.
const MIN_FRAME: usize = 60;

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Ethernet + IPv4 + TCP, no options.
const SYN_HDR: usize = 54;

/// The header of a TCP SYN from `src:sport` to the generator's destination
/// (no payload: IPv4 total length 40), with both checksums.
#[inline(always)]
fn syn_header(
    cfg: &GenConfig,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    isn: u32,
) -> [u8; SYN_HDR] {
    let addrs = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff);
    let ip_sum = 0x4500u32 + 40 + (((cfg.ttl as u32) << 8) | 6) + addrs;
    const WINDOW: u16 = 64240;
    // Pseudo-header (protocol 6, TCP length 20) and the header's words.
    let tcp_sum = addrs
        + 6
        + 20
        + sport as u32
        + dport as u32
        + (isn >> 16)
        + (isn & 0xffff)
        + 0x5002
        + WINDOW as u32;
    let mut h = [0u8; SYN_HDR];
    h[0..6].copy_from_slice(&cfg.dst_mac);
    h[6..12].copy_from_slice(&cfg.src_mac);
    h[12] = 0x08;
    h[14] = 0x45;
    h[16..18].copy_from_slice(&40u16.to_be_bytes());
    h[22] = cfg.ttl;
    h[23] = 6;
    h[24..26].copy_from_slice(&fold(ip_sum).to_be_bytes());
    h[26..30].copy_from_slice(&src.to_be_bytes());
    h[30..34].copy_from_slice(&dst.to_be_bytes());
    h[34..36].copy_from_slice(&sport.to_be_bytes());
    h[36..38].copy_from_slice(&dport.to_be_bytes());
    h[38..42].copy_from_slice(&isn.to_be_bytes());
    h[46] = 0x50;
    h[47] = 0x02;
    h[48..50].copy_from_slice(&WINDOW.to_be_bytes());
    h[50..52].copy_from_slice(&fold(tcp_sum).to_be_bytes());
    h
}

/// Writes a whole header, returns XDP_REDIRECT to the target (or XDP_DROP
/// when the pacer says the frame is not due yet).
#[xdp]
pub fn xr_bench_gen(ctx: XdpContext) -> u32 {
    let Some(cfg) = XRB_GEN.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(st) = XRB_GEN_STATE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot; the test run does not migrate.
    let st = unsafe { &mut *st };
    if cfg.gap_ns != 0 {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if now < st.next_ns {
            st.paced_out += 1;
            return xdp_action::XDP_DROP;
        }
        // After a stall, catch up with at most 32 frames back to back.
        let floor = now.saturating_sub(cfg.gap_ns * 32);
        let base = if st.next_ns > floor {
            st.next_ns
        } else {
            floor
        };
        st.next_ns = base + cfg.gap_ns;
    }
    let room = XRB_GEN_HEADROOM.get(0).copied().unwrap_or(0);
    if room != 0 && room < LIVE_HEADROOM {
        // Grow the frame at its head into the headroom, then trim its tail
        // by as much: the same length, `room` bytes of headroom left (the
        // kernel keeps at least the size of an xdp_frame). The header and
        // the zero bytes below are written afterwards.
        let delta = room as i32 - LIVE_HEADROOM as i32;
        // SAFETY: helper calls on this program's context; the packet
        // pointers are read again below.
        unsafe {
            if bpf_xdp_adjust_head(ctx.ctx, delta) != 0 || bpf_xdp_adjust_tail(ctx.ctx, delta) != 0
            {
                return xdp_action::XDP_ABORTED;
            }
        }
    }
    let data = ctx.data();
    let end = ctx.data_end();
    if data + HDR > end {
        return xdp_action::XDP_ABORTED;
    }
    let len = (end - data) as u16;
    let seq = st.seq;
    st.seq = seq + 1;
    let flows = if cfg.flows == 0 { 1 } else { cfg.flows as u64 };
    let nports = if cfg.nports == 0 {
        1
    } else {
        cfg.nports as u64
    };
    let i = seq % flows;
    let mut sport = cfg.sport.wrapping_add((i % nports) as u16);
    let hi = i / nports;
    let mut src = u32::from_be_bytes(cfg.src).wrapping_add(hi as u32);
    let mut dport = cfg.dport.wrapping_add(hi as u16);
    let mut dst = u32::from_be_bytes(cfg.dst);
    let mut syn = false;
    if cfg.flood_every != 0 && seq % cfg.flood_every as u64 == 0 {
        // A client never seen: 100.64.0.0/10 and a port, 2^37 of them.
        let n = seq / cfg.flood_every as u64;
        src = 0x6440_0000 | (n as u32 & 0x003f_ffff);
        sport = 1024 + ((n >> 22) as u16 & 0x7fff);
        dport = FLOOD_DPORT;
        syn = cfg.flood_syn != 0;
        if cfg.flood_dsts > 1 {
            dst = dst.wrapping_add((n % cfg.flood_dsts as u64) as u32);
        }
    }
    if syn {
        if data + SYN_HDR > end {
            return xdp_action::XDP_ABORTED;
        }
        let h = syn_header(cfg, src, dst, sport, dport, seq as u32);
        // SAFETY: data + SYN_HDR <= end was checked; byte-aligned write.
        unsafe { core::ptr::write_unaligned(data as *mut [u8; SYN_HDR], h) };
        if data + MIN_FRAME <= end {
            // Ethernet padding.
            // SAFETY: data + MIN_FRAME <= end was checked.
            unsafe {
                core::ptr::write_unaligned(
                    (data + SYN_HDR) as *mut [u8; MIN_FRAME - SYN_HDR],
                    [0; MIN_FRAME - SYN_HDR],
                )
            };
        }
        st.sent += 1;
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(cfg.ifindex, 0) as u32 };
    }
    let tot = len - 14;
    let ttl_proto = ((cfg.ttl as u32) << 8) | 17;
    let sum = 0x4500u32
        + tot as u32
        + ttl_proto
        + (src >> 16)
        + (src & 0xffff)
        + (dst >> 16)
        + (dst & 0xffff);
    let csum = fold(sum);

    let mut h = [0u8; HDR];
    h[0..6].copy_from_slice(&cfg.dst_mac);
    h[6..12].copy_from_slice(&cfg.src_mac);
    h[12] = 0x08;
    h[13] = 0x00;
    h[14] = 0x45;
    h[16..18].copy_from_slice(&tot.to_be_bytes());
    h[22] = cfg.ttl;
    h[23] = 17;
    h[24..26].copy_from_slice(&csum.to_be_bytes());
    h[26..30].copy_from_slice(&src.to_be_bytes());
    h[30..34].copy_from_slice(&dst.to_be_bytes());
    h[34..36].copy_from_slice(&sport.to_be_bytes());
    h[36..38].copy_from_slice(&dport.to_be_bytes());
    h[38..40].copy_from_slice(&(tot - 20).to_be_bytes());
    // SAFETY: data + HDR <= end was checked; byte-aligned write.
    unsafe { core::ptr::write_unaligned(data as *mut [u8; HDR], h) };
    if data + MIN_FRAME <= end {
        // The rest of a minimum frame: zeros (a frame moved into the
        // headroom holds what was there before). Larger frames keep stale
        // payload bytes past these; the UDP checksum is 0 (none).
        // SAFETY: data + MIN_FRAME <= end was checked.
        unsafe {
            core::ptr::write_unaligned(
                (data + HDR) as *mut [u8; MIN_FRAME - HDR],
                [0; MIN_FRAME - HDR],
            )
        };
    }
    st.sent += 1;
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(cfg.ifindex, 0) as u32 }
}

/// Counts the frame from `data` to `end` in `XRB_SINK`: IPv4/UDP frames
/// and TCP (a flood's SYNs), with bytes, a flood's apart, and anything
/// else apart.
#[inline(always)]
fn sink_count(data: usize, end: usize) {
    if let Some(c) = XRB_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; reads are bounds-checked first.
        unsafe {
            let proto = if data + 34 <= end
                && *((data + 12) as *const u8) == 0x08
                && *((data + 13) as *const u8) == 0x00
            {
                *((data + 23) as *const u8)
            } else {
                0
            };
            // The generator's UDP frames, and its flood's TCP SYNs.
            if proto == 17 || proto == 6 {
                (*c).packets += 1;
                (*c).bytes += (end - data) as u64;
                if data + 38 <= end
                    && u16::from_be_bytes(*((data + 36) as *const [u8; 2])) == FLOOD_DPORT
                {
                    (*c).flood += 1;
                }
            } else {
                (*c).other += 1;
            }
        }
    }
}

/// Counts IPv4/UDP frames (and bytes) and anything else apart; drops all.
#[xdp]
pub fn xr_bench_sink(ctx: XdpContext) -> u32 {
    sink_count(ctx.data(), ctx.data_end());
    xdp_action::XDP_DROP
}

/// `xr_bench_sink` on tc ingress: counts skbs (from their Ethernet header,
/// where tc ingress starts them) and drops them.
#[classifier]
pub fn xr_bench_sink_tc(ctx: TcContext) -> i32 {
    sink_count(ctx.data(), ctx.data_end());
    TC_ACT_SHOT as i32
}

/// Redirects every frame, untouched, to `XRB_REDIRECT[0]`.
#[xdp]
pub fn xr_bench_redirect(_ctx: XdpContext) -> u32 {
    match XRB_REDIRECT.get(0) {
        // SAFETY: plain helper call.
        Some(i) => unsafe { bpf_redirect(*i, 0) as u32 },
        None => xdp_action::XDP_ABORTED,
    }
}

/// Restores the frame's header from `XRB_MICRO` (and, for new flows, gives
/// it new ports); the stage to run to, or None if nothing is to run.
#[inline(always)]
fn restore(ctx: &XdpContext) -> Result<u32, u32> {
    let Some(cfg) = XRB_MICRO.get(0) else {
        return Err(xdp_action::XDP_ABORTED);
    };
    let stage = cfg.stage;
    if stage == STAGE_EMPTY {
        return Err(xdp_action::XDP_DROP);
    }
    let data = ctx.data();
    if data + MICRO_HDR > ctx.data_end() {
        return Err(xdp_action::XDP_ABORTED);
    }
    // Eight-byte stores: test runs place the frame 8-aligned, and a byte
    // array copy would be a byte loop here (a call to memmove).
    for i in 0..MICRO_HDR / 8 {
        // SAFETY: bounds checked above; the map value is 8-aligned.
        unsafe {
            let w = core::ptr::read_unaligned((cfg.frame.as_ptr() as *const u64).add(i));
            (data as *mut u64).add(i).write(w);
        }
    }
    if (cfg.new_flow != 0 || cfg.flows != 0)
        && let Some(seq) = XRB_MICRO_SEQ.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot; offsets 34..38 are inside MICRO_HDR.
        unsafe {
            let n = *seq;
            *seq = n + 1;
            if cfg.new_flow != 0 {
                let sport = 1024u16.wrapping_add(n as u16);
                let dport = 1024u16.wrapping_add((n >> 16) as u16);
                core::ptr::write_unaligned((data + 34) as *mut [u8; 2], sport.to_be_bytes());
                core::ptr::write_unaligned((data + 36) as *mut [u8; 2], dport.to_be_bytes());
                if cfg.new_flow == NEW_CLIENT {
                    // 100.64.0.0/10, scattered: a flood's sources are not
                    // neighbours.
                    let src = 0x6440_0000 | ((n as u32).wrapping_mul(2_654_435_761) >> 10);
                    core::ptr::write_unaligned((data + 26) as *mut [u8; 4], src.to_be_bytes());
                    // The header's checksum follows (the pipeline drops a
                    // header whose sum is wrong).
                    let f = &cfg.frame;
                    let check = router_ebpf::pipeline::csum::replace(
                        u16::from_ne_bytes([f[24], f[25]]),
                        u32::from_ne_bytes([f[26], f[27], f[28], f[29]]),
                        u32::from_ne_bytes(src.to_be_bytes()),
                        4,
                    );
                    core::ptr::write_unaligned((data + 24) as *mut [u8; 2], check.to_ne_bytes());
                }
            } else {
                // An odd multiplier permutes 0..flows: consecutive runs
                // take flows far apart, not the neighbours they were
                // inserted beside (whose entries may share a page).
                let flow = (n as u32).wrapping_mul(40_503) & cfg.flows.wrapping_sub(1);
                let dport = 1024u16.wrapping_add(flow as u16);
                core::ptr::write_unaligned((data + 36) as *mut [u8; 2], dport.to_be_bytes());
            }
        }
    }
    if stage == STAGE_RESTORE {
        return Err(xdp_action::XDP_DROP);
    }
    Ok(stage)
}

/// The frame restored, then exactly what `xr_xdp` runs.
#[xdp]
pub fn xr_bench_micro(mut ctx: XdpContext) -> u32 {
    match restore(&ctx) {
        Ok(_) => router_ebpf::hooks::xdp(&mut ctx),
        Err(ret) => ret,
    }
}

/// The frame restored, then the pipeline up to a stage
/// (`MicroConfig::stage`).
#[xdp]
pub fn xr_bench_stage(mut ctx: XdpContext) -> u32 {
    match restore(&ctx) {
        Ok(stage) => staged(&mut ctx, stage),
        Err(ret) => ret,
    }
}

/// The pipeline's stages as `pipeline::process` runs them for a packet it
/// forwards, up to `stage`; XDP_DROP when the stage was reached, XDP_ABORTED
/// if the packet took another way (the bench then reports the case as
/// broken).
#[inline(always)]
fn staged(ctx: &mut XdpContext, stage: u32) -> u32 {
    use router_ebpf::{
        ctx::Packet as _,
        pipeline::{Verdict, arp, classify, conntrack, parse, route},
    };
    if ctx.pop_priority_tags().is_err() || arp::answer(ctx) {
        return xdp_action::XDP_ABORTED;
    }
    let Ok(pkt) = parse::parse(ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if stage == STAGE_PARSE {
        return xdp_action::XDP_DROP;
    }
    let Ok(ingress) = classify::classify(ctx, &pkt) else {
        return xdp_action::XDP_ABORTED;
    };
    if parse::partial_csum(ctx, &pkt) {
        return xdp_action::XDP_ABORTED;
    }
    if stage == STAGE_CLASSIFY {
        return xdp_action::XDP_DROP;
    }
    let flow = match conntrack::track(&pkt, &ingress, false, 0) {
        Ok(f) => f,
        // Shed (over the new-connection budget): that is the end of it.
        Err(Verdict::Drop(_)) => return xdp_action::XDP_DROP,
        Err(_) => return xdp_action::XDP_ABORTED,
    };
    if stage == STAGE_CONNTRACK {
        return xdp_action::XDP_DROP;
    }
    match flow
        .nexthop_mac
        .or_else(|| route::neighbour(flow.egress, flow.nexthop))
    {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_ABORTED,
    }
}

/// XDP_PASS, for the router ports of the planes without XDP (a frame
/// redirected into a veth is dropped unless the peer runs an XDP program).
#[xdp]
pub fn xr_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
