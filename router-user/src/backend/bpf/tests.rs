//! Tests of the eBPF userspace side against the real kernel. They need root
//! and bpffs at /sys/fs/bpf, and skip (with a message) without them. Every
//! pin directory and namespace is removed by a guard, even on panic.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{SchedClassifier, TcAttachType},
};
use ipnet::IpNet;
use router_common::{
    config::{Ipv4, RouterConfig},
    conntrack::{CT_ORIGINAL, CT_REPLY, CtEntry, CtKey, NAT_DNAT, TCP_ESTABLISHED, TCP_NONE},
    port::{
        LOCAL_ADDRESS, LOCAL_BROADCAST, LOCAL_FLOATING, LocalAddr, PortInfo, ROLE_GATEWAY,
        ROLE_INTERNAL,
    },
    route::Route,
};

use super::*;
use crate::{
    config::node::NodeConfig,
    model::{ExtraRoute, FloatingIp, Gateway, Mac, Port, Role, Router, Subnet},
};

/// The kernel-facing tests need root and bpffs: without them they fail
/// rather than pass unseen (always true, for the callers' `if`).
fn can_run() -> bool {
    crate::testing::require_root();
    let bpffs =
        nix::sys::statfs::statfs("/sys/fs/bpf").is_ok_and(|s| s.filesystem_type().0 == 0xcafe4a11);
    assert!(
        bpffs,
        "bpffs is not mounted at /sys/fs/bpf: `cargo xtask test` mounts it"
    );
    true
}

/// `xrt-ebpf-<pid>-<tag><n>-<rand>`: unique across tests and runs.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let rand = (monotonic_ns() ^ (u64::from(std::process::id()) << 20)) % 100_000;
    format!("xrt-ebpf-{}-{tag}{n}-{rand}", std::process::id())
}

/// A pin directory under /sys/fs/bpf, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> PinDir {
        let p = Path::new("/sys/fs/bpf").join(unique("pins"));
        std::fs::create_dir_all(&p).unwrap();
        PinDir(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace, deleted (with its devices) on drop.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        let name = unique("ns");
        crate::backend::netns::create(&name).unwrap();
        Ns(name)
    }

    fn ip(&self, args: &str) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args.split_whitespace())
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip -n {} {args}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ifindex(&self, dev: &str) -> u32 {
        let d = dev.to_string();
        in_netns(&self.0, move || nix::net::if_::if_nametoindex(d.as_str()))
            .unwrap()
            .unwrap()
    }

    /// Programs on tcx ingress of `dev`.
    fn tcx_count(&self, dev: &str) -> usize {
        self.tcx_count_at(dev, TcAttachType::Ingress)
    }

    fn tcx_count_at(&self, dev: &str, at: TcAttachType) -> usize {
        let d = dev.to_string();
        in_netns(&self.0, move || {
            SchedClassifier::query_tcx(&d, at)
                .map(|(_, progs)| progs.len())
                .unwrap_or(0)
        })
        .unwrap()
    }

    fn has_xdp(&self, dev: &str) -> bool {
        self.ip(&format!("link show dev {dev}"))
            .contains("prog/xdp")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = crate::backend::netns::delete(&self.0);
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn port(id: &str, role: Role, addr: &str, cidr: &str, gw: &str) -> Port {
    Port {
        id: id.into(),
        role,
        mac: Mac([0xfa, 0x16, 0x3e, 0, 0, id.len() as u8]),
        mtu: 1500,
        network_id: format!("net-{id}"),
        addresses: vec![net(addr)],
        subnets: vec![Subnet {
            cidr: net(cidr),
            gateway_ip: Some(gw.parse().unwrap()),
        }],
    }
}

/// The article's router: two tenant subnets, a gateway, a floating IP, and
/// an ECMP extra route.
fn article_router() -> Router {
    Router {
        id: "r1".into(),
        enable_snat: true,
        gateway: Some(Gateway {
            port: port(
                "gw-port-000001",
                Role::Gateway,
                "192.168.1.110/24",
                "192.168.1.0/24",
                "192.168.1.1",
            ),
            extra_subnets: vec![],
        }),
        interfaces: vec![
            port(
                "qr-port-81-0001",
                Role::Internal,
                "81.1.180.1/24",
                "81.1.180.0/24",
                "81.1.180.1",
            ),
            port(
                "qr-port-91-0001",
                Role::Internal,
                "91.1.180.1/24",
                "91.1.180.0/24",
                "91.1.180.1",
            ),
        ],
        routes: vec![
            ExtraRoute {
                destination: net("10.9.0.0/16"),
                nexthop: "91.1.180.20".parse().unwrap(),
            },
            ExtraRoute {
                destination: net("10.9.0.0/16"),
                nexthop: "81.1.180.30".parse().unwrap(),
            },
            ExtraRoute {
                destination: net("10.10.0.0/16"),
                nexthop: "172.31.0.1".parse().unwrap(),
            },
        ],
        floating_ips: vec![FloatingIp {
            id: "fip1".into(),
            floating_ip: "192.168.1.104".parse().unwrap(),
            fixed_ip: "91.1.180.14".parse().unwrap(),
        }],
    }
}

/// Fake ifindexes of the article router's devices: qr 81 -> 101, qr 91 ->
/// 102, qg -> 103.
fn article_ifindex(r: &Router) -> HashMap<String, u32> {
    let mut m = HashMap::new();
    m.insert(r.interfaces[0].device(), 101);
    m.insert(r.interfaces[1].device(), 102);
    m.insert(r.gateway.as_ref().unwrap().port.device(), 103);
    m
}

fn a(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

#[test]
fn desired_state_of_the_article_router() {
    let r = article_router();
    let d = desired(
        &r,
        &NodeConfig::default(),
        &article_ifindex(&r),
        DEFAULT_SNAT_PORTS,
    );
    assert_eq!(d.ports.len(), 3);
    assert_eq!(d.ports[&103].role, ROLE_GATEWAY);
    assert_eq!(d.ports[&101].addr, a("81.1.180.1"));
    let kind = |s: &str| d.local.get(&LocalAddr { addr: a(s) }).copied();
    assert_eq!(kind("91.1.180.1"), Some(LOCAL_ADDRESS));
    assert_eq!(
        kind("91.1.180.255"),
        Some(LOCAL_BROADCAST),
        "directed broadcast"
    );
    assert_eq!(kind("192.168.1.110"), Some(LOCAL_ADDRESS));
    for f in &r.floating_ips {
        assert_eq!(
            kind(&f.floating_ip.to_string()),
            Some(LOCAL_FLOATING),
            "a floating IP is never a source"
        );
    }
    assert_eq!(d.local.len(), 6 + r.floating_ips.len());
    // The hint: a VM's fixed address with a floating IP is looked up in
    // XR_FIP, not in XR_LOCAL (its east-west packets skip that lookup);
    // the floating IP itself in XR_LOCAL; a VM without one in neither.
    let hint = hint_of(&d);
    let raw = |s: &str| u32::from_ne_bytes(a(s));
    assert!(!hint.surely_no_floating(raw("91.1.180.14")));
    assert!(hint.surely_not_local(raw("91.1.180.14")));
    assert!(!hint.surely_not_local(raw("192.168.1.104")));
    assert!(hint.surely_no_floating(raw("81.1.180.12")));
    assert!(hint.surely_not_local(raw("81.1.180.12")));
    for l in d.local.keys() {
        assert!(!hint.surely_not_local(u32::from_ne_bytes(l.addr)));
    }
    // Connected subnets, the default route, the ECMP route; the route whose
    // next hop is on no port is left out.
    let keys: Vec<_> = {
        let mut k: Vec<_> = d.routes.keys().copied().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys,
        vec![
            (0, [0, 0, 0, 0]),
            (16, a("10.9.0.0")),
            (24, a("81.1.180.0")),
            (24, a("91.1.180.0")),
            (24, a("192.168.1.0")),
        ]
    );
    let ecmp = d.routes[&(16, a("10.9.0.0"))];
    assert_eq!(ecmp.count, 2);
    // wanted_routes sorts next hops: 81.1.180.30 before 91.1.180.20.
    assert_eq!(ecmp.gateways[..2], [a("81.1.180.30"), a("91.1.180.20")]);
    assert_eq!(ecmp.ifindexes[..2], [101, 102]);
    assert_eq!(
        d.config,
        RouterConfig {
            gw_addr: a("192.168.1.110"),
            gw_ifindex: 103,
            enable_snat: 1,
            port_min: 1024,
            port_max: 65535,
            metadata_port: 9697,
            flags: 0,
            new_conn_rate: crate::config::node::DEFAULT_NEW_CONNECTION_RATE,
        }
    );
    // No gateway: no SNAT, no default route.
    let mut r2 = r.clone();
    r2.gateway = None;
    let d2 = desired(
        &r2,
        &NodeConfig::default(),
        &article_ifindex(&r),
        (2000, 3000),
    );
    assert_eq!(d2.config.enable_snat, 0);
    assert_eq!(d2.config.gw_ifindex, 0);
    assert_eq!(d2.config.port_min, 2000);
    assert!(!d2.routes.contains_key(&(0, [0; 4])));
}

#[test]
fn load_sync_read_back_and_unpin() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let mut br = BpfRouter::load("r1", &pins.0, 1000).expect("load");
    let dir = pins.0.join("r1");
    for m in MAP_NAMES {
        assert!(dir.join(m).exists(), "{m} pinned");
    }
    let r = article_router();
    let ifx = article_ifindex(&r);
    let node = NodeConfig::default();
    let n = br.sync(&r, &node, &ifx).expect("sync");
    assert!(n > 10, "first sync writes everything ({n})");
    assert_eq!(
        br.sync(&r, &node, &ifx).unwrap(),
        0,
        "second sync changes nothing"
    );

    {
        let ebpf = br.ebpf_mut();
        let routes: LpmTrie<_, [u8; 4], Route> =
            LpmTrie::try_from(ebpf.map(XR_ROUTES).unwrap()).unwrap();
        let vm = routes.get(&Key::new(32, a("91.1.180.14")), 0).unwrap();
        assert_eq!(
            (vm.count, vm.gateways[0], vm.ifindexes[0]),
            (1, [0; 4], 102)
        );
        let out = routes.get(&Key::new(32, a("8.8.8.8")), 0).unwrap();
        assert_eq!(
            (out.count, out.gateways[0], out.ifindexes[0]),
            (1, a("192.168.1.1"), 103)
        );

        let fip: BpfHashMap<_, Ipv4, Ipv4> =
            BpfHashMap::try_from(ebpf.map(XR_FIP).unwrap()).unwrap();
        assert_eq!(
            fip.get(
                &Ipv4 {
                    addr: a("91.1.180.14")
                },
                0
            )
            .unwrap()
            .addr,
            a("192.168.1.104")
        );
        let rev: BpfHashMap<_, Ipv4, Ipv4> =
            BpfHashMap::try_from(ebpf.map(XR_FIP_REV).unwrap()).unwrap();
        assert_eq!(
            rev.get(
                &Ipv4 {
                    addr: a("192.168.1.104")
                },
                0
            )
            .unwrap()
            .addr,
            a("91.1.180.14")
        );
        let ports: BpfHashMap<_, u32, PortInfo> =
            BpfHashMap::try_from(ebpf.map(XR_PORTS).unwrap()).unwrap();
        assert_eq!(ports.get(&101, 0).unwrap().role, ROLE_INTERNAL);
        assert_eq!(ports.get(&103, 0).unwrap().addr, a("192.168.1.110"));
        let cfg: Array<_, RouterConfig> = Array::try_from(ebpf.map(XR_CONFIG).unwrap()).unwrap();
        assert_eq!(cfg.get(&0, 0).unwrap().gw_ifindex, 103);
    }

    // The floating IP goes: exactly its three entries change (both ways,
    // and as a local address).
    let mut r2 = r.clone();
    r2.floating_ips.clear();
    assert_eq!(br.sync(&r2, &node, &ifx).unwrap(), 3);
    assert_eq!(br.sync(&r2, &node, &ifx).unwrap(), 0);

    let counters = br.counters().unwrap();
    assert_eq!(counters.len(), router_common::counters::OUTCOME_COUNT);

    br.detach_and_unpin().expect("detach_and_unpin");
    assert!(!dir.exists(), "pins removed");
}

/// The ports below `PORT_SLOTS` are mirrored in `XR_PORT_SLOTS` at their
/// ifindex, and a slot is emptied when its port goes or moves to another
/// device: a stale slot would make the programs take another device for
/// the port.
#[test]
fn port_slots_follow_the_ports() {
    use router_common::port::PORT_SLOTS;
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let mut br = BpfRouter::load("r1", &pins.0, 1000).expect("load");
    let r = article_router();
    let node = NodeConfig::default();
    let slot = |br: &mut BpfRouter, i: u32| -> PortInfo {
        let a: Array<_, PortInfo> =
            Array::try_from(br.ebpf_mut().map(XR_PORT_SLOTS).unwrap()).unwrap();
        a.get(&i, 0).unwrap()
    };
    let mut ifx = article_ifindex(&r);
    br.sync(&r, &node, &ifx).expect("sync");
    assert_eq!(slot(&mut br, 101).role, ROLE_INTERNAL);
    assert_eq!(slot(&mut br, 103).addr, a("192.168.1.110"));
    assert_eq!(slot(&mut br, 104), PortInfo::default(), "no port there");

    // qr1's device is re-created beyond the array: its old slot empties,
    // the hash has it at its new ifindex.
    let qr1 = r.interfaces[0].device();
    ifx.insert(qr1.clone(), PORT_SLOTS + 10);
    assert!(br.sync(&r, &node, &ifx).unwrap() >= 3);
    assert_eq!(slot(&mut br, 101), PortInfo::default(), "old slot emptied");
    {
        let ports: BpfHashMap<_, u32, PortInfo> =
            BpfHashMap::try_from(br.ebpf_mut().map(XR_PORTS).unwrap()).unwrap();
        assert_eq!(
            ports.get(&(PORT_SLOTS + 10), 0).unwrap().role,
            ROLE_INTERNAL
        );
        assert!(ports.get(&101, 0).is_err());
    }
    // The gateway goes: its slot empties too.
    let mut r2 = r.clone();
    r2.gateway = None;
    r2.floating_ips.clear();
    br.sync(&r2, &node, &ifx).expect("sync");
    assert_eq!(
        slot(&mut br, 103),
        PortInfo::default(),
        "gateway's slot emptied"
    );
    assert_eq!(slot(&mut br, 102).role, ROLE_INTERNAL, "others kept");
    br.detach_and_unpin().expect("detach_and_unpin");
}

/// One gateway-SNATed connection (81.1.180.12:40000 to 192.168.1.15:80,
/// translated to 192.168.1.110:51123), both entries, seen now.
fn gateway_snat_connection() -> [(CtKey, CtEntry); 2] {
    super::flows::snat_pair(
        a("81.1.180.12"),
        40000,
        a("192.168.1.15"),
        80,
        a("192.168.1.110"),
        51123,
        monotonic_ns(),
    )
}

#[test]
fn pinned_maps_survive_a_reload() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let [o, r] = gateway_snat_connection();
    {
        let mut br = BpfRouter::load("r2", &pins.0, 1000).unwrap();
        assert!(br.reused_maps().is_empty());
        br.ct_insert(&o.0, &o.1).unwrap();
        br.ct_insert(&r.0, &r.1).unwrap();
        // Dropped without detach_and_unpin: the daemon exiting.
    }
    let br = BpfRouter::load("r2", &pins.0, 1000).unwrap();
    assert_eq!(br.reused_maps().len(), MAP_NAMES.len());
    let flows = br.flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        flows[0].orig.src,
        "81.1.180.12".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(flows[0].translated.sport, 51123);
    assert!(flows[0].snat && flows[0].has_reply_entry);
    drop(br);
    // Another table size: a new table, the connections carried into it.
    let br = BpfRouter::load("r2", &pins.0, 2000).unwrap();
    assert!(!br.reused_maps().iter().any(|m| m == XR_CT));
    let flows = br.flows().unwrap();
    assert_eq!(flows.len(), 1, "the connection is carried over");
    assert_eq!(flows[0].translated.sport, 51123);
    assert!(flows[0].snat && flows[0].has_reply_entry);
    br.detach_and_unpin().unwrap();
    // Cleanup of a router whose object is not loaded.
    BpfRouter::load("r3", &pins.0, 10).unwrap();
    assert!(pins.0.join("r3").join(XR_CT).exists());
    remove_pins(&pins.0, "r3").unwrap();
    assert!(!pins.0.join("r3").exists());
    remove_pins(&pins.0, "r3").unwrap();
    assert!(remove_pins(&pins.0, "..").is_err());
    assert!(remove_pins(&pins.0, "a/b").is_err());
}

/// A daemon adopts a router's pinned programs only when they are this
/// build's and its connection table is the size the node config asks for;
/// otherwise it loads the router again (and carries the connections).
#[test]
fn pins_fit_this_build_at_this_size_only() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let mut br = BpfRouter::load("r8", &pins.0, 1000).unwrap();
    assert!(
        !pins_fit(&pins.0, "r8", 1000),
        "loaded, not yet recorded as in place"
    );
    br.record_build().unwrap();
    assert!(pins_fit(&pins.0, "r8", 1000));
    assert!(!pins_fit(&pins.0, "r8", 2000), "another conntrack_size");
    let data = aya::maps::MapData::from_pin(pins.0.join("r8").join(XR_BUILD)).unwrap();
    let mut build: Array<_, u64> = Array::try_from(aya::maps::Map::Array(data)).unwrap();
    build.set(0, build_id() ^ 1, 0).unwrap();
    assert!(!pins_fit(&pins.0, "r8", 1000), "another build's programs");
    assert!(!pins_fit(&pins.0, "nosuch", 1000));
    br.detach_and_unpin().unwrap();
}

/// `bpf(cmd, attr)`; the descriptor or value it returns.
fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 9]) -> std::io::Result<i64> {
    // SAFETY: a zero-padded union bpf_attr of 72 bytes, the pointers in it
    // alive across the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 72usize) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// An entry as earlier builds stored it in their hash tables: the
/// translation, flags and `last_seen`, `created` in nanoseconds, then (56
/// bytes) a route cache of 24 bytes; `value_size` bytes of it.
fn old_entry(e: &CtEntry, created_ns: u64, value_size: usize) -> Vec<u8> {
    let mut v = bytemuck::bytes_of(e)[..24].to_vec();
    v.extend(created_ns.to_ne_bytes());
    v.resize(value_size, 0);
    v
}

/// A connection table as an earlier build pinned it: a hash (`lru`: an
/// LRU hash, the embryonic table) of `max_entries` entries of
/// `value_size` bytes ([`old_entry`]), holding `entries`.
fn pin_old_table(
    path: &Path,
    lru: bool,
    value_size: usize,
    max_entries: u32,
    entries: &[(CtKey, CtEntry)],
    created_ns: u64,
) {
    let key_size = std::mem::size_of::<CtKey>() as u64;
    let mut attr = [0u64; 9];
    // map_type 1 (hash) or 9 (LRU hash) | key_size; value_size | max_entries.
    attr[0] = if lru { 9 } else { 1 } | (key_size << 32);
    attr[1] = value_size as u64 | (u64::from(max_entries) << 32);
    let fd = sys_bpf(0, &mut attr).expect("BPF_MAP_CREATE") as u64;
    for (k, e) in entries {
        let (mut k, v) = (*k, old_entry(e, created_ns, value_size));
        let mut attr = [0u64; 9];
        attr[0] = fd;
        attr[1] = &mut k as *mut CtKey as u64;
        attr[2] = v.as_ptr() as u64;
        sys_bpf(2, &mut attr).expect("BPF_MAP_UPDATE_ELEM");
    }
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut attr = [0u64; 9];
    attr[0] = name.as_ptr() as u64;
    attr[1] = fd;
    sys_bpf(6, &mut attr).expect("BPF_OBJ_PIN");
    // SAFETY: our descriptor; the pin holds the map.
    unsafe { libc::close(fd as i32) };
}

/// A daemon of this build over the pins of an earlier build, which kept
/// established connections in a hash table `XR_CT` and embryonic ones in
/// an LRU hash `XR_CT_NEW`, both with longer entries: every connection is
/// carried into the new table (established ones marked so, nothing
/// cached), and the old embryonic table's pin goes.
#[test]
fn an_earlier_builds_tables_are_carried_over() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let [o, r] = gateway_snat_connection();
    let created = o.1.last_seen - 5_000_000_000;
    let mut young = plain_pair("81.1.180.13", "192.168.1.15", 17, TCP_NONE, o.1.last_seen);
    for (_, e) in &mut young {
        e.route.egress = 7;
    }
    let dir = pins.0.join("r6");
    std::fs::create_dir_all(&dir).unwrap();
    pin_old_table(&dir.join(XR_CT), false, 56, 2000, &[o, r], created);
    pin_old_table(&dir.join(XR_CT_NEW_OLD), true, 56, 2000, &young, created);
    let br = BpfRouter::load("r6", &pins.0, 1000).unwrap();
    assert!(!br.reused_maps().iter().any(|m| m == XR_CT));
    assert!(!dir.join(XR_CT_NEW_OLD).exists(), "the old pin is gone");
    let flows = br.flows().unwrap();
    assert_eq!(flows.len(), 2, "both connections are carried over");
    let snat = flows.iter().find(|f| f.snat).unwrap();
    assert_eq!(snat.orig.src, "81.1.180.12".parse::<Ipv4Addr>().unwrap());
    assert_eq!(snat.translated.sport, 51123);
    assert!(snat.has_reply_entry && snat.established);
    assert!((5..=60).contains(&snat.age_secs), "{snat:?}");
    let udp = flows.iter().find(|f| !f.snat).unwrap();
    assert!(udp.has_reply_entry && !udp.established);
    let all = br.ct_entries().unwrap();
    let e = all[&o.0];
    assert_eq!(
        (e.new_src, e.new_sport, e.last_seen),
        (o.1.new_src, o.1.new_sport, o.1.last_seen)
    );
    assert_eq!(e.flags, router_common::conntrack::CT_F_ASSURED);
    assert_eq!(all[&young[0].0].route, Default::default(), "nothing cached");
    drop(br);
    // Loaded again, the table fits: reused as it is.
    let br = BpfRouter::load("r6", &pins.0, 1000).unwrap();
    assert!(br.reused_maps().iter().any(|m| m == XR_CT));
    assert_eq!(br.flows().unwrap().len(), 2);
    br.detach_and_unpin().unwrap();
}

/// A smaller `conntrack_size` than the table holds: the copy keeps
/// established connections first, and never half a connection.
#[test]
fn a_smaller_table_keeps_established_connections_whole() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let id = "shrink";
    let mut br = BpfRouter::load(id, &pins.0, 2048).unwrap();
    let t = monotonic_ns();
    let addr = |i: u32| format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    for i in 0..2400u32 {
        let mut pair = plain_pair(&addr(i), "192.168.1.15", 17, TCP_NONE, t);
        if i % 2 == 0 {
            for (_, e) in &mut pair {
                e.flags |= router_common::conntrack::CT_F_ASSURED;
            }
        }
        for (k, e) in &pair {
            br.ct_insert(k, e).unwrap();
        }
    }
    drop(br);
    // 4096 slots for 4800 entries: not all fit.
    let br = BpfRouter::load(id, &pins.0, 1024).unwrap();
    let all = br.ct_entries().unwrap();
    let halves = all
        .iter()
        .filter(|(k, e)| !all.contains_key(&e.partner(k)))
        .count();
    assert_eq!(halves, 0, "no connection carried half");
    let established = all
        .values()
        .filter(|e| e.flags & router_common::conntrack::CT_F_ASSURED != 0)
        .count();
    assert_eq!(established, 2400, "every established connection, both ways");
    assert!(all.len() < 4800, "not all fit: {}", all.len());
    br.detach_and_unpin().unwrap();
}

/// The shortest entries of all (before the route cache: 32 bytes) are
/// carried over too.
#[test]
fn an_earlier_builds_shorter_entries_are_carried_over() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let [o, r] = gateway_snat_connection();
    let dir = pins.0.join("r7");
    std::fs::create_dir_all(&dir).unwrap();
    pin_old_table(&dir.join(XR_CT), false, 32, 2000, &[o, r], o.1.last_seen);
    let br = BpfRouter::load("r7", &pins.0, 1000).unwrap();
    let new = aya::maps::MapInfo::from_pin(dir.join(XR_CT)).unwrap();
    assert_eq!(new.map_flags(), router_common::conntrack::CT_FLAGS);
    let flows = br.flows().unwrap();
    assert_eq!(flows.len(), 1, "the connection is carried over");
    assert_eq!(flows[0].translated.sport, 51123);
    assert!(flows[0].snat && flows[0].has_reply_entry && flows[0].established);
    br.detach_and_unpin().unwrap();
}

/// A table a flood has used every slot of (no never-used slot left to
/// stop a lookup) gets its freed slots back as never-used ones, but for
/// those on a remaining key's way; every remaining key is still found.
#[test]
fn a_table_with_every_slot_used_gets_never_used_slots_back() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let br = BpfRouter::load("flooded", &pins.0, 1024).unwrap();
    let t = br.ct().unwrap();
    let e = plain_pair("10.0.0.1", "10.0.0.2", 17, TCP_NONE, monotonic_ns())[0].1;
    // Keys until no slot is never-used (inserts into full windows fail).
    let mut keys = Vec::new();
    for n in 0..200_000u32 {
        let k = ct("10.0.0.1", n as u16, "10.0.0.2", 80 + (n >> 16) as u16, 17);
        if t.insert(&k, &e).is_ok() {
            keys.push(k);
        }
        if keys.len() as u32 == t.slots() {
            break;
        }
    }
    assert_eq!(keys.len() as u32, t.slots(), "every slot used");
    // The flood's connections expire but for one in fifty.
    let (kept, gone): (Vec<_>, Vec<_>) = keys.iter().enumerate().partition(|(i, _)| i % 50 == 0);
    for (_, k) in &gone {
        assert!(t.remove(k));
    }
    assert_eq!(t.count(), (kept.len() as u64, gone.len() as u64));
    let back = t.reclaim(0..t.slots());
    let (held, freed) = t.count();
    assert_eq!(held, kept.len() as u64);
    assert_eq!(freed, gone.len() as u64 - back as u64);
    assert!(
        back as u32 > t.slots() / 2,
        "most freed slots never-used again: {back} of {}",
        gone.len()
    );
    assert_eq!(t.fill(), Some(i64::from(t.slots()) - back as i64));
    for (_, k) in &kept {
        assert!(t.get(k).is_some(), "a kept key is still found");
    }
    // What is left freed is on the kept keys' ways: nothing more to take.
    assert_eq!(t.reclaim(0..t.slots()), 0);
    drop(t);
    br.detach_and_unpin().unwrap();
}

/// A daemon of this build over the slot table of a build whose table had
/// no line of its own after the slots (the count of used slots): the
/// connections are carried into a table of this layout, which counts
/// them.
#[test]
fn an_earlier_builds_slot_table_is_carried_over() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let [o, r] = gateway_snat_connection();
    let dir = pins.0.join("r9");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(XR_CT);
    let slots = router_common::conntrack::ct_slots(1000);
    let mut attr = [0u64; 9];
    // map_type 2 (array) | key_size 4; value_size | max_entries; flags.
    attr[0] = 2 | (4 << 32);
    attr[1] =
        std::mem::size_of::<router_common::conntrack::CtSlot>() as u64 | (u64::from(slots) << 32);
    attr[2] = u64::from(router_common::conntrack::CT_FLAGS);
    let fd = sys_bpf(0, &mut attr).expect("BPF_MAP_CREATE");
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut attr = [0u64; 9];
    attr[0] = name.as_ptr() as u64;
    attr[1] = fd as u64;
    sys_bpf(6, &mut attr).expect("BPF_OBJ_PIN");
    // SAFETY: our descriptor; the pin holds the map.
    unsafe { libc::close(fd as i32) };
    {
        let old = CtTable::from_pin(&path).unwrap();
        assert!(!old.current() && old.fill().is_none());
        old.insert(&o.0, &o.1).unwrap();
        old.insert(&r.0, &r.1).unwrap();
    }
    let br = BpfRouter::load("r9", &pins.0, 1000).unwrap();
    assert!(!br.reused_maps().iter().any(|m| m == XR_CT));
    let new = br.ct().unwrap();
    assert!(new.current());
    assert_eq!(new.slots(), slots);
    assert_eq!(new.fill(), Some(2), "the carried entries are counted");
    assert_eq!(
        super::pinned::slots_in_use(&pins.0, "r9").unwrap(),
        Some(2),
        "read from the table's last page alone"
    );
    assert_eq!(new.get(&o.0), Some(o.1));
    assert_eq!(new.get(&r.0), Some(r.1));
    br.detach_and_unpin().unwrap();
}

/// A daemon of this build over the pins of one that had no monitor: the
/// monitor's maps are added, everything else (the connections) is reused.
#[test]
fn pins_older_than_the_monitor_get_its_maps() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let [o, r] = super::flows::snat_pair(
        a("81.1.180.12"),
        40000,
        a("192.168.1.15"),
        80,
        a("192.168.1.110"),
        51123,
        monotonic_ns(),
    );
    {
        let mut br = BpfRouter::load("r4", &pins.0, 1000).unwrap();
        br.ct_insert(&o.0, &o.1).unwrap();
        br.ct_insert(&r.0, &r.1).unwrap();
    }
    let monitor = [XR_MON_CTL, XR_MON_RING, XR_MON_CPU];
    for name in monitor {
        std::fs::remove_file(pins.0.join("r4").join(name)).unwrap();
    }
    let err = monitor::MonitorMaps::open(&pins.0, "r4").err().unwrap();
    assert!(format!("{err:#}").contains("restart the daemon"), "{err:#}");
    let br = BpfRouter::load("r4", &pins.0, 1000).unwrap();
    let reused = br.reused_maps();
    assert_eq!(reused.len(), MAP_NAMES.len() - monitor.len(), "{reused:?}");
    assert!(!reused.iter().any(|m| monitor.contains(&m.as_str())));
    assert_eq!(br.flows().unwrap().len(), 1, "connections kept");
    let mut m = monitor::MonitorMaps::open(&pins.0, "r4").unwrap();
    assert_eq!(m.ctl().unwrap(), Default::default(), "off");
    m.reset().unwrap();
    assert_eq!(m.lost().unwrap(), 0);
    m.set_ctl(router_common::monitor::MonitorCtl {
        flags: 1,
        sample_every: 1,
    })
    .unwrap();
    drop(br);
    // Reloaded again, the switch is kept as the monitor set it.
    let br = BpfRouter::load("r4", &pins.0, 1000).unwrap();
    assert_eq!(br.reused_maps().len(), MAP_NAMES.len());
    assert_eq!(m.ctl().unwrap().flags, 1);
    br.detach_and_unpin().unwrap();
}

fn ct(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> CtKey {
    CtKey {
        src: a(src),
        dst: a(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        ..Default::default()
    }
}

/// A connection without translation (both entries), of `proto`.
fn plain_pair(src: &str, dst: &str, proto: u8, state: u8, t: u64) -> [(CtKey, CtEntry); 2] {
    let ok = ct(src, 1000, dst, 2000, proto);
    let oe = CtEntry {
        new_src: a(src),
        new_dst: a(dst),
        new_sport: 1000u16.to_be(),
        new_dport: 2000u16.to_be(),
        direction: CT_ORIGINAL,
        nat: 0,
        state,
        flags: 0,
        last_seen: t,
        created: router_common::conntrack::ct_ticks(t),
        route: Default::default(),
    };
    let rk = ct(dst, 2000, src, 1000, proto);
    let re = CtEntry {
        new_src: a(dst),
        new_dst: a(src),
        new_sport: 2000u16.to_be(),
        new_dport: 1000u16.to_be(),
        direction: CT_REPLY,
        ..oe
    };
    [(ok, oe), (rk, re)]
}

#[test]
fn gc_expires_idle_connections_only() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let mut br = BpfRouter::load("gc", &pins.0, 100).unwrap();
    let t0 = monotonic_ns();
    let sec = 1_000_000_000;
    let old_udp = plain_pair("81.1.180.12", "192.168.1.15", 17, TCP_NONE, t0);
    let fresh_udp = plain_pair("81.1.180.13", "192.168.1.15", 17, TCP_NONE, t0 + 25 * sec);
    let old_tcp = plain_pair("81.1.180.14", "192.168.1.15", 6, TCP_ESTABLISHED, t0);
    // Replied 25 s in: its original entry alone looks idle, the connection
    // is not (the GC pairs an old entry with its fresh partner).
    let mut half = plain_pair("81.1.180.16", "192.168.1.15", 17, TCP_NONE, t0);
    half[1].1.last_seen = t0 + 25 * sec;
    for (k, e) in old_udp
        .iter()
        .chain(&fresh_udp)
        .chain(&old_tcp)
        .chain(&half)
    {
        br.ct_insert(k, e).unwrap();
    }
    // An orphan reply entry (its original was evicted), idle too long.
    let orphan = plain_pair("81.1.180.15", "192.168.1.15", 1, TCP_NONE, t0)[1];
    br.ct_insert(&orphan.0, &orphan.1).unwrap();
    assert_eq!(br.flows().unwrap().len(), 4);

    assert_eq!(br.gc(t0 + 10 * sec).unwrap(), 0);
    assert_eq!(
        br.gc(t0 + 31 * sec).unwrap(),
        3,
        "old UDP pair and the orphan"
    );
    let left = br.ct_entries().unwrap();
    assert_eq!(left.len(), 6);
    assert!(left.contains_key(&fresh_udp[0].0) && left.contains_key(&fresh_udp[1].0));
    assert!(left.contains_key(&old_tcp[0].0) && left.contains_key(&old_tcp[1].0));
    assert!(left.contains_key(&half[0].0) && left.contains_key(&half[1].0));
    // Established TCP lasts a day; the replied UDP pair 60 s.
    assert_eq!(br.gc(t0 + 3600 * sec).unwrap(), 4);
    assert_eq!(br.gc(t0 + 25 * 3600 * sec).unwrap(), 2);
    assert!(br.ct_entries().unwrap().is_empty());
    assert_eq!(br.ct().unwrap().count(), (0, 0), "no freed slot left");
    br.detach_and_unpin().unwrap();
}

/// The table through its mapping: what is inserted is read back exactly,
/// many connections over many windows.
#[test]
fn connection_table_is_read_through_its_mapping() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let mut br = BpfRouter::load("batch", &pins.0, 8192).unwrap();
    assert_eq!(br.ct().unwrap().slots(), 32768);
    let t = monotonic_ns();
    let mut want = super::flows::HashMap::default();
    for i in 0..10_000u32 {
        let src = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let (k, e) = plain_pair(&src, "192.168.1.15", 17, TCP_NONE, t)[0];
        br.ct_insert(&k, &e).unwrap();
        want.insert(k, e);
    }
    assert_eq!(br.ct_entries().unwrap(), want);
    assert_eq!(super::pinned::count(&pins.0, "batch").unwrap(), (0, 10_000));
    br.detach_and_unpin().unwrap();
}

/// `n` keys whose windows start at the same slot of a table of `mask + 1`
/// slots, and that slot.
fn same_home(mask: u32, n: usize) -> (u32, Vec<CtKey>) {
    let home = ct("10.0.0.1", 1, "10.0.0.2", 80, 17).home(mask);
    let keys: Vec<CtKey> = (0..u16::MAX as u32 * 4)
        .map(|n| ct("10.0.0.1", n as u16, "10.0.0.2", 80 + (n >> 16) as u16, 17))
        .filter(|k| k.home(mask) == home)
        .take(n)
        .collect();
    assert_eq!(keys.len(), n);
    (home, keys)
}

/// A key's window: keys of one window fill it, the next one is refused;
/// a freed slot is reused, and keys past it are still found (a freed slot
/// does not end a lookup, a never-used one does).
#[test]
fn a_full_window_refuses_and_a_freed_slot_is_reused() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let br = BpfRouter::load("window", &pins.0, 1024).unwrap();
    let t = br.ct().unwrap();
    let mask = t.slots() - 1;
    let (home, keys) = same_home(mask, router_common::conntrack::CT_WINDOW as usize + 1);
    let e = plain_pair("10.0.0.1", "10.0.0.2", 17, TCP_NONE, monotonic_ns())[0].1;
    let (last, fill) = keys.split_last().unwrap();
    for k in fill {
        t.insert(k, &e).unwrap();
    }
    assert_eq!(
        t.insert(&fill[0], &e),
        Err(super::table::NotInserted::Present)
    );
    assert_eq!(t.insert(last, &e), Err(super::table::NotInserted::Full));
    assert!(t.remove(&fill[3]));
    assert!(!t.remove(&fill[3]));
    assert!(t.get(&fill[3]).is_none());
    assert!(
        fill[4..].iter().all(|k| t.get(k).is_some()),
        "found past a freed slot"
    );
    t.insert(last, &e).unwrap();
    assert_eq!(t.find(last), Some((home + 3) & mask));
    assert_eq!(t.count(), (router_common::conntrack::CT_WINDOW as u64, 0));
    drop(t);
    br.detach_and_unpin().unwrap();
}

/// Freed slots before a never-used one become never-used again (a lookup
/// that misses then stops there, not at the window's end); freed slots
/// before held ones stay freed, and every key stays found.
#[test]
fn freed_slots_before_a_never_used_one_are_reclaimed() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let br = BpfRouter::load("reclaim", &pins.0, 1024).unwrap();
    let t = br.ct().unwrap();
    let (_, keys) = same_home(t.slots() - 1, 10);
    let e = plain_pair("10.0.0.1", "10.0.0.2", 17, TCP_NONE, monotonic_ns())[0].1;
    for k in &keys {
        t.insert(k, &e).unwrap();
    }
    for i in [3, 4, 8, 9] {
        assert!(t.remove(&keys[i]));
    }
    assert_eq!(t.count(), (6, 4));
    // Slots 9 and 8 of the window (9 before a never-used slot, then 8
    // before 9); 3 and 4 are on the way to 5.
    assert_eq!(t.reclaim(0..t.slots()), 2);
    assert_eq!(t.count(), (6, 2));
    assert_eq!(t.reclaim(0..t.slots()), 0);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(t.get(k).is_some(), ![3, 4, 8, 9].contains(&i), "key {i}");
    }
    // The last held key goes: the run before it goes with it.
    assert!(t.remove(&keys[7]) && t.remove(&keys[6]) && t.remove(&keys[5]));
    assert_eq!(t.reclaim(0..t.slots()), 5);
    assert_eq!(t.count(), (3, 0));
    assert!(keys[..3].iter().all(|k| t.get(k).is_some()));
    drop(t);
    br.detach_and_unpin().unwrap();
}

/// The daemon's GC goes through the pinned table, off its event loop: same
/// rules as `BpfRouter::gc`.
#[test]
fn gc_through_the_pinned_table() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let mut br = BpfRouter::load("gcpin", &pins.0, 100).unwrap();
    let t0 = monotonic_ns();
    let sec = 1_000_000_000;
    let old = plain_pair("81.1.180.12", "192.168.1.15", 17, TCP_NONE, t0);
    let fresh = plain_pair("81.1.180.13", "192.168.1.15", 17, TCP_NONE, t0 + 25 * sec);
    for (k, e) in old.iter().chain(&fresh) {
        br.ct_insert(k, e).unwrap();
    }
    assert_eq!(
        super::pinned::gc(&pins.0, "gcpin", t0 + 31 * sec).unwrap(),
        2
    );
    let left = br.ct_entries().unwrap();
    assert!(left.contains_key(&fresh[0].0) && left.contains_key(&fresh[1].0) && left.len() == 2);
    br.detach_and_unpin().unwrap();
}

/// The daemon's GC works a slice at a time: given no time, a run reads one
/// batch and the next run resumes after it; over the runs exactly the idle
/// connections go, even those whose two entries sit in different batches.
#[test]
fn gc_pass_resumes_slice_by_slice() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let id = "gcslice";
    let mut br = BpfRouter::load(id, &pins.0, 10_000).unwrap();
    let now = monotonic_ns();
    let idle = now.saturating_sub(200 * 1_000_000_000);
    let addr = |i: u32| format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    let (mut old, mut fresh) = (Vec::new(), Vec::new());
    for i in 1..=3000u32 {
        old.extend(plain_pair(&addr(i), "192.168.1.15", 17, TCP_NONE, idle));
        fresh.extend(plain_pair(
            &addr(100_000 + i),
            "192.168.1.15",
            17,
            TCP_NONE,
            now,
        ));
    }
    for (k, e) in old.iter().chain(&fresh) {
        br.ct_insert(k, e).unwrap();
    }
    let mut pass = super::gc::GcPass::new([id.to_string()]);
    let mut runs = 0;
    while !pass.is_done() && runs < 100 {
        assert!(pass.run(&pins.0, std::time::Duration::ZERO).is_empty());
        runs += 1;
    }
    assert!(pass.is_done(), "the pass did not end in 100 runs");
    // 65,536 slots are 16 chunks.
    assert!(runs >= 16, "the pass took {runs} runs: it was not sliced");
    // Every fresh entry and at least one of each idle pair was read.
    assert!(
        (9000..=12_000).contains(&pass.scanned),
        "{} read",
        pass.scanned
    );
    assert_eq!(pass.deleted, 6000);
    let left = br.ct_entries().unwrap();
    assert_eq!(left.len(), 6000);
    assert!(fresh.iter().all(|(k, _)| left.contains_key(k)));
    // What the metrics count: none established, 6000 embryonic entries.
    assert_eq!(super::pinned::count(&pins.0, id).unwrap(), (0, 6000));
    // A router removed while its pass is under way is left out quietly.
    let mut gone = super::gc::GcPass::new(["never-loaded".to_string()]);
    assert!(gone.run(&pins.0, std::time::Duration::ZERO).is_empty());
    assert!(gone.is_done());
    br.detach_and_unpin().unwrap();
}

#[test]
fn flush_address_removes_its_connections() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let mut br = BpfRouter::load("flush", &pins.0, 100).unwrap();
    let t = monotonic_ns();
    // DNAT to a floating IP: 192.168.1.15 -> 192.168.1.104 => 91.1.180.14.
    let dk = ct("192.168.1.15", 5555, "192.168.1.104", 22, 6);
    let de = CtEntry {
        new_src: a("192.168.1.15"),
        new_dst: a("91.1.180.14"),
        new_sport: 5555u16.to_be(),
        new_dport: 22u16.to_be(),
        direction: CT_ORIGINAL,
        nat: NAT_DNAT,
        state: TCP_ESTABLISHED,
        flags: 0,
        last_seen: t,
        created: router_common::conntrack::ct_ticks(t),
        route: Default::default(),
    };
    let rk = super::flows::partner(&dk, &de);
    let re = CtEntry {
        new_src: a("192.168.1.104"),
        new_dst: a("192.168.1.15"),
        new_sport: 22u16.to_be(),
        new_dport: 5555u16.to_be(),
        direction: CT_REPLY,
        ..de
    };
    assert_eq!(super::flows::partner(&rk, &re), dk);
    let snat = super::flows::snat_pair(
        a("81.1.180.12"),
        40000,
        a("192.168.1.15"),
        80,
        a("192.168.1.110"),
        51123,
        t,
    );
    for (k, e) in [(dk, de), (rk, re)].iter().chain(&snat) {
        br.ct_insert(k, e).unwrap();
    }
    assert_eq!(br.flush_address("10.0.0.1".parse().unwrap()).unwrap(), 0);
    assert_eq!(
        br.flush_address("192.168.1.104".parse().unwrap()).unwrap(),
        2
    );
    let left = br.ct_entries().unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.contains_key(&snat[0].0));
    // The gateway IP appears only in the translated tuple / reply key.
    assert_eq!(
        br.flush_address("192.168.1.110".parse().unwrap()).unwrap(),
        2
    );
    assert!(br.ct_entries().unwrap().is_empty());
    br.detach_and_unpin().unwrap();
}

#[test]
fn attach_is_idempotent_pinned_and_taken_over() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let ns = Ns::new();
    ns.ip("link add qr-t1 type veth peer name qg-t1");
    ns.ip("link add tapt1 type veth peer name tapt2");
    for d in ["qr-t1", "qg-t1", "tapt1", "tapt2"] {
        ns.ip(&format!("link set {d} up"));
    }
    let qr = ns.ifindex("qr-t1");
    let qg = ns.ifindex("qg-t1");
    let tap = ns.ifindex("tapt1");
    let devs = vec![("qr-t1".to_string(), qr), ("qg-t1".to_string(), qg)];
    let links = pins.0.join("att").join(LINKS_DIR);

    let mut br = BpfRouter::load("att", &pins.0, 100).unwrap();
    br.attach(&ns.0, &devs, Hook::Xdp).expect("attach");
    let names = |br: &BpfRouter| br.links().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(
        names(&br),
        [
            "qg-t1_out",
            "qg-t1_tc",
            "qg-t1_xdp",
            "qr-t1_out",
            "qr-t1_tc",
            "qr-t1_xdp"
        ]
    );
    for n in names(&br) {
        assert!(links.join(&n).exists(), "{n} pinned");
    }
    assert!(ns.has_xdp("qr-t1") && ns.has_xdp("qg-t1"));
    assert_eq!(ns.tcx_count("qr-t1"), 1);
    assert_eq!(ns.tcx_count_at("qr-t1", TcAttachType::Egress), 1);

    // Twice: nothing stacks.
    br.attach(&ns.0, &devs, Hook::Xdp).unwrap();
    assert_eq!(ns.tcx_count("qr-t1"), 1);
    assert_eq!(ns.tcx_count_at("qr-t1", TcAttachType::Egress), 1);
    assert_eq!(br.links().len(), 6);

    // A wrong ifindex is refused.
    let bad = vec![("qr-t1".to_string(), qr + 1000)];
    assert!(br.attach(&ns.0, &bad, Hook::Tc).is_err());

    // TC only, one device: the rest is detached and unpinned.
    br.attach(&ns.0, &devs[..1], Hook::Tc).unwrap();
    assert_eq!(names(&br), ["qr-t1_out", "qr-t1_tc"]);
    assert!(!ns.has_xdp("qr-t1") && !ns.has_xdp("qg-t1"));
    assert_eq!(ns.tcx_count("qg-t1"), 0);
    assert_eq!(ns.tcx_count_at("qg-t1", TcAttachType::Egress), 0);
    assert!(!links.join("qg-t1_tc").exists() && !links.join("qr-t1_xdp").exists());

    // Taps: attach_taps works in the caller's namespace, here the test one.
    br.attach(&ns.0, &devs, Hook::Xdp).unwrap();
    let taps = vec![("tapt1".to_string(), tap)];
    let br_ref = &mut br;
    in_netns(&ns.0, move || br_ref.attach_taps(&taps))
        .unwrap()
        .unwrap();
    assert!(ns.has_xdp("tapt1"));
    assert!(links.join("tapt1_pass").exists());

    // The daemon exits: everything stays attached.
    let link_id = |n: &str| {
        let l: aya::programs::links::FdLink =
            aya::programs::links::PinnedLink::from_pin(links.join(n))
                .unwrap()
                .into();
        let info = l.info().unwrap();
        (info.id(), info.program_id())
    };
    let (xdp_link, xdp_prog) = link_id("qr-t1_xdp");
    assert!(
        !ns.ip("link show dev qr-t1").contains("xdpgeneric"),
        "native XDP"
    );
    drop(br);
    assert!(ns.has_xdp("qr-t1") && ns.has_xdp("tapt1"));
    assert_eq!(ns.tcx_count("qr-t1"), 1);

    // A new run takes the links over instead of stacking new ones.
    let mut br = BpfRouter::load("att", &pins.0, 100).unwrap();
    br.attach(&ns.0, &devs, Hook::Xdp).unwrap();
    assert_eq!(ns.tcx_count("qr-t1"), 1);
    assert_eq!(br.links().len(), 6);
    let (xdp_link2, xdp_prog2) = link_id("qr-t1_xdp");
    assert_eq!(xdp_link2, xdp_link, "same link, taken over");
    assert_ne!(xdp_prog2, xdp_prog, "new program swapped in");
    let taps = vec![("tapt1".to_string(), tap)];
    let br_ref = &mut br;
    in_netns(&ns.0, move || br_ref.attach_taps(&taps))
        .unwrap()
        .unwrap();
    assert_eq!(br.links().len(), 7);

    // A device recreated (new ifindex): its defunct pinned link is replaced.
    drop(br);
    ns.ip("link del qr-t1");
    ns.ip("link add qr-t1 type veth peer name qg-t1");
    let qr2 = ns.ifindex("qr-t1");
    let qg2 = ns.ifindex("qg-t1");
    let devs2 = vec![("qr-t1".to_string(), qr2), ("qg-t1".to_string(), qg2)];
    let mut br = BpfRouter::load("att", &pins.0, 100).unwrap();
    br.attach(&ns.0, &devs2, Hook::Xdp).unwrap();
    assert!(ns.has_xdp("qr-t1"));
    assert_eq!(ns.tcx_count("qr-t1"), 1);

    br.detach_and_unpin().unwrap();
    assert!(!ns.has_xdp("qr-t1") && !ns.has_xdp("tapt1"));
    assert_eq!(ns.tcx_count("qr-t1"), 0);
    assert_eq!(ns.tcx_count_at("qr-t1", TcAttachType::Egress), 0);
    assert!(!pins.0.join("att").exists());
}

/// The programs the kernel holds for a router (those bound to one of its
/// maps: all but `xr_pass`), by name, as `bpftool prog show` lists them.
fn router_programs(pins: &Path, router: &str) -> Vec<String> {
    let maps: Vec<u32> = MAP_NAMES
        .iter()
        .map(|m| {
            aya::maps::MapInfo::from_pin(pins.join(router).join(m))
                .unwrap()
                .id()
        })
        .collect();
    let mut names: Vec<String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.iter().any(|i| maps.contains(i)))
        })
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// A router on TC has only the TC programs loaded (verifying `xr_xdp` is
/// most of a router's load time); putting it on XDP loads the XDP ones.
#[test]
fn a_router_on_tc_loads_no_xdp_program() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let ns = Ns::new();
    ns.ip("link add qr-l1 type veth peer name qg-l1");
    ns.ip("link add tapl1 type veth peer name tapl2");
    for d in ["qr-l1", "qg-l1", "tapl1", "tapl2"] {
        ns.ip(&format!("link set {d} up"));
    }
    let devs = vec![
        ("qr-l1".to_string(), ns.ifindex("qr-l1")),
        ("qg-l1".to_string(), ns.ifindex("qg-l1")),
    ];
    let mut br = BpfRouter::load("lazy", &pins.0, 100).unwrap();
    assert_eq!(router_programs(&pins.0, "lazy"), ["xr_tc", "xr_tc_out"]);
    br.attach(&ns.0, &devs, Hook::Tc).unwrap();
    assert_eq!(router_programs(&pins.0, "lazy"), ["xr_tc", "xr_tc_out"]);
    assert!(!ns.has_xdp("qr-l1"));

    br.attach(&ns.0, &devs, Hook::Xdp).unwrap();
    assert_eq!(
        router_programs(&pins.0, "lazy"),
        ["xr_tc", "xr_tc_out", "xr_xdp"]
    );
    assert!(ns.has_xdp("qr-l1") && ns.has_xdp("qg-l1"));
    let taps = vec![("tapl1".to_string(), ns.ifindex("tapl1"))];
    let br_ref = &mut br;
    in_netns(&ns.0, move || br_ref.attach_taps(&taps))
        .unwrap()
        .unwrap();
    // (`xr_pass` uses no map: seen on the tap.)
    assert!(ns.has_xdp("tapl1"));
    // Back to TC and again to XDP: loaded once, attached again.
    br.attach(&ns.0, &devs, Hook::Tc).unwrap();
    assert!(!ns.has_xdp("qr-l1"));
    br.attach(&ns.0, &devs, Hook::Xdp).unwrap();
    assert!(ns.has_xdp("qr-l1"));
    br.detach_and_unpin().unwrap();
}

#[test]
fn neighbours_mirror_the_kernel_table() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let ns = Ns::new();
    ns.ip("link add qr-n1 type veth peer name qg-n1");
    ns.ip("link set qr-n1 up");
    ns.ip("addr add 10.1.0.1/24 dev qr-n1");
    ns.ip("neigh replace 10.1.0.7 lladdr 02:00:00:00:00:07 dev qr-n1 nud permanent");
    ns.ip("neigh replace 10.1.0.8 lladdr 02:00:00:00:00:08 dev qr-n1 nud stale");
    ns.ip("neigh replace 10.1.0.9 dev qr-n1 nud failed");
    let idx = ns.ifindex("qr-n1");
    let mut br = BpfRouter::load("nb", &pins.0, 10).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = rt.block_on(br.sync_neighbours(&ns.0)).unwrap();
    assert_eq!(n, 3);
    assert_eq!(rt.block_on(br.sync_neighbours(&ns.0)).unwrap(), 0);
    let dump = rt.block_on(dump_neighbours(&ns.0)).unwrap();
    let k = |addr| router_common::port::NeighKey {
        ifindex: idx,
        addr: a(addr),
    };
    assert_eq!(dump[&k("10.1.0.7")].mac(), Some([2, 0, 0, 0, 0, 7]));
    // Failed: packets to it are answered "host unreachable".
    assert_eq!(dump[&k("10.1.0.9")], router_common::port::Neigh::FAILED);
    // Probed again, it stays failed until it answers; a next hop being
    // resolved for the first time is not in the map.
    ns.ip("neigh replace 10.1.0.9 dev qr-n1 nud incomplete");
    ns.ip("neigh replace 10.1.0.10 dev qr-n1 nud incomplete");
    assert_eq!(rt.block_on(br.sync_neighbours(&ns.0)).unwrap(), 0);
    ns.ip("neigh replace 10.1.0.9 lladdr 02:00:00:00:00:09 dev qr-n1 nud reachable");
    assert_eq!(rt.block_on(br.sync_neighbours(&ns.0)).unwrap(), 1);
    // No longer answering at its MAC (a VM given another): resolved afresh
    // by the next packet, not answered; failed again only if that fails.
    use super::neigh::NeighMaps as _;
    let held = |br: &BpfRouter| br.current().unwrap().get(&k("10.1.0.9")).copied();
    ns.ip("neigh replace 10.1.0.9 dev qr-n1 nud failed");
    assert_eq!(rt.block_on(br.sync_neighbours(&ns.0)).unwrap(), 1);
    assert_eq!(rt.block_on(br.sync_neighbours(&ns.0)).unwrap(), 0);
    assert_eq!(held(&br), Some(router_common::port::Neigh::RETRY));
    ns.ip("neigh replace 10.1.0.9 dev qr-n1 nud incomplete");
    rt.block_on(br.sync_neighbours(&ns.0)).unwrap();
    assert_eq!(held(&br), None);
    ns.ip("neigh replace 10.1.0.9 dev qr-n1 nud failed");
    rt.block_on(br.sync_neighbours(&ns.0)).unwrap();
    assert_eq!(held(&br), Some(router_common::port::Neigh::FAILED));
    ns.ip("neigh del 10.1.0.8 dev qr-n1");
    assert_eq!(rt.block_on(br.sync_neighbours(&ns.0)).unwrap(), 1);
    br.detach_and_unpin().unwrap();
}

/// Loads ahead of the apply: each router's object comes back loaded as
/// asked (the XDP programs only with `xdp`), a router loading or with pins
/// is not loaded again, a failed load hands its error to the apply, and
/// what is left at the end is waited for (its pins stay, for the caller).
#[test]
fn loads_ahead_come_back_loaded_and_skip_pinned_routers() {
    if !can_run() {
        return;
    }
    let pins = PinDir::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::fs::create_dir_all(pins.0.join("ahead-pinned")).unwrap();
    rt.block_on(async {
        let mut p = preload::Preloads::default();
        assert!(p.parallel() >= 1 && p.parallel() <= preload::MAX_PARALLEL);
        assert!(p.start("ahead-tc", &pins.0, 100, false));
        assert!(!p.start("ahead-tc", &pins.0, 100, false), "loading already");
        assert!(p.start("ahead-xdp", &pins.0, 100, true));
        assert!(!p.start("ahead-pinned", &pins.0, 100, false), "has pins");
        assert!(p.start("ahead-bad", &pins.0, 0, false));
        assert!(p.start("ahead-left", &pins.0, 100, false));

        let tc = p.take("ahead-tc").await.unwrap().unwrap();
        assert_eq!(router_programs(&pins.0, "ahead-tc"), ["xr_tc", "xr_tc_out"]);
        let xdp = p.take("ahead-xdp").await.unwrap().unwrap();
        assert_eq!(
            router_programs(&pins.0, "ahead-xdp"),
            ["xr_tc", "xr_tc_out", "xr_xdp"]
        );
        let Some(Err(bad)) = p.take("ahead-bad").await else {
            panic!("a load of a table of 0 connections succeeded");
        };
        assert!(
            format!("{bad:#}").contains("a connection table of 0 connections"),
            "{bad:#}"
        );
        assert!(p.take("ahead-pinned").await.is_none());
        assert!(p.take("ahead-tc").await.is_none(), "taken once");
        assert_eq!(p.drain().await, ["ahead-left"]);
        assert!(pins.0.join("ahead-left").join(XR_CT).exists());
        assert!(p.drain().await.is_empty());
        tc.detach_and_unpin().unwrap();
        xdp.detach_and_unpin().unwrap();
        remove_pins(&pins.0, "ahead-left").unwrap();
    });
}
