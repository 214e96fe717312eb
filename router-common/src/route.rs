//! Routes: an LPM trie of IPv4 prefixes to next hops.

/// Most next hops of one (ECMP) route.
pub const MAX_NEXTHOPS: usize = 4;

/// Value of the routes trie. The key is `Key<[u8; 4]>` (prefix length and
/// network-order address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Route {
    /// Number of valid entries in `gateways`/`ifindexes` (1..=MAX_NEXTHOPS).
    pub count: u32,
    /// Next-hop address per path; all zeros for a connected (on-link) route.
    pub gateways: [[u8; 4]; MAX_NEXTHOPS],
    /// Egress device per path.
    pub ifindexes: [u32; MAX_NEXTHOPS],
}

const _: () = assert!(core::mem::size_of::<Route>() == 4 + 16 + 16);

crate::pod!(Route);
