//! Data-path tests through BPF_PROG_TEST_RUN: crafted frames into `xr_xdp`,
//! `xr_tc` and `xr_tc_out` with the maps the daemon writes for the article's
//! router (`fixtures::article_router`, through `desired` and the backend's
//! `write_maps`; only the neighbours, the kernel's, are filled here), and
//! the output checked byte by byte, checksums recomputed here
//! independently.
//!
//! The programs look up the ingress device, which the kernel resolves in the
//! caller's namespace: each test runs on a thread inside a scratch namespace
//! holding three veth devices (qr1, qr2, qg).

use std::{collections::HashSet, net::Ipv4Addr, process::Command};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use router_common::{
    config::RouterConfig,
    conntrack::{
        CT_F_ASSURED, CT_ORIGINAL, CT_REPLY, CtEntry, CtKey, FragEntry, FragKey, ct_ticks,
    },
    counters::{Counter, CtEvent, Outcome},
    monitor::{
        EV_IPV4, EV_L4, HOOK_TC, HOOK_XDP, MON_DROPS, MON_FORWARDED, MON_KERNEL, MonitorCpu,
        MonitorCtl, MonitorEvent,
    },
    port::{LOCAL_ADDRESS, LocalAddr, Neigh, NeighKey},
    route::Route,
};
use router_user::{
    backend::{
        bpf::{
            CT_MASK_GLOBAL, CtTable, bump_generation, monitor::decode, monotonic_ns,
            object::OBJECT, write_maps, write_neighbours,
        },
        netns,
    },
    config::node::{Dataplane, NodeConfig},
    fixtures,
};

const XDP_DROP: u32 = 1;
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
    /// IPv4 options (a multiple of 4 bytes).
    options: Vec<u8>,
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
            options: Vec::new(),
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
        let hl = 20 + self.options.len();
        let tot = (hl + seg.len()) as u16;
        let mut h = vec![0x40 | (hl / 4) as u8, 0];
        h.extend_from_slice(&tot.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.options);
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

/// Sizes and budget of a router under test.
#[derive(Clone, Copy)]
struct Limits {
    /// `XR_CT` slots (a power of two; two per connection, one per
    /// direction).
    slots: u32,
    /// New connections per second and CPU (0: no limit).
    rate: u32,
    /// The maps of a router on the xdp plane (`CFG_XDP`).
    xdp: bool,
}

const ROOMY: Limits = Limits {
    slots: 65536,
    rate: 0,
    xdp: false,
};

/// A table of 8 windows, for tests that place keys in it.
const SMALL: Limits = Limits {
    slots: 256,
    rate: 0,
    xdp: false,
};

impl Router {
    fn new(ifx: [u32; 3], port_min: u16, port_max: u16) -> Router {
        Router::build(ifx, port_min, port_max, ROOMY)
    }

    fn build(ifx: [u32; 3], port_min: u16, port_max: u16, lim: Limits) -> Router {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("XR_CT", router_common::conntrack::ct_entries(lim.slots))
            .override_global(CT_MASK_GLOBAL, &(lim.slots - 1), true)
            .load(OBJECT)
            .expect("load object");
        let p: &mut Xdp = ebpf.program_mut("xr_xdp").unwrap().try_into().unwrap();
        p.load().expect("verifier");
        for name in ["xr_tc", "xr_tc_out"] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().expect("verifier");
        }
        let [qr1, qr2, qg] = ifx;

        // The maps a router of the article's topology gets from the daemon.
        let spec = fixtures::article_router([MAC_QR1, MAC_QR2, MAC_QG]);
        let node = NodeConfig {
            new_connection_rate: lim.rate,
            dataplane: if lim.xdp {
                Dataplane::Xdp
            } else {
                Dataplane::Auto
            },
            ..NodeConfig::default()
        };
        let want = fixtures::bpf_maps(&spec, &node, (port_min, port_max), ifx);
        write_maps(&mut ebpf, &want).expect("writing the router's maps");
        write_neighbours(&mut ebpf, &start_neighbours(ifx)).expect("writing the neighbours");
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

    /// The connection table, mapped.
    fn table(&self) -> CtTable {
        let aya::maps::Map::Array(d) = self.ebpf.map("XR_CT").unwrap() else {
            panic!("XR_CT is an array")
        };
        CtTable::of(d).unwrap()
    }

    /// Entries of the connection table: (embryonic, established).
    fn ct_counts(&self) -> (usize, usize) {
        let t = self.table();
        let est = t.all().filter(|(_, e)| e.flags & CT_F_ASSURED != 0).count();
        (t.all().count() - est, est)
    }

    /// Entries of the connection table.
    fn ct_len(&self) -> usize {
        self.table().all().count()
    }
}

/// The next hops' MACs a router under test starts with (the kernel's
/// neighbour table, which the daemon mirrors), written the daemon's way.
fn start_neighbours(ifx: [u32; 3]) -> std::collections::HashMap<NeighKey, Neigh> {
    let [qr1, qr2, qg] = ifx;
    [
        (qr1, "81.1.180.12", MAC_VM1),
        (qr1, "81.1.180.13", MAC_VM1),
        (qr2, "91.1.180.14", MAC_VM2),
        (qg, "192.168.1.15", MAC_EXT),
    ]
    .into_iter()
    .map(|(i, a, mac)| {
        (
            NeighKey {
                ifindex: i,
                addr: ip(a),
            },
            Neigh::at(mac),
        )
    })
    .collect()
}

/// Runs `f` on a thread inside a scratch namespace with three veth devices,
/// passing their ifindexes; removes the namespace afterwards, even on panic.
fn with_devices(f: impl FnOnce([u32; 3]) + Send + 'static) {
    with_devices_at(None, f)
}

/// [`with_devices`], the devices at the given ifindexes (None: the
/// kernel's choice).
fn with_devices_at(index: Option<[u32; 3]>, f: impl FnOnce([u32; 3]) + Send + 'static) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "BPF_PROG_TEST_RUN needs root: run the tests as root (`cargo xtask test`)"
    );
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    let ns = Ns(format!("xrt-dp-{}-{:x}", std::process::id(), rand_u32()));
    netns::create(&ns.0).unwrap();
    for (i, d) in ["qr1", "qr2", "qg"].into_iter().enumerate() {
        let mut c = Command::new("ip");
        c.args(["link", "add", d]);
        if let Some(index) = index {
            c.args(["index", &index[i].to_string()]);
        }
        c.args(["type", "veth", "peer", "name", &format!("{d}p")]);
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

/// Ports are found by array index below `PORT_SLOTS` and in the hash
/// beyond: a router whose namespace has seen many devices, with its ports
/// on both sides of the limit, forwards as any other (ingress and egress
/// looked up either way).
#[test]
fn ports_beyond_the_slot_array_are_found_in_the_hash() {
    use router_common::port::PORT_SLOTS;
    for index in [
        [PORT_SLOTS + 44, PORT_SLOTS + 45, PORT_SLOTS + 46],
        [PORT_SLOTS + 44, 7, PORT_SLOTS - 1],
    ] {
        with_devices_at(Some(index), move |ifx| {
            assert_eq!(ifx, index, "devices at the requested ifindexes");
            let r = Router::new(ifx, 1024, 65535);
            let o = r.xdp(r.qr1, &Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80));
            assert_eq!(o.ret, XDP_REDIRECT, "SNAT out of qr1 at {}", ifx[0]);
            assert_eq!(o.src(), "192.168.1.110".parse::<Ipv4Addr>().unwrap());
            assert_eq!(&o.frame[6..12], &MAC_QG);
            assert_checksums(&o.frame);
            let reply = Frame {
                tcp_flags: 0x12,
                ..Frame::tcp("192.168.1.15", 80, "192.168.1.110", o.sport())
            }
            .from(MAC_EXT, MAC_QG);
            let back = r.xdp(r.qg, &reply);
            assert_eq!(back.ret, XDP_REDIRECT, "the reply in on qg at {}", ifx[2]);
            assert_eq!(back.dst(), "81.1.180.12".parse::<Ipv4Addr>().unwrap());
            assert_eq!(&back.frame[6..12], &MAC_QR1);
            let f = Frame::tcp("192.168.1.15", 5555, "192.168.1.104", 22).from(MAC_EXT, MAC_QG);
            let o = r.xdp(r.qg, &f);
            assert_eq!(o.ret, XDP_REDIRECT, "DNAT to qr2 at {}", ifx[1]);
            assert_eq!(o.dst(), "91.1.180.14".parse::<Ipv4Addr>().unwrap());
            assert_eq!(&o.frame[6..12], &MAC_QR2);
        });
    }
}

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
        // IPv6, ARP, VLAN: the kernel's, untouched. A bad IHL: dropped
        // where it is seen first.
        let good = Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80).bytes();
        let mut v6 = good.clone();
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut vlan = good.clone();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        for (what, data) in [("ipv6", v6), ("arp", arp), ("vlan", vlan)] {
            let o = r.raw_xdp(r.qr1, &data);
            assert_eq!(o.ret, XDP_PASS, "{what}");
            assert_eq!(o.frame, data, "{what}: unchanged");
        }
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        let before = r.counter(Outcome::DropMalformed);
        assert_eq!(r.raw_xdp(r.qr1, &bad_ihl).ret, XDP_DROP);
        assert_eq!(r.raw_tc(r.qr1, &bad_ihl).ret, TC_ACT_SHOT);
        assert_eq!(r.counter(Outcome::DropMalformed), before + 2);
    });
}

/// What the kernel drops before routing (a wrong IPv4 header checksum)
/// or its conntrack finds invalid (a TCP header longer than the segment,
/// a UDP length outside the datagram) is dropped and counted as
/// malformed, opening no connection, on both hooks. A first fragment's UDP
/// length covers the fragments to come: not malformed.
#[test]
fn headers_the_kernel_finds_invalid_are_dropped() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        const IP: usize = 14;
        const L4: usize = IP + 20;
        let tcp = Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80).bytes();
        let udp = Frame::udp("81.1.180.12", 40001, "192.168.1.15", 53).bytes();
        let mut bad_sum = tcp.clone();
        bad_sum[IP + 10] ^= 0x5a;
        // Data offset 15 (60 bytes) in a 25-byte segment.
        let mut long_doff = tcp.clone();
        long_doff[L4 + 12] = 0xf0;
        let mut long_udp = udp.clone();
        long_udp[L4 + 4..L4 + 6].copy_from_slice(&200u16.to_be_bytes());
        let mut short_udp = udp.clone();
        short_udp[L4 + 4..L4 + 6].copy_from_slice(&4u16.to_be_bytes());
        for (what, data) in [
            ("IPv4 header checksum", &bad_sum),
            ("TCP data offset past the segment", &long_doff),
            ("UDP length past the datagram", &long_udp),
            ("UDP length under its header", &short_udp),
        ] {
            let before = r.counter(Outcome::DropMalformed);
            assert_eq!(r.raw_xdp(r.qr1, data).ret, XDP_DROP, "xdp: {what}");
            assert_eq!(r.raw_tc(r.qr1, data).ret, TC_ACT_SHOT, "tc: {what}");
            assert_eq!(r.counter(Outcome::DropMalformed), before + 2, "{what}");
            assert_eq!(r.ct_len(), 0, "{what}: no connection");
        }
        // A header with options: a wrong checksum is malformed too, and
        // opens no connection; a right one goes to the kernel translated.
        let opts = Frame {
            options: vec![1, 1, 1, 0],
            ..Frame::udp("81.1.180.12", 40003, "192.168.1.15", 53)
        };
        let good_opts = opts.bytes();
        let mut bad_opts = good_opts.clone();
        bad_opts[IP + 10] ^= 0x5a;
        let before = r.counter(Outcome::DropMalformed);
        assert_eq!(r.raw_xdp(r.qr1, &bad_opts).ret, XDP_DROP, "xdp: options");
        assert_eq!(r.raw_tc(r.qr1, &bad_opts).ret, TC_ACT_SHOT, "tc: options");
        assert_eq!(r.counter(Outcome::DropMalformed), before + 2);
        assert_eq!(r.ct_len(), 0, "options, wrong checksum: no connection");
        assert_eq!(
            r.raw_tc(r.qr1, &good_opts).ret,
            TC_ACT_OK,
            "options: to the kernel"
        );
        assert_eq!(r.counter(Outcome::KernelOptions), 1);
        // The same UDP length in a first fragment (More Fragments).
        let first = Frame {
            frag: 0x2000,
            ..Frame::udp("81.1.180.12", 40002, "192.168.1.15", 53)
        };
        let mut first = first.bytes();
        first[L4 + 4..L4 + 6].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(r.raw_xdp(r.qr1, &first).ret, XDP_REDIRECT, "first fragment");
        // And the frame whole, unchanged, goes.
        assert_eq!(r.raw_xdp(r.qr1, &tcp).ret, XDP_REDIRECT, "the good frame");
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
        self.raw_tc_skb(ingress, data, 0).0
    }

    /// A TC run of an skb aggregating segments of `gso_size` bytes (0: a
    /// plain packet); also returns the skb's mark afterwards.
    fn raw_tc_skb(&self, ingress: u32, data: &[u8], gso_size: u32) -> (Out, u32) {
        // struct __sk_buff: ifindex at 40, gso_segs at 164, gso_size at 176.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
        if gso_size != 0 {
            let segs = (data.len() as u32).div_ceil(gso_size);
            ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
            ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        }
        self.skb_run("xr_tc", &ctx, data)
    }

    /// `xr_tc_out` (egress of a port) on a packet the router itself sends
    /// (`ingress` 0) or one it forwards.
    fn tc_out(&self, ifindex: u32, ingress: u32, data: &[u8]) -> Out {
        // struct __sk_buff: ingress_ifindex at 36, ifindex at 40.
        let mut ctx = [0u8; 192];
        ctx[36..40].copy_from_slice(&ingress.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        self.skb_run("xr_tc_out", &ctx, data).0
    }

    /// One test run of TC program `prog` on `data` with `ctx` (a struct
    /// __sk_buff); the output and the skb's mark (at 8) afterwards.
    fn skb_run(&self, prog: &str, ctx: &[u8; 192], data: &[u8]) -> (Out, u32) {
        let mut out = vec![0u8; data.len() + 64];
        let mut ctx_out = [0u8; 192];
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ctx_in: Some(ctx),
                ctx_out: Some(&mut ctx_out),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{prog} test run: {e}"));
        out.truncate(r.data_size_out as usize);
        let mark = u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap());
        (
            Out {
                ret: r.return_value,
                frame: out,
            },
            mark,
        )
    }

    fn event(&self, ev: CtEvent) -> u64 {
        let c: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("XR_CT_EVENTS").unwrap()).unwrap();
        c.get(&(ev as u32), 0).unwrap().iter().sum()
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
        let mut left = 0;
        for _ in 0..600 {
            let n = next();
            let (src, mac, port_mac, ingress) = if n & 1 == 0 {
                (
                    format!("81.1.180.{}", 2 + (n >> 8) % 250),
                    MAC_VM1,
                    MAC_QR1,
                    r.qr1,
                )
            } else {
                (
                    format!("91.1.180.{}", 2 + (n >> 8) % 250),
                    MAC_VM2,
                    MAC_QR2,
                    r.qr2,
                )
            };
            let sport = (n >> 16) as u16 | 1;
            let f = match (n >> 4) % 3 {
                0 => Frame::tcp(&src, sport, "192.168.1.15", 80),
                1 => Frame::udp(&src, sport, "192.168.1.15", 53),
                _ => Frame::ping(&src, "192.168.1.15", sport, 8),
            }
            .from(mac, port_mac);
            let ttl = (n >> 12) as u8 % 4;
            let f = Frame {
                ttl: if ttl == 0 { 1 } else { 64 },
                ..f
            };
            for o in [r.xdp(ingress, &f), r.tc(ingress, &f)] {
                let leaves_qg = (o.ret == XDP_REDIRECT || o.ret == TC_ACT_REDIRECT)
                    && o.dst().to_string() == "192.168.1.15";
                if leaves_qg {
                    left += 1;
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
        assert!(
            left > 300,
            "only {left} packets left qg-: the test sent the wrong frames"
        );
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
        let mut r = Router::new(ifx, 1024, 65535);
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
        // A later fragment of a datagram whose first was not seen: dropped
        // and counted (nothing could translate it as its datagram was).
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
        // (XDP leaves it to TC: it runs ahead of TC, which may be about to
        // record the datagram's first fragment.)
        assert_eq!(r.raw_xdp(r.qr1, &lost).ret, XDP_PASS);
        assert_eq!(r.raw_tc(r.qr1, &lost).ret, TC_ACT_SHOT);
        assert_eq!(r.counter(Outcome::DropFragment), 1);
    });
}

/// A later fragment overlapping its datagram's first is dropped, and the
/// rest of the datagram with it (the kernel's reassembly drops such a
/// datagram whole); one wholly inside the first is dropped alone (the
/// kernel's reassembly takes it for a duplicate); a first fragment's translation serves its later
/// fragments for 30 s, as the kernel waits for them, not for ever (a later
/// datagram of the same addresses and identification is not translated
/// as an old one was).
#[test]
fn overlapping_and_stale_fragments_are_dropped() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let datagram = |sport| {
            Frame {
                payload: (0..40u8).collect(),
                frag: 0,
                ..Frame::udp("81.1.180.12", sport, "192.168.1.15", 53)
            }
            .bytes()
        };
        // The first fragment carries 24 bytes; a last one from byte 16.
        let whole = datagram(4100);
        let (first, second) = fragments(&whole, 24);
        let overlapping = fragments(&whole, 16).1;
        assert_eq!(r.raw_tc(r.qr1, &first).ret, TC_ACT_REDIRECT, "first");
        assert_eq!(
            r.raw_tc(r.qr1, &overlapping).ret,
            TC_ACT_SHOT,
            "overlapping"
        );
        assert_eq!(r.counter(Outcome::DropFragment), 1);
        assert_eq!(r.raw_tc(r.qr1, &second).ret, TC_ACT_SHOT, "the rest of it");
        assert_eq!(r.counter(Outcome::DropFragment), 2);
        // Bytes 8-15 again, wholly inside the first fragment: a duplicate,
        // dropped alone; the datagram's rest goes on.
        let whole = datagram(4102);
        let (first, second) = fragments(&whole, 24);
        let mut inside = fragments(&whole[..14 + 20 + 16], 8).1;
        inside[14 + 6] |= 0x20; // More Fragments
        inside[24..26].copy_from_slice(&[0, 0]);
        let c = finish(sum16(&inside[14..34]));
        inside[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(r.raw_tc(r.qr1, &first).ret, TC_ACT_REDIRECT, "first");
        assert_eq!(r.raw_tc(r.qr1, &inside).ret, TC_ACT_SHOT, "duplicate");
        assert_eq!(r.counter(Outcome::DropFragment), 3);
        assert_eq!(r.raw_tc(r.qr1, &second).ret, TC_ACT_REDIRECT, "the rest");

        // A datagram whose first fragment came 30 s ago and more (its
        // entry made old): its later fragment is not translated.
        let whole = datagram(4101);
        let (first, second) = fragments(&whole, 24);
        assert_eq!(r.raw_tc(r.qr1, &first).ret, TC_ACT_REDIRECT, "first");
        let mut frags: HashMap<_, FragKey, FragEntry> =
            HashMap::try_from(map(&mut r.ebpf, "XR_FRAG")).unwrap();
        let (k, mut e) = frags.iter().next().unwrap().unwrap();
        assert_eq!(e.first_len, 24);
        e.seen_ns = e.seen_ns.saturating_sub(31_000_000_000);
        frags.insert(k, e, 0).unwrap();
        assert_eq!(r.raw_tc(r.qr1, &second).ret, TC_ACT_SHOT, "stale");
        assert_eq!(r.counter(Outcome::DropFragment), 4);
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

// ---------- what the kernel drops, the programs drop ----------

const MARK_MASK: u32 = 0xffff_0000;
const MARK_TRANSLATED: u32 = 0x7872_0000;
const MARK_ANSWER_ONLY: u32 = 0x7865_0000;
const MARK_TRANSLATED_ANSWER: u32 = 0x7861_0000;
const MARK_UNREACHABLE: u32 = 0x7868_0000;
const MARK_TRANSLATED_UNREACHABLE: u32 = 0x7875_0000;

/// Both hooks on one frame: XDP's verdict and TC's, with TC's mark.
fn both(r: &Router, ingress: u32, f: &Frame) -> (Out, Out, u32) {
    let x = r.xdp(ingress, f);
    let (t, mark) = r.raw_tc_skb(ingress, &f.bytes(), 0);
    (x, t, mark)
}

#[test]
fn frames_for_other_hosts_are_dropped_broadcasts_left_to_the_kernel() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        // A bridge floods unknown unicast to every port: not ours, dropped.
        let f = Frame::tcp("81.1.180.12", 1, "192.168.1.15", 80).from(MAC_VM1, MAC_VM2);
        let (x, t, _) = both(&r, r.qr1, &f);
        assert_eq!((x.ret, t.ret), (XDP_DROP, TC_ACT_SHOT));
        assert_eq!(r.counter(Outcome::DropOtherHost), 2);
        // Broadcast and multicast frames: never routed; the kernel's.
        for mac in [[0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1]] {
            let f = Frame::tcp("81.1.180.12", 1, "192.168.1.15", 80).from(MAC_VM1, mac);
            let (x, t, _) = both(&r, r.qr1, &f);
            assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK), "{mac:x?}");
            assert_eq!(t.frame, f.bytes(), "{mac:x?}: untouched");
        }
        assert_eq!(r.counter(Outcome::KernelLocal), 2, "counted once, by TC");
        assert_eq!(r.ct_len(), 0, "no state for any of them");
    });
}

#[test]
fn martian_and_spoofed_sources_are_dropped_as_the_kernel_drops_them() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let from_outside =
            |src: &str, dst: &str| Frame::udp(src, 1000, dst, 53).from(MAC_EXT, MAC_QG);
        for src in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.5",
            "239.1.1.1",
            "255.255.255.255",
        ] {
            let (x, t, _) = both(&r, r.qg, &from_outside(src, "91.1.180.14"));
            assert_eq!((x.ret, t.ret), (XDP_DROP, TC_ACT_SHOT), "source {src}");
        }
        assert_eq!(r.counter(Outcome::DropMartianSrc), 10);
        // The router's own addresses and a floating IP as the source, from
        // either side.
        for (ingress, src) in [
            (r.qg, "192.168.1.110"),
            (r.qg, "192.168.1.104"),
            (r.qg, "81.1.180.1"),
        ] {
            let (x, t, _) = both(&r, ingress, &from_outside(src, "91.1.180.14"));
            assert_eq!((x.ret, t.ret), (XDP_DROP, TC_ACT_SHOT), "source {src}");
        }
        let f = Frame::udp("192.168.1.104", 1, "91.1.180.14", 53);
        let (x, t, _) = both(&r, r.qr1, &f);
        assert_eq!(
            (x.ret, t.ret),
            (XDP_DROP, TC_ACT_SHOT),
            "FIP as source inside"
        );
        assert_eq!(r.counter(Outcome::DropSpoofedSrc), 8);
        // A subnet's broadcast address as source is not the router's: the
        // kernel forwards it, so do the programs.
        let t = r.tc(r.qg, &from_outside("91.1.180.255", "91.1.180.14"));
        assert_eq!(t.ret, TC_ACT_REDIRECT, "subnet broadcast as source");
        assert_eq!(t.src().to_string(), "91.1.180.255");
        for dst in ["0.0.0.0", "127.0.0.1"] {
            let (x, t, _) = both(&r, r.qg, &from_outside("192.168.1.15", dst));
            assert_eq!((x.ret, t.ret), (XDP_DROP, TC_ACT_SHOT), "destination {dst}");
        }
        assert_eq!(r.counter(Outcome::DropMartianDst), 4);
        // Multicast, broadcast and a tenant subnet's directed broadcast:
        // the kernel's (it forwards none of them).
        for dst in ["224.0.0.5", "255.255.255.255", "91.1.180.255"] {
            let f = from_outside("192.168.1.15", dst);
            let (x, t, _) = both(&r, r.qg, &f);
            assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK), "destination {dst}");
            assert_eq!(t.frame, f.bytes(), "{dst}: untouched");
        }
        // What the kernel routes, the programs route: 240/4 and 0/8 but
        // 0.0.0.0 as sources, through the floating IP and back.
        for client in ["240.0.0.1", "0.1.2.3"] {
            let f = Frame::tcp(client, 4000, "192.168.1.104", 22).from(MAC_EXT, MAC_QG);
            let o = r.xdp(r.qg, &f);
            assert_eq!(o.ret, XDP_REDIRECT, "{client}");
            assert_eq!(o.dst().to_string(), "91.1.180.14");
            // The VM's answer is translated by the programs, whatever the
            // destination's class: one owner per flow.
            let back = Frame {
                tcp_flags: 0x12,
                ..Frame::tcp("91.1.180.14", 22, client, 4000)
            }
            .from(MAC_VM2, MAC_QR2);
            let (o, t, _) = (r.xdp(r.qr2, &back), r.tc(r.qr2, &back), ());
            assert!(o.ret == XDP_REDIRECT || o.ret == XDP_PASS, "{client}");
            assert_eq!(t.ret, TC_ACT_REDIRECT, "{client}: forwarded by TC");
            assert_eq!(
                t.src().to_string(),
                "192.168.1.104",
                "{client}: from the FIP"
            );
            assert_checksums(&t.frame);
        }
    });
}

#[test]
fn tcp_segments_that_open_nothing_are_dropped_when_nat_applies() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        // FIN, RST, SYN-ACK, none, SYN+FIN, FIN-ACK, RST-ACK: INVALID as a
        // first packet for the kernel, which lets them out untranslated.
        for (i, flags) in [0x01u8, 0x04, 0x12, 0x00, 0x03, 0x11, 0x14]
            .iter()
            .enumerate()
        {
            let f = Frame {
                tcp_flags: *flags,
                ..Frame::tcp("81.1.180.12", 30000 + i as u16, "192.168.1.15", 443)
            };
            let (x, t, _) = both(&r, r.qr1, &f);
            assert_eq!((x.ret, t.ret), (XDP_DROP, TC_ACT_SHOT), "flags {flags:#x}");
        }
        assert_eq!(r.counter(Outcome::DropTcpInvalid), 14);
        assert_eq!(r.ct_len(), 0, "no state");
        // SYN (with ECN bits) and a picked-up ACK open a connection.
        for (i, flags) in [0x02u8, 0xc2, 0x10, 0x18].iter().enumerate() {
            let f = Frame {
                tcp_flags: *flags,
                ..Frame::tcp("81.1.180.12", 31000 + i as u16, "192.168.1.15", 443)
            };
            let o = r.xdp(r.qr1, &f);
            assert_eq!(o.ret, XDP_REDIRECT, "flags {flags:#x}");
            assert_eq!(o.src().to_string(), "192.168.1.110");
        }
        // Nothing is translated from outside to a fixed IP: routed as the
        // kernel routes it, without state.
        let f = Frame {
            tcp_flags: 0x01,
            ..Frame::tcp("192.168.1.15", 443, "81.1.180.12", 40000)
        }
        .from(MAC_EXT, MAC_QG);
        let o = r.xdp(r.qg, &f);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.src().to_string(), "192.168.1.15");
        assert_eq!(r.ct_len(), 8, "only the four opened connections");
    });
}

// ---------- the connection table under pressure ----------

/// The three packets of a TCP handshake from `ingress` (`fwd`) and back
/// (`back` builds the answer from the first packet's output); returns the
/// output of the SYN.
fn handshake(
    r: &Router,
    ingress: u32,
    syn: Frame,
    back_in: u32,
    back: impl Fn(&Out) -> Frame,
) -> Out {
    let o = r.xdp(ingress, &syn);
    assert_eq!(o.ret, XDP_REDIRECT, "SYN");
    let synack = Frame {
        tcp_flags: 0x12,
        ..back(&o)
    };
    assert_eq!(r.xdp(back_in, &synack).ret, XDP_REDIRECT, "SYN-ACK");
    let ack = Frame {
        tcp_flags: 0x10,
        ..syn
    };
    assert_eq!(r.xdp(ingress, &ack).ret, XDP_REDIRECT, "ACK");
    o
}

fn snat_answer(o: &Out) -> Frame {
    Frame::tcp("192.168.1.15", o.dport(), "192.168.1.110", o.sport()).from(MAC_EXT, MAC_QG)
}

#[test]
fn connections_are_embryonic_until_established() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let syn = Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80);
        let o = r.xdp(r.qr1, &syn);
        assert_eq!(r.ct_counts(), (2, 0));
        let synack = Frame {
            tcp_flags: 0x12,
            ..snat_answer(&o)
        };
        r.xdp(r.qg, &synack);
        assert_eq!(r.ct_counts(), (2, 0), "answered, not yet established");
        let ack = Frame {
            tcp_flags: 0x10,
            ..syn.clone()
        };
        let o2 = r.xdp(r.qr1, &ack);
        assert_eq!(o2.sport(), o.sport());
        assert_eq!(
            r.ct_counts(),
            (0, 2),
            "the handshake's last ACK establishes it"
        );
        assert_eq!(r.event(CtEvent::Promoted), 1);
        // Still the same translation, both ways, from the main table.
        let o3 = r.xdp(
            r.qr1,
            &Frame {
                tcp_flags: 0x18,
                ..syn
            },
        );
        assert_eq!(o3.sport(), o.sport());
        let back = r.xdp(
            r.qg,
            &Frame {
                tcp_flags: 0x10,
                ..snat_answer(&o)
            },
        );
        assert_eq!(back.dst().to_string(), "81.1.180.12");

        // UDP: answered and still in use after two seconds.
        let q = Frame::udp("81.1.180.12", 5353, "192.168.1.15", 53);
        let o = r.xdp(r.qr1, &q);
        let a = Frame::udp("192.168.1.15", 53, "192.168.1.110", o.sport()).from(MAC_EXT, MAC_QG);
        assert_eq!(r.xdp(r.qg, &a).ret, XDP_REDIRECT);
        r.xdp(r.qr1, &q);
        assert_eq!(r.ct_counts().0, 2, "a fresh exchange stays embryonic");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(r.xdp(r.qr1, &q).sport(), o.sport());
        assert_eq!(r.ct_counts(), (0, 4));
        // A one-way flow never is.
        let lone = Frame::udp("81.1.180.13", 5353, "192.168.1.15", 53);
        r.xdp(r.qr1, &lone);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        r.xdp(r.qr1, &lone);
        assert_eq!(r.ct_counts().0, 2);
    });
}

#[test]
fn a_flood_of_new_connections_never_evicts_established_ones() {
    with_devices(|ifx| {
        let r = Router::build(ifx, 1024, 65535, SMALL);
        // Established: one through SNAT, one to the floating IP.
        let snat = handshake(
            &r,
            r.qr1,
            Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80),
            r.qg,
            snat_answer,
        );
        let fip_syn = Frame::tcp("192.168.1.15", 5555, "192.168.1.104", 22).from(MAC_EXT, MAC_QG);
        handshake(&r, r.qg, fip_syn.clone(), r.qr2, |_| {
            Frame::tcp("91.1.180.14", 22, "192.168.1.15", 5555).from(MAC_VM2, MAC_QR2)
        });
        assert_eq!(r.ct_counts(), (0, 4));
        // 3,000 spoofed SYNs to the floating IP and 3,000 new UDP flows
        // from a VM: 6,000 connections for a table of 256 slots; each
        // eviction takes a whole (embryonic) connection.
        for i in 0..3000u32 {
            let client = format!("100.{}.{}.{}", 64 + (i >> 16) % 64, (i >> 8) & 255, i & 255);
            let f = Frame::tcp(&client, 1024 + (i % 50000) as u16, "192.168.1.104", 22)
                .from(MAC_EXT, MAC_QG);
            assert_eq!(r.xdp(r.qg, &f).ret, XDP_REDIRECT);
            let f = Frame::udp("81.1.180.13", 2000 + (i % 60000) as u16, "192.168.1.15", 9);
            assert_eq!(r.xdp(r.qr1, &f).ret, XDP_REDIRECT);
        }
        let (churned, est) = r.ct_counts();
        assert_eq!(est, 4, "the established connections are all there");
        // Past its size (128 slots used), a new connection takes
        // embryonic ones' places and gives back the never-used slots
        // they held where it can: the table stays about at its size.
        assert!(
            churned > 100 && churned < 200,
            "the flood fills the table to its size: {churned}"
        );
        // An eviction takes a whole connection: no entry is left without
        // its other direction (whose port another connection could take).
        let all: std::collections::HashMap<_, _> = r.table().all().collect();
        let halves: Vec<_> = all
            .iter()
            .filter(|(k, e)| !all.contains_key(&e.partner(k)))
            .collect();
        assert!(halves.is_empty(), "connections left half: {halves:?}");
        assert!(
            r.event(CtEvent::Evicted) > 5_000,
            "the flood evicts its own kind: {}",
            r.event(CtEvent::Evicted)
        );
        // ... and they keep their translation.
        let o = r.xdp(
            r.qr1,
            &Frame {
                tcp_flags: 0x18,
                ..Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80)
            },
        );
        assert_eq!(o.sport(), snat.sport(), "same external port");
        let o = r.xdp(
            r.qg,
            &Frame {
                tcp_flags: 0x18,
                ..fip_syn
            },
        );
        assert_eq!(o.dst().to_string(), "91.1.180.14");
    });
}

/// An embryonic UDP connection from `src:sport` outside to 81.1.180.13:53
/// (network qr1, no floating IP), routed without translation, last seen
/// at `last_seen`: its two (key, entry) pairs.
fn inbound_connection(src: &str, sport: u16, last_seen: u64) -> [(CtKey, CtEntry); 2] {
    let (a, b) = (ip(src), ip("81.1.180.13"));
    let (p, q) = (sport.to_be(), 53u16.to_be());
    let entry = |from: [u8; 4], to: [u8; 4], fp: u16, tp: u16, direction| CtEntry {
        new_src: from,
        new_dst: to,
        new_sport: fp,
        new_dport: tp,
        direction,
        last_seen,
        created: ct_ticks(last_seen),
        ..CtEntry::default()
    };
    [
        (CtKey::new(a, b, p, q, 17), entry(a, b, p, q, CT_ORIGINAL)),
        (CtKey::new(b, a, q, p, 17), entry(b, a, q, p, CT_REPLY)),
    ]
}

/// A new connection from outside to 81.1.180.13:53, routed in
/// untranslated: no port is chosen, so its reply key, inserted first, is
/// known here; the frame and the reply's home slot in a table of mask `m`.
fn new_inbound(m: u32) -> (Frame, u32) {
    let frame = Frame::udp("203.0.113.9", 5000, "81.1.180.13", 53).from(MAC_EXT, MAC_QG);
    let reply = CtKey::new(
        ip("81.1.180.13"),
        ip("203.0.113.9"),
        53u16.to_be(),
        5000u16.to_be(),
        17,
    );
    (frame, reply.home(m))
}

/// A table packed with embryonic connections (as a smaller
/// `conntrack_size` leaves it, the connections carried over) comes back
/// to its size under a flood of new ones: past its size a new connection
/// evicts rather than reuse a freed slot, and the slots freed where no
/// key's way crosses them become never-used.
#[test]
fn a_packed_table_comes_back_to_its_size_under_a_flood() {
    with_devices(|ifx| {
        // Large enough for a window (32 slots) to be a small part of it,
        // as in a real table.
        let lim = Limits {
            slots: 4096,
            rate: 0,
            xdp: false,
        };
        let mut r = Router::build(ifx, 1024, 65535, lim);
        let t = r.table();
        let now = monotonic_ns();
        for i in 0..2000u32 {
            let src = format!("203.0.{}.{}", 100 + i / 250, 1 + i % 250);
            for (k, e) in inbound_connection(&src, 1000, now - 1_000_000) {
                let _ = t.insert(&k, &e);
            }
        }
        let packed = r.ct_counts().0;
        assert!(packed >= 3800, "packed: {packed} of 4096 slots");
        // Three times the table's slots in new connections.
        for i in 0..12_000u32 {
            let f = Frame::udp("81.1.180.13", 2000 + i as u16, "192.168.1.15", 9);
            // (One in 65,536 frames has a checksum XDP takes for a partial
            // one, and goes on to TC.)
            assert_ne!(r.xdp(r.qr1, &f).ret, XDP_DROP);
        }
        let (churned, _) = r.ct_counts();
        assert!(
            churned < 3000,
            "the table is back near its size (2048 slots): {churned} of 4096"
        );
        assert_eq!(r.counter(Outcome::DropCtFull), 0);
    });
}

#[test]
fn a_full_window_evicts_the_least_recently_seen_of_its_first_embryonic_connections() {
    with_devices(|ifx| {
        // 16 slots: every window holds the whole table.
        let lim = Limits {
            slots: 16,
            rate: 0,
            xdp: false,
        };
        let r = Router::build(ifx, 1024, 65535, lim);
        let t = r.table();
        let m = t.slots() - 1;
        let (new, reply_home) = new_inbound(m);
        let now = monotonic_ns();
        let fill = |ages: &dyn Fn(usize) -> u64| {
            t.clear();
            for i in 0..8 {
                for (k, e) in inbound_connection(
                    &format!("203.0.113.{}", 100 + i),
                    1000 + i as u16,
                    now - ages(i),
                ) {
                    t.insert(&k, &e).expect("room for the fill");
                }
            }
        };
        let conn_at = |slot: u32| -> usize {
            let (k, _) = t.read(slot).expect("a full table");
            let src = if k.sport == 53u16.to_be() {
                k.dst
            } else {
                k.src
            };
            src[3] as usize - 100
        };
        // Where the fill puts the connections (the same every time).
        fill(&|i| (i as u64 + 1) * 1_000_000);
        let first: Vec<usize> = (0..4).map(|i| conn_at((reply_home + i) & m)).collect();
        // The table is past its size: each direction of the new
        // connection evicts one (in a table this small, even where the
        // slot the first one freed would do).
        let orig_home = CtKey::new(
            ip("203.0.113.9"),
            ip("81.1.180.13"),
            5000u16.to_be(),
            53u16.to_be(),
            17,
        )
        .home(m);
        let first_orig: Vec<usize> = (0..4).map(|i| conn_at((orig_home + i) & m)).collect();
        // The connection seen longest ago overall is not among the first
        // four from either direction's home; the oldest among the reply's
        // is `victim`.
        let victim = *first.iter().max().unwrap();
        let far = (0..8)
            .find(|c| !first.contains(c) && !first_orig.contains(c))
            .expect("8 connections, 8 slots weighed: this fill leaves one out");
        fill(&|i| {
            if i == far {
                60_000_000_000
            } else {
                (i as u64 + 1) * 1_000_000
            }
        });
        let before = r.event(CtEvent::Evicted);
        assert_eq!(r.xdp(r.qg, &new).ret, XDP_REDIRECT);
        assert_eq!(
            r.event(CtEvent::Evicted) - before,
            2,
            "a connection evicted for each direction"
        );
        let left: HashSet<usize> = (0..16)
            .filter_map(|i| t.read(i))
            .filter(|(k, _)| k.sport != 5000u16.to_be() && k.dport != 5000u16.to_be())
            .map(|(k, _)| {
                let src = if k.sport == 53u16.to_be() {
                    k.dst
                } else {
                    k.src
                };
                src[3] as usize - 100
            })
            .collect();
        assert!(!left.contains(&victim), "the oldest of the first four went");
        assert!(left.contains(&far), "the oldest of all, further on, stayed");
        assert_eq!(left.len(), 6);
        assert_eq!(
            r.ct_counts(),
            (14, 0),
            "the new connection took their place"
        );

        // Past its size, a freed slot further on is not taken either (a
        // table once packed would stay packed): a connection none of the
        // first four slots holds goes, and the oldest of the first four is
        // evicted all the same.
        fill(&|i| (i as u64 + 1) * 1_000_000);
        let gone = (0..8)
            .find(|c| !first.contains(c))
            .expect("8 connections, 4 slots");
        for (k, _) in
            inbound_connection(&format!("203.0.113.{}", 100 + gone), 1000 + gone as u16, 0)
        {
            assert!(t.remove(&k));
        }
        let before = r.event(CtEvent::Evicted);
        assert_eq!(r.xdp(r.qg, &new).ret, XDP_REDIRECT);
        assert!(r.event(CtEvent::Evicted) > before, "evicted");
        let (k, _) = t.read(reply_home).expect("the reply's home slot");
        assert_eq!(k.dst, ip("203.0.113.9"), "the reply in the victim's place");
    });
}

/// `n` keys no packet has, each with its home at slot `home` of a table of
/// mask `m`: inserted, they hold `home` and the slots after it.
fn keys_at_home(home: u32, m: u32, n: usize) -> Vec<CtKey> {
    (1..=u16::MAX)
        .map(|p| {
            CtKey::new(
                ip("198.51.100.1"),
                ip("198.51.100.2"),
                p.to_be(),
                9u16.to_be(),
                17,
            )
        })
        .filter(|k| k.home(m) == home)
        .take(n)
        .collect()
}

/// The (source port, direction) of a connection from `src`
/// (`inbound_connection`) one of whose keys has its home at `home` in a
/// table of mask `m`.
fn inbound_at_home(src: &str, home: u32, m: u32) -> (u16, usize) {
    (1000..60000)
        .find_map(|p| {
            let c = inbound_connection(src, p, 0);
            (0..2).find(|&d| c[d].0.home(m) == home).map(|d| (p, d))
        })
        .expect("a port puts a key there")
}

/// An evicted connection's other direction gives its slot back as
/// never-used (so that lookups stop there under a flood), but not where a
/// key sits after it whose way crosses it: that key is still found.
#[test]
fn a_slot_freed_by_an_eviction_stays_freed_where_a_key_is_beyond_it() {
    with_devices(|ifx| {
        let mut r = Router::build(ifx, 1024, 65535, SMALL);
        let t = r.table();
        let m = t.slots() - 1;
        let (new, reply_home) = new_inbound(m);
        let now = monotonic_ns();
        // The victim: an embryonic connection with a key in the new
        // reply's home slot, its other key well away from that window.
        let (vport, vdir) = (1000..60000)
            .find_map(|p| {
                let c = inbound_connection("203.0.113.50", p, 0);
                (0..2)
                    .find(|&d| {
                        let other = c[1 - d].0.home(m);
                        c[d].0.home(m) == reply_home
                            && other.wrapping_sub(reply_home) & m > 40
                            && reply_home.wrapping_sub(other) & m > 40
                    })
                    .map(|d| (p, d))
            })
            .expect("a victim");
        let victim = inbound_connection("203.0.113.50", vport, now - 1_000_000);
        let partner_home = victim[1 - vdir].0.home(m);
        // A connection with a key homed at the partner's slot: inserted
        // after it, it sits one slot on, its way crossing the partner's.
        let (kport, kdir) = inbound_at_home("203.0.113.60", partner_home, m);
        let crossing = inbound_connection("203.0.113.60", kport, now - 1_000_000);
        // The reply's window: the victim, then established keys.
        t.insert(&victim[vdir].0, &victim[vdir].1).unwrap();
        for k in keys_at_home(reply_home, m, 31) {
            let e = CtEntry {
                flags: CT_F_ASSURED,
                last_seen: now,
                ..CtEntry::default()
            };
            t.insert(&k, &e).expect("room in the window");
        }
        t.insert(&victim[1 - vdir].0, &victim[1 - vdir].1).unwrap();
        for (k, e) in &crossing {
            t.insert(k, e).unwrap();
        }
        let p = t.find(&victim[1 - vdir].0).expect("the partner");
        assert_eq!(t.find(&crossing[kdir].0), Some((p + 1) & m), "beyond it");

        let before = r.event(CtEvent::Evicted);
        assert_eq!(r.xdp(r.qg, &new).ret, XDP_REDIRECT);
        assert_eq!(r.event(CtEvent::Evicted) - before, 1, "the victim went");
        assert_eq!(t.get(&victim[1 - vdir].0), None, "whole");
        // A packet of the crossing key's direction finds its connection.
        let created = r.event(CtEvent::Created);
        let f = if kdir == 0 {
            r.xdp(
                r.qg,
                &Frame::udp("203.0.113.60", kport, "81.1.180.13", 53).from(MAC_EXT, MAC_QG),
            )
        } else {
            r.xdp(r.qr1, &Frame::udp("81.1.180.13", 53, "203.0.113.60", kport))
        };
        assert_ne!(f.ret, XDP_DROP, "not taken for a new connection");
        assert_eq!(r.event(CtEvent::Created), created, "its connection found");
        assert_eq!(r.counter(Outcome::DropCtFull), 0);
    });
}

/// A key no packet has, with its home at slot `home` of a table of mask
/// `m`, whose second word is `CT_W1_BUSY` (protocol 0): inserted, it
/// holds its slot busy, as another CPU's insert does between its claim
/// and its publishing.
fn busy_at(home: u32, m: u32) -> CtKey {
    (1..u32::MAX)
        .map(|i| CtKey {
            src: i.to_be_bytes(),
            dst: ip("198.51.100.3"),
            sport: 0,
            dport: 0,
            proto: 0,
            _pad: 1,
            _pad2: 0,
        })
        .find(|k| k.home(m) == home)
        .expect("a key there")
}

/// A new SNAT connection whose reply key finds a slot before its own busy
/// (another CPU's insert in progress there, perhaps of the same key: the
/// same port to the same server) withdraws it rather than risk the port
/// twice: with one port to draw from it finds none, and the packet is
/// dropped and counted, never sent. Without the other insert the port is
/// taken.
#[test]
fn a_busy_slot_before_a_new_key_makes_its_insert_withdraw() {
    with_devices(|ifx| {
        let mut r = Router::build(ifx, 5000, 5000, SMALL);
        let t = r.table();
        let m = t.slots() - 1;
        let reply = CtKey::new(
            ip("192.168.1.15"),
            ip("192.168.1.110"),
            53u16.to_be(),
            5000u16.to_be(),
            17,
        );
        t.insert(&busy_at(reply.home(m), m), &CtEntry::default())
            .unwrap();
        let f = Frame::udp("81.1.180.12", 1000, "192.168.1.15", 53);
        let o = r.xdp(r.qr1, &f);
        assert_eq!(o.ret, XDP_DROP, "sent with port {}", o.sport());
        assert_eq!(r.counter(Outcome::DropNoPort), 1);
        assert_eq!(t.find(&reply), None, "withdrawn");
        assert_eq!(r.ct_len(), 0);
        t.clear();
        let o = r.xdp(r.qr1, &f);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.sport(), 5000);
    });
}

/// Another CPU opening the same connection at the same time has published
/// its reply key one slot after a freed one, after this CPU's lookup
/// missed. This CPU takes the freed slot, before it: having published,
/// it finds the key further on and withdraws, so that the key is in the
/// table once (the packet is dropped and counted; the other CPU's
/// connection stands, and the packet's retry finds it).
#[test]
fn a_key_published_further_on_makes_an_insert_into_a_freed_slot_withdraw() {
    with_devices(|ifx| {
        let mut r = Router::build(ifx, 1024, 65535, SMALL);
        let t = r.table();
        let m = t.slots() - 1;
        let (new, home) = new_inbound(m);
        let [orig, reply] = inbound_connection("203.0.113.9", 5000, monotonic_ns());
        assert_eq!(reply.0.home(m), home);
        let filler = keys_at_home(home, m, 1)[0];
        t.insert(&filler, &CtEntry::default()).unwrap();
        t.insert(&reply.0, &reply.1).unwrap();
        assert_eq!(t.find(&reply.0), Some((home + 1) & m));
        assert!(t.remove(&filler), "the slot before it, freed");

        let o = r.xdp(r.qg, &new);
        assert_eq!(o.ret, XDP_DROP);
        assert_eq!(r.counter(Outcome::DropCtFull), 1);
        assert_eq!(
            t.all().filter(|(k, _)| *k == reply.0).count(),
            1,
            "the reply key once"
        );
        assert_eq!(t.find(&reply.0), Some((home + 1) & m));
        // The other CPU's insert done: the retry is its connection's.
        t.insert(&orig.0, &orig.1).unwrap();
        let created = r.event(CtEvent::Created);
        assert_eq!(r.xdp(r.qg, &new).ret, XDP_REDIRECT);
        assert_eq!(r.event(CtEvent::Created), created);
    });
}

#[test]
fn at_its_size_the_table_evicts_an_embryonic_connection_before_using_a_never_used_slot() {
    with_devices(|ifx| {
        // 16 slots: conntrack_size 4 connections, 8 slots in use at most
        // before new connections evict embryonic ones.
        let lim = Limits {
            slots: 16,
            rate: 0,
            xdp: false,
        };
        let r = Router::build(ifx, 1024, 65535, lim);
        let t = r.table();
        let m = t.slots() - 1;
        let (new, reply_home) = new_inbound(m);
        let now = monotonic_ns();
        // `n` embryonic connections, one of them in the new connection's
        // reply's home slot: so its window has an embryonic entry before
        // a never-used slot.
        let fill = |n: u32| {
            for first in 0..100u32 {
                t.clear();
                for i in first..first + n {
                    for (k, e) in
                        inbound_connection(&format!("203.0.113.{}", 100 + i), 1000, now - 1_000_000)
                    {
                        t.insert(&k, &e).expect("room for the fill");
                    }
                }
                if t.read(reply_home).is_some() {
                    return;
                }
            }
            panic!("no fill puts a connection in slot {reply_home}");
        };
        // Below its size: the never-used slot.
        fill(3);
        assert_eq!(t.fill(), Some(6));
        let before = r.event(CtEvent::Evicted);
        assert_eq!(r.xdp(r.qg, &new).ret, XDP_REDIRECT);
        assert_eq!(r.event(CtEvent::Evicted), before, "nothing evicted");
        assert_eq!(r.ct_counts(), (8, 0));
        // At its size: the embryonic connection's place.
        fill(4);
        assert_eq!(t.fill(), Some(8));
        let before = r.event(CtEvent::Evicted);
        assert_eq!(r.xdp(r.qg, &new).ret, XDP_REDIRECT);
        assert_eq!(
            r.event(CtEvent::Evicted) - before,
            1,
            "one connection evicted"
        );
        assert_eq!(r.ct_counts(), (8, 0), "in the evicted one's place");
        let (k, _) = t.read(reply_home).expect("the reply's home slot");
        assert_eq!(
            k.dst,
            ip("203.0.113.9"),
            "the new reply is in its home slot"
        );
        // The GC's turning freed slots back into never-used ones counts.
        let freed: Vec<_> = t.all().map(|(k, _)| k).collect();
        for k in &freed {
            assert!(t.remove(k));
        }
        t.reclaim(0..t.slots());
        assert_eq!(r.ct_counts(), (0, 0));
        assert!(t.fill().is_some_and(|f| f < 8), "{:?}", t.fill());
    });
}

#[test]
fn a_full_table_refuses_new_connections_and_keeps_established_ones() {
    with_devices(|ifx| {
        // 16 slots: every key's window is the whole table (twice over).
        let lim = Limits {
            slots: 16,
            rate: 0,
            xdp: false,
        };
        let mut r = Router::build(ifx, 1024, 65535, lim);
        let opened: Vec<Out> = (0..8)
            .map(|i| {
                handshake(
                    &r,
                    r.qr1,
                    Frame::tcp("81.1.180.12", 40000 + i, "192.168.1.15", 80),
                    r.qg,
                    snat_answer,
                )
            })
            .collect();
        assert_eq!(r.ct_counts(), (0, 16));
        let ninth = Frame::tcp("81.1.180.12", 40008, "192.168.1.15", 80);
        assert_eq!(r.xdp(r.qr1, &ninth).ret, XDP_DROP);
        assert_eq!(r.counter(Outcome::DropCtFull), 1);
        assert_eq!(r.event(CtEvent::Evicted), 0, "nothing established evicted");
        // Every established connection works on, as it was translated.
        for (i, o) in opened.iter().enumerate() {
            let f = Frame {
                tcp_flags: 0x18,
                ..Frame::tcp("81.1.180.12", 40000 + i as u16, "192.168.1.15", 80)
            };
            assert_eq!(r.xdp(r.qr1, &f).sport(), o.sport());
        }
        // One connection gone (the GC's work): room for the ninth.
        let t = r.table();
        let gone: Vec<_> = t
            .all()
            .filter(|(k, _)| k.sport == 40003u16.to_be() || k.dport == opened[3].sport().to_be())
            .collect();
        assert_eq!(gone.len(), 2);
        for (k, _) in &gone {
            assert!(t.remove(k));
        }
        assert_eq!(r.xdp(r.qr1, &ninth).ret, XDP_REDIRECT);
        assert_eq!(r.ct_counts(), (2, 14));
    });
}

/// A SYN to a floating IP answered by the VM's SYN-ACK, and nothing more
/// (a spoofed SYN's fate): the handshake is not done, so no entry says
/// ESTABLISHED (the GC then gives it an unanswered handshake's 120 s, not
/// an established connection's day); the opener's ACK establishes it.
#[test]
fn a_syn_ack_alone_does_not_establish() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let syn = Frame::tcp("192.168.1.15", 5555, "192.168.1.104", 22).from(MAC_EXT, MAC_QG);
        assert_eq!(r.xdp(r.qg, &syn).ret, XDP_REDIRECT);
        let synack = Frame {
            tcp_flags: 0x12,
            ..Frame::tcp("91.1.180.14", 22, "192.168.1.15", 5555).from(MAC_VM2, MAC_QR2)
        };
        assert_eq!(r.xdp(r.qr2, &synack).ret, XDP_REDIRECT);
        let states: Vec<u8> = r.table().all().map(|(_, e)| e.state).collect();
        assert_eq!(states.len(), 2);
        assert!(
            states.iter().all(|s| *s == 1),
            "SYN_SENT both ways: {states:?}"
        );
        let ack = Frame {
            tcp_flags: 0x10,
            ..syn
        };
        assert_eq!(r.xdp(r.qg, &ack).ret, XDP_REDIRECT);
        assert!(
            r.table().all().any(|(_, e)| e.state == 2),
            "the ACK establishes it"
        );
        assert_eq!(r.ct_counts(), (0, 2));
    });
}

/// A spoofed SYN to a floating IP, the VM's SYN-ACK, a second SYN on the
/// same tuple and the VM's challenge ACK to it: the answering side's ACK
/// does not complete the handshake (nor does an opener's ACK before any
/// answer), so no entry says ESTABLISHED and the connection keeps a half
/// open one's 120 s.
#[test]
fn only_the_openers_ack_to_an_answer_establishes() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let syn = Frame::tcp("192.168.1.15", 5555, "192.168.1.104", 22).from(MAC_EXT, MAC_QG);
        let back = |flags| Frame {
            tcp_flags: flags,
            ..Frame::tcp("91.1.180.14", 22, "192.168.1.15", 5555).from(MAC_VM2, MAC_QR2)
        };
        let states = || -> Vec<u8> { r.table().all().map(|(_, e)| e.state).collect() };
        assert_eq!(r.xdp(r.qg, &syn).ret, XDP_REDIRECT);
        assert_eq!(r.xdp(r.qr2, &back(0x12)).ret, XDP_REDIRECT, "SYN-ACK");
        assert_eq!(r.xdp(r.qg, &syn).ret, XDP_REDIRECT, "a second SYN");
        assert_eq!(r.xdp(r.qr2, &back(0x10)).ret, XDP_REDIRECT, "challenge ACK");
        assert_eq!(states(), vec![1, 1], "SYN_SENT both ways");
        assert_eq!(r.ct_counts(), (2, 0), "embryonic");

        // An opener's ACK before any answer does not establish either.
        let lone = Frame::tcp("192.168.1.16", 6666, "192.168.1.104", 22).from(MAC_EXT, MAC_QG);
        assert_eq!(r.xdp(r.qg, &lone).ret, XDP_REDIRECT);
        let blind = Frame {
            tcp_flags: 0x10,
            ..lone
        };
        assert_eq!(r.xdp(r.qg, &blind).ret, XDP_REDIRECT);
        assert_eq!(states(), vec![1; 4], "{:?}", states());

        // The opener's ACK to the SYN-ACK does.
        let ack = Frame {
            tcp_flags: 0x10,
            ..syn
        };
        assert_eq!(r.xdp(r.qg, &ack).ret, XDP_REDIRECT);
        assert_eq!(r.ct_counts(), (2, 2));
    });
}

/// A SYN in a connection both sides have closed with FINs, or its own
/// side has reset, opens a new connection (the kernel's conntrack reopens
/// one in TIME_WAIT or CLOSE, so a reused port gets the translation of
/// now); after one side's FIN only, or the other side's reset (a refused
/// connection tried again), it goes on in the old connection. On XDP and
/// TC alike (the same pipeline, each hook its own run).
#[test]
fn a_syn_reopens_a_connection_both_sides_closed() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        // ext -> floating IP 192.168.1.104 (vm2's 91.1.180.14), port 22.
        let out = |sport: u16, flags| Frame {
            tcp_flags: flags,
            ..Frame::tcp("192.168.1.15", sport, "192.168.1.104", 22).from(MAC_EXT, MAC_QG)
        };
        let back = |sport: u16, flags| Frame {
            tcp_flags: flags,
            ..Frame::tcp("91.1.180.14", 22, "192.168.1.15", sport).from(MAC_VM2, MAC_QR2)
        };
        let run = |tc: bool, ingress: u32, f: Frame| {
            let ret = if tc {
                r.tc(ingress, &f).ret
            } else {
                r.xdp(ingress, &f).ret
            };
            let want = if tc { TC_ACT_REDIRECT } else { XDP_REDIRECT };
            assert_eq!(
                ret,
                want,
                "{}: flags {:#x}",
                if tc { "tc" } else { "xdp" },
                f.tcp_flags
            );
        };
        let (syn, synack, ack, fin, rst) = (0x02, 0x12, 0x10, 0x11, 0x04);
        let open = |tc: bool, sport: u16| {
            run(tc, r.qg, out(sport, syn));
            run(tc, r.qr2, back(sport, synack));
            run(tc, r.qg, out(sport, ack));
        };
        // Five connections, established: their entries are never evicted.
        for (i, sport) in (5001..=5005).enumerate() {
            open(i == 4, sport);
        }
        assert_eq!(r.ct_counts(), (0, 10));
        assert_eq!(r.event(CtEvent::Created), 5);

        // Closed both ways: the SYN opens a new, embryonic connection.
        run(false, r.qg, out(5001, fin));
        run(false, r.qr2, back(5001, fin));
        run(false, r.qg, out(5001, ack));
        run(false, r.qg, out(5001, syn));
        assert_eq!(
            r.event(CtEvent::Created),
            6,
            "reopened after FINs both ways"
        );
        assert_eq!(r.ct_counts(), (2, 8));
        // One side's FIN only: the same connection, which keeps that FIN
        // through a stray SYN (the kernel ignores it), so that the other
        // side's FIN closes it and the next SYN reopens it.
        run(false, r.qg, out(5002, fin));
        run(false, r.qg, out(5002, syn));
        assert_eq!(r.event(CtEvent::Created), 6, "one FIN: not reopened");
        assert_eq!(r.ct_counts(), (2, 8));
        run(false, r.qr2, back(5002, fin));
        run(false, r.qg, out(5002, syn));
        assert_eq!(r.event(CtEvent::Created), 7, "the FIN outlived the SYN");
        assert_eq!(r.ct_counts(), (4, 6));
        // Reset by the SYN's own side: a new connection.
        run(false, r.qg, out(5003, rst));
        run(false, r.qg, out(5003, syn));
        assert_eq!(r.event(CtEvent::Created), 8, "reopened after its own reset");
        assert_eq!(r.ct_counts(), (6, 4));
        // Reset by the other side: the SYN tried again goes on in it.
        run(false, r.qr2, back(5004, rst));
        run(false, r.qg, out(5004, syn));
        assert_eq!(r.event(CtEvent::Created), 8, "other side's reset: kept");
        assert_eq!(r.ct_counts(), (6, 4));
        // TC, closed both ways.
        run(true, r.qg, out(5005, fin));
        run(true, r.qr2, back(5005, fin));
        run(true, r.qg, out(5005, ack));
        run(true, r.qg, out(5005, syn));
        assert_eq!(r.event(CtEvent::Created), 9, "tc: reopened");
        assert_eq!(r.ct_counts(), (8, 2));
        // The reopened connections work: the answer goes back translated.
        for sport in [5001, 5002, 5003, 5005] {
            let o = r.xdp(r.qr2, &back(sport, synack));
            assert_eq!(o.ret, XDP_REDIRECT);
            assert_eq!(o.src().to_string(), "192.168.1.104");
            assert_eq!(o.dport(), sport);
        }
    });
}

/// New connections through gateway SNAT from two CPUs at once, into a
/// range of 256 ports: no port is handed to two connections (each reply
/// key is one connection's), whichever CPU claimed it.
#[test]
fn concurrent_new_connections_never_share_a_port() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 40000, 40255);
        std::thread::scope(|s| {
            for cpu in 0..2usize {
                let r = &r;
                s.spawn(move || {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu % nix::sched::CpuSet::count()).unwrap();
                    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
                    for i in 0..48u16 {
                        let vm = if cpu == 0 {
                            "81.1.180.12"
                        } else {
                            "81.1.180.13"
                        };
                        let o = r.xdp(r.qr1, &Frame::udp(vm, 2000 + i, "192.168.1.15", 53));
                        assert_eq!(o.ret, XDP_REDIRECT);
                    }
                });
            }
        });
        let all: Vec<_> = r.table().all().collect();
        let ports: HashSet<u16> = all
            .iter()
            .filter(|(_, e)| e.direction == 0)
            .map(|(_, e)| e.new_sport)
            .collect();
        let replies = all.iter().filter(|(_, e)| e.direction == 1).count();
        assert_eq!(all.len(), 192, "96 connections, two entries each");
        assert_eq!(ports.len(), 96, "a port each");
        assert_eq!(replies, 96);
    });
}

/// Under a flood of new connections a CPU draws the SNAT port of a packet's
/// connection before its own lookup (so that the reply's slot is read
/// alongside it), and a packet that turns out to be known leaves its port
/// unused for the next new connection: a port drawn before the range
/// changed is not used after.
#[test]
fn a_port_drawn_ahead_is_not_used_once_the_range_has_changed() {
    with_devices(|ifx| {
        on_cpu0();
        let mut r = Router::new(ifx, 2000, 2999);
        let flow = |i: u16| Frame::udp("81.1.180.12", 10000 + i, "192.168.1.15", 53);
        for i in 0..32 {
            let o = r.xdp(r.qr1, &flow(i));
            assert_eq!(o.ret, XDP_REDIRECT);
            assert!((2000..=2999).contains(&o.sport()), "port {}", o.sport());
        }
        // Known: the ports drawn for them stay unused (the last drawn is
        // kept), until the CPU's lookups have mostly found their
        // connections again and it draws no more.
        let known = r.xdp(r.qr1, &flow(0)).sport();
        for _ in 0..32 {
            assert_eq!(r.xdp(r.qr1, &flow(0)).sport(), known);
        }
        let mut cfg: Array<&mut MapData, RouterConfig> =
            Array::try_from(map(&mut r.ebpf, "XR_CONFIG")).unwrap();
        let mut c = cfg.get(&0, 0).unwrap();
        (c.port_min, c.port_max) = (5000, 5999);
        cfg.set(0, c, 0).unwrap();
        for i in 32..40 {
            let o = r.xdp(r.qr1, &flow(i));
            assert_eq!(o.ret, XDP_REDIRECT);
            assert!(
                (5000..=5999).contains(&o.sport()),
                "a new connection after the range changed to 5000-5999 got port {}",
                o.sport()
            );
        }
        assert_eq!(r.xdp(r.qr1, &flow(0)).sport(), known);
    });
}

/// A router whose budget is 10 new connections a second (one per 100 ms
/// window), on the xdp plane or not; the calling thread on CPU 0, whose
/// budget it is.
fn one_per_window(ifx: [u32; 3], xdp: bool) -> Router {
    on_cpu0();
    let lim = Limits {
        rate: 10,
        xdp,
        ..ROOMY
    };
    Router::build(ifx, 1024, 65535, lim)
}

/// Pins the calling thread to CPU 0: per-CPU budgets are per CPU.
fn on_cpu0() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

#[test]
fn new_connections_beyond_the_budget_are_dropped_and_counted() {
    with_devices(|ifx| {
        let mut r = one_per_window(ifx, false);
        let first = Frame::udp("81.1.180.12", 7000, "192.168.1.15", 53);
        let o = r.xdp(r.qr1, &first);
        assert_eq!(o.ret, XDP_REDIRECT);
        let mut dropped = 0;
        for i in 0..20u16 {
            let f = Frame::udp("81.1.180.12", 7001 + i, "192.168.1.15", 53);
            if r.xdp(r.qr1, &f).ret == XDP_DROP {
                dropped += 1;
            }
        }
        assert!(
            dropped >= 18,
            "only {dropped} of 20 over the budget dropped"
        );
        assert_eq!(r.counter(Outcome::DropNewRate), dropped);
        // Known connections are not new: never limited.
        for _ in 0..20 {
            assert_eq!(r.xdp(r.qr1, &first).sport(), o.sport());
        }
        std::thread::sleep(std::time::Duration::from_millis(120));
        let f = Frame::udp("81.1.180.12", 7100, "192.168.1.15", 53);
        assert_eq!(r.xdp(r.qr1, &f).ret, XDP_REDIRECT, "a new window");
    });
}

/// While a CPU's budget is spent, a SYN is shed before the tables are
/// looked up: even the retried SYN of a connection admitted earlier (found
/// in the table, it would go). What is not a new connection is not shed:
/// a SYN for the router itself or the metadata proxy, a SYN whose TTL
/// expires (the kernel answers it), the established connection's packets.
#[test]
fn syns_over_the_budget_are_shed_before_the_tables_are_looked_up() {
    with_devices(|ifx| {
        let mut r = one_per_window(ifx, false);
        let syn = Frame::tcp("81.1.180.12", 7000, "192.168.1.15", 80);
        let o = r.xdp(r.qr1, &syn);
        assert_eq!(o.ret, XDP_REDIRECT, "the window's one admitted");
        assert_eq!(r.ct_len(), 2);
        assert_eq!(r.xdp(r.qr1, &syn).ret, XDP_DROP, "its retry, shed");
        let other = Frame::tcp("81.1.180.12", 7001, "192.168.1.15", 80);
        assert_eq!(r.xdp(r.qr1, &other).ret, XDP_DROP, "a new one, shed");
        assert_eq!(r.counter(Outcome::DropNewRate), 2);
        for (f, what) in [
            (
                Frame::tcp("81.1.180.12", 7002, "192.168.1.110", 22),
                "the router's gateway address",
            ),
            (
                Frame::tcp("81.1.180.12", 7003, "169.254.169.254", 80),
                "the metadata proxy",
            ),
            (
                Frame {
                    ttl: 1,
                    ..Frame::tcp("81.1.180.12", 7004, "192.168.1.15", 80)
                },
                "an expiring TTL",
            ),
        ] {
            let (x, t, _) = both(&r, r.qr1, &f);
            assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK), "{what}");
        }
        assert_eq!(r.counter(Outcome::DropNewRate), 2, "none of those shed");
        let ack = Frame {
            tcp_flags: 0x10,
            ..syn.clone()
        };
        assert_eq!(r.xdp(r.qr1, &ack).ret, XDP_REDIRECT, "not a SYN: looked up");
        std::thread::sleep(std::time::Duration::from_millis(120));
        let o2 = r.xdp(r.qr1, &syn);
        assert_eq!(o2.ret, XDP_REDIRECT, "a new window: the retry goes");
        assert_eq!(o2.sport(), o.sport(), "in its connection");
    });
}

/// On the xdp plane, a SYN XDP admitted but cannot send itself (its next
/// hop's MAC unknown) goes on to TC, which sends it: TC does not shed it
/// as over the budget its own admission spent. Alone on the tc plane, TC
/// sheds what is over it before the lookup.
#[test]
fn a_syn_xdp_admitted_is_not_shed_again_in_tc() {
    with_devices(|ifx| {
        let mut r = one_per_window(ifx, true);
        // 192.168.1.77: on the external network, no MAC known.
        let syn = Frame::tcp("81.1.180.12", 7000, "192.168.1.77", 22);
        let (x, t, _) = both(&r, r.qr1, &syn);
        assert_eq!(x.ret, XDP_PASS, "admitted, next hop unknown: to TC");
        assert_eq!(r.ct_len(), 2, "its connection");
        assert_eq!(t.ret, TC_ACT_REDIRECT, "sent by TC");
        assert_eq!(r.counter(Outcome::DropNewRate), 0);
        let other = Frame::tcp("81.1.180.12", 7001, "192.168.1.77", 22);
        assert_eq!(r.xdp(r.qr1, &other).ret, XDP_DROP, "over the budget: shed");
        assert_eq!(r.counter(Outcome::DropNewRate), 1);
        // A VM's SYN with its checksum left to offload: XDP hands it on
        // unweighed, and TC sheds it before its lookup.
        let offloaded = Frame {
            partial_csum: true,
            ..Frame::tcp("81.1.180.12", 7002, "192.168.1.77", 22)
        };
        let (x, t, _) = both(&r, r.qr1, &offloaded);
        assert_eq!(
            (x.ret, t.ret),
            (XDP_PASS, TC_ACT_SHOT),
            "offloaded, over the budget"
        );
        assert_eq!(r.counter(Outcome::DropNewRate), 2);
        assert_eq!(r.ct_len(), 2);

        // A router of its own (its own budget) on the tc plane.
        let mut r = one_per_window(ifx, false);
        assert_eq!(r.tc(r.qr1, &syn).ret, TC_ACT_REDIRECT, "the tc plane");
        assert_eq!(
            r.tc(r.qr1, &other).ret,
            TC_ACT_SHOT,
            "over the budget: shed"
        );
        assert_eq!(r.counter(Outcome::DropNewRate), 1);
        assert_eq!(r.ct_len(), 2, "before its lookup");
    });
}

/// A new packet the kernel is to answer (here a DF one over the egress
/// MTU) gives back the budget it was admitted with: handed on from XDP to
/// TC, it is neither counted twice nor shed in TC for XDP's taking, and
/// the window's one connection is still there for the next packet.
#[test]
fn packets_the_kernel_answers_take_nothing_from_the_budget() {
    with_devices(|ifx| {
        let mut r = one_per_window(ifx, true);
        let df = big(Frame::udp("81.1.180.12", 6000, "192.168.1.15", 53), 1600);
        let (x, t, mark) = both(&r, r.qr1, &df);
        assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK), "to be answered");
        assert_eq!(mark & MARK_MASK, MARK_ANSWER_ONLY);
        assert_eq!(r.counter(Outcome::DropNewRate), 0);
        assert_eq!(r.ct_len(), 0);
        let f = Frame::udp("81.1.180.12", 6001, "192.168.1.15", 53);
        assert_eq!(r.xdp(r.qr1, &f).ret, XDP_REDIRECT, "the window's one");
        let g = Frame::udp("81.1.180.12", 6002, "192.168.1.15", 53);
        assert_eq!(r.xdp(r.qr1, &g).ret, XDP_DROP, "over the budget");
        assert_eq!(r.counter(Outcome::DropNewRate), 1);
    });
}

// ---------- one owner per flow: what the programs hand up ----------

fn big(f: Frame, len: usize) -> Frame {
    Frame {
        payload: vec![0x5a; len],
        ..f
    }
}

#[test]
fn aggregated_segments_are_forwarded_not_handed_to_the_kernel() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        // A GRO'd upload of 3 x 1100 bytes through SNAT (qg- MTU 1500; a
        // test run's packet must fit a page).
        let f = big(Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80), 3300);
        let (o, mark) = r.raw_tc_skb(r.qr1, &f.bytes(), 1100);
        assert_eq!(o.ret, TC_ACT_REDIRECT);
        assert_eq!(mark & MARK_MASK, 0);
        assert_eq!(o.src().to_string(), "192.168.1.110");
        assert_eq!(o.ttl(), 63);
        // Segments that would not fit: the kernel answers, untranslated,
        // and must not forward it.
        let f = big(Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80), 2922);
        let (o, mark) = r.raw_tc_skb(r.qr1, &f.bytes(), 1461);
        assert_eq!(o.ret, TC_ACT_OK);
        assert_eq!(mark & MARK_MASK, MARK_ANSWER_ONLY);
        assert_eq!(o.frame, f.bytes(), "untouched");
    });
}

#[test]
fn oversized_packets_go_to_the_kernel_translated_or_to_be_answered() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        // DF, over qg-'s 1500: the kernel answers "fragmentation needed"
        // about what the VM sent.
        let df = big(Frame::udp("81.1.180.12", 6000, "192.168.1.15", 53), 1600);
        let (x, t, mark) = both(&r, r.qr1, &df);
        assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK));
        assert_eq!(x.frame, df.bytes());
        assert_eq!(t.frame, df.bytes(), "untouched");
        assert_eq!(mark & MARK_MASK, MARK_ANSWER_ONLY);
        assert_eq!(r.counter(Outcome::KernelMtu), 1);
        assert_eq!(r.ct_len(), 0, "no connection for a packet that never left");
        // Without DF: translated here, fragmented by the kernel, which
        // neither tracks nor translates it again. TTL and MACs are its job.
        let nodf = Frame { frag: 0, ..df };
        let (x, t, mark) = both(&r, r.qr1, &nodf);
        assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK));
        assert_eq!(x.frame, nodf.bytes(), "XDP leaves it to TC untouched");
        assert_eq!(mark & MARK_MASK, MARK_TRANSLATED);
        assert_eq!(t.src().to_string(), "192.168.1.110");
        assert_eq!(t.ttl(), 64, "the kernel decrements it");
        assert_eq!(&t.frame[..12], &nodf.bytes()[..12], "MACs untouched");
        assert_checksums(&t.frame);
        assert_eq!(r.counter(Outcome::KernelFragment), 1);
        // Same flow, small: forwarded here with the same port.
        let small = Frame::udp("81.1.180.12", 6000, "192.168.1.15", 53);
        let o = r.xdp(r.qr1, &small);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.sport(), t.sport(), "one translation per flow");
        // A reply's fragment too big for the VM's network (1450): translated
        // and handed up, and the datagram's later fragments follow it.
        let reply = Frame {
            frag: 0x2000, // first fragment: MF, offset 0
            ..big(
                Frame::udp("192.168.1.15", 53, "192.168.1.110", o.sport()).from(MAC_EXT, MAC_QG),
                1472,
            )
        };
        let (t, mark) = r.raw_tc_skb(r.qg, &reply.bytes(), 0);
        assert_eq!(t.ret, TC_ACT_OK);
        assert_eq!(mark & MARK_MASK, MARK_TRANSLATED);
        assert_eq!(t.dst().to_string(), "81.1.180.12");
        assert_eq!(t.dport(), 6000);
        assert_eq!(finish(sum16(&t.frame[14..34])), 0, "IPv4 header checksum");
    });
}

#[test]
fn ip_options_are_translated_and_forwarded_by_the_kernel() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let f = Frame {
            options: vec![1, 1, 1, 0], // NOP NOP NOP EOL
            ..Frame::udp("81.1.180.12", 8000, "192.168.1.15", 53)
        };
        let (x, t, mark) = both(&r, r.qr1, &f);
        assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK));
        assert_eq!(x.frame, f.bytes());
        assert_eq!(mark & MARK_MASK, MARK_TRANSLATED);
        let g = &t.frame;
        assert_eq!(&g[26..30], &ip("192.168.1.110"));
        assert_eq!(g[22], 64, "TTL is the kernel's to decrement");
        assert_eq!(finish(sum16(&g[14..38])), 0, "IPv4 header checksum");
        let port = u16::from_be_bytes([g[38], g[39]]);
        assert!(port >= 1024);
        assert_eq!(
            l4_sum(&g[26..30], &g[30..34], 17, &g[38..]),
            0,
            "UDP checksum"
        );
        // The same flow without options: the same translation.
        let o = r.xdp(r.qr1, &Frame::udp("81.1.180.12", 8000, "192.168.1.15", 53));
        assert_eq!(o.sport(), port);
    });
}

#[test]
fn untracked_icmp_errors_across_the_gateway_are_the_kernels() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        // From a VM, about nothing the programs track, leaving through qg-:
        // the kernel translates it if it is its own, else stops a leak.
        let quoted = Frame::udp("192.168.1.15", 53, "81.1.180.12", 5000).bytes();
        let err = icmp_error(
            "81.1.180.12",
            "192.168.1.15",
            3,
            3,
            &quoted[14..],
            MAC_VM1,
            MAC_QR1,
        );
        let x = r.raw_xdp(r.qr1, &err);
        let t = r.raw_tc(r.qr1, &err);
        assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK));
        assert_eq!(t.frame, err, "untouched");
        assert_eq!(r.counter(Outcome::KernelIcmpUntracked), 1);
        // TTL expiring: the kernel answers and must not forward.
        let f = Frame {
            ttl: 1,
            ..Frame::udp("81.1.180.12", 1, "192.168.1.15", 53)
        };
        let (t, mark) = r.raw_tc_skb(r.qr1, &f.bytes(), 0);
        assert_eq!(t.ret, TC_ACT_OK);
        assert_eq!(mark & MARK_MASK, MARK_ANSWER_ONLY);
    });
}

/// Priority tags (802.1Q or 802.1ad with VLAN 0, stacked too) are no VLAN:
/// the frame is handled as the untagged one and forwarded untagged, an ARP
/// request answered untagged; a VLAN id leaves the frame to the kernel.
#[test]
fn priority_tagged_frames_are_handled_as_untagged() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let plain = Frame::udp("192.168.1.15", 4000, "192.168.1.104", 53)
            .from(MAC_EXT, MAC_QG)
            .bytes();
        let tag = |f: &[u8], tpid: u16, tci: [u8; 2]| {
            let mut t = f[..12].to_vec();
            t.extend_from_slice(&tpid.to_be_bytes());
            t.extend_from_slice(&tci);
            t.extend_from_slice(&f[12..]);
            t
        };
        let untagged = r.raw_xdp(r.qg, &plain);
        assert_eq!(untagged.ret, XDP_REDIRECT);
        for (what, tagged) in [
            ("802.1Q, priority 5", tag(&plain, 0x8100, [0xa0, 0x00])),
            ("802.1ad", tag(&plain, 0x88a8, [0x00, 0x00])),
            (
                "two stacked 802.1Q",
                tag(&tag(&plain, 0x8100, [0, 0]), 0x8100, [0x20, 0]),
            ),
        ] {
            let x = r.raw_xdp(r.qg, &tagged);
            assert_eq!(x.ret, XDP_REDIRECT, "{what}");
            assert_eq!(x.frame, untagged.frame, "{what}: XDP forwards it untagged");
            let t = r.raw_tc(r.qg, &tagged);
            assert_eq!(t.ret, TC_ACT_REDIRECT, "{what}");
            assert_eq!(
                &t.frame[12..14],
                &[0x08, 0x00],
                "{what}: TC forwards it untagged"
            );
            assert_eq!(t.dst().to_string(), "91.1.180.14", "{what}");
            assert_checksums(&t.frame);
        }
        // Four tags (deeper than Linux senders go, within the programs'
        // reach): forwarded untagged; nine: dropped, never left to the
        // kernel to translate on its own.
        let mut four = plain.clone();
        for _ in 0..4 {
            four = tag(&four, 0x8100, [0, 0]);
        }
        assert_eq!(r.raw_xdp(r.qg, &four).frame, untagged.frame, "four tags");
        assert_eq!(r.raw_tc(r.qg, &four).ret, TC_ACT_REDIRECT, "four tags");
        let mut nine = plain.clone();
        for _ in 0..9 {
            nine = tag(&nine, 0x8100, [0, 0]);
        }
        assert_eq!(r.raw_xdp(r.qg, &nine).ret, XDP_DROP, "nine tags");
        assert_eq!(r.raw_tc(r.qg, &nine).ret, TC_ACT_SHOT, "nine tags");
        // An ARP request for the floating IP: answered untagged.
        let arp = arp_request(MAC_EXT, "192.168.1.15", "192.168.1.104");
        let a = r.raw_xdp(r.qg, &arp);
        let x = r.raw_xdp(r.qg, &tag(&arp, 0x8100, [0xa0, 0]));
        assert_eq!(
            (x.ret, &x.frame),
            (a.ret, &a.frame),
            "ARP: the untagged answer"
        );
        // VLAN 5, and VLAN 5 behind a priority tag: not routed here.
        for vlan in [
            tag(&plain, 0x8100, [0x00, 0x05]),
            tag(&tag(&plain, 0x8100, [0x00, 0x05]), 0x8100, [0, 0]),
        ] {
            let x = r.raw_xdp(r.qg, &vlan);
            assert_eq!(x.ret, XDP_PASS, "VLAN 5: the kernel's");
            assert_eq!(&x.frame[12..16], &[0x81, 0x00, 0x00, 0x05], "VLAN 5 kept");
        }
    });
}

/// What the kernel must answer (TTL runs out, DF over the MTU) for a host
/// behind the router: a reply to a SNATed connection goes up with its
/// destination translated back and marked to be answered, never forwarded
/// (XDP leaves it to TC); the kernel's ICMP error then gets its quote
/// translated back by `xr_tc_out`, from the address the sender used. A
/// packet whose source the programs translate goes up untouched.
#[test]
fn answers_for_hosts_behind_nat_are_handed_up_translated() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let out = r.xdp(r.qr1, &Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53));
        assert_eq!(out.ret, XDP_REDIRECT);
        let port = out.sport();
        let reply = |ttl: u8, len: usize| {
            Frame {
                ttl,
                payload: vec![7; len],
                ..Frame::udp("192.168.1.15", 53, "192.168.1.110", port)
            }
            .from(MAC_EXT, MAC_QG)
            .bytes()
        };
        for (what, f, why) in [
            ("TTL 1", reply(1, 5), Outcome::KernelTtl),
            (
                "DF over the VM network's MTU",
                reply(64, 1444),
                Outcome::KernelMtu,
            ),
        ] {
            let x = r.raw_xdp(r.qg, &f);
            assert_eq!(
                (x.ret, &x.frame),
                (XDP_PASS, &f),
                "{what}: XDP leaves it to TC"
            );
            let before = r.counter(why);
            let (t, mark) = r.raw_tc_skb(r.qg, &f, 0);
            assert_eq!(t.ret, TC_ACT_OK, "{what}");
            assert_eq!(mark, MARK_TRANSLATED_ANSWER, "{what}");
            assert_eq!(t.src().to_string(), "192.168.1.15", "{what}");
            assert_eq!(t.dst().to_string(), "81.1.180.12", "{what}");
            assert_eq!((t.sport(), t.dport()), (53, 5000), "{what}");
            assert_eq!(t.ttl(), f[22], "{what}: TTL left to the kernel");
            assert_checksums(&t.frame);
            assert_eq!(r.counter(why), before + 1, "{what}: counted");

            // The kernel's answer, quoting the translated packet, leaves qg-.
            let (ty, code) = if why == Outcome::KernelTtl {
                (11, 0)
            } else {
                (3, 4)
            };
            let err = icmp_error(
                "192.168.1.110",
                "192.168.1.15",
                ty,
                code,
                &t.frame[14..42],
                MAC_QG,
                MAC_EXT,
            );
            // Forwarded packets (they came in on a device) are not looked at.
            let o = r.tc_out(r.qg, r.qr1, &err);
            assert_eq!((o.ret, &o.frame), (TC_ACT_OK, &err), "{what}: forwarded");
            let o = r.tc_out(r.qg, 0, &err);
            assert_eq!(o.ret, TC_ACT_OK, "{what}");
            let e = &o.frame;
            assert_eq!(
                o.src().to_string(),
                "192.168.1.110",
                "{what}: from the SNAT address"
            );
            assert_eq!(o.dst().to_string(), "192.168.1.15", "{what}");
            assert_eq!(finish(sum16(&e[14..34])), 0, "{what}: outer IPv4 checksum");
            assert_eq!(finish(sum16(&e[34..])), 0, "{what}: ICMP checksum");
            let q = &e[42..];
            assert_eq!(&q[12..16], &ip("192.168.1.15"), "{what}: quoted source");
            assert_eq!(
                &q[16..20],
                &ip("192.168.1.110"),
                "{what}: quoted destination"
            );
            assert_eq!(u16::from_be_bytes([q[20], q[21]]), 53, "{what}");
            assert_eq!(
                u16::from_be_bytes([q[22], q[23]]),
                port,
                "{what}: quoted SNAT port"
            );
            assert_eq!(finish(sum16(&q[..20])), 0, "{what}: quoted IPv4 checksum");
            assert_eq!(&q[20..28], &f[34..42], "{what}: the quote is what ext sent");
        }
        assert_eq!(r.counter(Outcome::KernelErrorTranslated), 2);

        // The source translated (vm1 -> ext): up as it is, to be answered
        // to vm1.
        let f = Frame {
            ttl: 1,
            ..Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53)
        }
        .bytes();
        let (t, mark) = r.raw_tc_skb(r.qr1, &f, 0);
        assert_eq!((t.ret, mark), (TC_ACT_OK, MARK_ANSWER_ONLY));
        assert_eq!(t.frame, f, "untouched");
        // A new connection that expires here makes no state.
        let n = r.ct_len();
        let f = Frame {
            ttl: 1,
            ..Frame::udp("192.168.1.15", 7000, "192.168.1.104", 53)
        }
        .from(MAC_EXT, MAC_QG)
        .bytes();
        let (t, mark) = r.raw_tc_skb(r.qg, &f, 0);
        assert_eq!((t.ret, mark), (TC_ACT_OK, MARK_ANSWER_ONLY));
        assert_eq!(t.frame, f, "untouched: the kernel translates it itself");
        assert_eq!(r.ct_len(), n, "no connection for a packet not forwarded");
    });
}

/// A next hop the kernel failed to resolve (it does not answer ARP): XDP
/// leaves the packet to TC, which hands it up for the kernel to answer
/// "host unreachable", as the kernel's forwarding does: untranslated when
/// its source would be translated (the kernel's error then comes from the
/// translated source, as the kernel's NAT sends it), with its destination
/// translated back when that alone is rewritten. Once resolved, forwarded
/// by XDP again.
#[test]
fn a_next_hop_that_does_not_answer_arp_is_answered_host_unreachable() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let mut n = start_neighbours(ifx);
        for (i, a) in [(r.qg, "192.168.1.15"), (r.qr2, "91.1.180.14")] {
            n.insert(
                NeighKey {
                    ifindex: i,
                    addr: ip(a),
                },
                Neigh::FAILED,
            );
        }
        write_neighbours(&mut r.ebpf, &n).unwrap();

        // vm1 -> ext through SNAT: up untranslated.
        let f = Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53).bytes();
        let x = r.raw_xdp(r.qr1, &f);
        assert_eq!((x.ret, &x.frame), (XDP_PASS, &f), "XDP leaves it to TC");
        let (t, mark) = r.raw_tc_skb(r.qr1, &f, 0);
        assert_eq!((t.ret, mark), (TC_ACT_OK, MARK_UNREACHABLE));
        assert_eq!(t.frame, f, "untouched");
        assert_eq!(r.counter(Outcome::KernelNeigh), 1);

        // The kernel's answer to vm1 comes from the gateway IP, quoting
        // what vm1 sent; any other error stays as the kernel made it.
        let err = |code| {
            icmp_error(
                "81.1.180.1",
                "81.1.180.12",
                3,
                code,
                &f[14..42],
                MAC_QR1,
                MAC_VM1,
            )
        };
        let o = r.tc_out(r.qr1, 0, &err(1));
        assert_eq!(o.ret, TC_ACT_OK);
        assert_eq!(
            o.src().to_string(),
            "192.168.1.110",
            "from the SNAT address"
        );
        assert_eq!(o.dst().to_string(), "81.1.180.12");
        assert_eq!(finish(sum16(&o.frame[14..34])), 0, "outer IPv4 checksum");
        assert_eq!(finish(sum16(&o.frame[34..])), 0, "ICMP checksum");
        assert_eq!(&o.frame[42..], &f[14..42], "the quote is what vm1 sent");
        assert_eq!(r.counter(Outcome::KernelErrorTranslated), 1);
        let o = r.tc_out(r.qr1, 0, &err(0));
        assert_eq!(o.frame, err(0), "network unreachable: untouched");

        // vm1 -> the floating IP of vm2 (hairpin): up untranslated, and
        // the error comes from the floating IP vm1 talked to.
        let f = Frame::udp("81.1.180.12", 5001, "192.168.1.104", 53).bytes();
        let (t, mark) = r.raw_tc_skb(r.qr1, &f, 0);
        assert_eq!((t.ret, mark), (TC_ACT_OK, MARK_UNREACHABLE));
        assert_eq!(t.frame, f, "untouched");
        let err = icmp_error(
            "81.1.180.1",
            "81.1.180.12",
            3,
            1,
            &f[14..42],
            MAC_QR1,
            MAC_VM1,
        );
        let o = r.tc_out(r.qr1, 0, &err);
        assert_eq!(o.src().to_string(), "192.168.1.104", "from the floating IP");
        assert_eq!(finish(sum16(&o.frame[14..34])), 0, "outer IPv4 checksum");
        assert_eq!(finish(sum16(&o.frame[34..])), 0, "ICMP checksum");
        assert_eq!(&o.frame[42..], &f[14..42], "the quote is what vm1 sent");

        // ext -> the floating IP of vm2: up with its destination translated.
        let f = Frame::udp("192.168.1.15", 7000, "192.168.1.104", 53)
            .from(MAC_EXT, MAC_QG)
            .bytes();
        let x = r.raw_xdp(r.qg, &f);
        assert_eq!((x.ret, &x.frame), (XDP_PASS, &f), "XDP leaves it to TC");
        let (t, mark) = r.raw_tc_skb(r.qg, &f, 0);
        assert_eq!((t.ret, mark), (TC_ACT_OK, MARK_TRANSLATED_UNREACHABLE));
        assert_eq!(t.src().to_string(), "192.168.1.15");
        assert_eq!(t.dst().to_string(), "91.1.180.14");
        assert_eq!((t.sport(), t.dport()), (7000, 53));
        assert_checksums(&t.frame);
        assert_eq!(r.counter(Outcome::KernelNeigh), 3);

        // Resolved again: XDP forwards.
        write_neighbours(&mut r.ebpf, &start_neighbours(ifx)).unwrap();
        let f = Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53).bytes();
        assert_eq!(r.raw_xdp(r.qr1, &f).ret, XDP_REDIRECT);
    });
}

/// An ICMP error whose own header carries options (a host echoes Record
/// Route) about a translated connection: translated like any error, outer
/// and quote, and handed to the kernel marked translated (it processes the
/// options).
#[test]
fn icmp_errors_with_ip_options_are_translated() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let rr = vec![7, 7, 4, 0, 0, 0, 0, 0];
        let req = Frame {
            options: rr.clone(),
            ..Frame::udp("192.168.1.15", 4000, "192.168.1.104", 9)
        }
        .from(MAC_EXT, MAC_QG);
        let (t, mark) = r.raw_tc_skb(r.qg, &req.bytes(), 0);
        assert_eq!((t.ret, mark), (TC_ACT_OK, MARK_TRANSLATED));
        // vm2's answer: its header echoes the option, the quote keeps it.
        let quoted = &t.frame[14..14 + 28 + 8];
        let mut err = icmp_error(
            "91.1.180.14",
            "192.168.1.15",
            3,
            3,
            quoted,
            MAC_VM2,
            MAC_QR2,
        );
        let mut with_opts = err[..34].to_vec();
        with_opts.extend_from_slice(&rr);
        with_opts.extend_from_slice(&err[34..]);
        with_opts[14] = 0x47;
        let tot = u16::from_be_bytes([with_opts[16], with_opts[17]]) + 8;
        with_opts[16..18].copy_from_slice(&tot.to_be_bytes());
        with_opts[24..26].copy_from_slice(&[0, 0]);
        let c = finish(sum16(&with_opts[14..42]));
        with_opts[24..26].copy_from_slice(&c.to_be_bytes());
        err = with_opts;
        let x = r.raw_xdp(r.qr2, &err);
        assert_eq!((x.ret, &x.frame), (XDP_PASS, &err), "XDP leaves it to TC");
        let (t, mark) = r.raw_tc_skb(r.qr2, &err, 0);
        assert_eq!((t.ret, mark), (TC_ACT_OK, MARK_TRANSLATED));
        let e = &t.frame;
        assert_eq!(t.src().to_string(), "192.168.1.104", "from the floating IP");
        assert_eq!(t.dst().to_string(), "192.168.1.15");
        assert_eq!(finish(sum16(&e[14..42])), 0, "outer IPv4 checksum");
        assert_eq!(finish(sum16(&e[42..])), 0, "ICMP checksum");
        let q = &e[50..];
        assert_eq!(q[0], 0x47, "the quote keeps its options");
        assert_eq!(&q[16..20], &ip("192.168.1.104"), "quoted destination");
        assert_eq!(u16::from_be_bytes([q[30], q[31]]), 9);
        assert_eq!(finish(sum16(&q[..28])), 0, "quoted IPv4 checksum");
    });
}

// ---------- single packets, as a table ----------

#[derive(Clone, Copy, Debug)]
enum Hook {
    Xdp,
    Tc,
}

/// What must come out besides the verdict.
#[derive(Debug)]
enum Expect {
    /// The frame exactly as it went in.
    Untouched,
    /// Forwarded: these addresses (ports unchecked: SNAT picks them), TTL
    /// one less, checksums right.
    Addresses(&'static str, &'static str),
    /// Handed up with these addresses and checksums right (TTL kept).
    HandedUp(&'static str, &'static str),
}

/// One frame into one hook of a fresh router: verdict, TC mark, output.
struct Case {
    name: &'static str,
    hook: Hook,
    /// 0: qr (net1), 1: qr (net2), 2: qg.
    ingress: usize,
    frame: Vec<u8>,
    verdict: u32,
    /// The mark TC leaves (None: XDP).
    mark: Option<u32>,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    use Expect::*;
    use Hook::*;
    let ext = |f: Frame| f.from(MAC_EXT, MAC_QG).bytes();
    let vm1 = |f: Frame| f.bytes();
    let vm2 = |f: Frame| f.from(MAC_VM2, MAC_QR2).bytes();
    let big = || vec![0u8; 1444];
    let mut vlan5 = ext(Frame::udp("192.168.1.15", 2009, "192.168.1.104", 53));
    vlan5.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    let (_, later) = fragments(
        &ext(Frame {
            frag: 0x2000,
            payload: vec![1; 64],
            ..Frame::udp("192.168.1.15", 2013, "192.168.1.104", 53)
        }),
        40,
    );
    vec![
        Case {
            name: "east-west: routed untranslated",
            hook: Xdp,
            ingress: 0,
            frame: vm1(Frame::udp("81.1.180.12", 2001, "91.1.180.14", 53)),
            verdict: XDP_REDIRECT,
            mark: None,
            expect: Addresses("81.1.180.12", "91.1.180.14"),
        },
        Case {
            name: "gateway SNAT",
            hook: Xdp,
            ingress: 0,
            frame: vm1(Frame::udp("81.1.180.12", 2002, "192.168.1.15", 53)),
            verdict: XDP_REDIRECT,
            mark: None,
            expect: Addresses("192.168.1.110", "192.168.1.15"),
        },
        Case {
            name: "floating IP in (DNAT)",
            hook: Tc,
            ingress: 2,
            frame: ext(Frame::tcp("192.168.1.15", 2003, "192.168.1.104", 22)),
            verdict: TC_ACT_REDIRECT,
            mark: Some(0),
            expect: Addresses("192.168.1.15", "91.1.180.14"),
        },
        Case {
            name: "floating IP out (SNAT to it)",
            hook: Xdp,
            ingress: 1,
            frame: vm2(Frame::udp("91.1.180.14", 2004, "192.168.1.15", 53)),
            verdict: XDP_REDIRECT,
            mark: None,
            expect: Addresses("192.168.1.104", "192.168.1.15"),
        },
        Case {
            name: "another host's MAC: dropped",
            hook: Xdp,
            ingress: 2,
            frame: Frame::udp("192.168.1.15", 2005, "192.168.1.104", 53)
                .from(MAC_EXT, [0xfa, 0x16, 0x3e, 0, 0, 0x99])
                .bytes(),
            verdict: XDP_DROP,
            mark: None,
            expect: Untouched,
        },
        Case {
            name: "broadcast MAC: the kernel's",
            hook: Tc,
            ingress: 2,
            frame: Frame::udp("192.168.1.15", 2006, "192.168.1.255", 53)
                .from(MAC_EXT, [0xff; 6])
                .bytes(),
            verdict: TC_ACT_OK,
            mark: Some(0),
            expect: Untouched,
        },
        Case {
            name: "loopback source: dropped",
            hook: Xdp,
            ingress: 2,
            frame: ext(Frame::udp("127.0.0.1", 2007, "192.168.1.104", 53)),
            verdict: XDP_DROP,
            mark: None,
            expect: Untouched,
        },
        Case {
            name: "the gateway IP as source: dropped",
            hook: Tc,
            ingress: 2,
            frame: ext(Frame::udp("192.168.1.110", 2008, "91.1.180.14", 53)),
            verdict: TC_ACT_SHOT,
            mark: Some(0),
            expect: Untouched,
        },
        Case {
            name: "VLAN 5: the kernel's",
            hook: Tc,
            ingress: 2,
            frame: vlan5,
            verdict: TC_ACT_OK,
            mark: Some(0),
            expect: Untouched,
        },
        Case {
            name: "TTL 1 east-west: answered by the kernel, untranslated",
            hook: Tc,
            ingress: 0,
            frame: vm1(Frame {
                ttl: 1,
                ..Frame::udp("81.1.180.12", 2010, "91.1.180.14", 53)
            }),
            verdict: TC_ACT_OK,
            mark: Some(MARK_ANSWER_ONLY),
            expect: Untouched,
        },
        Case {
            name: "metadata from inside: the kernel's",
            hook: Tc,
            ingress: 0,
            frame: vm1(Frame::tcp("81.1.180.12", 2011, "169.254.169.254", 80)),
            verdict: TC_ACT_OK,
            mark: Some(0),
            expect: Untouched,
        },
        Case {
            name: "a FIN opening nothing where NAT applies: dropped",
            hook: Xdp,
            ingress: 0,
            frame: vm1(Frame {
                tcp_flags: 0x01,
                ..Frame::tcp("81.1.180.12", 2012, "192.168.1.15", 80)
            }),
            verdict: XDP_DROP,
            mark: None,
            expect: Untouched,
        },
        Case {
            name: "a later fragment without its first: dropped",
            hook: Tc,
            ingress: 2,
            frame: later,
            verdict: TC_ACT_SHOT,
            mark: Some(0),
            expect: Untouched,
        },
        Case {
            name: "DF over the VM network's MTU to the floating IP: XDP leaves it to TC",
            hook: Xdp,
            ingress: 2,
            frame: ext(Frame {
                payload: big(),
                ..Frame::udp("192.168.1.15", 2014, "192.168.1.104", 53)
            }),
            verdict: XDP_PASS,
            mark: None,
            expect: Untouched,
        },
        Case {
            name: "DF over the VM network's MTU to the floating IP: up translated, to be answered",
            hook: Tc,
            ingress: 2,
            frame: ext(Frame {
                payload: big(),
                ..Frame::udp("192.168.1.15", 2015, "192.168.1.104", 53)
            }),
            verdict: TC_ACT_OK,
            mark: Some(MARK_TRANSLATED_ANSWER),
            expect: HandedUp("192.168.1.15", "91.1.180.14"),
        },
    ]
}

#[test]
fn single_packets() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let mut failed = Vec::new();
        for c in cases() {
            let ingress = ifx[c.ingress];
            let (out, mark) = match c.hook {
                Hook::Xdp => (r.raw_xdp(ingress, &c.frame), None),
                Hook::Tc => {
                    let (o, m) = r.raw_tc_skb(ingress, &c.frame, 0);
                    (o, Some(m))
                }
            };
            let mut why = Vec::new();
            if out.ret != c.verdict {
                why.push(format!("verdict {} (want {})", out.ret, c.verdict));
            }
            if mark != c.mark {
                why.push(format!("mark {mark:x?} (want {:x?})", c.mark));
            }
            let addrs = |src: &str, dst: &str| {
                (out.src().to_string(), out.dst().to_string()) == (src.to_string(), dst.to_string())
            };
            match c.expect {
                Expect::Untouched if out.frame != c.frame => why.push("frame changed".into()),
                Expect::Addresses(src, dst) if !addrs(src, dst) || out.ttl() != c.frame[22] - 1 => {
                    why.push(format!("{} -> {} ttl {}", out.src(), out.dst(), out.ttl()))
                }
                Expect::HandedUp(src, dst) if !addrs(src, dst) || out.ttl() != c.frame[22] => {
                    why.push(format!("{} -> {} ttl {}", out.src(), out.dst(), out.ttl()))
                }
                _ => {}
            }
            if matches!(c.expect, Expect::Addresses(..) | Expect::HandedUp(..)) {
                assert_checksums(&out.frame);
            }
            if !why.is_empty() {
                failed.push(format!("{} ({:?}): {}", c.name, c.hook, why.join("; ")));
            }
        }
        assert!(failed.is_empty(), "\n{}", failed.join("\n"));
    });
}

// ---------- the monitor's events ----------

fn set_monitor(r: &mut Router, flags: u32, sample_every: u32) {
    let mut a: Array<&mut MapData, MonitorCtl> =
        Array::try_from(map(&mut r.ebpf, "XR_MON_CTL")).unwrap();
    a.set(
        0,
        MonitorCtl {
            flags,
            sample_every,
        },
        0,
    )
    .unwrap();
}

/// Every event in the ring, read (and consumed) as `xrouter monitor` does.
fn ring_events(r: &mut Router) -> Vec<MonitorEvent> {
    let mut ring = RingBuf::try_from(map(&mut r.ebpf, "XR_MON_RING")).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<MonitorEvent>());
        out.push(decode(&item).unwrap());
    }
    out
}

fn lost_events(r: &mut Router) -> u64 {
    let a: PerCpuArray<&MapData, MonitorCpu> =
        PerCpuArray::try_from(r.ebpf.map("XR_MON_CPU").unwrap()).unwrap();
    a.get(&0, 0).unwrap().iter().map(|c| c.lost).sum()
}

/// A TCP segment that opens nothing, through SNAT: dropped by either hook.
fn invalid_fin() -> Frame {
    Frame {
        tcp_flags: 0x01,
        ..Frame::tcp("81.1.180.12", 40001, "192.168.1.15", 80)
    }
}

#[test]
fn monitoring_off_writes_nothing_to_the_ring() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let f = invalid_fin();
        let (x, t, _) = both(&r, r.qr1, &f);
        assert_eq!((x.ret, t.ret), (XDP_DROP, TC_ACT_SHOT));
        // Handed to the kernel (the router's own address), and forwarded.
        let local = Frame::udp("81.1.180.12", 5000, "81.1.180.1", 53);
        assert_eq!(r.tc(r.qr1, &local).ret, TC_ACT_OK);
        let fwd = Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53);
        assert_eq!(r.xdp(r.qr1, &fwd).ret, XDP_REDIRECT);
        assert!(ring_events(&mut r).is_empty());
        assert_eq!(lost_events(&mut r), 0);
    });
}

#[test]
fn a_dropped_frame_is_one_event_with_its_tuple() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        set_monitor(&mut r, MON_DROPS | MON_KERNEL, 1);
        let f = invalid_fin();
        let bytes = f.bytes();
        let before = router_user::backend::bpf::monotonic_ns();
        assert_eq!(r.xdp(r.qr1, &f).ret, XDP_DROP);
        let after = router_user::backend::bpf::monotonic_ns();
        let evs = ring_events(&mut r);
        assert_eq!(evs.len(), 1, "{evs:?}");
        let ev = evs[0];
        assert!(
            (before..=after).contains(&ev.ts_ns),
            "{before} {} {after}",
            ev.ts_ns
        );
        assert_eq!(
            ev,
            MonitorEvent {
                ts_ns: ev.ts_ns,
                ifindex: r.qr1,
                egress: 0,
                outcome: Outcome::DropTcpInvalid as u32,
                len: bytes.len() as u32,
                ethertype: 0x0800,
                hook: HOOK_XDP,
                flags: EV_IPV4 | EV_L4,
                src: ip("81.1.180.12"),
                dst: ip("192.168.1.15"),
                sport: 40001u16.to_be(),
                dport: 80u16.to_be(),
                proto: 6,
                ttl: 64,
                tcp_flags_or_icmp_type: 0x01,
                icmp_code: 0,
                _pad: 0,
            }
        );
        // The same bytes as the frame: the tuple is read from it, not
        // rebuilt.
        assert_eq!(ev.src, bytes[26..30]);
        assert_eq!(ev.dst, bytes[30..34]);
        assert_eq!(ev.sport.to_ne_bytes(), bytes[34..36]);
        assert_eq!(ev.dport.to_ne_bytes(), bytes[36..38]);

        // TC reports its own drop.
        assert_eq!(r.tc(r.qr1, &f).ret, TC_ACT_SHOT);
        let evs = ring_events(&mut r);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].hook, evs[0].outcome),
            (HOOK_TC, Outcome::DropTcpInvalid as u32)
        );

        // What XDP hands up is TC's to report: nothing from XDP, the
        // kernel's reason from TC.
        let local = Frame::udp("81.1.180.12", 5000, "81.1.180.1", 53);
        assert_eq!(r.xdp(r.qr1, &local).ret, XDP_PASS);
        assert!(ring_events(&mut r).is_empty());
        assert_eq!(r.tc(r.qr1, &local).ret, TC_ACT_OK);
        let evs = ring_events(&mut r);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].outcome, Outcome::KernelLocal as u32);
        assert_eq!(evs[0].proto, 17);
        assert_eq!(u16::from_be(evs[0].dport), 53);

        // Forwarded: not asked for, not reported.
        let fwd = Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53);
        assert_eq!(r.xdp(r.qr1, &fwd).ret, XDP_REDIRECT);
        assert!(ring_events(&mut r).is_empty());

        // Drops only: the kernel's are left out.
        set_monitor(&mut r, MON_DROPS, 1);
        assert_eq!(r.tc(r.qr1, &local).ret, TC_ACT_OK);
        assert!(ring_events(&mut r).is_empty());
        assert_eq!(lost_events(&mut r), 0);
    });
}

#[test]
fn forwarded_events_carry_the_tuple_as_it_leaves() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        set_monitor(&mut r, MON_FORWARDED, 1);
        let f = Frame::udp("81.1.180.12", 5000, "192.168.1.15", 53);
        let o = r.xdp(r.qr1, &f);
        assert_eq!(o.ret, XDP_REDIRECT);
        let evs = ring_events(&mut r);
        assert_eq!(evs.len(), 1);
        let ev = evs[0];
        assert_eq!(ev.outcome, Outcome::FwdXdp as u32);
        assert_eq!((ev.ifindex, ev.egress), (r.qr1, r.qg));
        assert_eq!(ev.src, ip("192.168.1.110"), "translated");
        assert_eq!(u16::from_be(ev.sport), o.sport());
        assert_eq!(ev.ttl, 63);
    });
}

#[test]
fn sampling_reports_one_in_n_and_a_full_ring_counts_lost_events() {
    with_devices(|ifx| {
        on_cpu0();
        let mut r = Router::new(ifx, 1024, 65535);
        set_monitor(&mut r, MON_DROPS, 3);
        for _ in 0..9 {
            assert_eq!(r.xdp(r.qr1, &invalid_fin()).ret, XDP_DROP);
        }
        assert_eq!(ring_events(&mut r).len(), 3);
        // Every packet, nobody reading: the ring fills, the rest is lost.
        set_monitor(&mut r, MON_DROPS, 1);
        let n = 6000;
        for _ in 0..n {
            r.xdp(r.qr1, &invalid_fin());
        }
        let kept = ring_events(&mut r).len() as u64;
        let lost = lost_events(&mut r);
        assert!(kept > 1000 && lost > 0, "kept {kept}, lost {lost}");
        assert_eq!(kept + lost, n);
    });
}

// ---------- routes cached in connection entries ----------

/// A router on the internal networks, and its MAC.
const MAC_RTR: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
/// The external host's new MAC (its NIC replaced, say).
const MAC_EXT2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x25];

/// The maps `Router::new` starts with, for changing them the daemon's way.
fn router_maps(ifx: [u32; 3]) -> router_user::backend::bpf::Desired {
    let spec = fixtures::article_router([MAC_QR1, MAC_QR2, MAC_QG]);
    let node = NodeConfig {
        new_connection_rate: ROOMY.rate,
        ..NodeConfig::default()
    };
    fixtures::bpf_maps(&spec, &node, (1024, 65535), ifx)
}

/// An established SNAT connection (VM1 to the external host): its next
/// data packet out and the next one back in, as forwarded now.
fn snat_connection(r: &Router) -> (Frame, Frame, Out, Out) {
    let syn = Frame::tcp("81.1.180.12", 40000, "192.168.1.15", 80);
    let o = handshake(r, r.qr1, syn.clone(), r.qg, snat_answer);
    let out = Frame {
        tcp_flags: 0x18,
        ..syn
    };
    let back = Frame {
        tcp_flags: 0x18,
        ..snat_answer(&o)
    };
    let (o1, o2) = (r.xdp(r.qr1, &out), r.xdp(r.qg, &back));
    assert_eq!((o1.ret, o2.ret), (XDP_REDIRECT, XDP_REDIRECT));
    assert_eq!(&o1.frame[0..12], [MAC_EXT, MAC_QG].concat());
    assert_eq!(&o2.frame[0..12], [MAC_VM1, MAC_QR1].concat());
    assert_checksums(&o1.frame);
    assert_checksums(&o2.frame);
    (out, back, o1, o2)
}

/// `frame` with other MACs (the rest byte for byte the same).
fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// The route of an established connection is cached in its entry; a
/// route the daemon replaces (here: the VM's address, now through a
/// router on the other internal network) takes effect on the connection's
/// very next packet, byte for byte as the new route sends it.
#[test]
fn an_established_connection_follows_a_replaced_route_at_once() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let (_, back, _, o2) = snat_connection(&r);
        // Again: from the cache, the same.
        assert_eq!(r.xdp(r.qg, &back).frame, o2.frame);

        // The daemon learns the router's MAC, then routes the VM's address
        // through it.
        let mut neigh = start_neighbours(ifx);
        neigh.insert(
            NeighKey {
                ifindex: r.qr2,
                addr: ip("91.1.180.20"),
            },
            Neigh::at(MAC_RTR),
        );
        write_neighbours(&mut r.ebpf, &neigh).unwrap();
        assert_eq!(r.xdp(r.qg, &back).frame, o2.frame, "no route changed yet");
        let mut want = router_maps(ifx);
        want.routes.insert(
            (32, ip("81.1.180.12")),
            Route {
                count: 1,
                gateways: [ip("91.1.180.20"), [0; 4], [0; 4], [0; 4]],
                ifindexes: [r.qr2, 0, 0, 0],
            },
        );
        assert!(write_maps(&mut r.ebpf, &want).unwrap() > 0);
        let o = r.xdp(r.qg, &back);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(
            o.frame,
            with_macs(&o2.frame, MAC_RTR, MAC_QR2),
            "out of qr2"
        );
        assert_checksums(&o.frame);

        // And back when the route goes.
        write_maps(&mut r.ebpf, &router_maps(ifx)).unwrap();
        assert_eq!(r.xdp(r.qg, &back).frame, o2.frame);
    });
}

/// A next hop whose MAC changes (the daemon mirrors the kernel's
/// neighbour table): the connection's next packet goes to the new MAC.
#[test]
fn an_established_connection_follows_a_next_hops_new_mac_at_once() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let (out, _, o1, _) = snat_connection(&r);
        assert_eq!(r.xdp(r.qr1, &out).frame, o1.frame);
        let mut neigh = start_neighbours(ifx);
        neigh.insert(
            NeighKey {
                ifindex: r.qg,
                addr: ip("192.168.1.15"),
            },
            Neigh::at(MAC_EXT2),
        );
        assert_eq!(write_neighbours(&mut r.ebpf, &neigh).unwrap(), 1);
        let o = r.xdp(r.qr1, &out);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.frame, with_macs(&o1.frame, MAC_EXT2, MAC_QG));

        // The DNAT direction too: a client of the floating IP gets a new MAC.
        let f = Frame::udp("192.168.1.15", 5555, "192.168.1.104", 53).from(MAC_EXT, MAC_QG);
        let vm = r.xdp(r.qg, &f);
        assert_eq!(vm.ret, XDP_REDIRECT);
        let answer = Frame::udp("91.1.180.14", 53, "192.168.1.15", 5555).from(MAC_VM2, MAC_QR2);
        let a1 = r.xdp(r.qr2, &answer);
        assert_eq!(&a1.frame[0..12], [MAC_EXT2, MAC_QG].concat());
        assert_eq!(r.xdp(r.qr2, &answer).frame, a1.frame);
        write_neighbours(&mut r.ebpf, &start_neighbours(ifx)).unwrap();
        let a2 = r.xdp(r.qr2, &answer);
        assert_eq!(a2.ret, XDP_REDIRECT);
        assert_eq!(a2.frame, with_macs(&a1.frame, MAC_EXT, MAC_QG));
        assert_checksums(&a2.frame);
    });
}

/// White box, of the cache itself: with the generation unchanged, the
/// programs do not look the route's next hop up again. Deleting neighbour
/// entries behind the daemon's back (which it never does: it bumps the
/// generation after every write) leaves an established connection's
/// packets forwarded from the cache in both directions; a bump makes them
/// look up again, and find nothing (XDP hands them to TC).
#[test]
fn established_packets_take_route_and_mac_from_the_cache() {
    with_devices(|ifx| {
        let mut r = Router::new(ifx, 1024, 65535);
        let (out, back, o1, o2) = snat_connection(&r);
        {
            let mut neigh: HashMap<_, NeighKey, Neigh> =
                HashMap::try_from(map(&mut r.ebpf, "XR_NEIGH")).unwrap();
            for (i, a) in [(r.qg, "192.168.1.15"), (r.qr1, "81.1.180.12")] {
                neigh
                    .remove(&NeighKey {
                        ifindex: i,
                        addr: ip(a),
                    })
                    .unwrap();
            }
        }
        assert_eq!(r.xdp(r.qr1, &out).frame, o1.frame, "MAC from the cache");
        assert_eq!(
            r.xdp(r.qg, &back).frame,
            o2.frame,
            "route and MAC from the cache"
        );
        bump_generation(map(&mut r.ebpf, "XR_GEN")).unwrap();
        assert_eq!(r.xdp(r.qr1, &out).ret, XDP_PASS);
        assert_eq!(r.xdp(r.qg, &back).ret, XDP_PASS);
    });
}

/// White box: a route cached for one connection is never used by
/// another that comes to hold the slot. A packet that wrote its entry's
/// cache just as the GC freed the slot and a new connection took it would
/// leave its route there, stamped with the current generation; the stamp
/// also mixes in the connection's key, so the new connection looks its
/// own route up. Here the slot of VM2's connection is given VM1's cached
/// route outright: VM2's reply still goes out of qr2, to VM2.
#[test]
fn a_route_cached_for_one_connection_is_not_taken_by_another() {
    with_devices(|ifx| {
        let r = Router::new(ifx, 1024, 65535);
        let (_, back, _, o2) = snat_connection(&r);
        assert_eq!(r.xdp(r.qg, &back).frame, o2.frame, "VM1's cache written");
        // VM2 (out through its floating IP) to the same server,
        // established, its reply not yet sent.
        let answer = |o: &Out| {
            Frame::tcp("192.168.1.15", o.dport(), &o.src().to_string(), o.sport())
                .from(MAC_EXT, MAC_QG)
        };
        let syn = Frame::tcp("91.1.180.14", 40001, "192.168.1.15", 80).from(MAC_VM2, MAC_QR2);
        let o = handshake(&r, r.qr2, syn, r.qg, answer);
        let t = r.table();
        let reply_to = |vm: &str| {
            t.all()
                .find(|(_, e)| e.direction == CT_REPLY && e.new_dst == ip(vm))
                .unwrap()
        };
        let (_, vm1) = reply_to("81.1.180.12");
        assert_ne!(vm1.route, Default::default(), "VM1's reply route cached");
        let (k2, mut vm2) = reply_to("91.1.180.14");
        vm2.route = vm1.route;
        assert!(t.remove(&k2));
        t.insert(&k2, &vm2).unwrap();
        let back2 = Frame {
            tcp_flags: 0x18,
            ..answer(&o)
        };
        let o = r.xdp(r.qg, &back2);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(&o.frame[0..12], [MAC_VM2, MAC_QR2].concat(), "to VM2");
        assert_eq!(o.dst().to_string(), "91.1.180.14");
        assert_checksums(&o.frame);
    });
}

/// VM1 to VM2 across the router, untranslated: what it looks like as
/// forwarded by XDP now (out of qr2 to VM2's MAC).
fn east_west(r: &Router) -> (Frame, Out) {
    let f = Frame::tcp("81.1.180.12", 40000, "91.1.180.14", 80);
    let o = r.xdp(r.qr1, &f);
    assert_eq!(o.ret, XDP_REDIRECT);
    assert_eq!(&o.frame[0..12], [MAC_VM2, MAC_QR2].concat());
    assert_checksums(&o.frame);
    (f, o)
}

fn neigh(ifindex: u32, addr: &str, mac: [u8; 6]) -> (NeighKey, Neigh) {
    (
        NeighKey {
            ifindex,
            addr: ip(addr),
        },
        Neigh::at(mac),
    )
}

/// Packets without a connection (east-west) take their route and next
/// hop's MAC from a per-CPU cache of destinations; a route the daemon
/// replaces, or a MAC that changes, applies from the very next packet,
/// byte for byte as the new route sends it.
#[test]
fn east_west_follows_a_replaced_route_and_a_new_mac_at_once() {
    with_devices(|ifx| {
        // One CPU: the second packet finds the first one's cache.
        on_cpu0();
        let mut r = Router::new(ifx, 1024, 65535);
        let (f, o1) = east_west(&r);
        assert_eq!(r.xdp(r.qr1, &f).frame, o1.frame, "again, from the cache");

        // VM2's address through a router on the same network.
        let mut n = start_neighbours(ifx);
        n.extend([neigh(r.qr2, "91.1.180.20", MAC_RTR)]);
        write_neighbours(&mut r.ebpf, &n).unwrap();
        let mut want = router_maps(ifx);
        want.routes.insert(
            (32, ip("91.1.180.14")),
            Route {
                count: 1,
                gateways: [ip("91.1.180.20"), [0; 4], [0; 4], [0; 4]],
                ifindexes: [r.qr2, 0, 0, 0],
            },
        );
        assert!(write_maps(&mut r.ebpf, &want).unwrap() > 0);
        let o = r.xdp(r.qr1, &f);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.frame, with_macs(&o1.frame, MAC_RTR, MAC_QR2));
        assert_eq!(r.xdp(r.qr1, &f).frame, o.frame);

        // Back when the route goes; then VM2 changes its MAC.
        write_maps(&mut r.ebpf, &router_maps(ifx)).unwrap();
        assert_eq!(r.xdp(r.qr1, &f).frame, o1.frame);
        n.extend([neigh(r.qr2, "91.1.180.14", MAC_EXT2)]);
        assert_eq!(write_neighbours(&mut r.ebpf, &n).unwrap(), 1);
        let o = r.xdp(r.qr1, &f);
        assert_eq!(o.ret, XDP_REDIRECT);
        assert_eq!(o.frame, with_macs(&o1.frame, MAC_EXT2, MAC_QR2));
        assert_checksums(&o.frame);
    });
}

/// White box, of the destination cache itself: with the generation
/// unchanged, a cached destination's next hop is not looked up again
/// (deleted behind the daemon's back, which it never does, its packets
/// still go); a bump makes the next packet look up, and find nothing; the
/// daemon writing the MAC (a bump too) makes the next one go again.
#[test]
fn east_west_packets_take_route_and_mac_from_the_cache() {
    with_devices(|ifx| {
        on_cpu0();
        let mut r = Router::new(ifx, 1024, 65535);
        let (f, o1) = east_west(&r);
        {
            let mut m: HashMap<_, NeighKey, Neigh> =
                HashMap::try_from(map(&mut r.ebpf, "XR_NEIGH")).unwrap();
            m.remove(&neigh(r.qr2, "91.1.180.14", MAC_VM2).0).unwrap();
        }
        assert_eq!(r.xdp(r.qr1, &f).frame, o1.frame, "from the cache");
        bump_generation(map(&mut r.ebpf, "XR_GEN")).unwrap();
        assert_eq!(r.xdp(r.qr1, &f).ret, XDP_PASS, "neighbour unknown: TC's");
        assert_eq!(r.xdp(r.qr1, &f).ret, XDP_PASS, "still unknown");
        assert_eq!(
            write_neighbours(&mut r.ebpf, &start_neighbours(ifx)).unwrap(),
            1
        );
        assert_eq!(r.xdp(r.qr1, &f).frame, o1.frame, "resolved");
    });
}

/// An ECMP route's next hop is chosen per flow, never cached for the
/// destination: flows to one address spread over both next hops, and each
/// flow keeps its own.
#[test]
fn east_west_flows_over_ecmp_keep_spreading() {
    with_devices(|ifx| {
        on_cpu0();
        const MAC_RTR2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
        let mut r = Router::new(ifx, 1024, 65535);
        let mut n = start_neighbours(ifx);
        n.extend([
            neigh(r.qr2, "91.1.180.20", MAC_RTR),
            neigh(r.qr2, "91.1.180.21", MAC_RTR2),
        ]);
        write_neighbours(&mut r.ebpf, &n).unwrap();
        let mut want = router_maps(ifx);
        want.routes.insert(
            (24, ip("100.64.0.0")),
            Route {
                count: 2,
                gateways: [ip("91.1.180.20"), ip("91.1.180.21"), [0; 4], [0; 4]],
                ifindexes: [r.qr2, r.qr2, 0, 0],
            },
        );
        write_maps(&mut r.ebpf, &want).unwrap();
        let mut seen = HashSet::new();
        for sport in 40000..40032 {
            let f = Frame::udp("81.1.180.12", sport, "100.64.0.5", 53);
            let o = r.xdp(r.qr1, &f);
            assert_eq!(o.ret, XDP_REDIRECT, "flow {sport}");
            let mac: [u8; 6] = o.frame[0..6].try_into().unwrap();
            assert!(mac == MAC_RTR || mac == MAC_RTR2, "flow {sport}: {mac:x?}");
            assert_eq!(r.xdp(r.qr1, &f).frame, o.frame, "flow {sport} again");
            seen.insert(mac);
        }
        assert_eq!(seen.len(), 2, "32 flows over both next hops");
    });
}

/// An address the router takes (a port's new address) is the router's
/// from the next packet on: to it, the kernel's; from it, a spoofed
/// source. Given back, it is forwarded again.
#[test]
fn an_address_the_router_takes_is_its_own_from_the_next_packet() {
    with_devices(|ifx| {
        on_cpu0();
        let mut r = Router::new(ifx, 1024, 65535);
        let (f, o1) = east_west(&r);
        let back = Frame::udp("91.1.180.14", 80, "81.1.180.12", 40000).from(MAC_VM2, MAC_QR2);
        let (x, t, _) = both(&r, r.qr2, &back);
        assert_eq!((x.ret, t.ret), (XDP_REDIRECT, TC_ACT_REDIRECT));

        let mut want = router_maps(ifx);
        want.local.insert(
            LocalAddr {
                addr: ip("91.1.180.14"),
            },
            LOCAL_ADDRESS,
        );
        assert!(write_maps(&mut r.ebpf, &want).unwrap() > 0);
        let (x, t, _) = both(&r, r.qr1, &f);
        assert_eq!((x.ret, t.ret), (XDP_PASS, TC_ACT_OK), "to the router");
        // Counted once: XDP leaves what goes to the kernel to TC.
        assert_eq!(r.counter(Outcome::KernelLocal), 1);
        let (x, t, _) = both(&r, r.qr2, &back);
        assert_eq!((x.ret, t.ret), (XDP_DROP, TC_ACT_SHOT), "from the router");
        assert_eq!(r.counter(Outcome::DropSpoofedSrc), 2);

        write_maps(&mut r.ebpf, &router_maps(ifx)).unwrap();
        assert_eq!(r.xdp(r.qr1, &f).frame, o1.frame);
        assert_eq!(r.xdp(r.qr2, &back).ret, XDP_REDIRECT);
    });
}
