//! Ethernet/IPv4 frames: built from a spec, read back (the input as the
//! programs see it, the output as they left it), checksums recomputed from
//! scratch rather than trusted.

use std::{fmt, net::Ipv4Addr};

use serde::Serialize;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

const ETH: usize = 14;

pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        n => format!("proto {n}"),
    }
}

/// IPv4 and L4 header bytes of a spec's packet (no options).
pub fn headers_len(proto: u8) -> usize {
    20 + if proto == PROTO_TCP { 20 } else { 8 }
}

/// What [`build`] makes a frame of.
pub struct Build<'a> {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub df: bool,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub payload: &'a [u8],
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]) as u32)
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The ones' complement sum over the pseudo-header and `seg`, folded: 0
/// when `seg` carries a correct checksum (or, with its checksum field
/// zeroed, the value to put there).
fn l4_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    fold(sum16(&p) + sum16(seg))
}

/// An Ethernet frame carrying an IPv4 TCP, UDP or ICMP echo packet with
/// correct checksums.
pub fn build(b: &Build) -> Vec<u8> {
    let mut seg = Vec::new();
    match b.proto {
        PROTO_TCP => {
            seg.extend_from_slice(&b.sport.to_be_bytes());
            seg.extend_from_slice(&b.dport.to_be_bytes());
            seg.extend_from_slice(&1u32.to_be_bytes());
            let ack = if b.tcp_flags & 0x10 != 0 { 1u32 } else { 0 };
            seg.extend_from_slice(&ack.to_be_bytes());
            seg.extend_from_slice(&[0x50, b.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
        }
        PROTO_UDP => {
            seg.extend_from_slice(&b.sport.to_be_bytes());
            seg.extend_from_slice(&b.dport.to_be_bytes());
            seg.extend_from_slice(&((8 + b.payload.len()) as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
        }
        _ => {
            seg.extend_from_slice(&[b.icmp_type, 0, 0, 0]);
            seg.extend_from_slice(&b.sport.to_be_bytes());
            seg.extend_from_slice(&1u16.to_be_bytes());
        }
    }
    seg.extend_from_slice(b.payload);
    let (at, c) = match b.proto {
        PROTO_TCP => (16, l4_sum(b.src, b.dst, PROTO_TCP, &seg)),
        PROTO_UDP => {
            // 0 means "no checksum" in UDP: a computed 0 is sent as ffff.
            let c = l4_sum(b.src, b.dst, PROTO_UDP, &seg);
            (6, if c == 0 { 0xffff } else { c })
        }
        _ => (2, fold(sum16(&seg))),
    };
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let tot = (20 + seg.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[0x78, 0x72]);
    h.extend_from_slice(&(if b.df { 0x4000u16 } else { 0 }).to_be_bytes());
    h.extend_from_slice(&[b.ttl, b.proto, 0, 0]);
    h.extend_from_slice(&b.src.octets());
    h.extend_from_slice(&b.dst.octets());
    let c = fold(sum16(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(ETH + h.len() + seg.len());
    f.extend_from_slice(&b.dst_mac);
    f.extend_from_slice(&b.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&h);
    f.extend_from_slice(&seg);
    f
}

/// A checksum as found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checksum {
    Ok,
    Bad,
    /// UDP without a checksum (0).
    None,
    /// Not checkable: a later fragment, or a truncated segment.
    NotChecked,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Checksum::Ok => "ok",
            Checksum::Bad => "BAD",
            Checksum::None => "none",
            Checksum::NotChecked => "not checked",
        })
    }
}

/// The IPv4 part of a frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub tot_len: u16,
    pub df: bool,
    pub options: bool,
    /// A fragment (first or later).
    pub fragment: bool,
    /// IPv4 identification.
    pub id: u16,
    /// TCP/UDP ports; ICMP echo: the id in both.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: Option<u8>,
    /// ICMP echo's id (what `sport` and `dport` hold for it too).
    pub icmp_id: Option<u16>,
    pub ip_checksum_ok: bool,
    pub l4_checksum: Checksum,
    /// An ICMP error's quoted packet: (src, dst, sport, dport, proto).
    #[serde(skip)]
    pub quoted: Option<(Ipv4Addr, Ipv4Addr, u16, u16, u8)>,
}

/// A frame, read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Headers {
    #[serde(serialize_with = "ser_mac")]
    pub dst_mac: [u8; 6],
    #[serde(serialize_with = "ser_mac")]
    pub src_mac: [u8; 6],
    pub ethertype: u16,
    /// 802.1Q/802.1ad tags in the frame (VLAN ids).
    pub vlans: Vec<u16>,
    pub length: usize,
    /// None: not IPv4.
    pub ip: Option<Ip>,
}

fn ser_mac<S: serde::Serializer>(m: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::model::Mac(*m))
}

/// Reads a frame's headers; Err says what is missing.
pub fn read(f: &[u8]) -> Result<Headers, String> {
    if f.len() < ETH {
        return Err(format!("{} bytes: no whole Ethernet header", f.len()));
    }
    let mut h = Headers {
        dst_mac: f[0..6].try_into().unwrap_or_default(),
        src_mac: f[6..12].try_into().unwrap_or_default(),
        ethertype: u16::from_be_bytes([f[12], f[13]]),
        vlans: Vec::new(),
        length: f.len(),
        ip: None,
    };
    let mut off = 12;
    while matches!(u16::from_be_bytes([f[off], f[off + 1]]), 0x8100 | 0x88a8) {
        if f.len() < off + 6 {
            return Err("truncated VLAN tag".into());
        }
        h.vlans
            .push(u16::from_be_bytes([f[off + 2], f[off + 3]]) & 0x0fff);
        off += 4;
    }
    h.ethertype = u16::from_be_bytes([f[off], f[off + 1]]);
    let ip_off = off + 2;
    if h.ethertype != 0x0800 {
        return Ok(h);
    }
    h.ip = Some(read_ip(&f[ip_off..])?);
    Ok(h)
}

fn read_ip(p: &[u8]) -> Result<Ip, String> {
    if p.len() < 20 {
        return Err(format!("{} bytes of IPv4 header, want 20", p.len()));
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    if p[0] >> 4 != 4 || ihl < 20 || p.len() < ihl {
        return Err("malformed IPv4 header".into());
    }
    let tot = u16::from_be_bytes([p[2], p[3]]);
    let frag = u16::from_be_bytes([p[6], p[7]]);
    let addr = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let mut ip = Ip {
        src: addr(12),
        dst: addr(16),
        proto: p[9],
        ttl: p[8],
        tot_len: tot,
        df: frag & 0x4000 != 0,
        options: ihl > 20,
        fragment: frag & 0x3fff != 0,
        id: u16::from_be_bytes([p[4], p[5]]),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: None,
        icmp_id: None,
        ip_checksum_ok: fold(sum16(&p[..ihl])) == 0,
        l4_checksum: Checksum::NotChecked,
        quoted: None,
    };
    let end = (tot as usize).min(p.len());
    if frag & 0x1fff != 0 || end < ihl {
        return Ok(ip);
    }
    let seg = &p[ihl..end];
    let whole = end == tot as usize;
    match ip.proto {
        PROTO_TCP if seg.len() >= 20 => {
            ip.sport = u16::from_be_bytes([seg[0], seg[1]]);
            ip.dport = u16::from_be_bytes([seg[2], seg[3]]);
            ip.tcp_flags = seg[13];
        }
        PROTO_UDP if seg.len() >= 8 => {
            ip.sport = u16::from_be_bytes([seg[0], seg[1]]);
            ip.dport = u16::from_be_bytes([seg[2], seg[3]]);
        }
        PROTO_ICMP if seg.len() >= 8 => {
            ip.icmp_type = Some(seg[0]);
            if matches!(seg[0], 0 | 8) {
                let id = u16::from_be_bytes([seg[4], seg[5]]);
                ip.sport = id;
                ip.dport = id;
                ip.icmp_id = Some(id);
            } else if matches!(seg[0], 3 | 11 | 12) {
                ip.quoted = quoted(&seg[8..]);
            }
        }
        _ => return Ok(ip),
    }
    if whole && !ip.fragment {
        ip.l4_checksum = match ip.proto {
            PROTO_ICMP => ok(fold(sum16(seg)) == 0),
            PROTO_UDP if seg[6..8] == [0, 0] => Checksum::None,
            pr => ok(l4_sum(ip.src, ip.dst, pr, seg) == 0),
        };
    }
    Ok(ip)
}

fn ok(good: bool) -> Checksum {
    if good { Checksum::Ok } else { Checksum::Bad }
}

/// The tuple of the packet an ICMP error quotes.
fn quoted(q: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16, u8)> {
    if q.len() < 20 || q[0] >> 4 != 4 {
        return None;
    }
    let ihl = (q[0] & 0x0f) as usize * 4;
    let l4 = q.get(ihl..ihl + 8)?;
    let a = |o: usize| Ipv4Addr::new(q[o], q[o + 1], q[o + 2], q[o + 3]);
    let (sp, dp) = match q[9] {
        PROTO_TCP | PROTO_UDP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        PROTO_ICMP => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => return None,
    };
    Some((a(12), a(16), sp, dp, q[9]))
}

/// TCP flags as letters (`S`, `SA`, `FA`...), `-` for none.
pub fn flag_letters(f: u8) -> String {
    let s: String = super::spec::TCP_FLAG_LETTERS
        .iter()
        .filter(|(_, b)| f & b != 0)
        .map(|(l, _)| *l)
        .collect();
    // S before A reads as people write it.
    let mut v: Vec<char> = s.chars().collect();
    v.sort_by_key(|c| "SAFRPU".find(*c));
    if v.is_empty() {
        "-".into()
    } else {
        v.into_iter().collect()
    }
}

impl Ip {
    /// `tcp 10.0.1.10:40000 -> 8.8.8.8:443 [flags S]`: the spec syntax.
    pub fn describe(&self) -> String {
        match (self.proto, self.icmp_type) {
            (PROTO_TCP, _) => format!(
                "tcp {}:{} -> {}:{} [flags {}]",
                self.src,
                self.sport,
                self.dst,
                self.dport,
                flag_letters(self.tcp_flags)
            ),
            (PROTO_UDP, _) => format!(
                "udp {}:{} -> {}:{}",
                self.src, self.sport, self.dst, self.dport
            ),
            (PROTO_ICMP, Some(8)) => {
                format!("icmp {} -> {} [echo id {}]", self.src, self.dst, self.sport)
            }
            (PROTO_ICMP, Some(0)) => format!(
                "icmp {} -> {} [echo-reply id {}]",
                self.src, self.dst, self.sport
            ),
            (PROTO_ICMP, t) => format!(
                "icmp {} -> {} [type {}]",
                self.src,
                self.dst,
                t.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
            ),
            (p, _) => format!("{} {} -> {}", proto_name(p), self.src, self.dst),
        }
    }
}

impl Headers {
    /// One line: the packet, TTL, length and MACs.
    pub fn describe(&self) -> String {
        let macs = format!(
            "{} -> {}",
            crate::model::Mac(self.src_mac),
            crate::model::Mac(self.dst_mac)
        );
        match &self.ip {
            Some(ip) => format!(
                "{}  ttl {}, {} bytes, {}{}",
                ip.describe(),
                ip.ttl,
                self.length,
                macs,
                if self.vlans.is_empty() {
                    String::new()
                } else {
                    format!(", vlan {:?}", self.vlans)
                }
            ),
            None => format!(
                "ethertype {:#06x}, {} bytes, {}",
                self.ethertype, self.length, macs
            ),
        }
    }
}
