//! What the crate's own tests share: the root check, a scratch namespace,
//! and the example router of Neutron's rule-set dump.

use std::process::Command;

use crate::{
    backend::netns,
    model::{FloatingIp, Gateway, Port, Role, Router, Subnet},
};

/// Fails the calling test unless it runs as root: tests that need the
/// kernel (namespaces, BPF, netfilter) must not pass unseen elsewhere.
pub(crate) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (namespaces, BPF, netfilter): run the tests as root, \
         as `cargo xtask test` does"
    );
}

fn port(id: &str, role: Role, addr: &str) -> Port {
    let addr: ipnet::IpNet = addr.parse().unwrap();
    Port {
        id: id.into(),
        role,
        mac: "fa:16:3e:00:00:01".parse().unwrap(),
        mtu: 1500,
        network_id: "9c9436d4-2b7c-4b5e-9a1c-000000000000".into(),
        addresses: vec![addr],
        subnets: vec![Subnet {
            cidr: addr.trunc(),
            gateway_ip: None,
        }],
    }
}

/// The router of the semantics file's example.
pub(crate) fn example() -> Router {
    Router {
        id: "e438bebe-6795-4b68-a613-ec0df38d3064".into(),
        enable_snat: true,
        gateway: Some(Gateway {
            port: port(
                "gggggggg-1111-2222-3333-444444444444",
                Role::Gateway,
                "192.168.1.110/24",
            ),
            extra_subnets: vec![],
        }),
        interfaces: vec![
            port(
                "aaaaaaaa-1111-2222-3333-444444444444",
                Role::Internal,
                "10.0.1.1/24",
            ),
            port(
                "bbbbbbbb-1111-2222-3333-444444444444",
                Role::Internal,
                "10.0.2.1/24",
            ),
        ],
        routes: vec![],
        floating_ips: vec![FloatingIp {
            id: "7b4cee72-0000-0000-0000-000000000000".into(),
            floating_ip: "192.168.1.111".parse().unwrap(),
            fixed_ip: "10.0.1.10".parse().unwrap(),
        }],
    }
}

/// A scratch network namespace, deleted when dropped (even on panic).
pub(crate) struct ScratchNs(pub String);

impl ScratchNs {
    /// Creates `xrt-<tag>-<pid>-<random>`. A test that cannot run here
    /// (not root, `tool` missing) fails rather than passing unseen.
    pub(crate) fn new(tag: &str, tool: &str) -> Option<ScratchNs> {
        use std::hash::{BuildHasher as _, Hasher as _};
        crate::testing::require_root();
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} not found: `cargo xtask test` installs it"
        );
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let name = format!("xrt-{tag}-{}-{:08x}", std::process::id(), random as u32);
        netns::create(&name).unwrap();
        Some(ScratchNs(name))
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}
