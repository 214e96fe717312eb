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
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);

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

crate::pod!(CtKey, CtEntry, FragKey, FragEntry);
