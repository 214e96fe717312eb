//! ARP for floating IPs, answered on the gateway port with the port's MAC
//! (Neutron's "proxy ARP"), without the kernel: the request is turned into
//! the reply in place and sent back out of the port it came in on.

use router_common::{config::Ipv4, port::ROLE_GATEWAY};

use crate::{ctx::Packet, maps};

/// Ethernet + ARP for IPv4 over Ethernet.
const ARP_LEN: usize = 14 + 28;

/// Whether the frame was an ARP request for one of the router's floating
/// IPs; if so it is now the reply. Anything else is left untouched.
#[inline(always)]
pub fn answer<P: Packet>(p: &mut P) -> bool {
    // A request on a VLAN (its tag in the skb's metadata, where the
    // kernel moved it) is not for this router.
    if p.vlan_tagged() {
        return false;
    }
    let Some(f) = p.ptr::<[u8; ARP_LEN]>(0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr().
    let f = unsafe { &mut *f };
    // Ethernet/IPv4 ARP request (htype 1, ptype 0x0800, hlen 6, plen 4, op 1).
    if f[12..22] != [0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return false;
    }
    let ifindex = p.ifindex();
    let Some(port) = maps::port(ifindex) else {
        return false;
    };
    if port.role != ROLE_GATEWAY {
        return false;
    }
    let spa = [f[28], f[29], f[30], f[31]];
    let tpa = [f[38], f[39], f[40], f[41]];
    // A gratuitous request announces, it asks nothing.
    if spa == tpa {
        return false;
    }
    // SAFETY: plain data.
    if unsafe { maps::XR_FIP_REV.get(&Ipv4 { addr: tpa }) }.is_none() {
        return false;
    }
    let mut sha = [0u8; 6];
    sha.copy_from_slice(&f[22..28]);
    f[0..6].copy_from_slice(&sha);
    f[6..12].copy_from_slice(&port.mac);
    f[21] = 2; // reply
    f[22..28].copy_from_slice(&port.mac);
    f[28..32].copy_from_slice(&tpa);
    f[32..38].copy_from_slice(&sha);
    f[38..42].copy_from_slice(&spa);
    true
}
