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

/// Words of [`LocalHint`] and [`NeighUsed`] (4,096 bits each).
const BITSET_WORDS: usize = 64;

/// A 12-bit hash of `x` (Fibonacci hashing: the top bits of the product).
#[inline(always)]
const fn hash12(x: u32) -> u32 {
    x.wrapping_mul(0x9e37_79b1) >> 20
}

/// The word and bit of a 12-bit hash in a set of [`BITSET_WORDS`] words.
#[inline(always)]
const fn word_bit(h: u64) -> (usize, u64) {
    ((h >> 6) as usize % BITSET_WORDS, 1u64 << (h & 63))
}

/// Words of [`LocalHint`].
pub const LOCAL_HINT_WORDS: usize = BITSET_WORDS;

/// `XR_LOCAL_HINT[0]`: two sets of a bit per hash of an address. In
/// `words`, a set bit vouches that no address of `XR_LOCAL` (the router's
/// own addresses, floating IPs, subnet broadcasts) hashes to it; in
/// `fixed`, that no fixed address of `XR_FIP` (one with a floating IP)
/// does. The programs then skip the hash lookup an address would
/// otherwise cost (~20 ns; a random source's or destination's is a cache
/// miss, as a flood's): whether it is the router's (twice for every packet
/// forwarded without a connection), whether it is a floating IP to DNAT,
/// whether it has one to SNAT to. Two sets, so that a VM's address with a
/// floating IP does not cost its east-west packets the `XR_LOCAL` lookup.
/// All zero, as a new map is, vouches for nothing: a clear bit only means
/// "look it up". The daemon clears the bits of addresses it adds before
/// adding them and sets the bits of those it removed after, so the hint
/// never vouches for an address of those maps, even while they are being
/// written.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LocalHint {
    pub words: [u64; LOCAL_HINT_WORDS],
    pub fixed: [u64; LOCAL_HINT_WORDS],
}

impl Default for LocalHint {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

impl LocalHint {
    /// The word and bit of `addr` (raw network order).
    #[inline(always)]
    pub const fn slot(addr: u32) -> (usize, u64) {
        word_bit(hash12(addr) as u64)
    }

    /// Whether no address of the router (`XR_LOCAL`) hashes where `addr`
    /// does.
    #[inline(always)]
    pub fn surely_not_local(&self, addr: u32) -> bool {
        let (w, b) = Self::slot(addr);
        self.words[w] & b != 0
    }

    /// Whether no fixed address with a floating IP (`XR_FIP`) hashes
    /// where `addr` does.
    #[inline(always)]
    pub fn surely_no_floating(&self, addr: u32) -> bool {
        let (w, b) = Self::slot(addr);
        self.fixed[w] & b != 0
    }

    /// The hint for exactly these addresses of `XR_LOCAL` and fixed
    /// addresses of `XR_FIP`: every bit no address hashes to is set.
    pub fn of(
        local: impl IntoIterator<Item = [u8; 4]>,
        fixed: impl IntoIterator<Item = [u8; 4]>,
    ) -> Self {
        let clear = |set: &mut [u64; LOCAL_HINT_WORDS],
                     addrs: &mut dyn Iterator<Item = [u8; 4]>| {
            for a in addrs {
                let (w, b) = Self::slot(u32::from_ne_bytes(a));
                set[w] &= !b;
            }
        };
        let mut h = LocalHint {
            words: [u64::MAX; LOCAL_HINT_WORDS],
            fixed: [u64::MAX; LOCAL_HINT_WORDS],
        };
        clear(&mut h.words, &mut local.into_iter());
        clear(&mut h.fixed, &mut fixed.into_iter());
        h
    }

    /// Vouches only where both `self` and `other` do.
    pub fn and(mut self, other: &LocalHint) -> Self {
        let pairs = self.words.iter_mut().zip(other.words.iter());
        for (w, o) in pairs.chain(self.fixed.iter_mut().zip(other.fixed.iter())) {
            *w &= o;
        }
        self
    }
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

/// Value of the neighbours map: a next hop's MAC, or that the kernel
/// failed to resolve it (it does not answer ARP: a packet to it is handed
/// to the kernel to be answered "host unreachable", as the kernel's own
/// forwarding answers it), or that it stopped answering at its MAC (a VM
/// given another: TC's next packet has the kernel resolve it afresh, as
/// the kernel's own next packet would).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Neigh {
    pub mac: [u8; 6],
    /// `NEIGH_RESOLVED`, `NEIGH_FAILED` or `NEIGH_RETRY` (the MAC zero in
    /// the last two). A byte of what was padding: maps pinned before it
    /// existed hold 0 there.
    pub state: u8,
    pub _pad: u8,
}

pub const NEIGH_RESOLVED: u8 = 0;
pub const NEIGH_FAILED: u8 = 1;
pub const NEIGH_RETRY: u8 = 2;

impl Neigh {
    /// A resolved next hop.
    pub const fn at(mac: [u8; 6]) -> Neigh {
        Neigh {
            mac,
            state: NEIGH_RESOLVED,
            _pad: 0,
        }
    }

    /// A next hop the kernel failed to resolve.
    pub const FAILED: Neigh = Neigh {
        mac: [0; 6],
        state: NEIGH_FAILED,
        _pad: 0,
    };

    /// A next hop that no longer answered at its MAC, to be resolved
    /// afresh.
    pub const RETRY: Neigh = Neigh {
        mac: [0; 6],
        state: NEIGH_RETRY,
        _pad: 0,
    };

    /// Its MAC, if resolved.
    #[inline(always)]
    pub const fn mac(&self) -> Option<[u8; 6]> {
        if self.state == NEIGH_RESOLVED {
            Some(self.mac)
        } else {
            None
        }
    }

    /// Whether the kernel failed to resolve it (it does not answer ARP).
    #[inline(always)]
    pub const fn failed(&self) -> bool {
        self.state == NEIGH_FAILED
    }
}

impl NeighKey {
    /// The 12-bit hash of a next hop in [`NeighUsed`].
    #[inline(always)]
    pub const fn used_hash(ifindex: u32, addr: u32) -> u32 {
        hash12(addr ^ ifindex.rotate_left(16))
    }

    /// The word and bit of hash `h` ([`NeighKey::used_hash`]).
    #[inline(always)]
    pub const fn used_bit(h: u64) -> (usize, u64) {
        word_bit(h)
    }
}

/// Words of [`NeighUsed`].
pub const NEIGH_USED_WORDS: usize = BITSET_WORDS;

/// `XR_NEIGH_USED[0]`, per CPU: a bit per hash of a next hop, set by XDP
/// when it sends a packet to that next hop's MAC, and by TC when it hands
/// up a packet to a next hop held as failed. The kernel never sees those
/// packets go to the neighbour, so it never checks one it holds as STALE
/// (a VM that changed its MAC would be sent to the old one for ever), nor
/// probes a failed one again: the daemon reads and clears these bits, and
/// has the kernel check the STALE and failed neighbours whose bit was set,
/// as a packet through the kernel would.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NeighUsed {
    pub words: [u64; NEIGH_USED_WORDS],
    /// The programs' scratch word for the hash (not a bit of the set).
    pub scratch: u64,
}

impl Default for NeighUsed {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

impl NeighUsed {
    /// Whether the next hop `k`'s bit is set.
    pub fn has(&self, k: &NeighKey) -> bool {
        let h = NeighKey::used_hash(k.ifindex, u32::from_ne_bytes(k.addr));
        let (w, b) = NeighKey::used_bit(h as u64);
        self.words[w] & b != 0
    }

    /// The bits of both.
    pub fn or(mut self, other: &NeighUsed) -> Self {
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w |= o;
        }
        self
    }
}

const _: () = assert!(core::mem::size_of::<NeighKey>() == 8);
const _: () = assert!(core::mem::size_of::<Neigh>() == 8);

crate::pod!(PortInfo, LocalAddr, LocalHint, NeighKey, Neigh, NeighUsed);
