//! Integration test rig for xrouter.
//!
//! Each test builds its own world with [`Rig`]: a private node namespace
//! (taps, bridges, host veth ends, and the daemon), host namespaces plugged
//! into the bridges ([`Rig::vm`], [`Rig::external`]), the routers file built
//! from [`RouterSpec`]s (Neutron's dict format), and the `xrouter` daemon.
//! All names carry a random tag, so tests run in parallel; everything goes
//! away in `Drop`, also after a panic. Probes ([`probe`]) are bounded in time.
//!
//! The agent tests add a RabbitMQ broker of their own inside a namespace of
//! the test ([`Broker`], normally in [`Rig::node`]) and stand-ins for
//! neutron-server on real oslo.messaging ([`NeutronServer`], [`notify`],
//! [`Peer`]; tests/neutron/, in the venv scripts/setup.sh makes).
//!
//! Needs root. The xrouter binary is `$XROUTER_BIN` or `target/<profile>/xrouter`.

pub mod broker;
pub mod bulk;
pub mod check;
pub mod cmd;
pub mod frames;
pub mod metadata_agent;
pub mod neutron;
pub mod ovs;
pub mod probe;
pub mod rig;

pub use broker::{Broker, Netns};
pub use check::Checks;
pub use cmd::{Out, ip, ip_json, wait_until};
pub use metadata_agent::{MetadataAgent, header_values};
pub use neutron::{NeutronMetadataAgent, NeutronServer, Peer, notify};
pub use probe::{
    Reply, TcpServer, TcpSession, UdpServer, addresses, conntrack, conntrack_with, link,
    link_exists, ping, sa, sysctl_get, tcp_connect, tcp_request, tcp_request_from, udp_connected,
    udp_request, udp_request_sized,
};
pub use rig::{
    Host, Launch, Plugging, Rig, TempDir, set_plugging, xrouter_bin, xrouter_check, xrouter_plain,
};
pub use router_user::config::node::Dataplane;
pub use router_user::fixtures::{
    FipSpec, Network, PortSpec, RouterSpec, article, ids as names, routers_json,
};

/// Declares one `#[test]` per data plane under test for each scenario
/// function (`fn(Dataplane)`) named, as `<plane>::<scenario>` (e.g.
/// `iptables::hairpin`, `xdp::hairpin`, `tc::hairpin`).
#[macro_export]
macro_rules! planes {
    ($($name:ident),* $(,)?) => {
        mod iptables {
            $( #[test] fn $name() { super::$name($crate::Dataplane::Iptables) } )*
        }
        mod xdp {
            $( #[test] fn $name() { super::$name($crate::Dataplane::Xdp) } )*
        }
        mod tc {
            $( #[test] fn $name() { super::$name($crate::Dataplane::Tc) } )*
        }
    };
}

/// Declares one `#[test]` per data plane with Open vSwitch plugging for
/// each scenario function (`fn(Dataplane)`) named, as
/// `ovs_<plane>::<scenario>`: the rig of each such test runs a private OVS
/// and plugs router ports and hosts into its integration bridge.
#[macro_export]
macro_rules! ovs_planes {
    ($($name:ident),* $(,)?) => {
        mod ovs_iptables {
            $( #[test] fn $name() {
                $crate::set_plugging($crate::Plugging::Ovs);
                super::$name($crate::Dataplane::Iptables)
            } )*
        }
        mod ovs_xdp {
            $( #[test] fn $name() {
                $crate::set_plugging($crate::Plugging::Ovs);
                super::$name($crate::Dataplane::Xdp)
            } )*
        }
        mod ovs_tc {
            $( #[test] fn $name() {
                $crate::set_plugging($crate::Plugging::Ovs);
                super::$name($crate::Dataplane::Tc)
            } )*
        }
    };
}

/// [`planes!`] and [`ovs_planes!`] for the same scenarios: every plane,
/// with Linux bridges and with Open vSwitch.
#[macro_export]
macro_rules! planes_and_plugging {
    ($($name:ident),* $(,)?) => {
        $crate::planes!($($name),*);
        $crate::ovs_planes!($($name),*);
    };
}

/// Declares scenarios of what only the eBPF planes have (e.g. their
/// budget of new connections), one `#[test]` per eBPF plane.
#[macro_export]
macro_rules! ebpf_only {
    ($($name:ident),* $(,)?) => {
        mod ebpf_xdp {
            $( #[test] fn $name() { super::$name($crate::Dataplane::Xdp) } )*
        }
        mod ebpf_tc {
            $( #[test] fn $name() { super::$name($crate::Dataplane::Tc) } )*
        }
    };
}

/// Declares the scenarios that only the iptables plane can show so far.
#[macro_export]
macro_rules! iptables_only {
    ($($name:ident),* $(,)?) => {
        mod iptables_only {
            $( #[test] fn $name() { super::$name($crate::Dataplane::Iptables) } )*
        }
    };
}
