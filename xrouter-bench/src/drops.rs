//! Drops by reason as the kernel counts them, for every data plane: what a
//! measurement window lost where, beside the BPF programs' own outcomes.
//!
//! Read from the namespaces the frames cross (the node, where the generator
//! and the taps are, and the router): the IP layer's discard counters
//! (`/proc/net/snmp`), conntrack's drops (`/proc/net/stat/nf_conntrack`),
//! each device's receive/transmit drops (`/proc/net/dev`); and the
//! per-CPU backlog drops of the whole machine (`/proc/net/softnet_stat`).
//! All are counters that only grow, so a window's figure is a difference.

use std::collections::BTreeMap;

use anyhow::Result;

use super::progs::in_ns;

/// Reason -> packets, e.g. "router: ip InDiscards", "node: tapX rx_drop".
pub type Drops = BTreeMap<String, u64>;

/// IP-layer counters that count packets the kernel dropped.
const IP_DROPS: [&str; 8] = [
    "InHdrErrors",
    "InAddrErrors",
    "InUnknownProtos",
    "InDiscards",
    "OutDiscards",
    "OutNoRoutes",
    "ReasmFails",
    "FragFails",
];

/// Conntrack counters that count dropped packets ("invalid" is not one:
/// such packets go on untracked unless a rule drops them).
const CT_DROPS: [&str; 3] = ["drop", "early_drop", "insert_failed"];

/// The counters of namespace `ns`, each named "`label`: ...".
pub fn snapshot(ns: &str, label: &str) -> Result<Drops> {
    let (snmp, ct, dev) = in_ns(ns, || {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        (
            read("/proc/thread-self/net/snmp"),
            read("/proc/thread-self/net/stat/nf_conntrack"),
            read("/proc/thread-self/net/dev"),
        )
    })?;
    let mut out = Drops::new();
    for (k, v) in ip_counters(&snmp) {
        out.insert(format!("{label}: ip {k}"), v);
    }
    for (k, v) in conntrack_counters(&ct) {
        out.insert(format!("{label}: conntrack {k}"), v);
    }
    for (k, v) in device_drops(&dev) {
        out.insert(format!("{label}: {k}"), v);
    }
    Ok(out)
}

/// Backlog drops of all CPUs (`/proc/net/softnet_stat`, second column):
/// packets a CPU's input queue had no room for.
pub fn softnet() -> Drops {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let n: u64 = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum();
    Drops::from([("cpu backlog full".to_string(), n)])
}

/// The `Ip:` header and value lines of /proc/net/snmp, as (name, value) for
/// the drop counters.
fn ip_counters(snmp: &str) -> Vec<(&'static str, u64)> {
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (Some(head), Some(vals)) = (ip.next(), ip.next()) else {
        return vec![];
    };
    let fields: BTreeMap<&str, u64> = head
        .split_whitespace()
        .zip(vals.split_whitespace())
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    IP_DROPS
        .iter()
        .filter_map(|k| Some((*k, *fields.get(k)?)))
        .collect()
}

/// /proc/net/stat/nf_conntrack: a header, then one line of hex counters per
/// CPU; summed.
fn conntrack_counters(text: &str) -> Vec<(&'static str, u64)> {
    let mut lines = text.lines();
    let Some(head) = lines.next() else {
        return vec![];
    };
    let cols: Vec<&str> = head.split_whitespace().collect();
    let mut sums = vec![0u64; cols.len()];
    for l in lines {
        for (i, h) in l.split_whitespace().enumerate().take(cols.len()) {
            sums[i] += u64::from_str_radix(h, 16).unwrap_or(0);
        }
    }
    CT_DROPS
        .iter()
        .filter_map(|k| Some((*k, sums[cols.iter().position(|c| c == k)?])))
        .collect()
}

/// /proc/net/dev: per device, the receive and transmit "drop" columns.
fn device_drops(text: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for l in text.lines().skip(2) {
        let Some((dev, rest)) = l.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // rx: bytes packets errs drop ...(8 columns); tx: bytes packets errs drop ...
        if v.len() >= 12 {
            let dev = dev.trim();
            out.push((format!("{dev} rx_drop"), v[3]));
            out.push((format!("{dev} tx_drop"), v[11]));
        }
    }
    out
}

/// What grew from `a` to `b` (counters that appeared count from 0).
pub fn delta(a: &Drops, b: &Drops) -> Drops {
    b.iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(a.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits\n\
                    Ip: 1 64 100 1 2 50 3 4 10 20 5 6 0 0 0 7 0 8 0 70\n\
                    Icmp: InMsgs\nIcmp: 9\n";
        assert_eq!(
            ip_counters(snmp),
            vec![
                ("InHdrErrors", 1),
                ("InAddrErrors", 2),
                ("InUnknownProtos", 3),
                ("InDiscards", 4),
                ("OutDiscards", 5),
                ("OutNoRoutes", 6),
                ("ReasmFails", 7),
                ("FragFails", 8)
            ]
        );
        let ct = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                  00000002  00000000 00000000 00000000 00000005 00000000 00000000 00000000 00000000 00000001 0000000a 00000000 00000000  00000000 00000000 00000000 00000000\n\
                  00000002  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000002 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(
            conntrack_counters(ct),
            vec![("drop", 16), ("early_drop", 2), ("insert_failed", 1)]
        );
        let dev = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n  \
                   qr-a: 1000 10 0 3 0 0 0 0 2000 20 0 4 0 0 0 0\n";
        assert_eq!(
            device_drops(dev),
            vec![
                ("qr-a rx_drop".to_string(), 3),
                ("qr-a tx_drop".to_string(), 4)
            ]
        );
        let a = Drops::from([("x".to_string(), 5), ("y".to_string(), 1)]);
        let b = Drops::from([("x".to_string(), 9), ("y".to_string(), 1), ("z".into(), 2)]);
        assert_eq!(
            delta(&a, &b),
            Drops::from([("x".to_string(), 4), ("z".to_string(), 2)])
        );
    }
}
