//! Frames no socket makes — spoofed, martian, tagged, truncated, with IP
//! options, floods — sent from inside a namespace on a packet socket, and
//! frames captured in one. Every send is bounded in count; every capture
//! in time and size.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

/// Most frames one capture keeps (and bytes of each).
const CAPTURE_MAX: usize = 200_000;
const CAPTURE_SNAP: usize = 256;

/// The MAC of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6]> {
    let link = crate::probe::link(ns, dev).with_context(|| format!("no {dev} in {ns}"))?;
    let s = link["address"].as_str().context("no address")?;
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(p, 16)?;
    }
    Ok(m)
}

/// A TCP segment in an Ethernet frame, checksums right.
pub fn tcp(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64240);
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    if flags & 0x08 != 0 {
        b = b.psh();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("building a TCP frame");
    out
}

/// A UDP datagram in an Ethernet frame, checksums right.
pub fn udp(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("building a UDP frame");
    out
}

/// An ICMP error (type, code) from `src` to `dst` quoting the IPv4 packet
/// of `quoted` (a frame).
pub fn icmp_error(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let q = &quoted[14..quoted.len().min(14 + 28)];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_raw(ty, code, [0; 4])
        .write(&mut out, q)
        .expect("building an ICMP frame");
    out
}

/// The IPv4 header checksum of `frame` made right again.
fn fix_ip_checksum(frame: &mut [u8]) {
    let hl = ((frame[14] & 0x0f) as usize) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let mut s = 0u32;
    for c in frame[14..14 + hl].chunks(2) {
        s += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    frame[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

/// `frame` with `opts` (a multiple of 4 bytes) as IPv4 options.
pub fn with_ip_options(frame: &[u8], opts: &[u8]) -> Vec<u8> {
    assert!(opts.len().is_multiple_of(4) && opts.len() <= 40);
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(opts);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x40 | ((20 + opts.len()) / 4) as u8;
    let tot = u16::from_be_bytes([f[16], f[17]]) + opts.len() as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_checksum(&mut f);
    f
}

/// A broadcast ARP request from `sha`/`spa` for `tpa`.
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// An ARP reply as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpReply {
    /// Who answers (the address asked for) and with which MAC.
    pub sender_ip: Ipv4Addr,
    pub sender_mac: [u8; 6],
    /// Who asked.
    pub target_ip: Ipv4Addr,
    /// Whether the frame carried a VLAN tag.
    pub tagged: bool,
}

impl ArpReply {
    pub fn parse(f: &[u8]) -> Option<ArpReply> {
        let (tagged, a) = match f.get(12..14)? {
            [0x08, 0x06] => (false, 14),
            [0x81, 0x00] | [0x88, 0xa8] if f.get(16..18)? == [0x08, 0x06] => (true, 18),
            _ => return None,
        };
        let arp = f.get(a..a + 28)?;
        if arp[7] != 2 {
            return None;
        }
        Some(ArpReply {
            sender_ip: Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]),
            sender_mac: arp[8..14].try_into().ok()?,
            target_ip: Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]),
            tagged,
        })
    }
}

/// `frame` with its IPv4 TTL and Don't Fragment bit as given.
pub fn with_ttl_df(frame: &[u8], ttl: u8, df: bool) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[22] = ttl;
    f[20] = if df { f[20] | 0x40 } else { f[20] & !0x40 };
    fix_ip_checksum(&mut f);
    f
}

/// An ICMP error as captured: who sent it, what it says, and the packet it
/// quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorSeen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ty: u8,
    pub code: u8,
    /// Next-hop MTU of "fragmentation needed".
    pub mtu: u16,
    pub quoted_src: Ipv4Addr,
    pub quoted_dst: Ipv4Addr,
    pub quoted_proto: u8,
    /// Ports (TCP, UDP) of the quoted packet.
    pub quoted_sport: u16,
    pub quoted_dport: u16,
}

impl ErrorSeen {
    /// An ICMP error (unreachable, time exceeded) in an untagged frame.
    pub fn parse(frame: &[u8]) -> Option<ErrorSeen> {
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 1 {
            return None;
        }
        let icmp = 14 + ((frame[14] & 0x0f) as usize) * 4;
        let ty = *frame.get(icmp)?;
        if ty != 3 && ty != 11 {
            return None;
        }
        let q = icmp + 8;
        let ql4 = q + ((*frame.get(q)? & 0x0f) as usize) * 4;
        let ip = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
        let port = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
        if frame.len() < ql4 + 4 {
            return None;
        }
        Some(ErrorSeen {
            src: ip(26),
            dst: ip(30),
            ty,
            code: frame[icmp + 1],
            mtu: port(icmp + 6),
            quoted_src: ip(q + 12),
            quoted_dst: ip(q + 16),
            quoted_proto: frame[q + 9],
            quoted_sport: port(ql4),
            quoted_dport: port(ql4 + 2),
        })
    }
}

/// `frame` with an 802.1Q tag of `vid` after its MACs.
pub fn with_vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    with_tag(frame, 0x8100, vid)
}

/// `frame` with a tag of TPID `tpid` (0x8100: 802.1Q, 0x88a8: 802.1ad)
/// and `vid` after its MACs, in front of any tag it has.
pub fn with_tag(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// `frame` cut to `l4_bytes` of its L4 header, the IPv4 length saying so.
pub fn truncated(frame: &[u8], l4_bytes: usize) -> Vec<u8> {
    let mut f = frame[..34 + l4_bytes].to_vec();
    f[16..18].copy_from_slice(&((20 + l4_bytes) as u16).to_be_bytes());
    fix_ip_checksum(&mut f);
    f
}

fn packet_socket(ns: &str, dev: &str) -> Result<OwnedFd> {
    let dev = dev.to_string();
    let ns2 = ns.to_string();
    router_user::backend::netns::run_in(Some(ns), move || -> Result<OwnedFd> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        if fd < 0 {
            bail!(
                "packet socket in {ns2}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let idx = nix::net::if_::if_nametoindex(dev.as_str())
            .with_context(|| format!("no {dev} in {ns2}"))?;
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = idx as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            bail!(
                "binding to {dev} in {ns2}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(fd)
    })?
}

/// Sends `frames` out of `dev` in `ns`, in order; returns how many went.
pub fn send(ns: &str, dev: &str, frames: &[Vec<u8>]) -> Result<usize> {
    let fd = packet_socket(ns, dev)?;
    let mut n = 0;
    for f in frames {
        // SAFETY: f is a valid buffer of its length.
        let r = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                // The device queue is full: let it drain, do not count.
                thread::sleep(Duration::from_micros(200));
                continue;
            }
            bail!("sending a frame on {dev} in {ns}: {e}");
        }
        n += 1;
    }
    Ok(n)
}

/// Frames received on a device (of any protocol), kept until dropped.
pub struct Capture {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts capturing what `dev` in `ns` receives.
    pub fn start(ns: &str, dev: &str) -> Result<Capture> {
        let fd = packet_socket(ns, dev)?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // Room for a burst of thousands of frames while the thread copies.
        let rcvbuf: libc::c_int = 32 << 20;
        // SAFETY: valid timeval and int options.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &rcvbuf as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frames.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: buf is a valid buffer of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                let mut v = f.lock().unwrap();
                if v.len() < CAPTURE_MAX {
                    v.push(buf[..(n as usize).min(CAPTURE_SNAP)].to_vec());
                }
            }
        });
        // Let the socket see traffic before the caller sends any.
        thread::sleep(Duration::from_millis(50));
        Ok(Capture {
            frames,
            stop,
            thread: Some(thread),
        })
    }

    /// Every frame captured so far.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().clone()
    }

    /// The IPv4 packets captured so far, summarised.
    pub fn packets(&self) -> Vec<Seen> {
        self.frames()
            .iter()
            .filter_map(|f| Seen::parse(f))
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a captured IPv4 packet says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags, or ICMP type.
    pub flags: u8,
    /// Destination MAC.
    pub dst_mac: [u8; 6],
}

impl Seen {
    pub fn parse(frame: &[u8]) -> Option<Seen> {
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            return None;
        }
        let ip = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
        let mut s = Seen {
            src: ip(26),
            dst: ip(30),
            proto: frame[23],
            sport: 0,
            dport: 0,
            flags: 0,
            dst_mac: frame[..6].try_into().ok()?,
        };
        if let Ok(p) = SlicedPacket::from_ethernet(frame) {
            match p.transport {
                Some(TransportSlice::Tcp(t)) => {
                    s.sport = t.source_port();
                    s.dport = t.destination_port();
                    s.flags = frame[14 + ((frame[14] & 0xf) as usize) * 4 + 13];
                }
                Some(TransportSlice::Udp(u)) => {
                    s.sport = u.source_port();
                    s.dport = u.destination_port();
                }
                Some(TransportSlice::Icmpv4(i)) => s.flags = i.type_u8(),
                _ => {}
            }
        }
        Some(s)
    }
}
