//! Checks across routers that a batch from `sync_routers` cannot make by
//! itself: a router given alone (a notification names one) must not take
//! an external address or a device name another router of this node holds.
//! The router already holding it keeps it; the newcomer is refused.

use std::net::IpAddr;

use crate::model::{Router, short_id};

/// Why `r` cannot be applied beside `others`, if it cannot.
pub fn clash(r: &Router, others: &[Router]) -> Option<String> {
    let mine: Vec<(IpAddr, &str)> = r
        .gateway
        .iter()
        .flat_map(|g| g.port.addresses.iter().map(|a| (a.addr(), "gateway IP")))
        .chain(
            r.floating_ips
                .iter()
                .map(|f| (IpAddr::V4(f.floating_ip), "floating IP")),
        )
        .collect();
    for o in others.iter().filter(|o| o.id != r.id) {
        for p in r.ports() {
            if o.ports().any(|q| short_id(&q.id) == short_id(&p.id)) {
                return Some(format!(
                    "port {} gives device name stem {}, already used by a port of router {}",
                    p.id,
                    short_id(&p.id),
                    o.id
                ));
            }
        }
        let (Some(g), Some(og)) = (&r.gateway, &o.gateway) else {
            continue;
        };
        if g.port.network_id != og.port.network_id {
            continue;
        }
        for (a, what) in &mine {
            let held = og.port.addresses.iter().any(|x| x.addr() == *a)
                || o.floating_ips
                    .iter()
                    .any(|f| IpAddr::V4(f.floating_ip) == *a);
            if held {
                return Some(format!(
                    "{what} {a} is already held by router {} on network {}",
                    o.id, g.port.network_id
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{Network, RouterSpec};

    fn router(tag: &str, ext: &Network, gw: &str, fip: &str) -> Router {
        let mut r = RouterSpec::empty(tag);
        r.gateway = Some(crate::fixtures::PortSpec::new(ext, gw));
        let net = Network::new("n", "10.0.0.0/24", Some("10.0.0.1"));
        r.interfaces
            .push(crate::fixtures::PortSpec::new(&net, "10.0.0.1"));
        r.add_fip(fip, "10.0.0.5");
        let text = crate::fixtures::routers_json(&[r]).to_string();
        crate::config::routers::parse(&text).unwrap().remove(0)
    }

    #[test]
    fn an_address_held_by_another_router_is_refused() {
        let ext = Network::new("ext", "192.168.1.0/24", Some("192.168.1.1"));
        let a = router("aaaa", &ext, "192.168.1.10", "192.168.1.100");
        let b = router("bbbb", &ext, "192.168.1.11", "192.168.1.101");
        assert_eq!(clash(&b, std::slice::from_ref(&a)), None);
        // b takes a's floating IP.
        let c = router("bbbb", &ext, "192.168.1.11", "192.168.1.100");
        let why = clash(&c, std::slice::from_ref(&a)).unwrap();
        assert!(
            why.contains("floating IP 192.168.1.100 is already held by router"),
            "{why}"
        );
        // Its own previous self is no clash.
        assert_eq!(clash(&a, std::slice::from_ref(&a)), None);
        // On another external network the same address is no clash.
        let ext2 = Network::new("ext2", "192.168.1.0/24", Some("192.168.1.1"));
        let d = router("dddd", &ext2, "192.168.1.12", "192.168.1.100");
        assert_eq!(clash(&d, std::slice::from_ref(&a)), None);
    }
}
