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

/// Map flags of the connection table `XR_CT`: BPF_F_MMAPABLE (the
/// daemon reads and writes its slots through a shared mapping, without a
/// system call per entry). A pinned table with other flags is replaced
/// (its connections carried over).
pub const CT_FLAGS: u32 = 1 << 10;

/// Slots of the table for `connections` connections (two slots each, one
/// per direction), at most half of them in use when all are open: a key
/// then finds a free slot within its window but a few times in a million
/// inserts (none in a million at three eighths), and a lookup reads one
/// or two slots.
pub const fn ct_slots(connections: u32) -> u32 {
    let want = connections as u64 * 4;
    let mut n = 1u64;
    while n < want {
        n <<= 1;
    }
    if n > 1 << 31 { 1 << 31 } else { n as u32 }
}

/// Entries of `XR_CT` for a table of `slots` slots (a power of two): the
/// slots, then one line of the table's own ([`CtMeta`]).
pub const fn ct_entries(slots: u32) -> u32 {
    slots + 1
}

/// The slots of a table of `entries` entries of `XR_CT` ([`ct_entries`]),
/// if that is a table's size.
pub const fn ct_slots_of(entries: u32) -> Option<u32> {
    let slots = entries.wrapping_sub(1);
    if slots.is_power_of_two() {
        Some(slots)
    } else {
        None
    }
}

/// The line after `XR_CT`'s slots: how full the table is, for inserts to
/// keep it at most [`ct_fill_cap`] full.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtMeta {
    /// Slots taken since the table was made that were never used before,
    /// less those the GC has turned back into never-used ones (signed: the
    /// CPUs add theirs in batches, so it can lag below zero for a while).
    pub fill: i64,
    pub _pad: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<CtMeta>() == 64);

/// Used slots (holding a key, or freed but not yet never-used) from which a
/// table of `slots` slots counts as full: half of them, `conntrack_size`
/// connections' worth. From there a new connection takes the place of an
/// embryonic one near its home rather than a free slot further on, if it
/// can; and the programs give the slot of the evicted one's other
/// direction back as never-used where no key's way crosses it. So a flood
/// leaves never-used slots in most windows (about 44% of the slots),
/// and a lookup that misses (every new connection's) stops within a few
/// slots instead of reading its whole window.
pub const fn ct_fill_cap(slots: u32) -> i64 {
    slots as i64 / 2
}

/// How many never-used slots a CPU takes (or gives back) before it adds
/// them to [`CtMeta::fill`] (one atomic add on a line all CPUs read, not
/// one per connection).
pub const CT_FILL_BATCH: i64 = 64;

/// How far from its hash's slot a key may sit (slots, wrapping at the end
/// of the table). A lookup stops at the first never-used slot, so the
/// window's length costs only where the table is crowded.
pub const CT_WINDOW: u32 = 32;

/// The second word of a slot's key (`CtKey::words().1`) when the slot holds
/// no key: never used (a lookup stops there), ...
pub const CT_W1_EMPTY: u64 = 0;
/// ... being written by one CPU (skipped; its protocol byte is 0, which no
/// real key has), ...
pub const CT_W1_BUSY: u64 = 1 << 40;
/// ... or freed (skipped, and reused by an insert).
pub const CT_W1_FREED: u64 = 2 << 40;

/// Whether a slot's second key word is a real key's (protocol non-zero).
pub const fn ct_w1_is_key(w1: u64) -> bool {
    (w1 >> 32) & 0xff != 0
}

/// One slot of `XR_CT`: a direction's key and its entry in one cache
/// line. The key's second word ([`CtKey::words`]) says what the slot
/// holds: `CT_W1_*`, else a key. It is claimed with a compare-and-swap
/// (to `CT_W1_BUSY`), written, then published with another; a reader
/// checks the key words again after copying the entry.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtSlot {
    pub key: CtKey,
    pub entry: CtEntry,
}

const _: () = assert!(core::mem::size_of::<CtSlot>() == 64);

/// Per CPU, an insert's choice of slot so far (`XR_CT_CLAIM`): scratch
/// of the programs, in memory so that the verifier need not follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CtClaim {
    pub pick: u32,
    /// A caller's note: an insert was refused for want of room.
    pub full: u32,
    pub oldest: u64,
    /// The picked slot's key word when it was read.
    pub was: u64,
    /// Whether the pick holds an entry (evicted if claimed).
    pub evicted: u64,
    /// Embryonic entries weighed for eviction so far.
    pub seen: u64,
    /// Never-used slots this CPU took, less the freed ones it turned back
    /// into never-used ones, not yet added to [`CtMeta::fill`].
    pub grown: i64,
    /// What the check of a freed slot read after it (a fingerprint), to
    /// read again once the slot is marked never-used.
    pub after: u64,
    /// Lookups of UDP and ICMP connections lately: up by one for a miss,
    /// down by one for a hit, within 0 and `CT_FLOOD_MISSES * 2`.
    pub misses: u32,
    /// A SNAT port drawn ahead for the next new connection (network order),
    /// with bit 16 set; 0: none.
    pub foreseen: u32,
    /// The key (its words) and entry an insert is writing: handed to it
    /// here, as a call of the programs takes only numbers, and read where
    /// needed rather than held across its calls (the stack is short).
    pub kw0: u64,
    pub kw1: u64,
    pub entry: CtEntry,
}

/// `CtClaim::misses` from which a CPU takes its packets for new
/// connections (a flood of them), and reads ahead for them.
pub const CT_FLOOD_MISSES: u32 = 8;

impl CtKey {
    /// The key as two words, as a slot holds them: addresses, then ports,
    /// protocol and padding (little-endian loads of the bytes).
    #[inline(always)]
    pub const fn words(&self) -> (u64, u64) {
        let w0 = u32::from_le_bytes(self.src) as u64 | (u32::from_le_bytes(self.dst) as u64) << 32;
        let p = self.sport.to_le_bytes();
        let q = self.dport.to_le_bytes();
        let w1 = u32::from_le_bytes([p[0], p[1], q[0], q[1]]) as u64
            | (self.proto as u64) << 32
            | (self._pad as u64) << 40
            | (self._pad2 as u64) << 48;
        (w0, w1)
    }

    /// The slot the key's window starts at, in a table of `mask + 1`
    /// slots: the four 32-bit words of the key mixed in one after the
    /// other (multiply, rotate, add, as MurmurHash3 does), then folded.
    /// Each word goes through the state before the next comes in, so keys
    /// that differ in two fields at once (a remote address and a port, as
    /// SNAT's reply keys do) do not cancel out into one slot, which
    /// combining the words' products side by side let happen.
    #[inline(always)]
    pub const fn home(&self, mask: u32) -> u32 {
        let (w0, w1) = self.words();
        ct_home(w0, w1, mask)
    }
}

/// [`CtKey::home`] of the key of words `w0`/`w1` ([`CtKey::words`]), as a
/// slot holds them.
#[inline(always)]
pub const fn ct_home(w0: u64, w1: u64, mask: u32) -> u32 {
    let words = [w0 as u32, (w0 >> 32) as u32, w1 as u32, (w1 >> 32) as u32];
    let mut h: u32 = 0x9747_b28c;
    let mut i = 0;
    while i < 4 {
        let mut k = words[i].wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= 16;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & mask
}

impl CtKey {
    /// What an entry's route cache is stamped under for this key at
    /// generation `g`: a slot freed and reused by another connection
    /// while a packet of this one wrote its cache holds a stamp the other
    /// connection's key does not match. 0 (never cached) when `g` is 0.
    #[inline(always)]
    pub const fn stamp_key(&self, g: u32) -> u32 {
        if g == 0 {
            return 0;
        }
        let (w0, w1) = self.words();
        let f = w0 ^ w1.rotate_left(29);
        g ^ ((f ^ (f >> 32)) as u32).wrapping_mul(0x9e37_79b1)
    }
}

/// `CtEntry::created` is the clock (`bpf_ktime_get_coarse_ns`) shifted
/// right this much: ticks of about a millisecond (1.05 ms), wrapping
/// after 52 days.
pub const CT_TICK_SHIFT: u32 = 20;

/// The clock's nanoseconds `ns` in ticks ([`CT_TICK_SHIFT`]).
#[inline(always)]
pub const fn ct_ticks(ns: u64) -> u32 {
    (ns >> CT_TICK_SHIFT) as u32
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
/// `CtEntry::flags`: the connection is established (set on both entries):
/// never evicted by a new connection, only expired when idle.
pub const CT_F_ASSURED: u8 = 2;

/// NAT flags of a connection.
pub const NAT_SNAT: u8 = 1;
pub const NAT_DNAT: u8 = 2;

/// Value: what to rewrite a packet matching the key into.
///
/// A connection is embryonic until it is established — TCP: its handshake
/// completed; UDP/ICMP: answered and still alive after
/// [`ESTABLISH_AFTER_NS`] — then [`CT_F_ASSURED`]: a new connection whose
/// window is full takes the slot of the least recently seen of the first
/// four embryonic ones there, never an established one's.
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
    /// Last packet, `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC)
    /// nanoseconds.
    pub last_seen: u64,
    /// Connection start, same clock in ticks ([`CT_TICK_SHIFT`]).
    pub created: u32,
    /// Where the packets of this entry went last (see [`RouteCache`]).
    pub route: RouteCache,
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 48);

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
}

const _: () = assert!(core::mem::size_of::<RouteCache>() == 20);

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
    /// Nanoseconds since the connection started, at `now_ns` (from the
    /// start of its creation tick: up to a millisecond more; modulo 52
    /// days).
    #[inline(always)]
    pub const fn age_ns(&self, now_ns: u64) -> u64 {
        ((ct_ticks(now_ns).wrapping_sub(self.created) as u64) << CT_TICK_SHIFT)
            + (now_ns & ((1 << CT_TICK_SHIFT) - 1))
    }

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
/// later fragments (no L4 header) get the same, for [`FRAG_TIMEOUT_NS`]
/// after it, unless they overlap it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FragEntry {
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    /// When the first fragment came (CLOCK_MONOTONIC_COARSE, ns).
    pub seen_ns: u64,
    /// The bytes of the datagram the first fragment carried (its IP
    /// payload): a later fragment starting before their end overlaps it.
    pub first_len: u16,
    pub _pad: [u8; 6],
}

/// How long a first fragment's translation serves its datagram's later
/// fragments: the kernel's reassembly timeout (`ipfrag_time`, 30 s).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<FragEntry>() == 24);

crate::pod!(
    CtKey, CtEntry, CtSlot, CtMeta, CtClaim, RouteCache, FragKey, FragEntry
);
