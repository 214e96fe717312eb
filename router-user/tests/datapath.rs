//! Data-path tests through BPF_PROG_TEST_RUN: crafted frames into `xr_xdp`
//! and `xr_tc` with the maps of the article's router filled by hand, and the
//! output checked byte by byte, checksums recomputed here independently.
//!
//! The programs look up the ingress device, which the kernel resolves in the
//! caller's namespace: each test runs on a thread inside a scratch namespace
//! holding three veth devices (qr1, qr2, qg).

use std::{collections::HashSet, net::Ipv4Addr, process::Command};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use router_common::{
    config::{Ipv4, RouterConfig},
    conntrack::{CtEntry, CtKey},
    counters::{Counter, Outcome},
    port::{LocalAddr, Neigh, NeighKey, PortInfo, ROLE_GATEWAY, ROLE_INTERNAL},
    route::Route,
};
use router_user::{bpf::OBJECT, netns};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const MAC_QR1: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const MAC_QR2: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const MAC_QG: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const MAC_VM1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const MAC_VM2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
const MAC_EXT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];

fn ip(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

// ---------- independent checksum code ----------

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    s
}

fn finish(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn l4_sum(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    finish(sum16(&pseudo) + sum16(seg))
}

/// Checks the IPv4 header checksum and the L4 checksum of a frame.
fn assert_checksums(f: &[u8]) {
    let ip_hdr = &f[14..34];
    assert_eq!(finish(sum16(ip_hdr)), 0, "bad IPv4 header checksum");
    let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
    let seg = &f[34..14 + tot];
    match f[23] {
        6 => assert_eq!(
            l4_sum(&f[26..30], &f[30..34], 6, seg),
            0,
            "bad TCP checksum"
        ),
        // A zero UDP checksum means "none".
        17 if seg[6..8] != [0, 0] => {
            assert_eq!(
                l4_sum(&f[26..30], &f[30..34], 17, seg),
                0,
                "bad UDP checksum"
            )
        }
        1 => assert_eq!(finish(sum16(seg)), 0, "bad ICMP checksum"),
        _ => {}
    }
}

// ---------- packet builder ----------

#[derive(Clone)]
struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    icmp_type: u8,
    payload: Vec<u8>,
    frag: u16,
    zero_udp_csum: bool,
    partial_csum: bool,
}

impl Frame {
    fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame {
            src_mac: MAC_VM1,
            dst_mac: MAC_QR1,
            src: ip(src),
            dst: ip(dst),
            ttl: 64,
            proto: 6,
            sport,
            dport,
            tcp_flags: 0x02,
            icmp_type: 0,
            payload: b"hello".to_vec(),
            frag: 0x4000,
            zero_udp_csum: false,
            partial_csum: false,
        }
    }
    fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame {
            proto: 17,
            ..Frame::tcp(src, sport, dst, dport)
        }
    }
    fn ping(src: &str, dst: &str, id: u16, ty: u8) -> Frame {
        Frame {
            proto: 1,
            icmp_type: ty,
            sport: id,
            dport: id,
            ..Frame::tcp(src, 0, dst, 0)
        }
    }
    fn from(mut self, mac: [u8; 6], to: [u8; 6]) -> Frame {
        self.src_mac = mac;
        self.dst_mac = to;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut seg = Vec::new();
        match self.proto {
            6 => {
                seg.extend_from_slice(&self.sport.to_be_bytes());
                seg.extend_from_slice(&self.dport.to_be_bytes());
                seg.extend_from_slice(&1000u32.to_be_bytes());
                seg.extend_from_slice(&0u32.to_be_bytes());
                seg.extend_from_slice(&[0x50, self.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
            }
            17 => {
                seg.extend_from_slice(&self.sport.to_be_bytes());
                seg.extend_from_slice(&self.dport.to_be_bytes());
                seg.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
            }
            1 => {
                seg.extend_from_slice(&[self.icmp_type, 0, 0, 0]);
                seg.extend_from_slice(&self.sport.to_be_bytes());
                seg.extend_from_slice(&7u16.to_be_bytes());
            }
            _ => {}
        }
        seg.extend_from_slice(&self.payload);
        let csum_at = match self.proto {
            6 => Some(16),
            17 => Some(6),
            1 => Some(2),
            _ => None,
        };
        if let Some(at) = csum_at {
            let c = if self.proto == 1 {
                finish(sum16(&seg))
            } else if self.partial_csum {
                // What the kernel leaves for offload: the folded pseudo-header sum.
                let mut p = Vec::new();
                p.extend_from_slice(&self.src);
                p.extend_from_slice(&self.dst);
                p.extend_from_slice(&[0, self.proto]);
                p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                !finish(sum16(&p))
            } else if self.proto == 17 && self.zero_udp_csum {
                0
            } else {
                l4_sum(&self.src, &self.dst, self.proto, &seg)
            };
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let tot = (20 + seg.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&tot.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        let c = finish(sum16(&h));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&h);
        f.extend_from_slice(&seg);
        f
    }
}

struct Out {
    ret: u32,
    frame: Vec<u8>,
}

impl Out {
    fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.frame[26],
            self.frame[27],
            self.frame[28],
            self.frame[29],
        )
    }
    fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.frame[30],
            self.frame[31],
            self.frame[32],
            self.frame[33],
        )
    }
    fn sport(&self) -> u16 {
        if self.frame[23] == 1 {
            return u16::from_be_bytes([self.frame[38], self.frame[39]]);
        }
        u16::from_be_bytes([self.frame[34], self.frame[35]])
    }
    fn dport(&self) -> u16 {
        if self.frame[23] == 1 {
            return u16::from_be_bytes([self.frame[38], self.frame[39]]);
        }
        u16::from_be_bytes([self.frame[36], self.frame[37]])
    }
    fn ttl(&self) -> u8 {
        self.frame[22]
    }
}

/// `struct xdp_md` for test runs: data_end must equal the frame length.
fn xdp_md(ingress: u32, len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    ctx
}

// ---------- the router under test ----------

struct Router {
    ebpf: Ebpf,
    qr1: u32,
    qr2: u32,
    qg: u32,
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut aya::maps::Map {
    ebpf.map_mut(name).unwrap_or_else(|| panic!("map {name}"))
}

impl Router {
    fn new(ifx: [u32; 3], port_min: u16, port_max: u16) -> Router {
        let mut ebpf = EbpfLoader::new().load(OBJECT).expect("load object");
        let p: &mut Xdp = ebpf.program_mut("xr_xdp").unwrap().try_into().unwrap();
        p.load().expect("verifier");
        let p: &mut SchedClassifier = ebpf.program_mut("xr_tc").unwrap().try_into().unwrap();
        p.load().expect("verifier");
        let [qr1, qr2, qg] = ifx;

        let mut ports: HashMap<_, u32, PortInfo> =
            HashMap::try_from(map(&mut ebpf, "XR_PORTS")).unwrap();
        for (i, a, mac, role) in [
            (qr1, "81.1.180.1", MAC_QR1, ROLE_INTERNAL),
            (qr2, "91.1.180.1", MAC_QR2, ROLE_INTERNAL),
            (qg, "192.168.1.110", MAC_QG, ROLE_GATEWAY),
        ] {
            let mtu = if role == ROLE_GATEWAY { 1500 } else { 1450 };
            ports
                .insert(
                    i,
                    PortInfo {
                        addr: ip(a),
                        mac,
                        role,
                        _pad: 0,
                        mtu,
                    },
                    0,
                )
                .unwrap();
        }
        let mut local: HashMap<_, LocalAddr, u32> =
            HashMap::try_from(map(&mut ebpf, "XR_LOCAL")).unwrap();
        for (a, i) in [
            ("81.1.180.1", qr1),
            ("91.1.180.1", qr2),
            ("192.168.1.110", qg),
        ] {
            local.insert(LocalAddr { addr: ip(a) }, i, 0).unwrap();
        }
        let mut routes: LpmTrie<_, [u8; 4], Route> =
            LpmTrie::try_from(map(&mut ebpf, "XR_ROUTES")).unwrap();
        let route = |gw: [u8; 4], ifindex: u32| Route {
            count: 1,
            gateways: [gw, [0; 4], [0; 4], [0; 4]],
            ifindexes: [ifindex, 0, 0, 0],
        };
        routes
            .insert(&Key::new(24, ip("81.1.180.0")), route([0; 4], qr1), 0)
            .unwrap();
        routes
            .insert(&Key::new(24, ip("91.1.180.0")), route([0; 4], qr2), 0)
            .unwrap();
        routes
            .insert(&Key::new(24, ip("192.168.1.0")), route([0; 4], qg), 0)
            .unwrap();
        routes
            .insert(&Key::new(0, [0; 4]), route(ip("192.168.1.1"), qg), 0)
            .unwrap();
        let mut neigh: HashMap<_, NeighKey, Neigh> =
            HashMap::try_from(map(&mut ebpf, "XR_NEIGH")).unwrap();
        for (i, a, mac) in [
            (qr1, "81.1.180.12", MAC_VM1),
            (qr1, "81.1.180.13", MAC_VM1),
            (qr2, "91.1.180.14", MAC_VM2),
            (qg, "192.168.1.15", MAC_EXT),
        ] {
            neigh
                .insert(
                    NeighKey {
                        ifindex: i,
                        addr: ip(a),
                    },
                    Neigh { mac, _pad: [0; 2] },
                    0,
                )
                .unwrap();
        }
        let mut fip: HashMap<_, Ipv4, Ipv4> = HashMap::try_from(map(&mut ebpf, "XR_FIP")).unwrap();
        fip.insert(
            Ipv4 {
                addr: ip("91.1.180.14"),
            },
            Ipv4 {
                addr: ip("192.168.1.104"),
            },
            0,
        )
        .unwrap();
        let mut rev: HashMap<_, Ipv4, Ipv4> =
            HashMap::try_from(map(&mut ebpf, "XR_FIP_REV")).unwrap();
        rev.insert(
            Ipv4 {
                addr: ip("192.168.1.104"),
            },
            Ipv4 {
                addr: ip("91.1.180.14"),
            },
            0,
        )
        .unwrap();
        let mut cfg: Array<_, RouterConfig> = Array::try_from(map(&mut ebpf, "XR_CONFIG")).unwrap();
        cfg.set(
            0,
            RouterConfig {
                gw_addr: ip("192.168.1.110"),
                gw_ifindex: qg,
                enable_snat: 1,
                port_min,
                port_max,
                metadata_port: 9697,
                _pad: 0,
            },
            0,
        )
        .unwrap();
        Router { ebpf, qr1, qr2, qg }
    }

    fn xdp(&self, ingress: u32, f: &Frame) -> Out {
        self.raw_xdp(ingress, &f.bytes())
    }

    fn tc(&self, ingress: u32, f: &Frame) -> Out {
        self.raw_tc(ingress, &f.bytes())
    }

    fn counter(&mut self, o: Outcome) -> u64 {
        let c: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map("XR_COUNTERS").unwrap()).unwrap();
        c.get(&(o as u32), 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    fn ct_len(&self) -> usize {
        let ct: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(self.ebpf.map("XR_CT").unwrap()).unwrap();
        ct.keys().count()
    }
}

/// Runs `f` on a thread inside a scratch namespace with three veth devices,
/// passing their ifindexes; removes the namespace afterwards, even on panic.
fn with_devices(f: impl FnOnce([u32; 3]) + Send + 'static) {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
        return;
    }
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    let ns = Ns(format!("xrt-dp-{}-{:x}", std::process::id(), rand_u32()));
    netns::create(&ns.0).unwrap();
    for d in ["qr1", "qr2", "qg"] {
        let mut c = Command::new("ip");
        c.args([
            "link",
            "add",
            d,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{d}p"),
        ]);
        netns::command_in(&ns.0, &mut c).unwrap();
        assert!(c.status().unwrap().success());
    }
    let r = netns::run_in(Some(&ns.0), move || {
        // Resolved in this thread's namespace (sysfs would show the caller's).
        let idx = |d: &str| nix::net::if_::if_nametoindex(d).unwrap();
        f([idx("qr1"), idx("qr2"), idx("qg")]);
    });
    drop(ns);
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom(&mut b);
    u32::from_ne_bytes(b)
}

fn getrandom(b: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(b)
        .unwrap();
}

// ---------- the cases ----------

#[test]
fn gateway_snat_and_its_reply() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let o = r.xdp(r.qr1, &Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80));
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src(), "192.168.1.110".parse::<Ipv4Addr>().unwrap());
        assert_eq!(o.dst(), "192.168.1.15".parse::<Ipv4Addr>().unwrap());
        assert!(o.sport() >= 1024);
        assert_eq!(o.dport(), 80);
        assert_eq!(o.ttl(), 63);
        assert_eq!(&o.frame[0..6], &MAC_EXT);
        assert_eq!(&o.frame[6..12], &MAC_QG);
        assert_checksums(&o.frame);
        assert_eq!(&o.frame[54..], b"hello");

        let ext_port = o.sport();
        let reply = Frame {
            tcp_flags: 0x12,
            ..Frame::tcp("192.168.1.15", 80, "192.168.1.110", ext_port)
        }
        .from(MAC_EXT, MAC_QG);
        let o = r.xdp(r.qg, &reply);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.15");
        assert_eq!(o.dst().to_string(), "81.1.180.12");
        assert_eq!((o.sport(), o.dport()), (80, 40000));
        assert_eq!(&o.frame[0..6], &MAC_VM1);
        assert_eq!(&o.frame[6..12], &MAC_QR1);
        assert_checksums(&o.frame);
        assert_eq!(r.ct_len(), 2, "one entry per direction");
    });
}

#[test]
fn floating_ip_dnat_keeps_the_client_and_snat_shows_the_floating_ip() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let f = Frame::tcp("192.168.1.15", 5555, "192.168.1.104", 22).from(MAC_EXT, MAC_QG);
        let o = r.xdp(r.qg, &f);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.15", "real client kept");
        assert_eq!(o.dst().to_string(), "91.1.180.14");
        assert_eq!((o.sport(), o.dport()), (5555, 22));
        assert_eq!(&o.frame[0..6], &MAC_VM2);
        assert_checksums(&o.frame);
        // The VM's answer leaves as the floating IP.
        let back = Frame {
            tcp_flags: 0x12,
            ..Frame::tcp("91.1.180.14", 22, "192.168.1.15", 5555)
        }
        .from(MAC_VM2, MAC_QR2);
        let o = r.xdp(r.qr2, &back);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.104");
        assert_eq!((o.sport(), o.dport()), (22, 5555));
        assert_checksums(&o.frame);

        // A new connection from the floating-IP VM: seen as its floating IP.
        let o = r.xdp(
            r.qr2,
            &Frame::udp("91.1.180.14", 7000, "192.168.1.15", 53).from(MAC_VM2, MAC_QR2),
        );
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.104");
        assert_checksums(&o.frame);
    });
}

#[test]
fn east_west_is_routed_untranslated() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let o = r.xdp(r.qr1, &Frame::tcp("81.1.180.12", 40000, "91.1.180.14", 80));
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "81.1.180.12");
        assert_eq!(o.dst().to_string(), "91.1.180.14");
        assert_eq!((o.sport(), o.dport(), o.ttl()), (40000, 80, 63));
        assert_eq!(&o.frame[0..6], &MAC_VM2);
        assert_eq!(&o.frame[6..12], &MAC_QR2);
        assert_checksums(&o.frame);
        assert_eq!(r.ct_len(), 0, "east-west keeps no state");
    });
}

#[test]
fn hairpin_to_a_floating_ip_from_inside_is_snated_to_the_gateway() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let o = r.xdp(
            r.qr1,
            &Frame::tcp("81.1.180.12", 40000, "192.168.1.104", 80),
        );
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.dst().to_string(), "91.1.180.14");
        assert_eq!(o.src().to_string(), "192.168.1.110");
        assert_checksums(&o.frame);
        // The answer goes back through the router, translated both ways.
        let back = Frame {
            tcp_flags: 0x12,
            ..Frame::tcp("91.1.180.14", 80, "192.168.1.110", o.sport())
        }
        .from(MAC_VM2, MAC_QR2);
        let o = r.xdp(r.qr2, &back);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.104");
        assert_eq!(o.dst().to_string(), "81.1.180.12");
        assert_eq!((o.sport(), o.dport()), (80, 40000));
        assert_checksums(&o.frame);
    });
}

#[test]
fn icmp_echo_is_translated_by_id() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let o = r.xdp(
            r.qr1,
            &Frame::ping("81.1.180.12", "192.168.1.15", 0x4242, 8),
        );
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.110");
        assert_checksums(&o.frame);
        let id = o.sport();
        let o = r.xdp(
            r.qg,
            &Frame::ping("192.168.1.15", "192.168.1.110", id, 0).from(MAC_EXT, MAC_QG),
        );
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.dst().to_string(), "81.1.180.12");
        assert_eq!(o.sport(), 0x4242);
        assert_checksums(&o.frame);
    });
}

#[test]
fn zero_udp_checksum_stays_zero() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let f = Frame {
            zero_udp_csum: true,
            ..Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53)
        };
        let o = r.xdp(r.qr1, &f);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(&o.frame[40..42], &[0, 0]);
        assert_checksums(&o.frame);
    });
}

#[test]
fn what_xdp_cannot_finish_goes_to_tc_and_the_kernel_untouched() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let cases: Vec<(&str, Frame)> = vec![
            (
                "partial checksum",
                Frame {
                    partial_csum: true,
                    ..Frame::tcp("81.1.180.12", 1, "192.168.1.15", 80)
                },
            ),
            (
                "unknown neighbour",
                Frame::tcp("81.1.180.12", 1, "192.168.1.77", 80),
            ),
            (
                "to the router",
                Frame::tcp("81.1.180.12", 1, "81.1.180.1", 22),
            ),
            (
                "ttl expires",
                Frame {
                    ttl: 1,
                    ..Frame::tcp("81.1.180.12", 1, "192.168.1.15", 80)
                },
            ),
            (
                "fragment of a datagram whose first fragment was not seen",
                Frame {
                    frag: 0x0003,
                    ..Frame::udp("81.1.180.12", 1, "192.168.1.15", 80)
                },
            ),
            (
                "metadata",
                Frame::tcp("81.1.180.12", 1, "169.254.169.254", 80),
            ),
            (
                "icmp error",
                Frame::ping("81.1.180.12", "192.168.1.15", 1, 3),
            ),
            (
                "gre",
                Frame {
                    proto: 47,
                    ..Frame::tcp("81.1.180.12", 1, "192.168.1.15", 80)
                },
            ),
        ];
        for (what, f) in &cases {
            let o = r.xdp(r.qr1, f);
            assert_eq!(o.ret, XDP_PASS, "{what}");
            assert_eq!(o.frame, f.bytes(), "{what}: handed up unchanged");
        }
        assert_eq!(r.counter(Outcome::ToTc), cases.len() as u64);
        assert_eq!(r.counter(Outcome::FwdXdp), 0);
    });
}

#[test]
fn tc_forwards_what_xdp_hands_up_and_counts_kernel_cases() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        // Partial checksum: TC translates with the kernel's helpers.
        let f = Frame {
            partial_csum: true,
            ..Frame::tcp("81.1.180.12", 41000, "192.168.1.15", 80)
        };
        let o = r.tc(r.qr1, &f);
        assert_eq!(o.ret, TC_ACT_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.110");
        assert_eq!(o.ttl(), 63);
        // (A test run's skb is never CHECKSUM_PARTIAL, so the L4 field is
        // not checked here; the namespace tests cover real partial skbs.)
        assert_eq!(finish(sum16(&o.frame[14..34])), 0, "IPv4 header checksum");
        // Unknown neighbour: TC redirects (the kernel resolves it).
        let o = r.tc(r.qr1, &Frame::tcp("81.1.180.12", 41001, "192.168.1.77", 80));
        assert_eq!(o.ret, TC_ACT_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.110");
        assert_checksums(&o.frame);
        // To the router: passed on, counted.
        let o = r.tc(r.qr1, &Frame::tcp("81.1.180.12", 1, "81.1.180.1", 22));
        assert_eq!(o.ret, TC_ACT_OK);
        assert_eq!(r.counter(Outcome::KernelLocal), 1);
        assert_eq!(r.counter(Outcome::FwdTc), 2);
    });
}

#[test]
fn same_source_port_from_many_hosts_gets_distinct_external_ports() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let mut seen = HashSet::new();
        for i in 0..2000u32 {
            let src = format!("81.1.{}.{}", 180, 2 + (i % 250));
            let sport = 40000 + (i / 250) as u16;
            // Hosts share ports: 250 hosts x 8 ports, all to one server port.
            let f = Frame::udp(&src, sport, "192.168.1.15", 53);
            let o = r.tc(r.qr1, &f);
            assert_eq!(o.ret, TC_ACT_REDIRECT);
            assert_eq!(o.src().to_string(), "192.168.1.110");
            assert!(
                seen.insert(o.sport()),
                "external port {} given twice",
                o.sport()
            );
        }
    });
}

#[test]
fn no_free_port_drops_and_counts_never_mistranslates() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 5000, 5000);
        let o = r.tc(r.qr1, &Frame::udp("81.1.180.12", 1000, "192.168.1.15", 53));
        assert_eq!(o.ret, TC_ACT_REDIRECT);
        assert_eq!(o.sport(), 5000);
        let o = r.tc(r.qr1, &Frame::udp("81.1.180.13", 1000, "192.168.1.15", 53));
        assert_eq!(o.ret, TC_ACT_SHOT);
        assert_eq!(r.counter(Outcome::DropNoPort), 1);
        let o = r.xdp(r.qr1, &Frame::udp("81.1.180.13", 1000, "192.168.1.15", 53));
        assert_ne!(o.ret, XDP_REDIRECT, "never forwarded untranslated");
    });
}

#[test]
fn malformed_frames_are_never_forwarded() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        for base in [
            Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80),
            Frame::udp("81.1.180.12", 40000, "192.168.1.15", 80),
            Frame::ping("81.1.180.12", "192.168.1.15", 9, 8),
        ] {
            let full = base.bytes();
            for cut in 0..full.len() - base.payload.len() {
                let p: &Xdp = r.ebpf.program("xr_xdp").unwrap().try_into().unwrap();
                let data = &full[..cut];
                if data.len() < 14 {
                    continue; // the kernel refuses frames shorter than Ethernet
                }
                let mut out = vec![0u8; full.len() + 64];
                let ctx = xdp_md(r.qr1, data.len());
                let res = p.test_run(TestRunOptions {
                    data_in: Some(data),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: 1,
                    ..Default::default()
                });
                if let Ok(res) = res {
                    assert_ne!(
                        res.return_value, XDP_REDIRECT,
                        "truncated at {cut} forwarded"
                    );
                }
            }
        }
        // Bad IHL, IP options, IPv6, ARP, VLAN: never forwarded.
        let good = Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80).bytes();
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        let mut opts = good.clone();
        opts[14] = 0x46;
        let mut v6 = good.clone();
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut vlan = good.clone();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        for (what, data) in [
            ("ihl 4", bad_ihl),
            ("options", opts),
            ("ipv6", v6),
            ("arp", arp),
            ("vlan", vlan),
        ] {
            let o = r.raw_xdp(r.qr1, &data);
            assert_eq!(o.ret, XDP_PASS, "{what}");
            assert_eq!(o.frame, data, "{what}: unchanged");
        }
        let before = r.counter(Outcome::DropMalformed);
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        let o = r.raw_tc(r.qr1, &bad_ihl);
        assert_eq!(o.ret, TC_ACT_SHOT);
        assert_eq!(r.counter(Outcome::DropMalformed), before + 1);
    });
}

impl Router {
    fn raw_xdp(&self, ingress: u32, data: &[u8]) -> Out {
        let mut out = vec![0u8; data.len() + 64];
        let ctx = xdp_md(ingress, data.len());
        let p: &Xdp = self.ebpf.program("xr_xdp").unwrap().try_into().unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .expect("xdp test run");
        out.truncate(r.data_size_out as usize);
        Out {
            ret: r.return_value,
            frame: out,
        }
    }
    fn raw_tc(&self, ingress: u32, data: &[u8]) -> Out {
        let mut out = vec![0u8; data.len() + 64];
        // struct __sk_buff: ifindex at offset 40.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
        let p: &SchedClassifier = self.ebpf.program("xr_tc").unwrap().try_into().unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .expect("tc test run");
        out.truncate(r.data_size_out as usize);
        Out {
            ret: r.return_value,
            frame: out,
        }
    }
}

/// An ICMP error frame from `src` to `dst` quoting `quoted` (an IPv4 packet).
fn icmp_error(
    src: &str,
    dst: &str,
    ty: u8,
    code: u8,
    quoted: &[u8],
    from: [u8; 6],
    to: [u8; 6],
) -> Vec<u8> {
    let mut icmp = vec![ty, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let c = finish(sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let tot = (20 + icmp.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    h.extend_from_slice(&ip(src));
    h.extend_from_slice(&ip(dst));
    let c = finish(sum16(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&to);
    f.extend_from_slice(&from);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&h);
    f.extend_from_slice(&icmp);
    f
}

#[test]
fn icmp_errors_about_translated_connections_reach_the_real_sender() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        // vm1's UDP datagram leaves SNATed; the server says "port unreachable".
        let out = r.xdp(r.qr1, &Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53));
        assert_eq!(out.ret, XDP_REDIRECT);
        let err = icmp_error(
            "192.168.1.15",
            "192.168.1.110",
            3,
            3,
            &out.frame[14..],
            MAC_EXT,
            MAC_QG,
        );
        for (hook, o) in [("xdp", r.raw_xdp(r.qg, &err)), ("tc", r.raw_tc(r.qg, &err))] {
            assert!(
                o.ret == XDP_REDIRECT || o.ret == TC_ACT_REDIRECT,
                "{hook}: {}",
                o.ret
            );
            let f = &o.frame;
            assert_eq!(o.src().to_string(), "192.168.1.15", "{hook}");
            assert_eq!(
                o.dst().to_string(),
                "81.1.180.12",
                "{hook}: to the real sender"
            );
            assert_eq!(o.ttl(), 63);
            assert_eq!(finish(sum16(&f[14..34])), 0, "{hook}: outer IPv4 checksum");
            assert_eq!(finish(sum16(&f[34..])), 0, "{hook}: ICMP checksum");
            let inner = &f[42..];
            assert_eq!(&inner[12..16], &ip("81.1.180.12"), "{hook}: quoted source");
            assert_eq!(
                &inner[16..20],
                &ip("192.168.1.15"),
                "{hook}: quoted destination"
            );
            assert_eq!(
                u16::from_be_bytes([inner[20], inner[21]]),
                5000,
                "{hook}: quoted source port"
            );
            assert_eq!(
                u16::from_be_bytes([inner[22], inner[23]]),
                53,
                "{hook}: quoted destination port"
            );
            assert_eq!(
                finish(sum16(&inner[..20])),
                0,
                "{hook}: quoted IPv4 checksum"
            );
            assert_eq!(
                l4_sum(&inner[12..16], &inner[16..20], 17, &inner[20..]),
                0,
                "{hook}: quoted UDP checksum"
            );
        }
        // About a connection the router does not translate: routed unchanged.
        let plain = Frame::udp("91.1.180.14", 1, "81.1.180.12", 2).bytes();
        let err = icmp_error(
            "81.1.180.12",
            "91.1.180.14",
            3,
            3,
            &plain[14..],
            MAC_VM1,
            MAC_QR1,
        );
        let o = r.raw_xdp(r.qr1, &err);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(&o.frame[42..], &err[42..], "quoted packet untouched");
        assert_eq!(finish(sum16(&o.frame[34..])), 0);
    });
}

#[test]
fn tcp_flag_combinations_are_translated_with_valid_checksums() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        // Liberal tracking: whatever the flags, a flow is translated, and
        // one flow keeps one external port.
        let mut port = None;
        for flags in [
            0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x00, 0x3f, 0x29, 0xc2,
        ] {
            let f = Frame {
                tcp_flags: flags,
                ..Frame::tcp("81.1.180.12", 40123, "192.168.1.15", 443)
            };
            let o = r.xdp(r.qr1, &f);
            assert_eq!(o.ret, XDP_REDIRECT, "flags {flags:#x}");
            assert_eq!(o.src().to_string(), "192.168.1.110", "flags {flags:#x}");
            assert_eq!(o.frame[47], flags, "flags kept");
            assert_checksums(&o.frame);
            assert_eq!(
                *port.get_or_insert(o.sport()),
                o.sport(),
                "flags {flags:#x}: same external port"
            );
        }
    });
}

#[test]
fn no_fixed_address_leaves_the_gateway_port_of_a_natted_flow() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..600 {
            let n = next();
            let (src, mac, ingress) = if n & 1 == 0 {
                (format!("81.1.180.{}", 2 + (n >> 8) % 250), MAC_VM1, r.qr1)
            } else {
                (format!("91.1.180.{}", 2 + (n >> 8) % 250), MAC_VM2, r.qr2)
            };
            let sport = (n >> 16) as u16 | 1;
            let f = match (n >> 4) % 3 {
                0 => Frame::tcp(&src, sport, "192.168.1.15", 80),
                1 => Frame::udp(&src, sport, "192.168.1.15", 53),
                _ => Frame::ping(&src, "192.168.1.15", sport, 8),
            }
            .from(mac, [0; 6]);
            let ttl = (n >> 12) as u8 % 4;
            let f = Frame {
                ttl: if ttl == 0 { 1 } else { 64 },
                ..f
            };
            for o in [r.xdp(ingress, &f), r.tc(ingress, &f)] {
                let leaves_qg = (o.ret == XDP_REDIRECT || o.ret == TC_ACT_REDIRECT)
                    && o.dst().to_string() == "192.168.1.15";
                if leaves_qg {
                    let s = o.src().octets();
                    assert!(
                        !(s[0] == 81 || s[0] == 91),
                        "fixed source {} left qg-",
                        o.src()
                    );
                    assert_checksums(&o.frame);
                }
            }
        }
    });
}

/// Splits a frame's IPv4 datagram into two fragments at `at` bytes of
/// payload (a multiple of 8), recomputing the IPv4 header checksums.
fn fragments(frame: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    let (eth, ip_hdr, payload) = (&frame[..14], &frame[14..34], &frame[34..]);
    let part = |data: &[u8], offset: usize, more: bool| {
        let mut h = ip_hdr.to_vec();
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&flags.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = finish(sum16(&h));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = eth.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(data);
        f
    };
    (
        part(&payload[..at], 0, true),
        part(&payload[at..], at, false),
    )
}

#[test]
fn fragmented_datagrams_go_through_snat_and_dnat() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        for (ingress, f, want_src, want_dst) in [
            (
                r.qr1,
                Frame::udp("81.1.180.12", 4000, "192.168.1.15", 53),
                "192.168.1.110",
                "192.168.1.15",
            ),
            (
                r.qg,
                Frame::udp("192.168.1.15", 4001, "192.168.1.104", 53).from(MAC_EXT, MAC_QG),
                "192.168.1.15",
                "91.1.180.14",
            ),
        ] {
            let f = Frame {
                payload: (0..40u8).collect(),
                frag: 0,
                ..f
            };
            let whole = f.bytes();
            let (first, second) = fragments(&whole, 24);
            let a = r.raw_xdp(ingress, &first);
            let b = r.raw_xdp(ingress, &second);
            assert_eq!((a.ret, b.ret), (XDP_REDIRECT, XDP_REDIRECT), "{want_dst}");
            for o in [&a, &b] {
                assert_eq!(o.src().to_string(), want_src);
                assert_eq!(o.dst().to_string(), want_dst);
                assert_eq!(o.ttl(), 63);
                assert_eq!(finish(sum16(&o.frame[14..34])), 0, "IPv4 header checksum");
            }
            // The reassembled datagram's UDP checksum holds for the new addresses.
            let mut udp = a.frame[34..].to_vec();
            udp.extend_from_slice(&b.frame[34..]);
            assert_eq!(
                l4_sum(&a.frame[26..30], &a.frame[30..34], 17, &udp),
                0,
                "UDP checksum"
            );
            assert_eq!(&udp[8..], &f.payload[..], "payload intact");
        }
        // A later fragment of a datagram whose first was not seen: the kernel.
        let f = Frame {
            payload: (0..40u8).collect(),
            ..Frame::udp("81.1.180.13", 4000, "192.168.1.15", 53)
        };
        let f = Frame { frag: 0, ..f }.bytes();
        let mut lost = fragments(&f, 24).1;
        lost[18] = 0x77; // another identification
        let c = finish(sum16(&{
            let mut h = lost[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        }));
        lost[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(r.raw_xdp(r.qr1, &lost).ret, XDP_PASS);
    });
}

/// An ARP request frame: `sha`/`spa` ask who has `tpa`.
fn arp_request(sha: [u8; 6], spa: &str, tpa: &str) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&ip(spa));
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip(tpa));
    f
}

#[test]
fn arp_for_floating_ips_is_answered_on_the_gateway_port() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let req = arp_request(MAC_EXT, "192.168.1.15", "192.168.1.104");
        let mut want = MAC_EXT.to_vec();
        want.extend_from_slice(&MAC_QG);
        want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
        want.extend_from_slice(&MAC_QG);
        want.extend_from_slice(&ip("192.168.1.104"));
        want.extend_from_slice(&MAC_EXT);
        want.extend_from_slice(&ip("192.168.1.15"));
        let o = r.raw_xdp(r.qg, &req);
        assert_eq!(o.ret, 3, "XDP_TX");
        assert_eq!(o.frame, want, "byte-exact reply");
        let o = r.raw_tc(r.qg, &req);
        assert_eq!(o.ret, TC_ACT_REDIRECT);
        assert_eq!(o.frame, want, "byte-exact reply (tc)");
        assert_eq!(r.counter(Outcome::ArpReplied), 2);
        // Not ours to answer: the gateway's own address (the kernel does),
        // a floating IP asked on an internal port, a gratuitous request, a reply.
        let mut reply = req.clone();
        reply[21] = 2;
        for (what, ingress, frame) in [
            (
                "gateway address",
                r.qg,
                arp_request(MAC_EXT, "192.168.1.15", "192.168.1.110"),
            ),
            (
                "on an internal port",
                r.qr1,
                arp_request(MAC_VM1, "81.1.180.12", "192.168.1.104"),
            ),
            (
                "gratuitous",
                r.qg,
                arp_request(MAC_EXT, "192.168.1.104", "192.168.1.104"),
            ),
            ("a reply", r.qg, reply),
        ] {
            let o = r.raw_xdp(ingress, &frame);
            assert_eq!(o.ret, XDP_PASS, "{what}");
            assert_eq!(o.frame, frame, "{what}: untouched");
        }
    });
}
