//! Router ports: ifindex -> role, MAC, address, MTU.

pub const ROLE_INTERNAL: u8 = 1;
pub const ROLE_GATEWAY: u8 = 2;

/// Value of the ports map, keyed by the device's ifindex (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortInfo {
    /// First IPv4 address of the port.
    pub addr: [u8; 4],
    pub mac: [u8; 6],
    /// `ROLE_INTERNAL` (qr-) or `ROLE_GATEWAY` (qg-).
    pub role: u8,
    pub _pad: u8,
    pub mtu: u32,
}

const _: () = assert!(core::mem::size_of::<PortInfo>() == 16);

/// Ports whose ifindex is below this are also in the array `XR_PORT_SLOTS`
/// at their ifindex (a slot with role 0 is empty): an array lookup costs
/// the programs a few instructions, a hash lookup ~20 ns, and every
/// forwarded packet needs two (ingress and egress). Devices of a router
/// namespace are numbered from 1 up, so only a namespace that has seen
/// hundreds of devices come and go has ports beyond; those are found in
/// `XR_PORTS`, which holds every port.
pub const PORT_SLOTS: u32 = 256;

/// Key of the local addresses map: every address the router owns, with its
/// kind as value (`LOCAL_*`). Port addresses and subnet broadcasts are for
/// the kernel; floating IPs are translated, and listed only so that a packet
/// claiming one as its source is refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LocalAddr {
    pub addr: [u8; 4],
}

/// `XR_LOCAL` values.
pub const LOCAL_ADDRESS: u32 = 1;
pub const LOCAL_BROADCAST: u32 = 2;
pub const LOCAL_FLOATING: u32 = 3;

/// Key of the neighbours map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NeighKey {
    pub ifindex: u32,
    pub addr: [u8; 4],
}

/// Value of the neighbours map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Neigh {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<NeighKey>() == 8);
const _: () = assert!(core::mem::size_of::<Neigh>() == 8);

crate::pod!(PortInfo, LocalAddr, NeighKey, Neigh);
