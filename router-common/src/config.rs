//! Per-router settings and the floating IP maps.

/// The single entry (index 0) of the router config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterConfig {
    /// Gateway port address used for SNAT (zeros: no gateway).
    pub gw_addr: [u8; 4],
    /// Ifindex of qg- (0: no gateway).
    pub gw_ifindex: u32,
    /// 1 when gateway SNAT is enabled.
    pub enable_snat: u32,
    /// SNAT port range, inclusive, host order.
    pub port_min: u16,
    pub port_max: u16,
    /// Metadata proxy port (host order).
    pub metadata_port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<RouterConfig>() == 20);

/// Key and value of both floating IP maps (fixed -> floating and back).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv4 {
    pub addr: [u8; 4],
}

crate::pod!(RouterConfig, Ipv4);
