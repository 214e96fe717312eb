//! The kernel's own view of a next hop: what the programs cannot see. A
//! next hop missing from the neighbours map is resolved by the kernel as
//! it sends (`bpf_redirect_neigh`); what is sent to one that never answers
//! ARP is lost after the programs, counted as forwarded, until the daemon
//! has mirrored it as failed (packets to it are then answered host
//! unreachable).

use std::{net::Ipv4Addr, process::Command};

/// The kernel's neighbour state of `ip` on `dev` in namespace `ns`
/// (`REACHABLE`, `STALE`, `FAILED`, `INCOMPLETE`...), if it has an entry.
pub fn state(ns: &str, dev: &str, ip: Ipv4Addr) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "neigh", "show", "to"])
        .arg(ip.to_string())
        .args(["dev", dev])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse(&out.stdout)
}

/// The first entry's first state in `ip -j neigh` output.
fn parse(json: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    v.get(0)?.get("state")?.get(0)?.as_str().map(str::to_string)
}

/// Whether packets sent to a neighbour in `state` are lost (the kernel
/// gave up resolving it, or is still trying).
pub fn unresolved(state: &str) -> bool {
    matches!(state, "FAILED" | "INCOMPLETE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_of_ip_json() {
        let j = br#"[{"dst":"192.168.1.1","dev":"qg-1","state":["FAILED"]}]"#;
        assert_eq!(parse(j).as_deref(), Some("FAILED"));
        assert_eq!(parse(b"[]"), None);
        assert!(unresolved("FAILED") && unresolved("INCOMPLETE") && !unresolved("STALE"));
    }
}
