//! What a user observes of a running router, packet by packet (semantics
//! file, "What that means, packet by packet"). Each scenario takes the data
//! plane, builds its own topology, and checks everything it can before
//! failing with the list of what went wrong.

use std::io::ErrorKind;

use tests::{
    Checks, Dataplane, MetadataAgent, Rig, TcpServer, UdpServer,
    article::*,
    header_values,
    metadata_agent::{METADATA_URL, curl},
    ping, sa, tcp_request, tcp_request_from, udp_connected, udp_request,
};

const TCP: u16 = 8080;
const UDP: u16 = 8081;

// Every scenario on every plane, with Linux bridges and with Open vSwitch.
tests::planes_and_plugging!(
    east_west_unnated,
    snat_to_gateway_ip,
    fip_egress,
    fip_ingress_real_client,
    hairpin,
    hairpin_without_snat,
    no_snat_egress_unnated,
    outside_to_fixed_ip,
    random_fully_same_source_port,
    metadata_redirect,
    ttl_decrement,
    pmtu_and_fragments,
    icmp_error_through_nat,
    extra_route_source_snat,
    ecmp_routes,
    router_namespace_layout,
);

/// Servers on port TCP and UDP of every host, named after the host.
fn servers(rig: &Rig, hosts: &[&str]) -> (Vec<TcpServer>, Vec<UdpServer>) {
    let mut t = vec![];
    let mut u = vec![];
    for h in hosts {
        let ns = rig.ns(h);
        t.push(TcpServer::start(&ns, h, TCP).unwrap());
        u.push(UdpServer::start(&ns, h, UDP).unwrap());
    }
    (t, u)
}

/// Semantics #1: East-west is routed, never NATed, even for the VM with a floating IP.
fn east_west_unnated(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _s = servers(&rig, &["vm1", "vm2"]);
    let (vm1, vm2) = (rig.ns("vm1"), rig.ns("vm2"));
    let mut c = Checks::new("east_west_unnated");
    c.reply(
        "TCP vm1 -> vm2",
        tcp_request(&vm1, sa(VM2, TCP)),
        "vm2",
        VM1,
    );
    c.reply(
        "TCP vm2 (has a FIP) -> vm1",
        tcp_request(&vm2, sa(VM1, TCP)),
        "vm1",
        VM2,
    );
    c.reply(
        "UDP vm1 -> vm2",
        udp_request(&vm1, None, sa(VM2, UDP)),
        "vm2",
        VM1,
    );
    c.reply(
        "UDP vm2 (has a FIP) -> vm1",
        udp_request(&vm2, None, sa(VM1, UDP)),
        "vm1",
        VM2,
    );
    let p = ping(&vm2, VM1, &[]);
    c.ok(p.success(), "ping vm2 -> vm1", p.describe());
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #2: A VM without a floating IP reaches outside as the gateway IP.
fn snat_to_gateway_ip(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _s = servers(&rig, &["ext"]);
    let vm1 = rig.ns("vm1");
    let mut c = Checks::new("snat_to_gateway_ip");
    c.reply(
        "TCP vm1 -> ext seen as the gateway IP",
        tcp_request(&vm1, sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    c.reply(
        "UDP vm1 -> ext seen as the gateway IP",
        udp_request(&vm1, None, sa(EXT_HOST, UDP)),
        "ext",
        QG,
    );
    let p = ping(&vm1, EXT_HOST, &[]);
    c.ok(p.success(), "ping vm1 -> ext", p.describe());
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #2: A VM with a floating IP reaches outside as its floating IP.
fn fip_egress(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _s = servers(&rig, &["ext"]);
    let vm2 = rig.ns("vm2");
    let mut c = Checks::new("fip_egress");
    c.reply(
        "TCP vm2 -> ext seen as the FIP",
        tcp_request(&vm2, sa(EXT_HOST, TCP)),
        "ext",
        FIP,
    );
    c.reply(
        "UDP vm2 -> ext seen as the FIP",
        udp_request(&vm2, None, sa(EXT_HOST, UDP)),
        "ext",
        FIP,
    );
    let p = ping(&vm2, EXT_HOST, &[]);
    c.ok(p.success(), "ping vm2 -> ext", p.describe());
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #3: Outside to a floating IP reaches the fixed IP; the VM sees the client.
fn fip_ingress_real_client(plane: Dataplane) {
    let rig = Rig::article(plane);
    let _s = servers(&rig, &["vm2"]);
    let ext = rig.ns("ext");
    let mut c = Checks::new("fip_ingress_real_client");
    c.reply(
        "TCP ext -> FIP reaches vm2, sees ext",
        tcp_request(&ext, sa(FIP, TCP)),
        "vm2",
        EXT_HOST,
    );
    c.reply(
        "UDP ext -> FIP reaches vm2, sees ext",
        udp_request(&ext, None, sa(FIP, UDP)),
        "vm2",
        EXT_HOST,
    );
    let p = ping(&ext, FIP, &[]);
    c.ok(p.success(), "ping ext -> FIP", p.describe());
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #4: Hairpin to a floating IP from inside: DNAT, and SNAT to the gateway IP
/// (or the source's own floating IP).
fn hairpin(plane: Dataplane) {
    const FIP4: &str = "192.168.1.105";
    const VM4: &str = "81.1.180.13";
    const VM3: &str = "91.1.180.15";
    let mut rig = Rig::new(plane);
    rig.router_mut().add_fip(FIP4, VM4);
    rig.start();
    rig.article_hosts(&[]);
    rig.vm("vm3", "net2", &format!("{VM3}/24"), QR2);
    rig.vm("vm4", "net1", &format!("{VM4}/24"), QR1);
    let _s = servers(&rig, &["vm2"]);
    let mut c = Checks::new("hairpin");
    c.reply(
        "TCP vm1 (other subnet) -> FIP: vm2 sees the gateway IP",
        tcp_request(&rig.ns("vm1"), sa(FIP, TCP)),
        "vm2",
        QG,
    );
    c.reply(
        "UDP vm1 (other subnet) -> FIP: vm2 sees the gateway IP",
        udp_request(&rig.ns("vm1"), None, sa(FIP, UDP)),
        "vm2",
        QG,
    );
    c.reply(
        "TCP vm3 (same subnet) -> FIP: vm2 sees the gateway IP",
        tcp_request(&rig.ns("vm3"), sa(FIP, TCP)),
        "vm2",
        QG,
    );
    c.reply(
        "TCP router namespace -> FIP: vm2 sees the gateway IP",
        tcp_request(&rig.router_ns(), sa(FIP, TCP)),
        "vm2",
        QG,
    );
    c.reply(
        "TCP vm4 (has FIP 192.168.1.105) -> FIP: vm2 sees vm4's FIP",
        tcp_request(&rig.ns("vm4"), sa(FIP, TCP)),
        "vm2",
        FIP4,
    );
    let p = ping(&rig.ns("vm3"), FIP, &[]);
    c.ok(p.success(), "ping vm3 -> FIP", p.describe());
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #4: Hairpin NAT is still done with enable_snat=false.
fn hairpin_without_snat(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut().enable_snat = false;
    rig.start();
    rig.article_hosts(&[]);
    rig.vm("vm3", "net2", "91.1.180.15/24", QR2);
    let _s = servers(&rig, &["vm2"]);
    let mut c = Checks::new("hairpin_without_snat");
    c.reply(
        "TCP vm1 -> FIP: vm2 sees the gateway IP",
        tcp_request(&rig.ns("vm1"), sa(FIP, TCP)),
        "vm2",
        QG,
    );
    c.reply(
        "TCP vm3 (same subnet) -> FIP: vm2 sees the gateway IP",
        tcp_request(&rig.ns("vm3"), sa(FIP, TCP)),
        "vm2",
        QG,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #2: With enable_snat=false, a VM without a floating IP goes out un-NATed
/// (floating IPs still apply).
fn no_snat_egress_unnated(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut().enable_snat = false;
    rig.start();
    rig.article_hosts(&[(NET1, QG), (NET2, QG)]);
    let _s = servers(&rig, &["ext"]);
    let mut c = Checks::new("no_snat_egress_unnated");
    c.reply(
        "TCP vm1 -> ext: seen with its fixed IP",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, TCP)),
        "ext",
        VM1,
    );
    c.reply(
        "UDP vm1 -> ext: seen with its fixed IP",
        udp_request(&rig.ns("vm1"), None, sa(EXT_HOST, UDP)),
        "ext",
        VM1,
    );
    c.reply(
        "TCP vm2 (has a FIP) -> ext: seen as the FIP",
        tcp_request(&rig.ns("vm2"), sa(EXT_HOST, TCP)),
        "ext",
        FIP,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #5: Outside straight to a fixed IP is forwarded un-NATed.
fn outside_to_fixed_ip(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.start();
    rig.article_hosts(&[(NET1, QG), (NET2, QG)]);
    let _s = servers(&rig, &["vm1", "vm2"]);
    let ext = rig.ns("ext");
    let mut c = Checks::new("outside_to_fixed_ip");
    c.reply(
        "TCP ext -> vm1's fixed IP",
        tcp_request(&ext, sa(VM1, TCP)),
        "vm1",
        EXT_HOST,
    );
    c.reply(
        "TCP ext -> vm2's fixed IP (vm2 has a FIP)",
        tcp_request(&ext, sa(VM2, TCP)),
        "vm2",
        EXT_HOST,
    );
    c.reply(
        "UDP ext -> vm1's fixed IP",
        udp_request(&ext, None, sa(VM1, UDP)),
        "vm1",
        EXT_HOST,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #7: Two inside hosts with the same source port to the same server both
/// work, with distinct, randomised external ports.
fn random_fully_same_source_port(plane: Dataplane) {
    let mut rig = Rig::article(plane);
    rig.vm("vm3", "net1", "81.1.180.13/24", QR1);
    let _s = servers(&rig, &["ext"]);
    let (vm1, vm3) = (rig.ns("vm1"), rig.ns("vm3"));
    let mut c = Checks::new("random_fully_same_source_port");
    // Whether each external port equals the VM's own source port. A random
    // port equals it by chance once in the range's size (about 1 in 64k), so
    // one such port is chance; a router that keeps the source port where it
    // is free keeps it on both first connections.
    let mut seen = Vec::new();
    let src1 = sa(VM1, 40000);
    let src3 = sa("81.1.180.13", 40000);
    // Keep the first connection open while the second is made.
    let s1 = tests::TcpSession::open_from(&vm1, Some(src1), sa(EXT_HOST, TCP)).and_then(|mut s| {
        let r = s.exchange()?;
        Ok((s, r))
    });
    let r3 = tcp_request_from(&vm3, src3, sa(EXT_HOST, TCP));
    match (&s1, &r3) {
        (Ok((_, a)), Ok(b)) => {
            c.eq(
                "TCP: both seen as the gateway IP",
                (a.peer_ip().to_string(), b.peer_ip().to_string()),
                (QG.into(), QG.into()),
            );
            c.ok(
                a.peer.port() != b.peer.port(),
                "TCP: distinct external ports",
                (a.peer, b.peer),
            );
            seen.extend([(a.peer, 40000), (b.peer, 40000)]);
        }
        _ => {
            c.ok(
                false,
                "TCP: both connections work",
                (
                    s1.as_ref().map(|x| &x.1).map_err(|e| format!("{e:#}")),
                    r3.as_ref().map_err(|e| format!("{e:#}")),
                ),
            );
        }
    }
    let u1 = udp_request(&vm1, Some(sa(VM1, 40001)), sa(EXT_HOST, UDP));
    let u3 = udp_request(&vm3, Some(sa("81.1.180.13", 40001)), sa(EXT_HOST, UDP));
    match (&u1, &u3) {
        (Ok(a), Ok(b)) => {
            c.eq(
                "UDP: both seen as the gateway IP",
                (a.peer_ip().to_string(), b.peer_ip().to_string()),
                (QG.into(), QG.into()),
            );
            c.ok(
                a.peer.port() != b.peer.port(),
                "UDP: distinct external ports",
                (a.peer, b.peer),
            );
            seen.extend([(a.peer, 40001), (b.peer, 40001)]);
        }
        _ => {
            c.ok(
                false,
                "UDP: both work",
                (
                    u1.as_ref().map_err(|e| format!("{e:#}")),
                    u3.as_ref().map_err(|e| format!("{e:#}")),
                ),
            );
        }
    }
    c.ok(
        seen.iter()
            .filter(|(peer, src)| peer.port() == *src)
            .count()
            <= 1,
        "TCP and UDP: external ports randomised (--random-fully)",
        &seen,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #8: Metadata: 169.254.169.254:80 from a VM reaches the
/// router's metadata proxy on port 9697, which forwards it to the metadata
/// agent saying which router and which VM ask; 9697 itself is closed from
/// inside and outside.
fn metadata_redirect(plane: Dataplane) {
    let rig = Rig::article(plane);
    let agent = MetadataAgent::start(&rig.metadata_socket());
    let mut c = Checks::new("metadata_redirect");
    for (vm, ip) in [("vm1", VM1), ("vm2", VM2)] {
        let f = curl(&rig.ns(vm), METADATA_URL, &[]);
        if c.eq(
            &format!("{vm}: curl {METADATA_URL} answered"),
            f.status,
            200,
        ) {
            let e = f.echo();
            c.eq(
                &format!("{vm}: path forwarded"),
                e["path"].as_str(),
                Some("/latest/meta-data/"),
            );
            c.eq(
                &format!("{vm}: X-Forwarded-For is its fixed IP"),
                header_values(&e, "X-Forwarded-For"),
                vec![ip.to_string()],
            );
            c.eq(
                &format!("{vm}: X-Neutron-Router-ID is the router"),
                header_values(&e, "X-Neutron-Router-ID"),
                vec![rig.router().id.clone()],
            );
        } else {
            c.ok(false, "curl output", f.out.describe());
        }
    }
    c.fails(
        "TCP vm1 -> 81.1.180.1:9697 directly is dropped",
        tcp_request(&rig.ns("vm1"), sa(QR1, 9697)),
    );
    c.fails(
        "TCP ext -> 192.168.1.110:9697 is dropped",
        tcp_request(&rig.ns("ext"), sa(QG, 9697)),
    );
    c.eq(
        "the metadata agent answered only the two redirected requests",
        agent.answered(),
        2,
    );
    c.finish();
}

/// Semantics #10: The router decrements TTL once.
fn ttl_decrement(plane: Dataplane) {
    let rig = Rig::article(plane);
    let mut c = Checks::new("ttl_decrement");
    for (from, to, what) in [
        ("vm1", EXT_HOST, "vm1 -> ext (SNAT)"),
        ("vm2", EXT_HOST, "vm2 -> ext (FIP)"),
        ("ext", FIP, "ext -> FIP (DNAT)"),
        ("vm1", VM2, "vm1 -> vm2 (east-west)"),
    ] {
        let p = ping(&rig.ns(from), to, &[]);
        c.ok(
            p.success() && p.stdout.contains("ttl=63"),
            &format!("ping {what}: ttl=63"),
            p.describe(),
        );
    }
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #9: PMTU: a DF packet too big for the qr- port gets "fragmentation needed"
/// with that port's MTU; fragmented datagrams work through DNAT and SNAT.
fn pmtu_and_fragments(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut().interface_mut("net2").mtu = 1400;
    rig.start();
    rig.article_hosts(&[]);
    let ext = rig.ns("ext");
    let mut c = Checks::new("pmtu_and_fragments");
    let p = ping(&ext, FIP, &["-M", "do", "-s", "1472"]);
    c.ok(
        p.stdout.contains("Frag needed") && p.stdout.contains("mtu = 1400"),
        "ext -> FIP, DF, 1500 bytes: Frag needed (mtu = 1400)",
        p.describe(),
    );
    c.ok(
        p.stdout.contains(&format!("From {FIP}")),
        "the Frag needed comes from the FIP",
        p.describe(),
    );
    let p = ping(&ext, FIP, &["-M", "dont", "-s", "3000"]);
    c.ok(
        p.success(),
        "ext -> FIP, 3000 bytes fragmented (DNAT)",
        p.describe(),
    );
    let p = ping(&rig.ns("vm1"), EXT_HOST, &["-M", "dont", "-s", "3000"]);
    c.ok(
        p.success(),
        "vm1 -> ext, 3000 bytes fragmented (SNAT)",
        p.describe(),
    );
    let p = ping(&rig.ns("vm2"), EXT_HOST, &["-M", "dont", "-s", "3000"]);
    c.ok(
        p.success(),
        "vm2 (MTU 1400) -> ext, 3000 bytes fragmented (FIP)",
        p.describe(),
    );
    c.finish();
}

/// Semantics #6: ICMP errors quoting a NATed packet reach its real sender.
fn icmp_error_through_nat(plane: Dataplane) {
    let rig = Rig::article(plane);
    let mut c = Checks::new("icmp_error_through_nat");
    for vm in ["vm1", "vm2"] {
        let what = format!("UDP {vm} -> ext closed port: connection refused");
        let r = udp_connected(&rig.ns(vm), None, sa(EXT_HOST, 9)).and_then(|s| {
            s.send(b"x")?;
            let mut buf = [0u8; 16];
            Ok(s.recv(&mut buf))
        });
        match r {
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => c.ok(true, &what, ()),
            other => c.ok(false, &what, format!("{other:?}")),
        };
    }
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Semantics #2: Sources behind an extra route are SNATed too; east-west to them is not.
fn extra_route_source_snat(plane: Dataplane) {
    const BEHIND: &str = "172.16.5.5";
    let mut rig = Rig::new(plane);
    rig.router_mut().add_route("172.16.0.0/16", VM1);
    rig.start();
    rig.article_hosts(&[]);
    let vm1 = rig.host("vm1").clone();
    // This kernel has no dummy driver: the address behind vm1 sits on lo.
    vm1.ip(&format!("addr add {BEHIND}/32 dev lo"));
    vm1.sysctl("net.ipv4.ip_forward", "1");
    let _s = servers(&rig, &["ext", "vm1"]);
    let mut c = Checks::new("extra_route_source_snat");
    let routes = rig.router_ip("route show 172.16.0.0/16");
    c.ok(
        routes.contains(&format!("via {VM1}")),
        "router has 172.16.0.0/16 via vm1",
        &routes,
    );
    c.reply(
        "TCP from 172.16.5.5 (behind vm1) -> ext: seen as the gateway IP",
        tcp_request_from(&vm1.ns, sa(BEHIND, 0), sa(EXT_HOST, TCP)),
        "ext",
        QG,
    );
    c.reply(
        "TCP vm2 (has a FIP) -> 172.16.5.5: un-NATed",
        tcp_request(&rig.ns("vm2"), sa(BEHIND, TCP)),
        "vm1",
        VM2,
    );
    rig.assert_fast_path(&mut c);
    c.finish();
}

/// Routes sharing a destination form one ECMP route.
fn ecmp_routes(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.router_mut()
        .add_route("172.17.0.0/16", VM1)
        .add_route("172.17.0.0/16", "81.1.180.13")
        .add_route("172.18.0.0/16", VM2);
    rig.start();
    let mut c = Checks::new("ecmp_routes");
    let r = rig.router_ip("route show 172.17.0.0/16");
    c.ok(
        r.contains(&format!("nexthop via {VM1}")) && r.contains("nexthop via 81.1.180.13"),
        "172.17.0.0/16 is one route with two nexthops",
        &r,
    );
    c.eq(
        "one 172.17.0.0/16 route",
        r.lines().filter(|l| l.starts_with("172.17.0.0/16")).count(),
        1,
    );
    let r = rig.router_ip("route show 172.18.0.0/16");
    c.ok(
        r.contains(&format!("via {VM2}")),
        "172.18.0.0/16 via vm2",
        &r,
    );
    let r = rig.router_ip("route show default");
    c.ok(
        r.contains(&format!("via {EXT_GW}")),
        "default via the external gateway",
        &r,
    );
    c.finish();
}

/// What the daemon built, as Neutron names and configures it: namespace,
/// sysctls, ports (name, MAC, MTU, addresses), taps on `brq` bridges, the
/// floating IP /32 on qg-, and `show --json`.
fn router_namespace_layout(plane: Dataplane) {
    let rig = Rig::article(plane);
    let rns = rig.router_ns();
    let r = rig.router().clone();
    let mut c = Checks::new("router_namespace_layout");
    for (key, want) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
        ("net.netfilter.nf_conntrack_tcp_be_liberal", "1"),
    ] {
        let got = tests::sysctl_get(&rns, key).unwrap_or_else(|e| format!("{e:#}"));
        c.eq(&format!("sysctl {key}"), got.as_str(), want);
    }
    let ports = r
        .interfaces
        .iter()
        .map(|p| (p.qr(), p))
        .chain(r.gateway.iter().map(|p| (p.qg(), p)));
    for (dev, p) in ports {
        match tests::link(&rns, &dev) {
            None => {
                c.ok(false, &format!("{dev} exists in {rns}"), ());
            }
            Some(l) => {
                c.eq(
                    &format!("{dev} MAC"),
                    l["address"].as_str(),
                    Some(p.mac.as_str()),
                );
                c.eq(&format!("{dev} MTU"), l["mtu"].as_u64(), Some(p.mtu as u64));
                let want = format!("{}/{}", p.ip, p.network.prefixlen());
                let got = tests::addresses(&rns, &dev).unwrap_or_default();
                c.ok(got.contains(&want), &format!("{dev} has {want}"), &got);
            }
        }
        let tap = tests::link(&rig.node, &p.tap());
        match &rig.ovs {
            None => c.eq(
                &format!("{} is enslaved to {}", p.tap(), p.network.bridge()),
                tap.as_ref().and_then(|l| l["master"].as_str()),
                Some(p.network.bridge().as_str()),
            ),
            Some(o) => {
                let ifaces = o.interfaces().unwrap_or_default();
                c.eq(
                    &format!("{} is on the integration bridge as port {}", p.tap(), p.id),
                    ifaces
                        .get(&p.tap())
                        .and_then(|ids| ids.get("iface-id"))
                        .map(String::as_str),
                    Some(p.id.as_str()),
                )
            }
        };
    }
    c.ok(
        rig.fip_published(FIP),
        "the FIP is published on qg- (a /32 with iptables, answered by BPF otherwise)",
        (),
    );
    let show = rig.show();
    c.eq(
        "show: dataplane",
        show["dataplane"].as_str(),
        Some(plane.to_string().as_str()),
    );
    c.eq(
        "show: the router",
        show["routers"][0]["id"].as_str(),
        Some(r.id.as_str()),
    );
    c.finish();
}
