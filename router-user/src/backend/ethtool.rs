//! Device offload features, through the ethtool ioctl (`SIOCETHTOOL`).
//!
//! Only what the eBPF planes need: a tap that transmits a VLAN-tagged skb
//! with the tag in the skb's metadata (hardware VLAN insertion, on by default
//! on veth) hands its peer a frame whose data looks untagged, and XDP sees
//! only the data. With the feature off, the kernel writes the tag into the
//! frame before it crosses the pair, where the programs see it.

use std::{ffi::CString, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, bail};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// The features whose tag stays outside the frame: 802.1Q and 802.1ad.
pub const VLAN_TX_OFFLOADS: [&str; 2] = ["tx-vlan-hw-insert", "tx-vlan-stag-hw-insert"];

/// What a router port hands its peer that a userspace-datapath OVS
/// (`datapath_type=netdev`), reading the tap with AF_PACKET, cannot take:
/// partial checksums (forwarded with the checksum unfinished) and GSO
/// super-frames (larger than the MTU). Off, the kernel finishes both
/// before the frame crosses the pair.
pub const CHECKSUM_AND_SEGMENTATION: [&str; 10] = [
    "tx-checksum-ip-generic",
    "tx-checksum-sctp",
    "tx-tcp-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
    "tx-tcp6-segmentation",
    "tx-tcp-accecn-segmentation",
    "tx-generic-segmentation",
    "tx-udp-segmentation",
    "tx-gso-list",
];

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// One ethtool ioctl on `dev` with the command buffer `buf`.
fn ioctl(dev: &str, buf: &mut [u32]) -> Result<()> {
    let name = CString::new(dev).context("device name")?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        bail!("device name {dev:?} is too long");
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: buf.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").context("a socket for ethtool")?;
    // SAFETY: `req` points at a buffer the command describes and that lives
    // across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("ethtool on {dev}"));
    }
    Ok(())
}

/// Whether `e` (from this module) says the device does not exist.
pub fn no_device(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(libc::ENODEV))
}

/// The names of `dev`'s features, in bit order.
fn feature_names(dev: &str) -> Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, u64 sset_mask, u32 data[1].
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    ioctl(dev, &mut info)?;
    let n = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, then the strings.
    let mut buf = vec![0u32; 3 + n * ETH_GSTRING_LEN / 4];
    buf[0] = ETHTOOL_GSTRINGS;
    buf[1] = ETH_SS_FEATURES;
    buf[2] = n as u32;
    ioctl(dev, &mut buf)?;
    let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            let end = c.iter().position(|b| *b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect())
}

/// Whether each of `names` is active on `dev` (None: the device has no
/// such feature).
pub fn active(dev: &str, names: &[&str]) -> Result<Vec<Option<bool>>> {
    active_of(dev, &feature_names(dev)?, names)
}

/// [`active`], with the device's feature names (`all`) already read.
fn active_of(dev: &str, all: &[String], names: &[&str]) -> Result<Vec<Option<bool>>> {
    let blocks = all.len().div_ceil(32);
    // struct ethtool_gfeatures: cmd, size, then per block available,
    // requested, active, never_changed.
    let mut buf = vec![0u32; 2 + 4 * blocks];
    buf[0] = ETHTOOL_GFEATURES;
    buf[1] = blocks as u32;
    ioctl(dev, &mut buf)?;
    Ok(names
        .iter()
        .map(|n| {
            let i = all.iter().position(|a| a == n)?;
            Some(buf[2 + 4 * (i / 32) + 2] & (1 << (i % 32)) != 0)
        })
        .collect())
}

/// Turns features `names` off on `dev` (those it has); returns whether any
/// was on.
pub fn disable(dev: &str, names: &[&str]) -> Result<bool> {
    set(dev, names, false)
}

/// Turns features `names` on on `dev` (those it has); returns whether any
/// was off. A feature the device cannot change stays as it is.
pub fn enable(dev: &str, names: &[&str]) -> Result<bool> {
    set(dev, names, true)
}

/// Requests features `names` of `dev` `on` or off, if any of them is not
/// so already; returns whether one was asked to change.
fn set(dev: &str, names: &[&str], on: bool) -> Result<bool> {
    let all = feature_names(dev)?;
    let blocks = all.len().div_ceil(32);
    let was = active_of(dev, &all, names)?;
    if !was.contains(&Some(!on)) {
        return Ok(false);
    }
    // struct ethtool_sfeatures: cmd, size, then per block valid, requested.
    let mut buf = vec![0u32; 2 + 2 * blocks];
    buf[0] = ETHTOOL_SFEATURES;
    buf[1] = blocks as u32;
    for n in names {
        if let Some(i) = all.iter().position(|a| a == n) {
            buf[2 + 2 * (i / 32)] |= 1 << (i % 32);
            if on {
                buf[3 + 2 * (i / 32)] |= 1 << (i % 32);
            }
        }
    }
    let how = if on { "on" } else { "off" };
    ioctl(dev, &mut buf).with_context(|| format!("turning {} {how}", names.join(", ")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a scratch veth: the VLAN insertion offloads are found, on by
    /// default, turned off, and back on.
    #[test]
    fn vlan_insertion_goes_to_software_and_back() {
        crate::testing::require_root();
        let ns = format!("xrt-eth-{}", std::process::id());
        crate::backend::netns::create(&ns).unwrap();
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = crate::backend::netns::delete(&self.0);
            }
        }
        let _g = Gone(ns.clone());
        let mut c = std::process::Command::new("ip");
        c.args(["link", "add", "a0", "type", "veth", "peer", "name", "a1"]);
        crate::backend::netns::command_in(&ns, &mut c).unwrap();
        assert!(c.status().unwrap().success());
        let r = crate::backend::netns::run_in(Some(&ns), || {
            let before = active("a0", &VLAN_TX_OFFLOADS).unwrap();
            let changed = disable("a0", &VLAN_TX_OFFLOADS).unwrap();
            let after = active("a0", &VLAN_TX_OFFLOADS).unwrap();
            let again = disable("a0", &VLAN_TX_OFFLOADS).unwrap();
            let restored = enable("a0", &VLAN_TX_OFFLOADS).unwrap();
            let on = active("a0", &VLAN_TX_OFFLOADS).unwrap();
            let on_again = enable("a0", &VLAN_TX_OFFLOADS).unwrap();
            (before, changed, after, again, restored, on, on_again)
        })
        .unwrap();
        assert_eq!(r.0, vec![Some(true), Some(true)], "veth default");
        assert!(r.1);
        assert_eq!(r.2, vec![Some(false), Some(false)]);
        assert!(!r.3, "nothing left to change");
        assert!(r.4);
        assert_eq!(r.5, vec![Some(true), Some(true)], "back to the default");
        assert!(!r.6, "nothing left to change");
        let gone = active("xrt-no-such-dev", &VLAN_TX_OFFLOADS).unwrap_err();
        assert!(no_device(&gone), "{gone:#}");
    }
}
