//! Connection tracking entries of a router namespace, through the
//! `conntrack` tool, as Neutron does when a floating or gateway IP goes away.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::backend::netns;

/// Deletes every conntrack entry to or from `ip` in namespace `ns`; returns
/// how many were deleted.
///
/// A NATed entry may carry the address in only one of its tuples, so all four
/// are matched: original destination/source (`-d`/`-s`) and reply
/// source/destination (`-r`/`-q`). Neutron itself uses `-d` and `-q`.
pub fn flush_ip(ns: &str, ip: Ipv4Addr) -> Result<u32> {
    let ip = ip.to_string();
    let mut total = 0;
    for flag in ["-d", "-q", "-s", "-r"] {
        let out = conntrack(ns, &["-D", flag, &ip])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // conntrack exits 1 when nothing matched: that is success here.
        match deleted(&stderr) {
            Some(n) if out.status.success() || n == 0 => total += n,
            _ => bail!(
                "conntrack -D {flag} {ip} failed in router namespace {ns} ({}): {}",
                out.status,
                stderr.trim()
            ),
        }
    }
    Ok(total)
}

/// Deletes the connections of every address in `ips`, as [`flush_ip`]
/// does, but lists the table once first and runs `conntrack -D` only for
/// the addresses that appear in it: releasing thousands of floating IPs
/// must not cost four processes each.
pub fn flush_ips(ns: &str, ips: &[Ipv4Addr]) -> Result<u32> {
    if ips.is_empty() {
        return Ok(0);
    }
    let table = list(ns)?;
    let mut present = std::collections::HashSet::new();
    for word in table.split_whitespace() {
        for key in ["src=", "dst="] {
            if let Some(a) = word
                .strip_prefix(key)
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            {
                present.insert(a);
            }
        }
    }
    let mut n = 0;
    for ip in ips.iter().filter(|ip| present.contains(ip)) {
        n += flush_ip(ns, *ip)?;
    }
    Ok(n)
}

/// The conntrack table of namespace `ns`, as `conntrack -L -o extended`
/// prints it (one entry a line).
pub fn list(ns: &str) -> Result<String> {
    let out = conntrack(ns, &["-L", "-o", "extended"])?;
    if !out.status.success() {
        bail!(
            "conntrack -L failed in router namespace {ns} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn conntrack(ns: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new("conntrack");
    cmd.args(args);
    netns::command_in(ns, &mut cmd).with_context(|| format!("router namespace {ns}"))?;
    cmd.output()
        .with_context(|| format!("router namespace {ns}: running conntrack"))
}

/// N of conntrack's summary "conntrack v1.4.7 (conntrack-tools): N flow
/// entries have been deleted."
fn deleted(stderr: &str) -> Option<u32> {
    stderr.lines().find_map(|l| {
        let (head, _) = l.split_once(" flow entries have been deleted")?;
        head.rsplit(' ').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ScratchNs;

    #[test]
    fn parses_summary() {
        assert_eq!(
            deleted("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"),
            Some(0)
        );
        assert_eq!(
            deleted("conntrack v1.4.7 (conntrack-tools): 12 flow entries have been deleted.\n"),
            Some(12)
        );
        assert_eq!(
            deleted("conntrack v1.4.7 (conntrack-tools): Invalid IP address `x'\n"),
            None
        );
    }

    #[test]
    fn flush_in_namespace() {
        let Some(ns) = ScratchNs::new("ct", "conntrack") else {
            return;
        };
        assert!(
            Command::new("iptables-restore")
                .arg("--version")
                .output()
                .is_ok(),
            "iptables-restore not found: `cargo xtask test` installs it"
        );
        let mut lo = Command::new("ip");
        lo.args(["link", "set", "lo", "up"]);
        netns::command_in(&ns.0, &mut lo).unwrap();
        assert!(lo.status().unwrap().success());
        // The NAT rules make the namespace track connections.
        let router = crate::testing::example();
        crate::backend::iptables::apply_text(
            &ns.0,
            &crate::desired::iptables::ruleset(&router, &Default::default()),
        )
        .unwrap();

        let send = |dst: &'static str| {
            netns::run_in(Some(&ns.0), move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.send_to(b"x", dst).unwrap();
            })
            .unwrap()
        };
        send("127.0.0.2:9");
        send("127.0.0.3:9");
        assert!(list(&ns.0).unwrap().contains("dst=127.0.0.2"));

        assert_eq!(flush_ip(&ns.0, "127.0.0.2".parse().unwrap()).unwrap(), 1);
        let left = list(&ns.0).unwrap();
        assert!(
            !left.contains("127.0.0.2") && left.contains("dst=127.0.0.3"),
            "{left}"
        );
        assert_eq!(flush_ip(&ns.0, "127.0.0.2".parse().unwrap()).unwrap(), 0);
        assert!(flush_ip("xrt-no-such-namespace", "127.0.0.2".parse().unwrap()).is_err());
    }
}
