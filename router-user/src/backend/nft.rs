//! The kernel's part on the eBPF planes: its floating-IP translation, and
//! how it treats what the programs hand up.
//!
//! The kernel translates what the programs leave to it whole (protocols
//! they do not translate, the router's own traffic), and packets they hand
//! up only to be answered (TTL, no route, "fragmentation needed" for a DF
//! packet over the egress MTU: the DNAT of a floating IP tells the kernel
//! where it was going). Neutron does it with three iptables rules per
//! floating IP; at 10,000 floating IPs `iptables-restore` spends most of a
//! second on them. Here they are one nftables table per router namespace,
//! `ip xrouter`, whose rules look the floating IP up in two maps; a change
//! adds or deletes map elements only.
//!
//! The same table holds the rules of the handoff (`router_common::config`'s
//! marks): a packet the programs translated themselves skips connection
//! tracking (before defragmentation, priority -450), so the kernel forwards
//! it — fragmenting it, or processing its IP options — without translating
//! it again; a packet handed up to be answered is dropped if the kernel
//! would forward it instead; and, going beyond Neutron, no INVALID or
//! untracked packet leaves qg- with a tenant's source address when SNAT
//! applies to it (the kernel's NAT lets such packets through untranslated).
//!
//! Same semantics as Neutron's rules (`iptables::ruleset`): DNAT in
//! PREROUTING and OUTPUT just before iptables' nat chains (the FIP rules
//! come first in Neutron's chains too); SNAT to the floating IP in
//! POSTROUTING just before iptables', for traffic leaving qg- or DNATed
//! (Neutron's `! -o qg- ! --ctstate DNAT -j ACCEPT` guard), with random
//! ports as `--random-fully`. The first NAT chain that binds a connection
//! wins, so iptables' gateway SNAT only sees what this table left alone.
//! The iptables plane keeps Neutron's own rules and no such table.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    backend::netns,
    desired::nft::{CHAINS, DNAT_MAP, Pairs, SNAT_MAP, TABLE, Want},
};

/// The elements of a map, as nft input: `a : b, c : d`.
fn elements(pairs: &Pairs) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{k} : {v}");
    }
    s
}

/// The whole table as one atomic nft transaction (replacing any old one).
fn full_table(w: &Want) -> String {
    let mut s = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    for (name, pairs) in [(DNAT_MAP, &w.dnat), (SNAT_MAP, &w.snat)] {
        let _ = write!(s, "  map {name} {{ type ipv4_addr : ipv4_addr;");
        if !pairs.is_empty() {
            let _ = write!(s, " elements = {{ {} }}", elements(pairs));
        }
        s.push_str(" }\n");
    }
    for (chain, kind, hook, prio) in CHAINS {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type {kind} hook {hook} priority {prio}; policy accept;"
        );
        for r in w.rules.iter().filter(|r| r.chain == chain) {
            let _ = writeln!(s, "    {} comment \"{}\"", r.text, r.comment);
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// What is in the kernel: each chain's rule comments in order, each map's
/// elements (None for a missing map).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    chains: BTreeMap<String, Vec<String>>,
    maps: BTreeMap<String, Pairs>,
}

impl Have {
    /// The table exactly as `w` wants it (what a successful load leaves).
    pub fn of(w: &Want) -> Have {
        let mut have = Have::default();
        for (chain, ..) in CHAINS {
            have.chains.insert(
                chain.to_string(),
                w.rules
                    .iter()
                    .filter(|r| r.chain == chain)
                    .map(|r| r.comment.clone())
                    .collect(),
            );
        }
        have.maps.insert(DNAT_MAP.into(), w.dnat.clone());
        have.maps.insert(SNAT_MAP.into(), w.snat.clone());
        have
    }
}

fn parse(json: &str) -> Result<Have> {
    let v: Value = serde_json::from_str(json).context("parsing nft -j output")?;
    let mut have = Have::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain") {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            have.chains.entry(name).or_default();
        } else if let Some(r) = item.get("rule") {
            let chain = r["chain"].as_str().unwrap_or_default().to_string();
            let comment = r["comment"].as_str().unwrap_or_default().to_string();
            have.chains.entry(chain).or_default().push(comment);
        } else if let Some(m) = item.get("map") {
            let mut pairs = Pairs::new();
            for e in m["elem"].as_array().into_iter().flatten() {
                let k = e[0].as_str().and_then(|s| s.parse().ok());
                let v = e[1].as_str().and_then(|s| s.parse().ok());
                if let (Some(k), Some(v)) = (k, v) {
                    pairs.insert(k, v);
                }
            }
            let name = m["name"].as_str().unwrap_or_default().to_string();
            have.maps.insert(name, pairs);
        }
    }
    Ok(have)
}

/// Whether the table's chains and rules are the wanted ones (elements
/// aside).
fn skeleton_matches(have: &Have, w: &Want) -> bool {
    let chains_ok = CHAINS.iter().all(|(chain, _, _, _)| {
        let want: Vec<&str> = w
            .rules
            .iter()
            .filter(|r| r.chain == *chain)
            .map(|r| r.comment.as_str())
            .collect();
        have.chains
            .get(*chain)
            .is_some_and(|got| got.iter().map(String::as_str).eq(want))
    });
    chains_ok
        && have.chains.len() == CHAINS.len()
        && have.maps.contains_key(DNAT_MAP)
        && have.maps.contains_key(SNAT_MAP)
}

/// The element changes that turn `have` into `want`, as nft commands
/// (deletions first; a changed value is a deletion and an addition).
fn element_diff(map: &str, have: &Pairs, want: &Pairs) -> String {
    let gone: Vec<String> = have
        .iter()
        .filter(|(k, v)| want.get(k) != Some(v))
        .map(|(k, _)| k.to_string())
        .collect();
    let new: Pairs = want
        .iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let mut s = String::new();
    if !gone.is_empty() {
        let _ = writeln!(
            s,
            "delete element ip {TABLE} {map} {{ {} }}",
            gone.join(", ")
        );
    }
    if !new.is_empty() {
        let _ = writeln!(s, "add element ip {TABLE} {map} {{ {} }}", elements(&new));
    }
    s
}

/// The table as it is in namespace `ns` (None: there is none).
pub fn read(ns: &str) -> Result<Option<Have>> {
    let tables = netns::run_tool(ns, "nft", &["-j", "list", "tables", "ip"], None)?;
    let exists = serde_json::from_str::<Value>(&tables)?["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| i["table"]["name"] == TABLE);
    if !exists {
        return Ok(None);
    }
    let json = netns::run_tool(ns, "nft", &["-j", "list", "table", "ip", TABLE], None)?;
    parse(&json).map(Some)
}

/// The nft input that turns the table `have` (None: none) into `w`: the
/// element changes when the rules are the wanted ones, else the whole table
/// anew, in one transaction; empty when nothing differs.
pub fn script(have: Option<&Have>, w: &Want) -> String {
    match have {
        Some(have) if skeleton_matches(have, w) => {
            let empty = Pairs::new();
            let get = |m| have.maps.get(m).unwrap_or(&empty);
            // SNAT elements go first when removed and last when added, so
            // no fixed IP is ever SNATed to a floating IP that no longer
            // DNATs back (the transaction is atomic anyway).
            element_diff(SNAT_MAP, get(SNAT_MAP), &w.snat)
                + &element_diff(DNAT_MAP, get(DNAT_MAP), &w.dnat)
        }
        _ => full_table(w),
    }
}

/// Loads an nft script (see [`script`]) into namespace `ns`.
pub fn load(ns: &str, script: &str) -> Result<()> {
    netns::run_tool(ns, "nft", &["-f", "-"], Some(script))
        .context("loading the xrouter table (nft)")?;
    Ok(())
}

/// Makes the `ip xrouter` table of `ns` what `w` says; only the difference
/// is written, in one transaction. Returns whether anything changed.
pub fn apply(ns: &str, w: &Want) -> Result<bool> {
    let s = script(read(ns)?.as_ref(), w);
    if s.is_empty() {
        return Ok(false);
    }
    load(ns, &s)?;
    Ok(true)
}

/// Removes the table from `ns` if it is there. Returns whether it was.
pub fn clear(ns: &str) -> Result<bool> {
    if read(ns)?.is_none() {
        return Ok(false);
    }
    netns::run_tool(ns, "nft", &["delete", "table", "ip", TABLE], None)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{desired::nft::want, testing::example};

    fn pairs(p: &[(&str, &str)]) -> Pairs {
        p.iter()
            .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
            .collect()
    }

    #[test]
    fn maps_follow_the_floating_ips() {
        let r = example();
        let w = want(&r);
        assert_eq!(w.dnat.len(), r.floating_ips.len());
        for f in &r.floating_ips {
            assert_eq!(w.dnat[&f.floating_ip], f.fixed_ip);
            assert_eq!(w.snat[&f.fixed_ip], f.floating_ip);
        }
        let text = full_table(&w);
        let qg = r.gateway.as_ref().unwrap().port.device();
        assert!(text.contains(&format!("oifname != \"{qg}\" ct status & dnat == 0 accept")));
        assert!(text.contains("snat to ip saddr map @fip-snat fully-random"));
    }

    #[test]
    fn diff_writes_only_changes() {
        let have = pairs(&[("10.0.0.1", "192.168.0.1"), ("10.0.0.2", "192.168.0.2")]);
        let want = pairs(&[("10.0.0.1", "192.168.0.1"), ("10.0.0.2", "192.168.0.9")]);
        assert_eq!(
            element_diff("m", &have, &want),
            "delete element ip xrouter m { 10.0.0.2 }\n\
             add element ip xrouter m { 10.0.0.2 : 192.168.0.9 }\n"
        );
        assert_eq!(element_diff("m", &want, &want), "");
    }

    /// Loads, reads back, changes and removes the table in a scratch
    /// namespace; a second apply of the same router changes nothing.
    #[test]
    fn apply_in_namespace() {
        let Some(ns) = crate::testing::ScratchNs::new("nft", "nft") else {
            return;
        };
        let mut r = example();
        assert!(
            apply(&ns.0, &want(&r)).unwrap(),
            "first apply creates the table"
        );
        assert!(!apply(&ns.0, &want(&r)).unwrap(), "second apply is a no-op");
        let have = read(&ns.0).unwrap().unwrap();
        let w = want(&r);
        assert!(skeleton_matches(&have, &w));
        assert_eq!(have.maps[DNAT_MAP], w.dnat);

        // Move one floating IP to another fixed IP: elements change only.
        r.floating_ips[0].fixed_ip = "10.0.0.77".parse().unwrap();
        assert!(apply(&ns.0, &want(&r)).unwrap());
        assert!(!apply(&ns.0, &want(&r)).unwrap());
        let have = read(&ns.0).unwrap().unwrap();
        assert_eq!(have.maps[DNAT_MAP], want(&r).dnat);
        assert_eq!(have.maps[SNAT_MAP], want(&r).snat);

        // A rule deleted behind our back brings the whole table back.
        netns::run_tool(
            &ns.0,
            "nft",
            &["flush", "chain", "ip", TABLE, "output"],
            None,
        )
        .unwrap();
        assert!(apply(&ns.0, &want(&r)).unwrap());
        assert!(skeleton_matches(&read(&ns.0).unwrap().unwrap(), &want(&r)));

        r.gateway = None;
        assert!(
            apply(&ns.0, &want(&r)).unwrap(),
            "no gateway: NAT rules removed"
        );
        assert!(!apply(&ns.0, &want(&r)).unwrap());
        let have = read(&ns.0).unwrap().unwrap();
        assert!(have.chains["prerouting"].is_empty());
        assert_eq!(have.chains["handoff"].len(), 3);
        assert!(clear(&ns.0).unwrap());
        assert!(read(&ns.0).unwrap().is_none());
        assert!(!clear(&ns.0).unwrap());
    }
}
