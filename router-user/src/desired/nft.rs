//! The `ip xrouter` nftables table a router's namespace holds on the eBPF
//! planes (see `backend::nft` for why and how it is kept): the kernel's copy
//! of the floating IPs' translation as two maps, the rules of the handoff
//! marks, and the guard that no tenant address leaves qg- untranslated.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use router_common::config::{
    MARK_ANSWER_ONLY, MARK_MASK, MARK_TRANSLATED, MARK_TRANSLATED_ANSWER,
    MARK_TRANSLATED_UNREACHABLE, MARK_UNREACHABLE,
};

use crate::model::Router;

/// The table's name (family `ip`).
pub const TABLE: &str = "xrouter";
pub const DNAT_MAP: &str = "fip-dnat";
pub const SNAT_MAP: &str = "fip-snat";

/// Floating IP -> fixed IP, and back.
pub type Pairs = BTreeMap<Ipv4Addr, Ipv4Addr>;

/// What the table must hold for one router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub rules: Vec<Rule>,
    pub dnat: Pairs,
    pub snat: Pairs,
}

/// One rule: its chain, its text, and the comment that identifies it when
/// read back (the comment names everything the rule depends on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub text: String,
    pub comment: String,
}

/// The base chains: name, type, hook, priority (the NAT ones one below
/// iptables' nat chains; `handoff` before defragmentation and conntrack;
/// `leaks` after every SNAT).
pub const CHAINS: [(&str, &str, &str, &str); 6] = [
    ("handoff", "filter", "prerouting", "-450"),
    ("prerouting", "nat", "prerouting", "dstnat - 1"),
    ("output", "nat", "output", "-101"),
    ("postrouting", "nat", "postrouting", "srcnat - 1"),
    ("answers", "filter", "forward", "filter"),
    ("leaks", "filter", "postrouting", "300"),
];

/// A short digest of a rule's text, in its comment: a rule changed behind
/// our back (or by a new router dict) no longer matches its comment.
fn digest(text: &str) -> String {
    // FNV-1a, 32 bits: a change detector, not a security measure.
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// `meta mark` test of the programs' marks (Neutron's low 16 bits aside).
fn mark(op: &str, m: u32) -> String {
    format!("meta mark & {MARK_MASK:#010x} {op} {m:#010x}")
}

/// What the table holds for a router. Without a gateway no floating IP is
/// translated (as in Neutron, whose FIP rules exist only with a gateway):
/// the maps stay empty, and the handoff rules are all there is.
pub fn want(router: &Router) -> Want {
    let fips = || {
        router
            .floating_ips
            .iter()
            .filter(|_| router.gateway.is_some())
    };
    let dnat: Pairs = fips().map(|f| (f.floating_ip, f.fixed_ip)).collect();
    let snat: Pairs = fips().map(|f| (f.fixed_ip, f.floating_ip)).collect();
    let rule = |chain, text: String, label: &str| Rule {
        chain,
        comment: format!("{label} {}", digest(&text)),
        text,
    };
    let mut rules = vec![
        rule(
            "handoff",
            format!("{} notrack", mark("==", MARK_TRANSLATED)),
            "translated by the programs: forward untracked",
        ),
        rule(
            "handoff",
            format!("{} notrack", mark("==", MARK_TRANSLATED_ANSWER)),
            "destination translated back by the programs: answer untracked",
        ),
        rule(
            "handoff",
            format!("{} notrack", mark("==", MARK_TRANSLATED_UNREACHABLE)),
            "destination translated back by the programs, next hop unreachable: answer untracked",
        ),
        rule(
            "answers",
            format!("{} counter drop", mark("==", MARK_ANSWER_ONLY)),
            "handed up to be answered: never forwarded",
        ),
        // The kernel's answer when it cannot resolve a next hop itself.
        rule(
            "answers",
            format!(
                "{} counter reject with icmp type host-unreachable",
                mark("==", MARK_UNREACHABLE)
            ),
            "next hop does not answer ARP: host unreachable",
        ),
        rule(
            "answers",
            format!(
                "{} counter reject with icmp type host-unreachable",
                mark("==", MARK_TRANSLATED_UNREACHABLE)
            ),
            "next hop does not answer ARP, translated: host unreachable",
        ),
        rule(
            "answers",
            format!("{} counter drop", mark("==", MARK_TRANSLATED_ANSWER)),
            "handed up translated to be answered: never forwarded",
        ),
    ];
    if let Some(gw) = router.gateway.as_ref() {
        let qg = gw.port.device();
        rules.extend([
            rule(
                "prerouting",
                format!("dnat to ip daddr map @{DNAT_MAP}"),
                "floating IP DNAT",
            ),
            rule(
                "output",
                format!("dnat to ip daddr map @{DNAT_MAP}"),
                "floating IP DNAT, router's own traffic",
            ),
            rule(
                "postrouting",
                format!("oifname != \"{qg}\" ct status & dnat == 0 accept"),
                "east-west stays untranslated unless DNATed",
            ),
            rule(
                "postrouting",
                format!("snat to ip saddr map @{SNAT_MAP} fully-random"),
                "floating IP SNAT",
            ),
        ]);
        // Sources SNAT applies to: every tenant address with gateway SNAT,
        // else the fixed IPs that have a floating IP.
        let tenant = if router.enable_snat {
            let nets: Vec<String> = router
                .interfaces
                .iter()
                .flat_map(|p| p.subnets.iter().map(|s| s.cidr))
                .chain(router.routes.iter().map(|r| r.destination))
                .filter(|n| matches!(n, IpNet::V4(_)))
                .map(|n| n.trunc().to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            (!nets.is_empty()).then(|| format!("{{ {} }}", nets.join(", ")))
        } else {
            (!snat.is_empty()).then(|| format!("@{SNAT_MAP}"))
        };
        if let Some(set) = tenant {
            rules.push(rule(
                "leaks",
                format!(
                    "oifname \"{qg}\" ct state invalid,untracked {} ip saddr {set} counter drop",
                    mark("!=", MARK_TRANSLATED)
                ),
                "no tenant address leaves untranslated",
            ));
        }
    }
    Want { rules, dnat, snat }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::example;

    #[test]
    fn no_gateway_no_translation_but_the_handoff_rules() {
        let mut r = example();
        r.gateway = None;
        let w = want(&r);
        assert!(w.dnat.is_empty() && w.snat.is_empty());
        let chains: Vec<&str> = w.rules.iter().map(|r| r.chain).collect();
        assert_eq!(
            chains,
            [
                "handoff", "handoff", "handoff", "answers", "answers", "answers", "answers"
            ]
        );
        assert_eq!(
            w.rules[0].text,
            "meta mark & 0xffff0000 == 0x78720000 notrack"
        );
        assert!(CHAINS.contains(&("handoff", "filter", "prerouting", "-450")));
    }

    #[test]
    fn leaks_guard_follows_enable_snat() {
        let mut r = example();
        let qg = r.gateway.as_ref().unwrap().port.device();
        let guard = |r: &Router| {
            want(r)
                .rules
                .into_iter()
                .find(|x| x.chain == "leaks")
                .map(|x| x.text)
        };
        r.enable_snat = true;
        let g = guard(&r).unwrap();
        assert!(
            g.starts_with(&format!("oifname \"{qg}\" ct state invalid,untracked")),
            "{g}"
        );
        for p in &r.interfaces {
            for s in &p.subnets {
                if s.cidr.addr().is_ipv4() {
                    assert!(g.contains(&s.cidr.trunc().to_string()), "{g}");
                }
            }
        }
        r.enable_snat = false;
        assert!(guard(&r).unwrap().contains("ip saddr @fip-snat"));
        r.floating_ips.clear();
        assert_eq!(guard(&r), None, "nothing is SNATed: nothing to guard");
    }
}
