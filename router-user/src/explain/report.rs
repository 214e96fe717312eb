//! The stages of a packet reconstructed from what a run showed, as one
//! line per stage for a terminal or as JSON with stable field names.

use std::{collections::HashMap, fmt::Write as _, net::Ipv4Addr};

use router_common::{
    config::{
        MARK_ANSWER_ONLY, MARK_MASK, MARK_TRANSLATED, MARK_TRANSLATED_ANSWER,
        MARK_TRANSLATED_UNREACHABLE, MARK_UNREACHABLE,
    },
    conntrack::{
        CT_REPLY, CtEntry, CtKey, NAT_DNAT, NAT_SNAT, TCP_CLOSED, TCP_ESTABLISHED, TCP_FIN,
        TCP_NONE, TCP_SYN_SENT,
    },
    counters::Outcome,
    port::{Neigh, NeighKey},
    route::flow_hash,
};
use serde::Serialize;

use super::{
    frame::{self, Headers, PROTO_ICMP, PROTO_TCP},
    run::{self, HookRun, Observed},
};
use crate::{backend::bpf::Desired, model::Mac};

/// A router port as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PortView {
    pub device: String,
    pub ifindex: u32,
    /// "internal" (qr-) or "gateway" (qg-).
    pub role: String,
    pub mac: String,
}

/// What the report is built from besides the run.
pub struct Context<'a> {
    pub router: &'a str,
    pub plane: &'a str,
    pub ingress: PortView,
    pub ports: Vec<PortView>,
    pub maps: &'a Desired,
    pub neigh: &'a HashMap<NeighKey, Neigh>,
    pub frame_in: &'a [u8],
    /// The attached programs are this build's (None: unknown).
    pub same_build: Option<bool>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tuple {
    pub proto: String,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.proto == "icmp" {
            write!(f, "icmp {} -> {} id {}", self.src, self.dst, self.sport)
        } else {
            write!(
                f,
                "{} {}:{} -> {}:{}",
                self.proto, self.src, self.sport, self.dst, self.dport
            )
        }
    }
}

fn key_tuple(k: &CtKey) -> Tuple {
    Tuple {
        proto: frame::proto_name(k.proto),
        src: k.src.into(),
        sport: u16::from_be(k.sport),
        dst: k.dst.into(),
        dport: u16::from_be(k.dport),
    }
}

fn new_tuple(k: &CtKey, e: &CtEntry) -> Tuple {
    Tuple {
        proto: frame::proto_name(k.proto),
        src: e.new_src.into(),
        sport: u16::from_be(e.new_sport),
        dst: e.new_dst.into(),
        dport: u16::from_be(e.new_dport),
    }
}

/// One connection-table entry.
#[derive(Clone, Debug, Serialize)]
pub struct CtEntryView {
    /// "established" or "embryonic".
    pub table: &'static str,
    /// "original" or "reply".
    pub direction: &'static str,
    pub tuple: Tuple,
    pub translated: Tuple,
    /// TCP: NONE, SYN_SENT, ESTABLISHED, FIN, CLOSED; others: UNREPLIED
    /// or REPLIED.
    pub state: String,
    pub snat: bool,
    pub dnat: bool,
}

fn entry_view(k: &CtKey, established: bool, e: &CtEntry) -> CtEntryView {
    let state = if k.proto == PROTO_TCP {
        match e.state {
            TCP_NONE => "NONE",
            TCP_SYN_SENT => "SYN_SENT",
            TCP_ESTABLISHED => "ESTABLISHED",
            TCP_FIN => "FIN",
            TCP_CLOSED => "CLOSED",
            _ => "?",
        }
    } else if e.flags & router_common::conntrack::CT_F_REPLIED != 0 {
        "REPLIED"
    } else {
        "UNREPLIED"
    };
    CtEntryView {
        table: if established {
            "established"
        } else {
            "embryonic"
        },
        direction: if e.direction == CT_REPLY {
            "reply"
        } else {
            "original"
        },
        tuple: key_tuple(k),
        translated: new_tuple(k, e),
        state: state.into(),
        snat: e.nat & NAT_SNAT != 0,
        dnat: e.nat & NAT_DNAT != 0,
    }
}

impl std::fmt::Display for CtEntryView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nat = match (self.snat, self.dnat) {
            (true, true) => "snat+dnat",
            (true, false) => "snat",
            (false, true) => "dnat",
            (false, false) => "no nat",
        };
        write!(
            f,
            "{} => {}  {} {}, {} direction, {}",
            self.tuple, self.translated, self.state, nat, self.direction, self.table
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub tuple: Tuple,
    pub change: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConntrackView {
    /// The packet's own tuple, as the table keys it (None: the packet
    /// has none, e.g. not IPv4).
    pub key: Option<Tuple>,
    /// The entry the packet matched, as it was before.
    pub found: Option<CtEntryView>,
    /// Entries the packet created.
    pub created: Vec<CtEntryView>,
    /// Entries it changed (state, established).
    pub changed: Vec<Change>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
    /// Why this address: "gateway address", "floating IP of ...", ...
    pub why: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NatView {
    pub source: Option<Rewrite>,
    pub destination: Option<Rewrite>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteView {
    /// The destination looked up (after DNAT).
    pub destination: Ipv4Addr,
    /// None: no route.
    pub prefix: Option<String>,
    /// The route's gateway (None: on-link).
    pub via: Option<Ipv4Addr>,
    pub nexthop: Option<Ipv4Addr>,
    pub egress: Option<String>,
    /// Next hops of the route (ECMP: the packet's flow hash picks one).
    pub paths: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookView {
    pub program: &'static str,
    pub return_code: u32,
    /// XDP_PASS, TC_ACT_REDIRECT, ...
    #[serde(rename = "return")]
    pub action: String,
    /// The counter it moved (`xrouter show stats` names).
    pub outcome: Option<&'static str>,
    pub conntrack_events: Vec<&'static str>,
    /// TC: the skb mark's high 16 bits (xrouter's), as hex.
    pub mark: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PacketView {
    /// The packet in the spec's syntax, with TTL, length and MACs.
    pub summary: String,
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EgressView {
    pub device: String,
    pub ifindex: u32,
    pub src_mac: String,
    /// None: the next hop's MAC is not in the neighbours map yet (TC's
    /// `bpf_redirect_neigh` resolves it).
    pub dst_mac: Option<String>,
    /// "xr_xdp" (written into the frame) or "bpf_redirect_neigh" (the
    /// kernel writes them as it sends).
    pub macs_written_by: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerdictView {
    /// forwarded, dropped, kernel, answered.
    pub kind: &'static str,
    /// The outcome counter's name, as `xrouter show stats` prints it.
    pub outcome: Option<&'static str>,
    pub program: &'static str,
    pub meaning: String,
}

/// The whole explanation.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub router: String,
    pub plane: String,
    pub ingress: PortView,
    pub input: PacketView,
    pub hooks: Vec<HookView>,
    pub conntrack: ConntrackView,
    pub nat: NatView,
    pub route: Option<RouteView>,
    /// The frame as the last program left it (None: dropped).
    pub output: Option<PacketView>,
    /// Fields the programs rewrote ("ttl 64 -> 63", ...).
    pub rewritten: Vec<String>,
    pub egress: Option<EgressView>,
    pub verdict: VerdictView,
    /// The programs attached at the port are the build that ran here
    /// (same kernel tags); null when their tags could not be read.
    pub same_build: Option<bool>,
    pub notes: Vec<String>,
}

fn action_name(program: &str, ret: u32) -> String {
    let name = if program == crate::backend::bpf::PROG_XDP {
        match ret {
            0 => "XDP_ABORTED",
            run::XDP_DROP => "XDP_DROP",
            run::XDP_PASS => "XDP_PASS",
            run::XDP_TX => "XDP_TX",
            run::XDP_REDIRECT => "XDP_REDIRECT",
            _ => "?",
        }
    } else {
        match ret {
            run::TC_ACT_OK => "TC_ACT_OK",
            run::TC_ACT_SHOT => "TC_ACT_SHOT",
            run::TC_ACT_REDIRECT => "TC_ACT_REDIRECT",
            u32::MAX => "TC_ACT_UNSPEC",
            _ => "?",
        }
    };
    name.into()
}

/// What an outcome means for the packet, in a phrase.
pub fn meaning(o: Outcome) -> &'static str {
    match o {
        Outcome::FwdXdp => "forwarded by XDP",
        Outcome::FwdTc => "forwarded by TC",
        Outcome::ToTc => "left by XDP to TC",
        Outcome::KernelNotIpv4 => "not IPv4 (ARP, IPv6): the kernel's",
        Outcome::KernelLocal => {
            "for the router itself (its addresses, a subnet broadcast, broadcast or multicast, metadata): the kernel's"
        }
        Outcome::KernelTtl => {
            "TTL expires here: handed to the kernel, which answers time exceeded and never forwards it"
        }
        Outcome::KernelOptions => {
            "IPv4 options: translated, then forwarded by the kernel untracked"
        }
        Outcome::KernelNoRoute => {
            "no route: handed to the kernel untranslated, which answers unreachable and never forwards it"
        }
        Outcome::KernelNotPort => "the device is not a port of this router: the kernel's",
        Outcome::KernelProto => {
            "a protocol the programs do not translate: the kernel owns the flow"
        }
        Outcome::DropMalformed => "dropped: truncated or malformed headers",
        Outcome::DropNoPort => "dropped: no free SNAT port",
        Outcome::KernelErrorTranslated => "the kernel's ICMP error, its quote translated back",
        Outcome::DropCtFull => "dropped: the connection table refused the entry",
        Outcome::KernelNeigh => {
            "the next hop does not answer ARP: handed to the kernel, which answers host unreachable and never forwards it"
        }
        Outcome::KernelMtu => {
            "DF and over the egress MTU: handed to the kernel, which answers fragmentation needed"
        }
        Outcome::ArpReplied => "an ARP request for a floating IP: answered by the program",
        Outcome::KernelFragment => {
            "over the egress MTU without DF: translated, then fragmented by the kernel untracked"
        }
        Outcome::KernelVlan => "tagged with a VLAN id: the kernel's (it drops it)",
        Outcome::KernelIcmpUntracked => {
            "an ICMP error across the gateway port about no tracked connection: the kernel's"
        }
        Outcome::DropOtherHost => "dropped: the frame is for another host's MAC",
        Outcome::DropMartianSrc => "dropped: martian source address",
        Outcome::DropSpoofedSrc => {
            "dropped: the source is one of the router's own addresses or floating IPs"
        }
        Outcome::DropMartianDst => "dropped: martian destination address",
        Outcome::DropTcpInvalid => {
            "dropped: a TCP segment that opens nothing (not a SYN, not a picked-up ACK), without a connection, where NAT applies"
        }
        Outcome::DropFragment => "dropped: a fragment whose first fragment was not seen",
        Outcome::DropNewRate => "dropped: over the router's budget of new connections per second",
    }
}

fn kind_of(o: Outcome) -> &'static str {
    let n = o.name();
    if n.starts_with("forwarded/") {
        "forwarded"
    } else if n.starts_with("drop/") {
        "dropped"
    } else if n.starts_with("arp/") {
        "answered"
    } else {
        "kernel"
    }
}

/// Outcomes the program reaches after (or at) its route lookup.
fn routed(o: Outcome) -> bool {
    matches!(
        o,
        Outcome::FwdXdp
            | Outcome::FwdTc
            | Outcome::KernelNoRoute
            | Outcome::KernelMtu
            | Outcome::KernelTtl
            | Outcome::KernelFragment
            | Outcome::KernelOptions
            | Outcome::KernelNeigh
            | Outcome::DropNoPort
            | Outcome::DropCtFull
            | Outcome::DropTcpInvalid
    )
}

fn mark_meaning(mark: u32) -> Option<&'static str> {
    match mark & MARK_MASK {
        MARK_TRANSLATED => Some("mark 0x78720000: translated, forwarded untracked"),
        MARK_ANSWER_ONLY => Some("mark 0x78650000: answer only"),
        MARK_TRANSLATED_ANSWER => Some("mark 0x78610000: translated back, answer only"),
        MARK_UNREACHABLE => Some("mark 0x78680000: answer host unreachable"),
        MARK_TRANSLATED_UNREACHABLE => {
            Some("mark 0x78750000: translated back, answer host unreachable")
        }
        _ => None,
    }
}

/// Longest-prefix match in the router's routes, as the program's trie.
fn lpm(maps: &Desired, dst: Ipv4Addr) -> Option<((u32, [u8; 4]), router_common::route::Route)> {
    let d = u32::from(dst);
    maps.routes
        .iter()
        .filter(|((len, net), _)| {
            let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
            d & mask == u32::from_be_bytes(*net) & mask
        })
        .max_by_key(|((len, _), _)| *len)
        .map(|(k, v)| (*k, *v))
}

/// The program's ECMP choice: its flow hash over the packet as it came in
/// (raw network-order words, as the program reads them).
fn ecmp_index(ip: &frame::Ip, paths: usize) -> usize {
    let (sport, dport) = if ip.proto == PROTO_ICMP && !matches!(ip.icmp_type, Some(0 | 8)) {
        (0, 0)
    } else {
        (ip.sport.to_be(), ip.dport.to_be())
    };
    let src = u32::from_ne_bytes(ip.src.octets());
    let dst = u32::from_ne_bytes(ip.dst.octets());
    (flow_hash(src, dst, sport, dport) as usize) % paths.max(1)
}

/// The connection-table key of a packet (raw network order).
pub fn packet_key(ip: &frame::Ip) -> CtKey {
    CtKey::new(
        ip.src.octets(),
        ip.dst.octets(),
        ip.sport.to_be(),
        ip.dport.to_be(),
        ip.proto,
    )
}

fn port_name(ctx: &Context, ifindex: u32) -> String {
    ctx.ports
        .iter()
        .find(|p| p.ifindex == ifindex)
        .map(|p| p.device.clone())
        .unwrap_or_else(|| format!("ifindex {ifindex}"))
}

fn why_source(
    ctx: &Context,
    from: Ipv4Addr,
    to: Ipv4Addr,
    translated_port: bool,
    proto: u8,
) -> String {
    let c = &ctx.maps.config;
    let fip = ctx
        .maps
        .fip
        .get(&router_common::config::Ipv4 {
            addr: from.octets(),
        })
        .map(|f| Ipv4Addr::from(f.addr));
    if fip == Some(to) {
        format!("the floating IP of {from}")
    } else if to.octets() == c.gw_addr {
        if translated_port {
            format!(
                "the gateway address, a free {} of {}-{}",
                if proto == PROTO_ICMP {
                    "echo id"
                } else {
                    "port"
                },
                c.port_min,
                c.port_max
            )
        } else {
            "the gateway address".into()
        }
    } else {
        "back to the address the connection's other side used".into()
    }
}

fn why_destination(ctx: &Context, from: Ipv4Addr, to: Ipv4Addr) -> String {
    let fixed = ctx
        .maps
        .fip_rev
        .get(&router_common::config::Ipv4 {
            addr: from.octets(),
        })
        .map(|f| Ipv4Addr::from(f.addr));
    if fixed == Some(to) {
        format!("floating IP {from} -> its fixed IP")
    } else {
        "back to the connection's original source (reply)".into()
    }
}

fn endpoint(ip: Ipv4Addr, port: u16, proto: u8) -> String {
    if proto == PROTO_ICMP {
        format!("{ip} id {port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Builds the report of a run.
pub fn build(ctx: &Context, obs: &Observed) -> Report {
    let input_h = frame::read(ctx.frame_in);
    let input = PacketView {
        summary: match &input_h {
            Ok(h) => h.describe(),
            Err(e) => format!("unreadable frame ({e}); the programs decide what it is"),
        },
        headers: input_h.clone().ok(),
    };
    let in_ip = input_h.as_ref().ok().and_then(|h| h.ip.clone());
    let mut notes = ctx.notes.clone();

    let hooks: Vec<HookView> = obs
        .hooks
        .iter()
        .map(|h| HookView {
            program: h.program,
            return_code: h.ret,
            action: action_name(h.program, h.ret),
            outcome: h.outcomes.first().map(|o| o.name()),
            conntrack_events: h.events.iter().map(|e| e.name()).collect(),
            mark: h.mark.map(|m| format!("{:#010x}", m & MARK_MASK)),
        })
        .collect();
    let last: &HookRun = obs.hooks.last().expect("at least one program ran");
    let outcome = last.outcomes.first().copied();

    // Connection table.
    let mut ct = ConntrackView::default();
    let trackable = in_ip.as_ref().filter(|ip| {
        !ip.fragment && (ip.proto != PROTO_ICMP || matches!(ip.icmp_type, Some(0 | 8)))
    });
    let key = trackable.map(packet_key);
    if let Some(k) = &key {
        ct.key = Some(key_tuple(k));
        ct.found = obs.before.get(k).map(|(est, e)| entry_view(k, *est, e));
    }
    // New entries, and entries a new connection took the place of (a SYN
    // reopening a closed one: the same key, another connection).
    let replaced = |k: &CtKey, est: bool, e: &CtEntry| {
        obs.before.get(k).is_some_and(|(est0, e0)| {
            (*est0 && !est)
                || e.created != e0.created
                || (e.new_src, e.new_dst, e.new_sport, e.new_dport)
                    != (e0.new_src, e0.new_dst, e0.new_sport, e0.new_dport)
        })
    };
    let mut created: Vec<(CtKey, bool, CtEntry)> = obs
        .after
        .iter()
        .filter(|(k, (est, e))| !obs.before.contains_key(k) || replaced(k, *est, e))
        .map(|(k, (est, e))| (*k, *est, *e))
        .collect();
    created.sort_by_key(|(_, _, e)| e.direction);
    let new_snat = created.iter().any(|(_, _, e)| e.nat & NAT_SNAT != 0);
    ct.created = created
        .iter()
        .map(|(k, est, e)| entry_view(k, *est, e))
        .collect();
    for (k, (est, e)) in &obs.after {
        let Some((est0, e0)) = obs.before.get(k) else {
            continue;
        };
        if replaced(k, *est, e) {
            ct.changed.push(Change {
                tuple: key_tuple(k),
                change:
                    "closed both ways (or reset by this side): ended, a new connection in its place"
                        .into(),
            });
            continue;
        }
        let (v0, v1) = (entry_view(k, *est0, e0), entry_view(k, *est, e));
        if !est0 && *est {
            ct.changed.push(Change {
                tuple: key_tuple(k),
                change: "established: never evicted from now on".into(),
            });
        }
        if v0.state != v1.state {
            ct.changed.push(Change {
                tuple: key_tuple(k),
                change: format!("state {} -> {}", v0.state, v1.state),
            });
        }
    }
    // Entries that went: the other direction of a connection a SYN
    // reopened (its new one may have another key).
    for k in obs.before.keys().filter(|k| !obs.after.contains_key(k)) {
        ct.changed.push(Change {
            tuple: key_tuple(k),
            change: "removed".into(),
        });
    }

    // The entry the packet goes by after the run: its translation.
    let used = key.and_then(|k| obs.after.get(&k).map(|(_, e)| (k, *e)));
    let mut nat = NatView::default();
    if let (Some((k, e)), Some(ip)) = (used, &in_ip) {
        let t = new_tuple(&k, &e);
        // ICMP echo has one id (in both "ports"): its change belongs to the
        // side whose address changes, else to the sender's (request) or the
        // receiver's (reply).
        let (src_moved, dst_moved) = if ip.proto == PROTO_ICMP {
            let id_moved = t.sport != ip.sport;
            let reply = ip.icmp_type == Some(0);
            (
                t.src != ip.src || (id_moved && !reply && t.dst == ip.dst),
                t.dst != ip.dst || (id_moved && reply && t.src == ip.src),
            )
        } else {
            (
                t.src != ip.src || t.sport != ip.sport,
                t.dst != ip.dst || t.dport != ip.dport,
            )
        };
        if src_moved {
            nat.source = Some(Rewrite {
                from: endpoint(ip.src, ip.sport, ip.proto),
                to: endpoint(t.src, t.sport, ip.proto),
                why: why_source(ctx, ip.src, t.src, t.sport != ip.sport, ip.proto),
            });
        }
        if dst_moved {
            nat.destination = Some(Rewrite {
                from: endpoint(ip.dst, ip.dport, ip.proto),
                to: endpoint(t.dst, t.dport, ip.proto),
                why: why_destination(ctx, ip.dst, t.dst),
            });
        }
    }

    // Output frame, when the packet goes on (forwarded or to the kernel).
    let dropped = outcome.is_some_and(|o| kind_of(o) == "dropped");
    let out_h = (!dropped)
        .then(|| frame::read(&last.frame_out).ok())
        .flatten();
    let output = (!dropped).then(|| PacketView {
        summary: out_h
            .as_ref()
            .map(|h| h.describe())
            .unwrap_or_else(|| "unreadable".into()),
        headers: out_h.clone(),
    });
    let mut rewritten = Vec::new();
    if let (Ok(a), Some(b)) = (&input_h, &out_h) {
        if a.src_mac != b.src_mac {
            rewritten.push(format!(
                "source MAC {} -> {}",
                Mac(a.src_mac),
                Mac(b.src_mac)
            ));
        }
        if a.dst_mac != b.dst_mac {
            rewritten.push(format!(
                "destination MAC {} -> {}",
                Mac(a.dst_mac),
                Mac(b.dst_mac)
            ));
        }
        if a.vlans != b.vlans {
            rewritten.push(format!("VLAN tags {:?} -> {:?}", a.vlans, b.vlans));
        }
        if let (Some(x), Some(y)) = (&a.ip, &b.ip) {
            let mut pairs = vec![
                ("source", x.src.to_string(), y.src.to_string()),
                ("destination", x.dst.to_string(), y.dst.to_string()),
            ];
            if x.proto == PROTO_ICMP {
                pairs.push(("echo id", x.sport.to_string(), y.sport.to_string()));
            } else {
                pairs.push(("source port", x.sport.to_string(), y.sport.to_string()));
                pairs.push(("destination port", x.dport.to_string(), y.dport.to_string()));
            }
            pairs.push(("ttl", x.ttl.to_string(), y.ttl.to_string()));
            for (what, f, t) in pairs {
                if f != t {
                    rewritten.push(format!("{what} {f} -> {t}"));
                }
            }
            if !rewritten.is_empty() || x != y {
                rewritten.push(format!(
                    "checksums: IPv4 {}, {} {}",
                    if y.ip_checksum_ok { "ok" } else { "BAD" },
                    frame::proto_name(y.proto),
                    y.l4_checksum
                ));
            }
        }
    }

    // Route: for the destination the packet leaves with.
    let route_dst = out_h
        .as_ref()
        .and_then(|h| h.ip.as_ref())
        .filter(|_| outcome.is_some_and(|o| kind_of(o) == "forwarded"))
        .map(|ip| ip.dst)
        .or_else(|| used.map(|(_, e)| Ipv4Addr::from(e.new_dst)))
        .or_else(|| {
            in_ip.as_ref().map(|ip| {
                ctx.maps
                    .fip_rev
                    .get(&router_common::config::Ipv4 {
                        addr: ip.dst.octets(),
                    })
                    .map(|f| Ipv4Addr::from(f.addr))
                    .unwrap_or(ip.dst)
            })
        });
    let mut egress_of_route = None;
    let route = match (&in_ip, route_dst) {
        (Some(ip), Some(dst)) if outcome.is_some_and(routed) => Some(match lpm(ctx.maps, dst) {
            Some(((len, net), r)) => {
                let n = (r.count as usize).clamp(1, router_common::route::MAX_NEXTHOPS);
                let i = ecmp_index(ip, n);
                let gw = Ipv4Addr::from(r.gateways[i]);
                let via = (!gw.is_unspecified()).then_some(gw);
                egress_of_route = Some((r.ifindexes[i], via.unwrap_or(dst)));
                RouteView {
                    destination: dst,
                    prefix: Some(format!("{}/{len}", Ipv4Addr::from(net))),
                    via,
                    nexthop: Some(via.unwrap_or(dst)),
                    egress: Some(port_name(ctx, r.ifindexes[i])),
                    paths: n,
                }
            }
            None => RouteView {
                destination: dst,
                prefix: None,
                via: None,
                nexthop: None,
                egress: None,
                paths: 0,
            },
        }),
        _ => None,
    };

    // Egress and MACs, when forwarded.
    let mut egress = None;
    if let (Some(o), Some((ifindex, nh))) = (outcome, egress_of_route)
        && kind_of(o) == "forwarded"
    {
        let port = ctx.ports.iter().find(|p| p.ifindex == ifindex);
        let neigh = ctx
            .neigh
            .get(&NeighKey {
                ifindex,
                addr: nh.octets(),
            })
            .and_then(|n| n.mac())
            .map(|m| Mac(m).to_string());
        let (src_mac, dst_mac, by) = match (o, &out_h) {
            (Outcome::FwdXdp, Some(h)) => (
                Mac(h.src_mac).to_string(),
                Some(Mac(h.dst_mac).to_string()),
                "xr_xdp",
            ),
            _ => (
                port.map(|p| p.mac.clone()).unwrap_or_default(),
                neigh.clone(),
                "bpf_redirect_neigh",
            ),
        };
        if o == Outcome::FwdXdp
            && let Some(p) = port
            && p.mac != src_mac
        {
            notes.push(format!(
                "the frame's source MAC {src_mac} is not {}'s {}: the route and the program disagree",
                p.device, p.mac
            ));
        }
        if by == "bpf_redirect_neigh" && dst_mac.is_none() {
            let dev = port_name(ctx, ifindex);
            let ns = crate::model::namespace_of(ctx.router);
            match super::kernel_neigh::state(&ns, &dev, nh) {
                // The programs count it forwarded; the kernel will lose it.
                Some(st) if super::kernel_neigh::unresolved(&st) => notes.push(format!(
                    "{nh} is {st} in the kernel's neighbour table on {dev}: the kernel holds \
                     what is sent there until it answers ARP and loses it if it never does \
                     (counted as forwarded); once the neighbours map has it as failed, packets \
                     to it are answered host unreachable"
                )),
                _ => notes.push(format!(
                    "{nh} is not in the neighbours map yet: the kernel resolves it (ARP) as it sends"
                )),
            }
        }
        egress = Some(EgressView {
            device: port_name(ctx, ifindex),
            ifindex,
            src_mac,
            dst_mac,
            macs_written_by: by,
        });
    }

    let verdict = match outcome {
        Some(o) => {
            let mut m = meaning(o).to_string();
            if let Some(e) = &egress {
                let _ = write!(m, ", out of {}", e.device);
            }
            if kind_of(o) == "kernel"
                && let Some(mm) = last.mark.and_then(mark_meaning)
            {
                let _ = write!(m, " ({mm})");
            }
            VerdictView {
                kind: kind_of(o),
                outcome: Some(o.name()),
                program: last.program,
                meaning: m,
            }
        }
        None => VerdictView {
            kind: "kernel",
            outcome: None,
            program: last.program,
            meaning: format!(
                "{} counted nothing; {} hands the packet on as it is",
                last.program,
                action_name(last.program, last.ret)
            ),
        },
    };
    if obs.reruns > 0 {
        notes.push(format!(
            "the copy first picked SNAT ports the live table holds: run again {} time(s) with those entries copied in, as the real program probes on",
            obs.reruns
        ));
    }
    notes.push(
        "ran on private copies of the router's maps (BPF_PROG_TEST_RUN): its live connection table and counters are untouched"
            .into(),
    );
    if new_snat {
        notes.push(
            "the SNAT port of a new connection is one the program may pick: it picks at random"
                .into(),
        );
    }
    Report {
        router: ctx.router.into(),
        plane: ctx.plane.into(),
        ingress: ctx.ingress.clone(),
        input,
        hooks,
        conntrack: ct,
        nat,
        route,
        output,
        rewritten,
        egress,
        verdict,
        same_build: ctx.same_build,
        notes,
    }
}

/// One line per stage.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let mut line = |label: &str, s: String| {
        let _ = writeln!(o, "{label:<10} {s}");
    };
    line("router", format!("{}  (plane {})", r.router, r.plane));
    line(
        "in",
        format!(
            "{} ({}, ifindex {}, {})",
            r.ingress.device, r.ingress.role, r.ingress.ifindex, r.ingress.mac
        ),
    );
    line("input", r.input.summary.clone());
    for h in &r.hooks {
        let mut s = format!("{}: {} ({})", h.program, h.action, h.return_code);
        if let Some(out) = h.outcome {
            let _ = write!(s, ", counted {out}");
        }
        for e in &h.conntrack_events {
            let _ = write!(s, ", {e}");
        }
        if let Some(m) = &h.mark
            && m != "0x00000000"
        {
            let _ = write!(s, ", mark {m}");
        }
        line("program", s);
    }
    let c = &r.conntrack;
    match (&c.key, &c.found) {
        (None, _) => line("conntrack", "not looked up (no connection tuple)".into()),
        (Some(_), Some(f)) => line("conntrack", format!("found: {f}")),
        (Some(k), None) if c.created.is_empty() => {
            line("conntrack", format!("no connection for {k}; none created"))
        }
        (Some(k), None) => line("conntrack", format!("no connection for {k}")),
    }
    // Changes first: a connection a SYN ended went before the new one.
    for ch in &c.changed {
        line("", format!("changed: {}: {}", ch.tuple, ch.change));
    }
    for e in &c.created {
        line("", format!("created: {e}"));
    }
    match (&r.nat.source, &r.nat.destination) {
        (None, None) => line("nat", "none".into()),
        (s, d) => {
            if let Some(s) = s {
                line("nat", format!("source {} -> {} ({})", s.from, s.to, s.why));
            }
            if let Some(d) = d {
                line(
                    "nat",
                    format!("destination {} -> {} ({})", d.from, d.to, d.why),
                );
            }
        }
    }
    if let Some(rt) = &r.route {
        match &rt.prefix {
            Some(p) => line(
                "route",
                format!(
                    "{} in {p} {}, out {}, next hop {}{}",
                    rt.destination,
                    rt.via
                        .map(|v| format!("via {v}"))
                        .unwrap_or_else(|| "on-link".into()),
                    rt.egress.clone().unwrap_or_default(),
                    rt.nexthop.map(|n| n.to_string()).unwrap_or_default(),
                    if rt.paths > 1 {
                        format!(" (one of {} ECMP paths, by flow hash)", rt.paths)
                    } else {
                        String::new()
                    }
                ),
            ),
            None => line("route", format!("no route to {}", rt.destination)),
        }
    }
    if let Some(out) = &r.output {
        line("output", out.summary.clone());
    }
    if !r.rewritten.is_empty() {
        line("rewritten", r.rewritten.join("; "));
    }
    if let Some(e) = &r.egress {
        line(
            "egress",
            format!(
                "{}: source MAC {}, destination MAC {} (written by {})",
                e.device,
                e.src_mac,
                e.dst_mac.clone().unwrap_or_else(|| "unknown yet".into()),
                e.macs_written_by
            ),
        );
    }
    line(
        "verdict",
        format!(
            "{} ({}): {}",
            r.verdict.kind.to_uppercase(),
            r.verdict.outcome.unwrap_or("no counter"),
            r.verdict.meaning
        ),
    );
    for n in &r.notes {
        line("note", n.clone());
    }
    o
}

#[cfg(test)]
mod tests {
    use router_common::route::Route;

    use super::*;

    #[test]
    fn the_longest_prefix_wins_as_in_the_trie() {
        let mut maps = Desired::default();
        let r = |i: u32| Route {
            count: 1,
            ifindexes: [i, 0, 0, 0],
            ..Default::default()
        };
        maps.routes.insert((0, [0, 0, 0, 0]), r(1));
        maps.routes.insert((8, [10, 0, 0, 0]), r(2));
        maps.routes.insert((16, [10, 1, 0, 0]), r(3));
        let hit = |maps: &Desired, a: &str| {
            lpm(maps, a.parse().unwrap()).map(|(k, v)| (k.0, v.ifindexes[0]))
        };
        assert_eq!(hit(&maps, "10.1.2.3"), Some((16, 3)));
        assert_eq!(hit(&maps, "10.2.0.1"), Some((8, 2)));
        assert_eq!(hit(&maps, "8.8.8.8"), Some((0, 1)));
        maps.routes.remove(&(0, [0, 0, 0, 0]));
        assert_eq!(hit(&maps, "8.8.8.8"), None);
    }

    #[test]
    fn tcp_flags_read_as_written() {
        assert_eq!(frame::flag_letters(0x02), "S");
        assert_eq!(frame::flag_letters(0x12), "SA");
        assert_eq!(frame::flag_letters(0x11), "AF");
        assert_eq!(frame::flag_letters(0), "-");
    }
}
