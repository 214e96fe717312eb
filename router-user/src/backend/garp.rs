//! Gratuitous ARP, the way Neutron's L3 agent announces an IPv4 address on a
//! router port: [`ROUNDS`] rounds [`INTERVAL`] apart, each round one ARP
//! request ("who-has IP tell IP") and one ARP reply ("IP is-at MAC"), both
//! broadcast from the port's MAC.
//!
//! Frames are built here and sent on an `AF_PACKET` socket opened inside the
//! router's namespace and addressed to the device by ifindex; no external
//! tool (arping) is involved.

use std::{
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{backend::netns, model::Mac};

/// Number of announcement rounds.
pub const ROUNDS: u32 = 3;
/// Pause between two rounds.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Length of an Ethernet + ARP (IPv4 over Ethernet) frame, without padding.
pub const FRAME_LEN: usize = 42;

const BROADCAST: [u8; 6] = [0xff; 6];
const ZERO_MAC: [u8; 6] = [0; 6];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

fn frame(op: u16, mac: Mac, ip: Ipv4Addr, target_mac: [u8; 6]) -> [u8; FRAME_LEN] {
    let ip = ip.octets();
    let mut f = [0u8; FRAME_LEN];
    // Ethernet header.
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP header: Ethernet / IPv4, 6-byte and 4-byte addresses.
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip);
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip);
    f
}

/// The two frames of one round: the request ("who-has IP tell IP", target
/// MAC all zeroes) and the reply ("IP is-at MAC", target MAC broadcast),
/// both from `mac` to ff:ff:ff:ff:ff:ff.
pub fn frames(mac: Mac, ip: Ipv4Addr) -> [[u8; FRAME_LEN]; 2] {
    [
        frame(ARP_REQUEST, mac, ip, ZERO_MAC),
        frame(ARP_REPLY, mac, ip, BROADCAST),
    ]
}

/// `sockaddr_ll` addressing a broadcast ARP frame to interface `ifindex`.
fn link_addr(ifindex: libc::c_int) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as libc::c_ushort;
    sa.sll_protocol = ETH_P_ARP.to_be();
    sa.sll_ifindex = ifindex;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&BROADCAST);
    sa
}

/// Opens an `AF_PACKET`/`SOCK_RAW` socket in the calling thread's namespace
/// with the given protocol (host order; 0: send only, receive nothing).
fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly opened descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifindex(dev: &str) -> io::Result<libc::c_int> {
    let idx = nix::net::if_::if_nametoindex(dev).map_err(io::Error::from)?;
    libc::c_int::try_from(idx).map_err(|_| io::Error::other("ifindex out of range"))
}

/// Sends `frames` out of `dev`; runs in the target namespace.
fn send_frames(dev: &str, frames: &[[u8; FRAME_LEN]]) -> Result<()> {
    let idx = ifindex(dev).context("looking up the device")?;
    let sock = packet_socket(0).context("opening an AF_PACKET socket")?;
    let sa = link_addr(idx);
    for f in frames {
        // SAFETY: buffer and address point to live, correctly sized values.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const sa).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("sending an ARP frame");
        }
        if n as usize != f.len() {
            anyhow::bail!("short send of an ARP frame: {n} of {} bytes", f.len());
        }
    }
    Ok(())
}

/// Sends one round (request and reply) for `ip` out of `dev` in namespace
/// `ns`. Blocking: it runs on a thread that joins the namespace.
pub fn send_round(ns: &str, dev: &str, mac: Mac, ip: Ipv4Addr) -> Result<()> {
    let d = dev.to_string();
    let fr = frames(mac, ip);
    netns::run_in(Some(ns), move || send_frames(&d, &fr))
        .and_then(|r| r)
        .with_context(|| format!("gratuitous ARP for {ip} on {dev} in namespace {ns}"))
}

/// Announces `ip` (owned by `mac`) on `dev` in namespace `ns` in the
/// background: [`ROUNDS`] rounds [`INTERVAL`] apart. A failed round (the
/// device may have gone meanwhile) is logged and ends the announcement.
/// Must be called from within a tokio runtime; outside one it only logs.
pub fn announce(ns: String, dev: String, mac: Mac, ip: Ipv4Addr) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(%ns, %dev, %ip, "gratuitous ARP skipped: no tokio runtime");
        return;
    };
    rt.spawn(async move {
        for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(INTERVAL).await;
            }
            let (n, d) = (ns.clone(), dev.clone());
            let res = tokio::task::spawn_blocking(move || send_round(&n, &d, mac, ip)).await;
            let err = match res {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => {
                    format!("gratuitous ARP task for {ip} on {dev} in namespace {ns} failed: {e}")
                }
            };
            tracing::warn!(%ns, %dev, %ip, round = round + 1, "{err}");
            return;
        }
        tracing::debug!(%ns, %dev, %ip, "gratuitous ARP sent");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56]);
    const IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    #[test]
    fn frames_are_byte_exact() {
        let [req, rep] = frames(MAC, IP);
        #[rustfmt::skip]
        let want_req: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst
            0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56, // eth src
            0x08, 0x06,                         // ethertype ARP
            0x00, 0x01, 0x08, 0x00, 6, 4,       // htype, ptype, hlen, plen
            0x00, 0x01,                         // op: request
            0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56, // sender MAC
            192, 0, 2, 10,                      // sender IP
            0, 0, 0, 0, 0, 0,                   // target MAC
            192, 0, 2, 10,                      // target IP
        ];
        #[rustfmt::skip]
        let want_rep: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56,
            0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4,
            0x00, 0x02,                         // op: reply
            0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56,
            192, 0, 2, 10,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // target MAC: broadcast
            192, 0, 2, 10,
        ];
        assert_eq!(req, want_req);
        assert_eq!(rep, want_rep);
    }

    struct NsGuard(String);

    impl Drop for NsGuard {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }

    fn ip_in(ns: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(args);
        netns::command_in(ns, &mut cmd).unwrap();
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the kernel reports `dev` operationally up, so its qdisc
    /// is active and frames are not silently dropped.
    fn wait_up(ns: &str, dev: &str) {
        for _ in 0..50 {
            if ip_in(ns, &["-o", "link", "show", "dev", dev]).contains("state UP") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{dev} did not come up in {ns}");
    }

    /// A socket receiving ARP frames that arrive on `dev` (call inside the
    /// namespace), with a 2 s receive timeout.
    fn arp_listener(dev: &str) -> io::Result<OwnedFd> {
        let sock = packet_socket(ETH_P_ARP)?;
        let sa = link_addr(ifindex(dev)?);
        // SAFETY: the address points to a live sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&raw const sa).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: the option value points to a live timeval of the given size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    #[test]
    fn send_round_live() {
        crate::testing::require_root();
        let rand = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::time::SystemTime::now(),
        ) as u32;
        let ns = format!("xrt-garp-{}-{rand:08x}", std::process::id());
        netns::create(&ns).unwrap();
        let _guard = NsGuard(ns.clone());

        ip_in(
            &ns,
            &[
                "link", "add", "garp0", "type", "veth", "peer", "name", "garp1",
            ],
        );
        ip_in(
            &ns,
            &["link", "set", "garp0", "address", &MAC.to_string(), "up"],
        );
        ip_in(&ns, &["link", "set", "garp1", "up"]);
        wait_up(&ns, "garp0");
        wait_up(&ns, "garp1");

        let rx = netns::run_in(Some(&ns), || arp_listener("garp1"))
            .unwrap()
            .unwrap();
        send_round(&ns, "garp0", MAC, IP).unwrap();

        let want = frames(MAC, IP);
        let mut seen = [false; 2];
        let mut buf = [0u8; 1600];
        for _ in 0..32 {
            if seen.iter().all(|&s| s) {
                break;
            }
            // SAFETY: buf is a live, writable buffer of the given length.
            let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("receiving on garp1: {e} (seen {seen:?})");
            }
            let got = &buf[..n as usize];
            // Tolerate Ethernet padding to the 60-byte minimum.
            let got = if got.len() > FRAME_LEN && got[FRAME_LEN..].iter().all(|&b| b == 0) {
                &got[..FRAME_LEN]
            } else {
                got
            };
            for (i, w) in want.iter().enumerate() {
                if got == w {
                    seen[i] = true;
                }
            }
        }
        assert_eq!(seen, [true, true], "request and reply both received");

        // A missing device is an error naming namespace, device and address.
        let err = send_round(&ns, "nosuchdev", MAC, IP).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&ns) && msg.contains("nosuchdev") && msg.contains("192.0.2.10"),
            "{msg}"
        );
    }
}
