//! parse: Ethernet (untagged), IPv4 (with or without options), TCP/UDP/ICMP
//! echo and ICMP errors.
//!
//! The L4 header follows the IPv4 header's length; packets with options are
//! translated like any other but forwarded by the kernel (which processes
//! the options), see `Pkt::options`.
//!
//! Headers are read through `network-types` structs (byte arrays, no
//! alignment assumed); addresses and ports stay raw, in network order, as
//! the maps key them.

use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use router_common::counters::Outcome;

use super::{Verdict, csum};
use crate::ctx::Packet;
use core::ptr::read_volatile;

pub const ETH_LEN: usize = 14;
pub const IP_OFF: usize = ETH_LEN;
/// Offsets inside the IPv4 header.
pub const IP_TTL: usize = IP_OFF + 8;
pub const IP_CSUM: usize = IP_OFF + 10;
pub const IP_SRC: usize = IP_OFF + 12;
pub const IP_DST: usize = IP_OFF + 16;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
/// Its code "host unreachable".
pub const ICMP_HOST_UNREACH: u8 = 1;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAM_PROBLEM: u8 = 12;

/// TCP flag bits (byte 13 of the header).
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_SYN: u8 = 0x02;
pub const FLAG_RST: u8 = 0x04;
pub const FLAG_ACK: u8 = 0x10;

/// What the rest of the pipeline needs of a packet. Addresses and ports are
/// raw (network order, read as native integers).
#[derive(Clone, Copy)]
pub struct Pkt {
    pub src: u32,
    pub dst: u32,
    /// TCP/UDP ports; for ICMP echo both hold the echo id.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub ttl: u8,
    /// ICMP type, or TCP flags.
    pub flags: u8,
    /// IPv4 total length (host order).
    pub tot_len: u16,
    /// Offset of the L4 header (14 + the IPv4 header's length).
    pub l4_off: usize,
    /// Length of the L4 header (TCP data offset, 8 for UDP and ICMP).
    pub l4_hdr: u16,
    /// The IPv4 header has options.
    pub options: bool,
    /// Don't Fragment is set.
    pub df: bool,
    /// Offset of the L4 checksum field (0: none here, a later fragment).
    pub l4_csum: usize,
    /// `FRAG_NONE`, `FRAG_FIRST` (offset 0, more to come) or `FRAG_LATER`.
    pub frag: u8,
    /// IPv4 identification (raw), for fragments.
    pub ip_id: u16,
    /// A later fragment's offset in its datagram, in bytes.
    pub frag_off: u16,
}

impl Pkt {
    /// A TCP segment with SYN alone of SYN, ACK, RST and FIN: one that
    /// opens (or retries opening) a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == PROTO_TCP
            && self.flags & (FLAG_SYN | FLAG_ACK | FLAG_RST | FLAG_FIN) == FLAG_SYN
    }
}

pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

/// Parses the headers, or says what to do with a packet the fast path
/// does not handle.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Result<Pkt, Verdict> {
    let eth: *mut EthHdr = p.ptr(0).ok_or(Verdict::Drop(Outcome::DropMalformed))?;
    // SAFETY: every read below is bounds-checked by ptr().
    unsafe {
        let ty = u16::from_be((*eth).ether_type);
        // A tag in the frame (XDP) or in the skb's metadata (TC, where the
        // kernel has already moved it there): no VLAN is routed here.
        if ty == 0x8100 || ty == 0x88a8 || p.vlan_tagged() {
            return Err(Verdict::Kernel(Outcome::KernelVlan));
        }
        if ty != 0x0800 {
            return Err(Verdict::Kernel(Outcome::KernelNotIpv4));
        }
        let vihl: *mut u8 = p.ptr(IP_OFF).ok_or(Verdict::Drop(Outcome::DropMalformed))?;
        let ihl = (*vihl & 0x0f) as usize;
        if *vihl >> 4 != 4 || ihl < 5 {
            return Err(Verdict::Drop(Outcome::DropMalformed));
        }
        let hdr: *mut Ipv4Hdr = p.ptr(IP_OFF).ok_or(Verdict::Drop(Outcome::DropMalformed))?;
        let h = &*hdr;
        let tot_len = h.tot_len();
        let ip_len = ihl * 4;
        if (tot_len as usize) < ip_len || IP_OFF + tot_len as usize > p.len() {
            return Err(Verdict::Drop(Outcome::DropMalformed));
        }
        // A header whose checksum is wrong: the kernel drops it before
        // routing (ip_rcv), so do the programs. One with options is summed
        // in a function of its own (`Packet::header_with_options_ok`):
        // summing a header of variable length here would split the
        // verifier's states by the packet's checked length, through the
        // whole pipeline. For the same reason the header length is read
        // again for this test (volatile: not the register the offsets
        // below are computed from, which the test would narrow).
        let sum_ok = if read_volatile(vihl) & 0x0f == 5 {
            header_sum_ok(hdr)
        } else {
            p.header_with_options_ok()
        };
        if !sum_ok {
            return Err(Verdict::Drop(Outcome::DropMalformed));
        }
        let l4_off = IP_OFF + ip_len;
        let frag = u16::from_be_bytes(h.frags);
        let frag_kind = if frag & 0x1fff != 0 {
            FRAG_LATER
        } else if frag & 0x2000 != 0 {
            FRAG_FIRST
        } else {
            FRAG_NONE
        };
        let mut pkt = Pkt {
            src: u32::from_ne_bytes(h.src_addr),
            dst: u32::from_ne_bytes(h.dst_addr),
            sport: 0,
            dport: 0,
            proto: h.proto,
            ttl: h.ttl,
            flags: 0,
            tot_len,
            l4_off,
            l4_hdr: 0,
            options: ihl != 5,
            df: frag & 0x4000 != 0,
            l4_csum: 0,
            frag: frag_kind,
            ip_id: u16::from_ne_bytes(h.id),
            frag_off: (frag & 0x1fff) << 3,
        };
        if frag_kind == FRAG_LATER {
            // No L4 header: translated as its first fragment was.
            return Ok(pkt);
        }
        let l4_len = tot_len as usize - ip_len;
        match pkt.proto {
            PROTO_TCP => {
                let t: *mut TcpHdr = p.ptr(l4_off).ok_or(Verdict::Drop(Outcome::DropMalformed))?;
                let t = &*t;
                let doff = t.doff() as usize;
                // A header longer than the segment (or, in a first
                // fragment, than the fragment: a "tiny fragment", RFC
                // 1858) is malformed; the kernel's conntrack finds it
                // invalid.
                if doff < 5 || l4_len < doff * 4 {
                    return Err(Verdict::Drop(Outcome::DropMalformed));
                }
                pkt.sport = u16::from_ne_bytes(t.source);
                pkt.dport = u16::from_ne_bytes(t.dest);
                // The flags byte whole (the struct has them bit by bit),
                // through the checked header pointer.
                pkt.flags = *(t as *const TcpHdr as *const u8).add(13);
                pkt.l4_hdr = (doff * 4) as u16;
                pkt.l4_csum = l4_off + 16;
            }
            PROTO_UDP => {
                let u: *mut UdpHdr = p.ptr(l4_off).ok_or(Verdict::Drop(Outcome::DropMalformed))?;
                let u = &*u;
                // The UDP length within the IP payload, as the kernel's
                // conntrack and UDP check it (a first fragment's covers
                // the fragments to come: More Fragments read again, not
                // to split the verifier's states by `frag_kind`).
                let ulen = u16::from_be_bytes(u.len) as usize;
                if l4_len < 8
                    || ulen < 8
                    || (ulen > l4_len && read_volatile(&h.frags)[0] & 0x20 == 0)
                {
                    return Err(Verdict::Drop(Outcome::DropMalformed));
                }
                pkt.sport = u16::from_ne_bytes(u.src);
                pkt.dport = u16::from_ne_bytes(u.dst);
                pkt.l4_hdr = 8;
                pkt.l4_csum = l4_off + 6;
            }
            PROTO_ICMP => {
                let i: *mut Icmpv4Hdr =
                    p.ptr(l4_off).ok_or(Verdict::Drop(Outcome::DropMalformed))?;
                let i = &*i;
                if l4_len < 8 {
                    return Err(Verdict::Drop(Outcome::DropMalformed));
                }
                pkt.flags = i.type_;
                pkt.l4_hdr = 8;
                if is_icmp_error(pkt.flags) && frag_kind == FRAG_NONE {
                    // The quoted packet (8 bytes on) is looked at by
                    // `icmp_error`.
                    pkt.l4_csum = l4_off + 2;
                    return Ok(pkt);
                }
                if pkt.flags != ICMP_ECHO_REQUEST && pkt.flags != ICMP_ECHO_REPLY
                    || is_icmp_error(pkt.flags)
                {
                    return Err(Verdict::Kernel(Outcome::KernelProto));
                }
                let id = u16::from_ne_bytes([i.data[0], i.data[1]]);
                pkt.sport = id;
                pkt.dport = id;
                pkt.l4_csum = l4_off + 2;
            }
            _ => return Err(Verdict::Kernel(Outcome::KernelProto)),
        }
        Ok(pkt)
    }
}

/// Whether the 20 bytes of the IPv4 header at `hdr` sum to all ones, its
/// checksum included.
#[inline(always)]
fn header_sum_ok(hdr: *mut Ipv4Hdr) -> bool {
    // SAFETY: `hdr` was bounds-checked for the 20 bytes of a header.
    let w = unsafe { core::ptr::read_unaligned(hdr as *const [u16; 10]) };
    let mut s: u32 = 0;
    for x in w {
        s += x as u32;
    }
    csum::fold(s) == 0xffff
}

/// ICMP messages that quote the packet they are about.
#[inline(always)]
pub fn is_icmp_error(ty: u8) -> bool {
    ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAM_PROBLEM
}

/// Whether a TCP/UDP checksum is only the pseudo-header sum the kernel
/// leaves for offload (CHECKSUM_PARTIAL). XDP cannot finish such a checksum
/// for the receiver, so those packets take the TC path.
#[inline(always)]
pub fn partial_csum<P: Packet>(p: &P, pkt: &Pkt) -> bool {
    // Fragments always carry complete checksums (the kernel fragments only
    // after computing them).
    if pkt.proto == PROTO_ICMP || pkt.frag != FRAG_NONE {
        return false;
    }
    let Some(c) = p.ptr::<u16>(pkt.l4_csum) else {
        return false;
    };
    // SAFETY: bounds checked.
    let c = unsafe { *c };
    if pkt.proto == PROTO_UDP && c == 0 {
        return false;
    }
    let ip_len = (pkt.l4_off - IP_OFF) as u16;
    c == csum::pseudo(pkt.src, pkt.dst, pkt.proto, pkt.tot_len - ip_len)
}
