//! What the pipeline needs of a hook: packet bounds, the ingress device, and
//! checksum fixing. XDP fixes checksums in software (it sees only complete
//! checksums, see `parse::partial_csum`); TC uses the kernel helpers, which
//! also handle CHECKSUM_PARTIAL skbs.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, xdp_md},
    helpers::{bpf_skb_vlan_pop, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};

use crate::pipeline::csum;

pub trait Packet {
    /// True for TC (an skb), false for XDP.
    const TC: bool;
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Length of the whole packet (an skb may hold part of it outside the
    /// linear area).
    fn len(&self) -> usize;
    /// Payload bytes per segment of an aggregated (GSO/GRO) skb, 0 for a
    /// plain packet. Such a packet is not "over the MTU": its segments are
    /// what goes on the wire.
    fn gso_size(&self) -> u32;
    /// Whether the frame carries an 802.1Q/802.1ad tag outside its data
    /// (an skb's VLAN metadata; XDP sees tags in the frame itself).
    fn vlan_tagged(&self) -> bool;
    /// Whether the IPv4 header, options included, sums to all ones (see
    /// [`xr_ip_header_ok_xdp`]).
    fn header_with_options_ok(&self) -> bool;
    /// Removes priority tags (802.1Q or 802.1ad with VLAN id 0, stacked up
    /// to [`PRIORITY_TAGS`] deep): the kernel strips them and handles the
    /// frame as untagged, so the programs do too. A tag with a VLAN id
    /// stays (the frame is the kernel's). Err: the frame could not be
    /// changed, or has more priority tags than that (it must not go to the
    /// kernel, which would strip them all and translate it on its own).
    fn pop_priority_tags(&mut self) -> Result<(), ()>;
    /// Fixes the IPv4 header checksum at `off` for a `size`-byte field change.
    fn fix_l3(&mut self, off: usize, old: u32, new: u32, size: u64) -> Result<(), ()>;
    /// Fixes an L4 checksum at `off`. `pseudo`: the field is in the
    /// pseudo-header (an address); `udp`: a zero checksum means "none".
    fn fix_l4(
        &mut self,
        off: usize,
        old: u32,
        new: u32,
        size: u64,
        pseudo: bool,
        udp: bool,
    ) -> Result<(), ()>;

    /// A pointer to a `T` at `off`, if the packet holds it whole.
    #[inline(always)]
    fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let start = self.start();
        if start + off + core::mem::size_of::<T>() > self.end() {
            return None;
        }
        Some((start + off) as *mut T)
    }
}

impl Packet for XdpContext {
    const TC: bool = false;
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: ctx is the program's context.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }
    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        false
    }
    #[inline(always)]
    fn header_with_options_ok(&self) -> bool {
        xr_ip_header_ok_xdp(self.ctx) != 0
    }
    #[inline(always)]
    fn pop_priority_tags(&mut self) -> Result<(), ()> {
        for _ in 0..PRIORITY_TAGS {
            let Some(h) = self.ptr::<[u8; 16]>(0) else {
                return Ok(());
            };
            // SAFETY: bounds checked by ptr().
            let h = unsafe { &mut *h };
            if !is_priority_tag(h) {
                return Ok(());
            }
            // The MACs move 4 bytes on, over the tag; the head follows.
            for i in (0..12).rev() {
                h[i + 4] = h[i];
            }
            // SAFETY: ctx is the program's context.
            if unsafe { bpf_xdp_adjust_head(self.ctx, 4) } != 0 {
                return Err(());
            }
        }
        match self.ptr::<[u8; 16]>(0) {
            // SAFETY: bounds checked by ptr().
            Some(h) if is_priority_tag(unsafe { &*h }) => Err(()),
            _ => Ok(()),
        }
    }
    #[inline(always)]
    fn fix_l3(&mut self, off: usize, old: u32, new: u32, size: u64) -> Result<(), ()> {
        let p = self.ptr::<u16>(off).ok_or(())?;
        // SAFETY: bounds checked by ptr().
        unsafe { *p = csum::replace(*p, old, new, size) };
        Ok(())
    }
    #[inline(always)]
    fn fix_l4(
        &mut self,
        off: usize,
        old: u32,
        new: u32,
        size: u64,
        _pseudo: bool,
        udp: bool,
    ) -> Result<(), ()> {
        let p = self.ptr::<u16>(off).ok_or(())?;
        // SAFETY: bounds checked by ptr().
        unsafe {
            if udp && *p == 0 {
                return Ok(());
            }
            let mut c = csum::replace(*p, old, new, size);
            if udp && c == 0 {
                c = 0xffff;
            }
            *p = c;
        }
        Ok(())
    }
}

trait SkbTags {
    fn priority_tagged(&self) -> bool;
}

impl SkbTags for TcContext {
    /// Whether the outer tag, in the skb's metadata or in the frame, has
    /// VLAN id 0.
    #[inline(always)]
    fn priority_tagged(&self) -> bool {
        // SAFETY: skb is the program's context.
        let skb = unsafe { &*self.skb.skb };
        if skb.vlan_present != 0 {
            return is_vlan(skb.vlan_proto as u16) && skb.vlan_tci & 0x0fff == 0;
        }
        match self.ptr::<[u8; 16]>(0) {
            // SAFETY: bounds checked by ptr().
            Some(h) => is_priority_tag(unsafe { &*h }),
            None => false,
        }
    }
}

impl Packet for TcContext {
    const TC: bool = true;
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: skb is the program's context.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: skb is the program's context.
        unsafe { (*self.skb.skb).gso_size }
    }
    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).vlan_present != 0 }
    }
    #[inline(always)]
    fn header_with_options_ok(&self) -> bool {
        xr_ip_header_ok_tc(self.skb.skb) != 0
    }
    #[inline(always)]
    fn pop_priority_tags(&mut self) -> Result<(), ()> {
        for _ in 0..PRIORITY_TAGS {
            // Usually the kernel has moved the outer tag into the skb's
            // metadata already; one in the frame is popped the same way
            // (bpf_skb_vlan_pop then moves the next tag, if any, there).
            if !self.priority_tagged() {
                return Ok(());
            }
            // SAFETY: skb is the program's context.
            if unsafe { bpf_skb_vlan_pop(self.skb.skb as *mut _) } != 0 {
                return Err(());
            }
        }
        if self.priority_tagged() {
            return Err(());
        }
        Ok(())
    }
    #[inline(always)]
    fn fix_l3(&mut self, off: usize, old: u32, new: u32, size: u64) -> Result<(), ()> {
        self.l3_csum_replace(off, old as u64, new as u64, size)
            .map_err(|_| ())
    }
    #[inline(always)]
    fn fix_l4(
        &mut self,
        off: usize,
        old: u32,
        new: u32,
        size: u64,
        pseudo: bool,
        udp: bool,
    ) -> Result<(), ()> {
        let mut flags = size;
        if pseudo {
            flags |= BPF_F_PSEUDO_HDR as u64;
        }
        if udp {
            flags |= BPF_F_MARK_MANGLED_0 as u64;
        }
        self.l4_csum_replace(off, old as u64, new as u64, flags)
            .map_err(|_| ())
    }
}

/// Priority tags popped at most, stacked (the kernel strips any number; a
/// deeper stack is dropped as malformed rather than left to it).
pub const PRIORITY_TAGS: usize = 8;

/// An 802.1Q or 802.1ad TPID, as the skb's `vlan_proto` (network order).
#[inline(always)]
fn is_vlan(proto_be: u16) -> bool {
    proto_be == 0x8100u16.to_be() || proto_be == 0x88a8u16.to_be()
}

/// A frame whose first tag is 802.1Q or 802.1ad with VLAN id 0.
#[inline(always)]
fn is_priority_tag(h: &[u8; 16]) -> bool {
    ((h[12] == 0x81 && h[13] == 0) || (h[12] == 0x88 && h[13] == 0xa8))
        && h[14] & 0x0f == 0
        && h[15] == 0
}

/// Whether the IPv4 header of the packet of `ctx` (XDP), of any length,
/// sums to all ones, its checksum included (1) or not, or is not all there
/// (0). A global function, checked by the verifier once on its own: read
/// inside the pipeline, a header of variable length would split the
/// verifier's states by the packet's checked length all the way through.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ip_header_ok_xdp(ctx: *mut xdp_md) -> u32 {
    // SAFETY: the program's context.
    let (start, end) = unsafe { ((*ctx).data as usize, (*ctx).data_end as usize) };
    whole_header_sum_ok(start, end) as u32
}

/// [`xr_ip_header_ok_xdp`] for TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ip_header_ok_tc(skb: *mut __sk_buff) -> u32 {
    // SAFETY: the program's context.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    whole_header_sum_ok(start, end) as u32
}

/// Whether the IPv4 header between `start` and `end`, options included,
/// sums to all ones: a word of 4 bytes at a time, each at a constant offset
/// (which the verifier can check). (`parse` sums a header without options
/// itself, inline, the common case.)
#[inline(always)]
fn whole_header_sum_ok(start: usize, end: usize) -> bool {
    const IP: usize = crate::pipeline::parse::IP_OFF;
    if start + IP + 20 > end {
        return false;
    }
    // SAFETY: bounds checked.
    let ihl = (unsafe { *((start + IP) as *const u8) } & 0x0f) as usize;
    let mut s: u32 = 0;
    macro_rules! words {
        ($($i:literal)*) => {$(
            if ihl > $i {
                if start + IP + 4 * $i + 4 > end {
                    return false;
                }
                // SAFETY: bounds checked.
                let w = unsafe { core::ptr::read_unaligned((start + IP + 4 * $i) as *const [u16; 2]) };
                s += w[0] as u32 + w[1] as u32;
            }
        )*};
    }
    words!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14);
    csum::fold(s) == 0xffff
}
