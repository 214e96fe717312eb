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

/// The hash an ECMP route picks its next hop by (`hash % count`): over
/// the packet's addresses and ports as it arrived, raw network order (the
/// programs' and `xrouter explain`'s alike). Every input bit reaches the
/// low bits, which choose among 2-4 next hops: hosts and ports that differ
/// only in their last bits spread too.
#[inline(always)]
pub const fn flow_hash(src: u32, dst: u32, sport: u16, dport: u16) -> u32 {
    let ports = ((sport as u32) << 16) | dport as u32;
    let mut h = src.wrapping_mul(0x9e37_79b1)
        ^ dst.wrapping_mul(0x85eb_ca77).rotate_left(11)
        ^ ports.wrapping_mul(0xc2b2_ae3d).rotate_left(22);
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// Slots of the destination cache (`XR_DST_CACHE`), per CPU: a power of two.
pub const DST_CACHE_SLOTS: u32 = 256;

/// A slot of the destination cache: the route of `dst` and its next hop's
/// MAC, as a packet to `dst` last found them on this CPU. Only routes of one
/// next hop are cached (an ECMP route's choice depends on the flow). Valid
/// under the generation it was stamped with, as a connection's cache is
/// (the stamp also mixes `dst` in, see [`DstRoute::stamp_key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DstRoute {
    /// Raw network order.
    pub dst: u32,
    pub route: crate::conntrack::RouteCache,
}

const _: () = assert!(core::mem::size_of::<DstRoute>() == 24);

impl DstRoute {
    /// The slot of `dst` (raw network order).
    #[inline(always)]
    pub const fn slot(dst: u32) -> u32 {
        // Fibonacci hashing: the top bits of the product.
        dst.wrapping_mul(0x9e37_79b1) >> (32 - DST_CACHE_SLOTS.trailing_zeros())
    }

    /// What the slot's route is stamped under for `dst` at generation `g`:
    /// a slot torn between two destinations' writes matches neither. 0
    /// (never cached) when `g` is 0.
    #[inline(always)]
    pub const fn stamp_key(g: u32, dst: u32) -> u32 {
        if g == 0 {
            return 0;
        }
        g ^ dst.wrapping_mul(0x85eb_ca77).rotate_left(7)
    }
}

crate::pod!(Route, DstRoute);
