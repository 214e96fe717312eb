//! Traffic as a network node carries it and as an attacker sends it: bulk
//! TCP with the hosts' offloads on, datagrams larger than a network's MTU,
//! floods of new connections, and frames the kernel would drop. Each runs on
//! every data plane with the same assertions; where the eBPF planes go
//! beyond Neutron (no tenant address ever leaves untranslated), the
//! iptables plane's leak is asserted too, as Neutron's behaviour.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use tests::{
    Checks, Dataplane, Rig, TcpServer, TcpSession, UdpServer,
    article::*,
    bulk::{BulkServer, transfer},
    frames::{self, Capture, ErrorSeen, Seen},
    ping, sa, udp_request_sized,
};

const TCP: u16 = 8080;
const UDP: u16 = 8081;
const BULK: u16 = 5001;
/// Bytes each way of a bulk transfer.
const BULK_BYTES: u64 = 4 << 20;

tests::planes!(
    bulk_tcp_with_offloads,
    large_datagrams_into_a_smaller_mtu,
    large_datagrams_out_of_a_smaller_mtu,
    floods_do_not_kill_established_sessions,
    hostile_frames_are_dropped_as_the_kernel_drops_them,
    no_tenant_address_leaves_untranslated,
    answers_reach_the_sender_as_the_kernel_s_nat_gives_them,
    priority_tagged_frames_are_untagged_frames,
    a_burst_of_new_flows_keeps_its_translations,
);

tests::ebpf_only!(new_connection_floods_are_shed_by_the_budget);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A1: uploads and downloads of megabytes, as hosts with TSO/GSO/GRO send
/// them (the router sees segments larger than its ports' MTU), through
/// gateway SNAT, to a floating IP and from it. One translation per
/// connection: the kernel taking a share with another port resets it.
fn bulk_tcp_with_offloads(plane: Dataplane) {
    let rig = Rig::article(plane);
    for h in ["vm1", "vm2", "ext"] {
        rig.host(h).offloads(true);
    }
    let _ext = BulkServer::start(&rig.ns("ext"), BULK).unwrap();
    let _vm2 = BulkServer::start(&rig.ns("vm2"), BULK).unwrap();
    let mut c = Checks::new("bulk_tcp_with_offloads");
    for (what, from, to, seen) in [
        ("vm1 -> ext through SNAT", "vm1", EXT_HOST, QG),
        ("ext -> floating IP", "ext", FIP, EXT_HOST),
        ("vm2 -> ext from its floating IP", "vm2", EXT_HOST, FIP),
    ] {
        match transfer(&rig.ns(from), sa(to, BULK), BULK_BYTES, BULK_BYTES) {
            Ok(t) => {
                c.eq(
                    &format!("{what}: 4 MiB each way intact, server saw"),
                    t.peer.ip().to_string(),
                    seen.to_string(),
                );
            }
            Err(e) => {
                c.ok(false, what, format!("{e:#}"));
            }
        }
    }
    rig.assert_fast_path(&mut c);
    if plane != Dataplane::Xdp {
        // Only XDP needs a program on the taps, which turns TSO off on the
        // router's ports (their peers).
        let k = tests::cmd::sh(&rig.router_ns(), "ethtool", &["-k", &rig.router().qg()])
            .unwrap_or_default();
        c.ok(
            k.contains("tcp-segmentation-offload: on"),
            "the gateway port keeps TSO",
            k.lines().find(|l| l.contains("tcp-segmentation")),
        );
    }
    c.finish();
}

/// A2: datagrams larger than the VMs' network (MTU 1450) from a network of
/// 1500 — ping replies, large UDP answers (DNS with EDNS, NFS) — through
/// SNAT and a floating IP: every one the kernel delivers is delivered.
fn large_datagrams_into_a_smaller_mtu(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut().interface_mut("net1").mtu = 1450;
    rig.router_mut().interface_mut("net2").mtu = 1450;
    rig.start();
    rig.article_hosts(&[]);
    let _u = [
        UdpServer::start(&rig.ns("ext"), "ext", UDP).unwrap(),
        UdpServer::start(&rig.ns("vm2"), "vm2", UDP).unwrap(),
    ];
    let mut c = Checks::new("large_datagrams_into_a_smaller_mtu");
    let p = ping(&rig.ns("vm1"), EXT_HOST, &["-s", "3000"]);
    c.ok(
        p.success(),
        "vm1 (1450) -> ext: ping -s 3000 through SNAT",
        p.describe(),
    );
    let p = ping(&rig.ns("ext"), FIP, &["-s", "3000"]);
    c.ok(
        p.success(),
        "ext -> floating IP: ping -s 3000",
        p.describe(),
    );
    for (what, from, to, seen) in [
        ("vm1 asks ext through SNAT", "vm1", EXT_HOST, QG),
        ("vm2 asks ext from its floating IP", "vm2", EXT_HOST, FIP),
        ("ext asks vm2 through its floating IP", "ext", FIP, EXT_HOST),
    ] {
        match udp_request_sized(&rig.ns(from), sa(to, UDP), 3000) {
            Ok((r, n)) => {
                c.eq(&format!("{what}: 3000-byte UDP answer"), n, 3000);
                c.eq(
                    &format!("{what}: server saw"),
                    r.peer_ip().to_string(),
                    seen.into(),
                );
            }
            Err(e) => {
                c.ok(false, what, format!("{e:#}"));
            }
        }
    }
    rig.assert_fast_path(&mut c);
    if plane != Dataplane::Iptables {
        c.ok(
            rig.stat("kernel/fragment") > 0,
            "the kernel fragmented what the programs translated",
            rig.stats_text(),
        );
    }
    c.finish();
}

/// A2, the other way: VMs on 1500, the external network on 1400. The
/// router's own gateway IP is the source of what it hands the kernel to
/// fragment.
fn large_datagrams_out_of_a_smaller_mtu(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut().gateway.as_mut().unwrap().mtu = 1400;
    rig.start();
    rig.article_hosts(&[]);
    let _u = UdpServer::start(&rig.ns("ext"), "ext", UDP).unwrap();
    let mut c = Checks::new("large_datagrams_out_of_a_smaller_mtu");
    let p = ping(&rig.ns("vm1"), EXT_HOST, &["-M", "dont", "-s", "3000"]);
    c.ok(
        p.success(),
        "vm1 -> ext (1400): ping -s 3000 through SNAT",
        p.describe(),
    );
    let p = ping(&rig.ns("vm2"), EXT_HOST, &["-M", "dont", "-s", "3000"]);
    c.ok(
        p.success(),
        "vm2 -> ext (1400): ping -s 3000 from its FIP",
        p.describe(),
    );
    match udp_request_sized(&rig.ns("vm1"), sa(EXT_HOST, UDP), 3000) {
        Ok((r, n)) => {
            c.eq("vm1 asks ext: 3000-byte answer", n, 3000);
            c.eq(
                "vm1 asks ext: server saw",
                r.peer_ip().to_string(),
                QG.into(),
            );
        }
        Err(e) => {
            c.ok(false, "vm1 asks ext", format!("{e:#}"));
        }
    }
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// B3: an idle established session through a floating IP and one through
/// SNAT survive ~6k spoofed SYNs to the floating IP and ~6k new UDP flows
/// from a VM, with a connection table of 2048 connections.
fn floods_do_not_kill_established_sessions(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.conntrack_size = 2048;
    rig.start();
    rig.article_hosts(&[]);
    let _t = [
        TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap(),
        TcpServer::start(&rig.ns("ext"), "ext", TCP).unwrap(),
    ];
    let mut c = Checks::new("floods_do_not_kill_established_sessions");
    let mut via_fip = TcpSession::open(&rig.ns("ext"), sa(FIP, TCP)).unwrap();
    let mut via_snat = TcpSession::open(&rig.ns("vm1"), sa(EXT_HOST, TCP)).unwrap();
    let before = (via_fip.exchange().unwrap(), via_snat.exchange().unwrap());
    // Let the sessions' last ACKs settle them as established.
    std::thread::sleep(Duration::from_millis(300));

    let sent = rig.syn_flood(6000);
    c.ok(sent >= 5000, "spoofed SYNs sent to the floating IP", sent);
    let sent = rig.udp_flows("vm1", EXT_HOST, 6000);
    c.ok(sent >= 5000, "new UDP flows sent from vm1", sent);
    std::thread::sleep(Duration::from_millis(500));

    match via_fip.exchange() {
        Ok(r) => {
            c.eq(
                "session to the floating IP: same client as before",
                r.peer,
                before.0.peer,
            );
        }
        Err(e) => {
            c.ok(
                false,
                "session to the floating IP survives",
                format!("{e:#}"),
            );
        }
    }
    match via_snat.exchange() {
        Ok(r) => {
            c.eq(
                "session through SNAT: same external port as before",
                r.peer,
                before.1.peer,
            );
        }
        Err(e) => {
            c.ok(false, "session through SNAT survives", format!("{e:#}"));
        }
    }
    if plane != Dataplane::Iptables {
        c.ok(
            rig.stat_count("conntrack/created") >= 6000,
            "the flood made embryonic connections",
            rig.stats_text(),
        );
    }
    c.finish();
}

/// B4: over the router's budget of new connections, a flood is dropped and
/// counted before it costs more; established sessions and a new legitimate
/// connection after the flood are unaffected.
fn new_connection_floods_are_shed_by_the_budget(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.new_connection_rate = Some(1000);
    rig.start();
    rig.article_hosts(&[]);
    let _t = TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap();
    let mut c = Checks::new("new_connection_floods_are_shed_by_the_budget");
    let mut s = TcpSession::open(&rig.ns("ext"), sa(FIP, TCP)).unwrap();
    let first = s.exchange().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    rig.syn_flood(6000);
    c.ok(
        rig.stat("drop/new-connection-rate") > 0,
        "SYNs over the budget dropped and counted",
        rig.stats_text(),
    );
    c.ok(
        s.exchange().is_ok_and(|r| r.peer == first.peer),
        "the established session goes on",
        (),
    );
    std::thread::sleep(Duration::from_millis(200));
    c.reply(
        "a new connection after the flood",
        tests::tcp_request(&rig.ns("ext"), sa(FIP, TCP)),
        "vm2",
        EXT_HOST,
    );
    c.finish();
}

/// The MACs raw frames need in the article's world.
struct Macs {
    qg: [u8; 6],
    qr1: [u8; 6],
    ext: [u8; 6],
    vm1: [u8; 6],
}

/// The MACs of the gateway port, vm1's router port, ext and vm1 — with the
/// neighbours known first, so no frame waits on ARP.
fn macs(rig: &Rig) -> Macs {
    let rns = rig.router_ns();
    for (h, to) in [("ext", VM2), ("vm1", EXT_HOST)] {
        ping(&rig.ns(h), to, &[]);
    }
    Macs {
        qg: frames::mac_of(&rns, &rig.router().qg()).unwrap(),
        qr1: frames::mac_of(&rns, &rig.router().qr("net1")).unwrap(),
        ext: frames::mac_of(&rig.ns("ext"), "eth0").unwrap(),
        vm1: frames::mac_of(&rig.ns("vm1"), "eth0").unwrap(),
    }
}

/// One hostile frame, its UDP destination port (the marker looked for
/// where it should arrive; SNAT keeps it) and whether the kernel's router
/// forwards it.
struct Probe {
    what: &'static str,
    frame: Vec<u8>,
    port: u16,
    forwarded: bool,
}

/// C5, C6: frames not for the router, martian and spoofed sources,
/// directed broadcasts, VLAN tags — from outside and from a VM. What
/// arrives is exactly what the kernel (the iptables plane, measured)
/// forwards.
fn hostile_frames_are_dropped_as_the_kernel_drops_them(plane: Dataplane) {
    let rig = Rig::article(plane);
    let mut c = Checks::new("hostile_frames_are_dropped_as_the_kernel_drops_them");
    let Macs {
        qg: qg_mac,
        qr1: qr1_mac,
        ext: ext_mac,
        vm1: vm1_mac,
    } = macs(&rig);

    let mut port = 20000u16;
    let mut probe = |what, macs: ([u8; 6], [u8; 6]), src: &str, dst: &str, forwarded| {
        port += 1;
        Probe {
            what,
            frame: frames::udp(macs, ip(src), 9999, ip(dst), port, b"xrouter probe"),
            port,
            forwarded,
        }
    };
    let outside = (ext_mac, qg_mac);
    let mut from_ext = vec![
        probe("a plain datagram", outside, EXT_HOST, VM2, true),
        probe("source in a tenant subnet", outside, VM1, VM2, true),
        probe(
            "source 240.0.0.1 (class E)",
            outside,
            "240.0.0.1",
            VM2,
            true,
        ),
        probe("source 0.1.2.3", outside, "0.1.2.3", VM2, true),
        probe(
            "source a tenant subnet's broadcast",
            outside,
            "81.1.180.255",
            VM2,
            true,
        ),
        probe("source the gateway IP", outside, QG, VM2, false),
        probe("source the floating IP", outside, FIP, VM2, false),
        probe("source a port address", outside, QR1, VM2, false),
        probe("source 127.0.0.1", outside, "127.0.0.1", VM2, false),
        probe("source 0.0.0.0", outside, "0.0.0.0", VM2, false),
        probe("source 224.0.0.5", outside, "224.0.0.5", VM2, false),
        probe(
            "source 255.255.255.255",
            outside,
            "255.255.255.255",
            VM2,
            false,
        ),
        probe(
            "directed broadcast",
            outside,
            EXT_HOST,
            "91.1.180.255",
            false,
        ),
        probe(
            "another host's MAC",
            (ext_mac, [0xfa, 0x16, 0x3e, 0, 0, 0x99]),
            EXT_HOST,
            VM2,
            false,
        ),
        probe("broadcast MAC", (ext_mac, [0xff; 6]), EXT_HOST, VM2, false),
        probe(
            "multicast MAC",
            (ext_mac, [1, 0, 0x5e, 0, 0, 1]),
            EXT_HOST,
            VM2,
            false,
        ),
    ];
    let mut tagged = probe("802.1Q tag", outside, EXT_HOST, VM2, false);
    tagged.frame = frames::with_vlan(&tagged.frame, 5);
    from_ext.push(tagged);
    let mut priority = probe("priority tag (VLAN 0)", outside, EXT_HOST, VM2, true);
    priority.frame = frames::with_vlan(&priority.frame, 0);
    from_ext.push(priority);
    let inside = (vm1_mac, qr1_mac);
    let from_vm = vec![
        probe("from a VM: a plain datagram", inside, VM1, EXT_HOST, true),
        probe(
            "from a VM: source its subnet's broadcast",
            inside,
            "81.1.180.255",
            EXT_HOST,
            true,
        ),
        probe(
            "from a VM: source the floating IP",
            inside,
            FIP,
            EXT_HOST,
            false,
        ),
        probe(
            "from a VM: source its gateway",
            inside,
            QR1,
            EXT_HOST,
            false,
        ),
        probe(
            "from a VM: source the gateway IP",
            inside,
            QG,
            EXT_HOST,
            false,
        ),
        probe(
            "from a VM: source 127.0.0.1",
            inside,
            "127.0.0.1",
            EXT_HOST,
            false,
        ),
    ];

    for (sender, receiver, probes) in [("ext", "vm2", from_ext), ("vm1", "ext", from_vm)] {
        let cap = Capture::start(&rig.ns(receiver), "eth0").unwrap();
        let frames: Vec<Vec<u8>> = probes
            .iter()
            .flat_map(|p| [p.frame.clone(), p.frame.clone()])
            .collect();
        frames::send(&rig.ns(sender), "eth0", &frames).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let arrived: BTreeSet<u16> = cap
            .packets()
            .iter()
            .filter(|s| s.proto == 17 && s.dport > 20000)
            .map(|s| s.dport)
            .collect();
        for p in &probes {
            c.eq(
                &format!("{sender} -> {receiver}: {} forwarded", p.what),
                arrived.contains(&p.port),
                p.forwarded,
            );
        }
    }
    if plane != Dataplane::Iptables {
        for reason in [
            "drop/other-host",
            "drop/martian-source",
            "drop/spoofed-source",
            "kernel/vlan",
        ] {
            c.ok(
                rig.stat(reason) > 0,
                &format!("counted as {reason}"),
                rig.stats_text(),
            );
        }
    }
    c.finish();
}

/// C7: one owner per flow, and (beyond Neutron) no tenant address out of
/// qg- untranslated. A SYN from a class E client to the floating IP gets
/// its SYN-ACK from the floating IP; a datagram with IP options to the
/// floating IP gets its ICMP answer from the floating IP; and packets the
/// kernel's NAT finds INVALID (an unmatched ICMP error, TCP segments that
/// open nothing, a truncated header) never leave with a VM's address on
/// the eBPF planes — Neutron's rules let them out (asserted, as its
/// behaviour).
fn no_tenant_address_leaves_untranslated(plane: Dataplane) {
    let rig = Rig::article(plane);
    // The external host is also the subnet's gateway: it sees what the
    // router sends to destinations off the subnet.
    rig.host("ext")
        .ip(&format!("addr add {EXT_GW}/24 dev eth0"));
    let _t = TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap();
    let mut c = Checks::new("no_tenant_address_leaves_untranslated");
    let Macs {
        qg: qg_mac,
        qr1: qr1_mac,
        ext: ext_mac,
        vm1: vm1_mac,
    } = macs(&rig);
    let tenant = |a: Ipv4Addr| {
        let o = a.octets();
        (o[0] == 81 || o[0] == 91) && o[1] == 1 && o[2] == 180
    };

    let cap = Capture::start(&rig.ns("ext"), "eth0").unwrap();
    // What leaves the gateway port, before the node's bridge (whose
    // br_netfilter drops a wrong IPv4 header checksum on its own).
    let tap = |net: &str| format!("tap{}", &rig.port_dev(net)[3..]);
    let cap_qg = Capture::start(&rig.node, &tap("ext")).unwrap();
    let outside = (ext_mac, qg_mac);
    let inside = (vm1_mac, qr1_mac);
    let syn = frames::tcp(outside, ip("240.0.0.1"), 40404, ip(FIP), TCP, 0x02);
    let opts = frames::with_ip_options(
        &frames::udp(outside, ip(EXT_HOST), 40405, ip(FIP), 9, b"options"),
        &[1, 1, 1, 0],
    );
    // Record Route: the VM's answer echoes it, in its own header and in
    // the quote.
    let record_route = frames::with_ip_options(
        &frames::udp(outside, ip(EXT_HOST), 40406, ip(FIP), 9, b"rr"),
        &[7, 7, 4, 0, 0, 0, 0, 0],
    );
    frames::send(&rig.ns("ext"), "eth0", &[syn, opts, record_route]).unwrap();
    // Packets the kernel's conntrack finds INVALID, from vm1, no connection.
    let quoted = frames::udp((ext_mac, vm1_mac), ip(EXT_HOST), 53, ip(VM1), 5000, b"q");
    let invalid = vec![
        frames::icmp_error(inside, ip(VM1), ip(EXT_HOST), 3, 3, &quoted),
        frames::tcp(inside, ip(VM1), 33333, ip(EXT_HOST), 80, 0x01),
        frames::tcp(inside, ip(VM1), 33334, ip(EXT_HOST), 80, 0x03),
        frames::tcp(inside, ip(VM1), 33335, ip(EXT_HOST), 80, 0x00),
        frames::truncated(
            &frames::tcp(inside, ip(VM1), 33336, ip(EXT_HOST), 80, 0x10),
            10,
        ),
        // A UDP length past the datagram's end (to port 81), a TCP header
        // longer than its segment (port 82).
        long_udp_length(&frames::udp(inside, ip(VM1), 33337, ip(EXT_HOST), 81, b"l")),
        tcp_header_past_segment(&frames::tcp(inside, ip(VM1), 33338, ip(EXT_HOST), 82, 0x02)),
    ];
    frames::send(&rig.ns("vm1"), "eth0", &invalid).unwrap();
    // A wrong IPv4 header checksum (to port 83), straight onto the
    // router's port: the node's bridge (br_netfilter) would drop it first.
    let mut bad_sum = frames::udp(inside, ip(VM1), 33339, ip(EXT_HOST), 83, b"s");
    bad_sum[24] ^= 0x5a;
    frames::send(&rig.node, &tap("net1"), &[bad_sum]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let seen = cap.packets();

    let synack: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.proto == 6 && s.dport == 40404)
        .collect();
    c.ok(
        synack
            .iter()
            .any(|s| s.src == ip(FIP) && s.flags & 0x12 == 0x12),
        "SYN from 240.0.0.1: the SYN-ACK comes from the floating IP",
        &synack,
    );
    c.ok(
        !synack.iter().any(|s| tenant(s.src)),
        "SYN from 240.0.0.1: no answer from the fixed IP",
        &synack,
    );
    let unreach: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.proto == 1 && s.flags == 3 && s.dst == ip(EXT_HOST))
        .collect();
    c.ok(
        unreach.iter().any(|s| s.src == ip(FIP)),
        "datagram with IP options: port unreachable from the floating IP",
        &unreach,
    );
    let errors: Vec<ErrorSeen> = cap
        .frames()
        .iter()
        .filter_map(|f| ErrorSeen::parse(f))
        .collect();
    c.ok(
        errors.iter().any(|e| {
            e.src == ip(FIP) && e.ty == 3 && e.quoted_dst == ip(FIP) && e.quoted_sport == 40406
        }),
        "datagram with Record Route: the VM's answer (options echoed) comes from the floating IP, quoting it",
        &errors,
    );
    // Read from the frames themselves: a summary of a malformed one has
    // no ports.
    let (raw, raw_qg) = (cap.frames(), cap_qg.frames());
    let to_port_in = |raw: &[Vec<u8>], p: u16| {
        raw.iter()
            .filter(|f| {
                let l4 = 14 + (f.get(14).copied().unwrap_or(0) & 0xf) as usize * 4;
                f.len() >= l4 + 4
                    && f[12..14] == [8, 0]
                    && matches!(f[23], 6 | 17)
                    && u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]) == p
            })
            .count()
    };
    let to_port = |p: u16| to_port_in(&raw, p);
    c.eq(
        "a wrong IPv4 header checksum: dropped",
        to_port_in(&raw_qg, 83),
        0,
    );
    let leaked: Vec<&Seen> = seen.iter().filter(|s| tenant(s.src)).collect();
    if plane == Dataplane::Iptables {
        c.ok(
            to_port(81) > 0 && to_port(82) > 0,
            "Neutron's rules let a UDP length past the datagram and a TCP header past its segment out",
            &leaked,
        );
        c.ok(
            leaked.len() >= invalid.len(),
            "Neutron's rules let INVALID packets out with the VM's address",
            &leaked,
        );
    } else {
        c.ok(leaked.is_empty(), "no tenant address left qg-", &leaked);
        c.eq(
            "a UDP length past the datagram, a TCP header past its segment: dropped, not translated",
            (to_port(81), to_port(82)),
            (0, 0),
        );
        c.ok(
            rig.stat("drop/malformed") >= 3,
            "counted as malformed",
            rig.stats_text(),
        );
        c.ok(
            rig.stat("kernel/ip-options") > 0,
            "the datagram with options was translated by the programs",
            rig.stats_text(),
        );
    }
    c.finish();
}

/// `frame` (UDP) with a UDP length of 200, past its end.
fn long_udp_length(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
    f
}

/// `frame` (TCP, no options) with a data offset of 60 bytes.
fn tcp_header_past_segment(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14 + 20 + 12] = 0xf0;
    f
}

/// What the kernel answers for a host behind the router reaches the sender
/// as the kernel's NAT gives it on the iptables plane: to a datagram that
/// is too big for the VM network (MTU 1450) with DF, or whose TTL runs out
/// here, sent to a live SNAT port or to the floating IP, "fragmentation
/// needed" (MTU 1450) or "time exceeded" from the address the sender used,
/// quoting what it sent; never the router's own answer (port unreachable,
/// a reset). And a download to a VM that advertises a larger MSS than its
/// network carries completes through SNAT (path-MTU discovery).
fn answers_reach_the_sender_as_the_kernel_s_nat_gives_them(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut().interface_mut("net1").mtu = 1450;
    rig.router_mut().interface_mut("net2").mtu = 1450;
    rig.start();
    rig.article_hosts(&[]);
    let _u = [
        UdpServer::start(&rig.ns("ext"), "ext", UDP).unwrap(),
        UdpServer::start(&rig.ns("vm2"), "vm2", UDP).unwrap(),
    ];
    let _b = BulkServer::start(&rig.ns("ext"), BULK).unwrap();
    let mut c = Checks::new("answers_reach_the_sender_as_the_kernel_s_nat_gives_them");
    let Macs {
        qg: qg_mac,
        ext: ext_mac,
        ..
    } = macs(&rig);
    let outside = (ext_mac, qg_mac);

    // A live SNAT port: vm1 asks ext.
    let snat_port = match udp_request_sized(&rig.ns("vm1"), sa(EXT_HOST, UDP), 100) {
        Ok((r, _)) => r.peer.port(),
        Err(e) => panic!("vm1 -> ext through SNAT: {e:#}"),
    };
    let big = vec![0u8; 1444];
    let cap = Capture::start(&rig.ns("ext"), "eth0").unwrap();
    let sent = [
        frames::with_ttl_df(
            &frames::udp(outside, ip(EXT_HOST), UDP, ip(QG), snat_port, &big),
            64,
            true,
        ),
        frames::with_ttl_df(
            &frames::udp(outside, ip(EXT_HOST), UDP, ip(QG), snat_port, b"ttl"),
            1,
            false,
        ),
        frames::with_ttl_df(
            &frames::udp(outside, ip(EXT_HOST), 40501, ip(FIP), UDP, &big),
            64,
            true,
        ),
        frames::with_ttl_df(
            &frames::udp(outside, ip(EXT_HOST), 40502, ip(FIP), UDP, b"ttl"),
            1,
            false,
        ),
    ];
    frames::send(&rig.ns("ext"), "eth0", &sent).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let errors: Vec<ErrorSeen> = cap
        .frames()
        .iter()
        .filter_map(|f| ErrorSeen::parse(f))
        .collect();
    let about = |e: &ErrorSeen, to: &str, port: u16| {
        e.quoted_dst == ip(to) && e.quoted_dport == port && e.quoted_proto == 17
    };
    for (what, to, port, ty, code) in [
        ("too big, DF, to the SNAT port", QG, snat_port, 3, 4),
        ("TTL 1 to the SNAT port", QG, snat_port, 11, 0),
        ("too big, DF, to the floating IP", FIP, UDP, 3, 4),
        ("TTL 1 to the floating IP", FIP, UDP, 11, 0),
    ] {
        c.ok(
            errors.iter().any(|e| {
                e.src == ip(to)
                    && e.ty == ty
                    && e.code == code
                    && (ty != 3 || e.mtu == 1450)
                    && about(e, to, port)
            }),
            &format!("{what}: answered ({ty}/{code}) from {to}, quoting what ext sent"),
            &errors,
        );
    }
    c.ok(
        !errors
            .iter()
            .any(|e| e.ty == 3 && e.code == 3 && about(e, QG, snat_port)),
        "no port unreachable from the router for the SNAT port",
        &errors,
    );
    if plane != Dataplane::Iptables {
        c.ok(
            rig.stat("kernel/icmp-error-translated") >= 2,
            "the programs translated the kernel's answers back",
            rig.stats_text(),
        );
    }

    // A VM that believes in 1500 (MSS 1460) downloads through SNAT: the
    // router's "fragmentation needed" must reach ext for ext to lower it.
    rig.host("vm1").ip("link set eth0 mtu 1500");
    match transfer(&rig.ns("vm1"), sa(EXT_HOST, BULK), 0, 2 << 20) {
        Ok(t) => {
            c.eq(
                "download to vm1 (MSS 1460) through SNAT: server saw",
                t.peer.ip().to_string(),
                QG.to_string(),
            );
        }
        Err(e) => {
            c.ok(
                false,
                "download to vm1 (MSS 1460) through SNAT completes",
                format!("{e:#}"),
            );
        }
    }
    c.finish();
}

/// Frames with an 802.1p priority tag (VLAN 0) are the kernel's untagged
/// frames: to the floating IP (TCP, UDP) and from a VM through SNAT, the
/// answers come back translated as for untagged frames.
fn priority_tagged_frames_are_untagged_frames(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _t = TcpServer::start(&rig.ns("vm2"), "vm2", TCP).unwrap();
    let _u = [
        UdpServer::start(&rig.ns("vm2"), "vm2", UDP).unwrap(),
        UdpServer::start(&rig.ns("ext"), "ext", UDP).unwrap(),
    ];
    let mut c = Checks::new("priority_tagged_frames_are_untagged_frames");
    let Macs {
        qg: qg_mac,
        qr1: qr1_mac,
        ext: ext_mac,
        vm1: vm1_mac,
    } = macs(&rig);
    let tag0 = |f: Vec<u8>| frames::with_vlan(&f, 0);

    let at_ext = Capture::start(&rig.ns("ext"), "eth0").unwrap();
    let at_vm1 = Capture::start(&rig.ns("vm1"), "eth0").unwrap();
    frames::send(
        &rig.ns("ext"),
        "eth0",
        &[
            tag0(frames::tcp(
                (ext_mac, qg_mac),
                ip(EXT_HOST),
                40601,
                ip(FIP),
                TCP,
                0x02,
            )),
            tag0(frames::udp(
                (ext_mac, qg_mac),
                ip(EXT_HOST),
                40602,
                ip(FIP),
                UDP,
                b"who",
            )),
            // 802.1ad with VLAN 0, and two stacked 802.1Q VLAN 0 tags: the
            // kernel strips those too.
            frames::with_tag(
                &frames::udp((ext_mac, qg_mac), ip(EXT_HOST), 40604, ip(FIP), UDP, b"who"),
                0x88a8,
                0,
            ),
            tag0(tag0(frames::udp(
                (ext_mac, qg_mac),
                ip(EXT_HOST),
                40605,
                ip(FIP),
                UDP,
                b"who",
            ))),
            tag0(tag0(tag0(tag0(frames::udp(
                (ext_mac, qg_mac),
                ip(EXT_HOST),
                40606,
                ip(FIP),
                UDP,
                b"who",
            ))))),
            // ARP for the floating IP: behind a priority tag it is asked
            // here; on VLAN 100 it is not.
            tag0(frames::arp_request(ext_mac, ip("192.168.1.180"), ip(FIP))),
            frames::with_vlan(
                &frames::arp_request(ext_mac, ip("192.168.1.181"), ip(FIP)),
                100,
            ),
        ],
    )
    .unwrap();
    frames::send(
        &rig.ns("vm1"),
        "eth0",
        &[tag0(frames::udp(
            (vm1_mac, qr1_mac),
            ip(VM1),
            40603,
            ip(EXT_HOST),
            UDP,
            b"who",
        ))],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let ext_saw = at_ext.packets();
    c.ok(
        ext_saw.iter().any(|s| {
            s.proto == 6
                && s.src == ip(FIP)
                && s.sport == TCP
                && s.dport == 40601
                && s.flags & 0x12 == 0x12
        }),
        "tagged SYN to the floating IP: SYN-ACK from the floating IP",
        &ext_saw,
    );
    for (what, port) in [
        ("802.1Q VLAN 0", 40602),
        ("802.1ad VLAN 0", 40604),
        ("two stacked VLAN 0 tags", 40605),
        ("four stacked VLAN 0 tags", 40606),
    ] {
        c.ok(
            ext_saw
                .iter()
                .any(|s| s.proto == 17 && s.src == ip(FIP) && s.sport == UDP && s.dport == port),
            &format!("datagram to the floating IP with {what}: answer from the floating IP's port"),
            &ext_saw,
        );
    }
    c.ok(
        ext_saw
            .iter()
            .any(|s| s.proto == 17 && s.src == ip(QG) && s.dport == UDP),
        "tagged datagram from vm1: leaves from the gateway IP",
        &ext_saw,
    );
    // Replies to 192.168.1.180 (asked behind a priority tag) and .181 (on
    // VLAN 100), told apart by the sender's MAC they are sent to.
    let replies: Vec<frames::ArpReply> = at_ext
        .frames()
        .iter()
        .filter_map(|f| frames::ArpReply::parse(f))
        .filter(|r| r.sender_ip == ip(FIP))
        .collect();
    c.ok(
        replies
            .iter()
            .any(|r| r.target_ip == ip("192.168.1.180") && !r.tagged),
        "ARP for the floating IP behind a priority tag: answered, untagged",
        &replies,
    );
    c.ok(
        !replies.iter().any(|r| r.target_ip == ip("192.168.1.181")),
        "ARP for the floating IP on VLAN 100: not answered",
        &replies,
    );
    let vm1_saw = at_vm1.packets();
    c.ok(
        vm1_saw
            .iter()
            .any(|s| s.proto == 17 && s.src == ip(EXT_HOST) && s.sport == UDP && s.dport == 40603),
        "tagged datagram from vm1: ext's answer comes back to its port",
        &vm1_saw,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// A burst of new flows as large as the connection table is sized for
/// keeps every flow's translation: with `conntrack_size` 2048, 1500 UDP
/// flows from a VM, sent twice, leave by the same SNAT port both times.
fn a_burst_of_new_flows_keeps_its_translations(plane: Dataplane) {
    const FLOWS: u16 = 1500;
    let mut rig = Rig::new(plane);
    rig.conntrack_size = 2048;
    rig.start();
    rig.article_hosts(&[]);
    let mut c = Checks::new("a_burst_of_new_flows_keeps_its_translations");
    let sock = tests::probe::udp_socket(&rig.ns("vm1")).unwrap();
    let cap = Capture::start(&rig.ns("ext"), "eth0").unwrap();
    let base = 21000u16;
    for round in 0..2 {
        for i in 0..FLOWS {
            let _ = sock.send_to(b"flow", std::net::SocketAddrV4::new(ip(EXT_HOST), base + i));
        }
        if round == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut ports: std::collections::BTreeMap<u16, BTreeSet<u16>> = Default::default();
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    for s in cap.packets() {
        if s.proto == 17 && s.src == ip(QG) && (base..base + FLOWS).contains(&s.dport) {
            ports.entry(s.dport).or_default().insert(s.sport);
            *seen.entry(s.dport).or_default() += 1;
        }
    }
    let twice = seen.values().filter(|n| **n >= 2).count();
    c.ok(
        twice >= FLOWS as usize * 9 / 10,
        "most flows seen at ext in both rounds",
        (twice, FLOWS),
    );
    let moved: Vec<(&u16, &BTreeSet<u16>)> = ports.iter().filter(|(_, p)| p.len() > 1).collect();
    c.ok(
        moved.is_empty(),
        "every flow kept its SNAT port",
        (moved.len(), moved.iter().take(5).collect::<Vec<_>>()),
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}
