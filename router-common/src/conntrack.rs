//! The connection table: one entry per direction of a connection.

/// A connection's tuple as seen in one direction. For ICMP echo the id is in
/// both `sport` and `dport` (the reply carries the same id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Network byte order, as on the wire.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Padding, zero. Two fields rather than `[u8; 3]`: the BPF backend
    /// zeroes three bytes with a call to a byte loop, these with two stores.
    pub _pad: u8,
    pub _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    /// A key from raw (network-order) addresses and ports.
    pub const fn new(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> CtKey {
        CtKey {
            src,
            dst,
            sport,
            dport,
            proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Map flags of the established connections' table `XR_CT`:
/// BPF_F_NO_PREALLOC (entries allocated as connections are established).
/// A pinned table with other flags is replaced (its entries carried over).
pub const CT_FLAGS: u32 = 1;

pub const CT_ORIGINAL: u8 = 0;
pub const CT_REPLY: u8 = 1;

/// TCP state, loosely tracked (Neutron sets `tcp_be_liberal`).
pub const TCP_NONE: u8 = 0;
pub const TCP_SYN_SENT: u8 = 1;
pub const TCP_ESTABLISHED: u8 = 2;
pub const TCP_FIN: u8 = 3;
pub const TCP_CLOSED: u8 = 4;

/// `CtEntry::flags`: a packet was seen in the reply direction (set on both
/// entries).
pub const CT_F_REPLIED: u8 = 1;

/// NAT flags of a connection.
pub const NAT_SNAT: u8 = 1;
pub const NAT_DNAT: u8 = 2;

/// Value: what to rewrite a packet matching the key into.
///
/// A connection lives in one of two tables: `XR_CT_NEW` (embryonic: an LRU
/// table that a flood of new connections churns) until it is established
/// — TCP: its handshake completed; UDP/ICMP: answered and still alive
/// after [`ESTABLISH_AFTER_NS`] — then in `XR_CT` (established: a plain
/// hash table nothing evicts; when full, connections stay embryonic).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtEntry {
    /// The packet's tuple after translation.
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    pub new_sport: u16,
    pub new_dport: u16,
    /// `CT_ORIGINAL` or `CT_REPLY`.
    pub direction: u8,
    /// `NAT_SNAT | NAT_DNAT` of the connection.
    pub nat: u8,
    /// TCP state (`TCP_*`), shared meaning for both entries.
    pub state: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// Last packet, `bpf_ktime_get_ns` (CLOCK_MONOTONIC) nanoseconds.
    pub last_seen: u64,
    /// Connection start, same clock.
    pub created: u64,
    /// Where the packets of this entry went last (see [`RouteCache`]).
    pub route: RouteCache,
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 56);

/// The route of an entry's packets (to its translated destination, by its
/// flow hash) and its next hop's MAC, as the programs last looked them up,
/// valid while the router's maps are unchanged: `stamp` is the generation
/// (`XR_GEN`) read before those lookups, XORed with [`RouteCache::check`]
/// of the fields. The daemon bumps the generation after every write that
/// could change a route's result (routes, ports, addresses, floating IPs,
/// settings, neighbours); an entry whose stamp does not match the current
/// generation (or whose fields were torn by two CPUs writing at once) is
/// looked up afresh. All zero: nothing cached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RouteCache {
    pub stamp: u32,
    /// Egress ifindex (0: nothing cached).
    pub egress: u32,
    /// Next hop, raw network order.
    pub nexthop: u32,
    /// The next hop's MAC.
    pub mac: [u8; 6],
    pub _pad: u16,
    pub _pad2: u32,
}

const _: () = assert!(core::mem::size_of::<RouteCache>() == 24);

impl RouteCache {
    /// A mix of the fields: zero for all-zero fields, and a torn mixture
    /// of two writers' fields matches neither's stamp (but by a 2^-32
    /// chance).
    #[inline(always)]
    pub const fn check(egress: u32, nexthop: u32, mac: [u8; 6]) -> u32 {
        let m0 = u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]);
        let m1 = u32::from_ne_bytes([mac[4], mac[5], 0, 0]);
        let mut h = egress.wrapping_mul(0x9e37_79b1)
            ^ nexthop.wrapping_mul(0x85eb_ca77)
            ^ m0.wrapping_mul(0xc2b2_ae3d)
            ^ m1.wrapping_mul(0x27d4_eb2f);
        h ^= h >> 16;
        h = h.wrapping_mul(0x7feb_352d);
        h ^= h >> 15;
        h
    }

    /// The cached (egress, next hop, MAC) if valid under generation `g`.
    #[inline(always)]
    pub fn get(&self, g: u32) -> Option<(u32, u32, [u8; 6])> {
        let (stamp, egress, nexthop, mac) = (self.stamp, self.egress, self.nexthop, self.mac);
        if g == 0 || egress == 0 || stamp != g ^ Self::check(egress, nexthop, mac) {
            return None;
        }
        Some((egress, nexthop, mac))
    }

    /// Caches (egress, next hop, MAC) looked up under generation `g`,
    /// writing only the fields that change.
    #[inline(always)]
    pub fn set(&mut self, g: u32, egress: u32, nexthop: u32, mac: [u8; 6]) {
        if g == 0 {
            return;
        }
        let stamp = g ^ Self::check(egress, nexthop, mac);
        if self.egress != egress {
            self.egress = egress;
        }
        if self.nexthop != nexthop {
            self.nexthop = nexthop;
        }
        if self.mac != mac {
            self.mac = mac;
        }
        if self.stamp != stamp {
            self.stamp = stamp;
        }
    }
}

impl CtEntry {
    /// The key of the other direction of the connection `(k, self)`
    /// belongs to: an entry holds its packets' translated tuple, whose
    /// reverse that key is (for either direction).
    pub const fn partner(&self, k: &CtKey) -> CtKey {
        CtKey::new(
            self.new_dst,
            self.new_src,
            self.new_dport,
            self.new_sport,
            k.proto,
        )
    }
}

/// A UDP or ICMP connection counts as established once it has been
/// answered and is still used this long after its first packet (as the
/// kernel's conntrack marks UDP streams "assured").
pub const ESTABLISH_AFTER_NS: u64 = 2_000_000_000;

/// A fragmented datagram, by the fields every fragment carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// IPv4 identification, as on the wire.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The addresses the datagram's first fragment was translated to; the
/// later fragments (no L4 header) get the same.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragEntry {
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragEntry>() == 8);

crate::pod!(CtKey, CtEntry, RouteCache, FragKey, FragEntry);
