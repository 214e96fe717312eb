//! table: the connection table `XR_CT`, an array of 64-byte slots
//! ([`CtSlot`]: a direction's key and entry in one cache line) with open
//! addressing. A key sits within [`CT_WINDOW`] slots of its hash's slot;
//! a lookup reads the window's slots in turn and stops at a never-used
//! one, so it reads one line, or two, where a kernel hash map reads a
//! bucket and then an element. An insert writes a slot the lookup read,
//! with no lock, free list or LRU list. A line after the slots counts the
//! slots in use ([`CtMeta`]); past half, inserts keep never-used slots
//! for lookups to stop at, taking embryonic entries' places instead.
//!
//! Concurrency, without locks: a slot is claimed by a compare-and-swap of
//! its key's second word to `CT_W1_BUSY`, written, then published by a
//! second one to the key's word. Readers skip busy and freed slots and,
//! having copied what they need, check the key words again (a slot freed
//! and reused meanwhile is a miss). The daemon (GC, `show flows`, the
//! copy into a resized table) works on the same slots through a shared
//! mapping, with the same protocol. Its GC also turns freed slots no
//! key's way crosses back into never-used ones, so that lookups go on
//! stopping early in a table connections have churned through, and the
//! programs do the same for the slot an eviction frees
//! ([`xr_ct_unfree`]): under a flood, where every new connection evicts
//! one, the table then stays about at its size (a little over half its
//! slots used) rather than filling up. An
//! insert, having published, withdraws if it then finds a never-used slot
//! before its own, or its key (or a busy slot) where a second copy could
//! be (`xr_ct_must_withdraw`): a key is in the table once.

use core::{
    intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg, atomic_xadd},
    mem::size_of,
    ptr::{addr_of_mut, read_volatile, write_volatile},
};

use router_common::conntrack::{
    CT_F_ASSURED, CT_FILL_BATCH, CT_FLOOD_MISSES, CT_W1_BUSY, CT_W1_EMPTY, CT_W1_FREED, CT_WINDOW,
    CtClaim, CtEntry, CtKey, CtMeta, CtSlot, TCP_CLOSED, TCP_FIN, ct_fill_cap, ct_home,
    ct_w1_is_key,
};

use super::parse::PROTO_TCP;

use crate::maps::{XR_CT, XR_CT_CLAIM};

/// Slots of `XR_CT` less one (a power of two less one), set by the loader
/// (`XR_CT`'s size is set at load time). Writable data, not a constant:
/// the verifier then takes it for any value and checks the scans once
/// for all sizes, rather than following constant slot numbers (with a
/// size of one slot, one state per slot of every scan: over its limit).
/// The initial value is `XR_CT`'s size in the object.
#[unsafe(no_mangle)]
static mut XR_CT_MASK: u32 = 1023;

#[inline(always)]
fn mask() -> u32 {
    // SAFETY: a global only the loader writes; volatile so that it is not
    // folded at compile time.
    unsafe { read_volatile(&raw const XR_CT_MASK) }
}

#[inline(always)]
fn slot(i: u32) -> Option<*mut CtSlot> {
    XR_CT.get_ptr_mut(i)
}

/// The key words of slot `s`, second word first (it says what the slot is).
#[inline(always)]
fn w1(s: *mut CtSlot) -> *mut u64 {
    // SAFETY: a field of a slot of the array; the key's first 16 bytes
    // are two aligned words (the slot is 64-byte aligned).
    unsafe { (addr_of_mut!((*s).key) as *mut u64).add(1) }
}

#[inline(always)]
fn w0(s: *mut CtSlot) -> *mut u64 {
    // SAFETY: as in `w1`.
    unsafe { addr_of_mut!((*s).key) as *mut u64 }
}

/// A slot found for a key, with the key's words (to check again after
/// reading the entry: [`Found::still`]).
#[derive(Clone, Copy)]
pub struct Found {
    pub slot: *mut CtSlot,
    /// The slot's index.
    at: u32,
    w0: u64,
    w1: u64,
}

impl Found {
    /// The slot's entry, to read and update in place.
    #[inline(always)]
    pub fn entry(&self) -> *mut CtEntry {
        // SAFETY: a field of the slot.
        unsafe { addr_of_mut!((*self.slot).entry) }
    }

    /// Whether the slot still holds the key it was found with: read after
    /// the entry's fields, so a slot reused meanwhile is not taken for the
    /// key's.
    #[inline(always)]
    pub fn still(&self) -> bool {
        // SAFETY: words of the slot.
        unsafe {
            read_volatile(w1(self.slot)) == self.w1 && read_volatile(w0(self.slot)) == self.w0
        }
    }
}

/// No slot (what the scans below return for "none").
const NONE: u32 = u32::MAX;

/// The slot holding `k`, if any.
#[inline(always)]
pub fn lookup(k: &CtKey) -> Option<Found> {
    let (kw0, kw1) = k.words();
    found(xr_ct_scan(kw0, kw1, mask()), kw0, kw1)
}

/// [`lookup`] for a TCP SYN (`k` a TCP key): a closed connection the SYN
/// reopens is ended and not found ([`xr_ct_scan_syn`]).
#[inline(always)]
pub fn lookup_syn(k: &CtKey) -> Option<Found> {
    let (kw0, kw1) = k.words();
    found(xr_ct_scan_syn(kw0, kw1, mask()), kw0, kw1)
}

#[inline(always)]
fn found(at: u32, kw0: u64, kw1: u64) -> Option<Found> {
    let s = slot(at)?;
    Some(Found {
        slot: s,
        at,
        w0: kw0,
        w1: kw1,
    })
}

/// The index of the slot holding the key of words `kw0`/`kw1` in its
/// window, or [`NONE`]. A global function, as are the other scans: the
/// verifier checks it once, on its own, for any arguments, and a call is
/// one instruction to it, whose result is any number; inlined (or a
/// static function, checked at every call), the scans' paths multiplied
/// through the pipeline past the verifier's limit. A lookup works the
/// key's home out here ([`ct_home`]), as an insert does in
/// [`xr_ct_insert`], for the same reason: inlined at each of the
/// pipeline's lookups and inserts, the hash was walked on every path
/// through each (a fifth of the verifier's work).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_scan(kw0: u64, kw1: u64, m: u32) -> u32 {
    scan(ct_home(kw0, kw1, m), kw0, kw1, m)
}

/// [`xr_ct_scan`] for a TCP SYN: where the key's connection is closed
/// (both sides had sent a FIN, or the SYN's own side had reset it), both
/// its entries are freed (a SNAT port with them) and the key is not
/// found, so that the SYN opens a new connection. The kernel's conntrack
/// does the same in TIME_WAIT or CLOSE, so that a client reusing its
/// port (as it may, with timestamps) gets the translation of now (a
/// floating IP added or moved since), not the old connection's. After
/// one side's FIN only, or the other side's reset (a refused connection
/// tried again), the SYN goes on in the old connection, as in the
/// kernel's. Its scans are inlined ([`scan`]), not calls: a call deeper
/// would take the stack past the 512 bytes the pipeline may use.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_scan_syn(kw0: u64, kw1: u64, m: u32) -> u32 {
    let at = scan(ct_home(kw0, kw1, m), kw0, kw1, m);
    let Some(s) = slot(at) else {
        return NONE;
    };
    // SAFETY: fields of a slot of the array, checked against the key
    // before anything is freed.
    let (state, pk) = unsafe {
        let e = &(*s).entry;
        let pk = CtKey::new(
            read_volatile(&e.new_dst),
            read_volatile(&e.new_src),
            read_volatile(&e.new_dport),
            read_volatile(&e.new_sport),
            PROTO_TCP,
        );
        (read_volatile(&e.state), pk)
    };
    if state != TCP_FIN && state != TCP_CLOSED {
        return at;
    }
    let (pw0, pw1) = pk.words();
    let partner = slot(scan(pk.home(m), pw0, pw1, m));
    if state == TCP_FIN
        && let Some(p) = partner
    {
        // SAFETY: a field of a slot of the array.
        let other = unsafe { read_volatile(&(*p).entry.state) };
        if other != TCP_FIN && other != TCP_CLOSED {
            return at;
        }
    }
    // SAFETY: words of slots of the array; each freed only if it still
    // holds its key (else that connection has gone meanwhile: the SYN
    // opens a new one all the same).
    unsafe {
        if read_volatile(w0(s)) == kw0 {
            atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(s), kw1, CT_W1_FREED);
        }
        if let Some(p) = partner
            && read_volatile(w0(p)) == pw0
        {
            atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(p), pw1, CT_W1_FREED);
        }
    }
    NONE
}

/// The index of the slot holding the key of words `kw0`/`kw1` in the
/// window from `home`, or [`NONE`]: [`xr_ct_scan`]'s loop, for the
/// global functions that cannot call it.
#[inline(always)]
fn scan(home: u32, kw0: u64, kw1: u64, m: u32) -> u32 {
    for i in 0..CT_WINDOW {
        let at = home.wrapping_add(i) & m;
        let Some(s) = slot(at) else {
            return NONE;
        };
        // SAFETY: words of a slot of the array.
        let sw1 = unsafe { read_volatile(w1(s)) };
        if sw1 == CT_W1_EMPTY {
            return NONE;
        }
        if sw1 == kw1 && unsafe { read_volatile(w0(s)) } == kw0 {
            return at;
        }
    }
    NONE
}

/// Whether this CPU's lookups have mostly missed lately: a flood of new
/// connections, whose reply slots are worth reading ahead ([`foresee`]).
#[inline(always)]
pub fn flooded() -> bool {
    match XR_CT_CLAIM.get_ptr(0) {
        // SAFETY: per-CPU scratch.
        Some(c) => (unsafe { read_volatile(&(*c).misses) }) >= CT_FLOOD_MISSES,
        None => false,
    }
}

/// Counts a lookup of a packet's connection, found or not ([`flooded`]).
#[inline(always)]
pub fn note_lookup(hit: bool) {
    if let Some(c) = XR_CT_CLAIM.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, no concurrent writer on this CPU.
        unsafe {
            let n = read_volatile(&(*c).misses);
            if hit {
                if n != 0 {
                    write_volatile(&mut (*c).misses, n - 1);
                }
            } else if n < CT_FLOOD_MISSES * 2 {
                write_volatile(&mut (*c).misses, n + 1);
            }
        }
    }
}

/// Starts reading the first slot of `k`'s window without waiting for it:
/// a key to be looked up or inserted soon, whose miss then overlaps
/// another (the lookup of the packet's own key).
#[inline(always)]
pub fn foresee(k: &CtKey) {
    let (kw0, kw1) = k.words();
    xr_ct_touch(kw0, kw1, mask());
}

/// Reads the key word of the first slot of the window of the key of words
/// `kw0`/`kw1`, for [`foresee`]: a call, so that the key is not held on
/// the pipeline's stack.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_touch(kw0: u64, kw1: u64, m: u32) -> u64 {
    match slot(ct_home(kw0, kw1, m)) {
        // SAFETY: a word of a slot of the array.
        Some(s) => unsafe { read_volatile(w1(s)) },
        None => 0,
    }
}

/// Keeps `port` for the next new SNAT connection's first try.
#[inline(always)]
pub fn foresee_port(port: u16) {
    if let Some(c) = XR_CT_CLAIM.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, no concurrent writer on this CPU.
        unsafe { write_volatile(&mut (*c).foreseen, port as u32 | 1 << 16) };
    }
}

/// The port [`foresee_port`] kept, taken.
#[inline(always)]
pub fn take_foreseen() -> Option<u16> {
    let c = XR_CT_CLAIM.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, no concurrent writer on this CPU.
    let p = unsafe { read_volatile(&(*c).foreseen) };
    if p == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { write_volatile(&mut (*c).foreseen, 0) };
    Some(p as u16)
}

/// Why an insert failed.
pub enum Refused {
    /// No free slot, and no embryonic connection to evict, in the window.
    Full,
    /// Another CPU inserted the same key at the same time (or was
    /// inserting a key in the window, perhaps the same); or the daemon
    /// made a slot before the one taken never-used meanwhile. Rare; a
    /// caller may try another key.
    Taken,
}

/// `claim`'s result: the slot's index, and this bit if an embryonic
/// entry was evicted for it.
const EVICTED: u64 = 1 << 32;

/// `claim`'s result: this bit if the slot was not never-used (freed, or
/// evicted); [`xr_ct_must_withdraw`]'s: look after the slot too.
const REUSED: u64 = 1 << 33;

/// Inserts `k` with entry `e` (not looked up first: the caller has, and
/// missed): into the first free slot of its window, else in place of the
/// least recently seen of the first [`EVICT_AMONG`] embryonic entries
/// there (evicted: true) other than `keep`'s (the connection's other
/// direction, just inserted). A concurrent insert of the same key by
/// another CPU is detected after publishing, and at least one of the two
/// withdraws (`Refused::Taken`): a key is in the table once, so that two
/// connections never share a SNAT port.
#[inline(always)]
pub fn insert(k: &CtKey, e: &CtEntry, keep: Option<&Found>) -> Result<(Found, bool), Refused> {
    let (kw0, kw1) = k.words();
    let m = mask();
    let keep = keep.map_or(NONE, |f| f.at);
    let Some(c) = XR_CT_CLAIM.get_ptr_mut(0) else {
        return Err(Refused::Full);
    };
    // SAFETY: per-CPU scratch, no concurrent writer on this CPU.
    unsafe {
        write_volatile(&mut (*c).kw0, kw0);
        write_volatile(&mut (*c).kw1, kw1);
        write_entry(addr_of_mut!((*c).entry), e);
    }
    let r = xr_ct_insert(keep, m);
    if r & TAKEN != 0 {
        return Err(Refused::Taken);
    }
    let Some(s) = slot(r as u32) else {
        return Err(Refused::Full);
    };
    Ok((
        Found {
            slot: s,
            at: r as u32,
            w0: kw0,
            w1: kw1,
        },
        r & EVICTED != 0,
    ))
}

/// `xr_ct_insert`'s answer for an insert withdrawn ([`Refused::Taken`]).
const TAKEN: u64 = 1 << 34;

/// [`insert`]'s work, the key and entry taken from this CPU's
/// `XR_CT_CLAIM` (where [`insert`] put them): the slot's index with
/// [`EVICTED`] if an embryonic entry was evicted for it, [`TAKEN`], or
/// [`NONE`] (no room). A global function, checked once: inlined, its
/// paths were walked again at every insert of the pipeline.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_insert(keep: u32, m: u32) -> u64 {
    let Some(scratch) = XR_CT_CLAIM.get_ptr(0) else {
        return NONE as u64;
    };
    // SAFETY (the key's words, here and below): this CPU's scratch.
    let home = unsafe {
        ct_home(
            read_volatile(&(*scratch).kw0),
            read_volatile(&(*scratch).kw1),
            m,
        )
    };
    let c = xr_ct_claim(home, m, keep);
    let Some(s) = slot(c as u32) else {
        return NONE as u64;
    };
    let freed = if c & EVICTED != 0 {
        // The evicted connection goes whole: a half left behind would
        // hold a translation whose reply key (its SNAT port) is free for
        // another connection to claim.
        xr_ct_evict_partner(c as u32, keep, m)
    } else {
        NONE
    };
    // SAFETY: the slot is ours (busy) until published; the entry is this
    // CPU's scratch.
    unsafe {
        write_volatile(w0(s), read_volatile(&(*scratch).kw0));
        write_entry(addr_of_mut!((*s).entry), &(*scratch).entry);
        // Publishing is a full barrier: the entry is visible with the key.
        atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(
            w1(s),
            CT_W1_BUSY,
            read_volatile(&(*scratch).kw1),
        );
    }
    if freed != NONE {
        // After publishing: this key, if after the freed slot, is then
        // seen on its way, not taken for a busy slot.
        xr_ct_unfree(freed, m);
    }
    let (kw0, kw1) = unsafe {
        (
            read_volatile(&(*scratch).kw0),
            read_volatile(&(*scratch).kw1),
        )
    };
    if xr_ct_must_withdraw(kw0, kw1, home, c, m) != 0 {
        // SAFETY: a word of the slot; freed only if it still holds the key.
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(s), kw1, CT_W1_FREED) };
        return TAKEN;
    }
    c & (EVICTED | (u32::MAX as u64))
}

/// Writes entry `e` at `dst`, a word at a time. A plain copy of an entry
/// whose route part is zero (a new connection's) is compiled into a call
/// of a byte-by-byte `memset`, which the verifier walks byte by byte at
/// every call: a tenth of its work on the XDP pipeline. Volatile stores
/// are never merged into such a call.
///
/// # Safety
/// `dst` is an entry of a slot this CPU holds busy, or of its scratch.
#[inline(always)]
unsafe fn write_entry(dst: *mut CtEntry, e: *const CtEntry) {
    const WORDS: usize = size_of::<CtEntry>() / 8;
    let dst = dst.cast::<u64>();
    let src = e.cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: both are 8-aligned (`CtEntry` holds a u64; slots and
        // map values are 8-aligned) and `WORDS` words long.
        unsafe { write_volatile(dst.add(i), src.add(i).read()) };
    }
}

/// How many embryonic entries of a full window an insert weighs, to evict
/// the least recently seen: the first ones, not all of the window's.
/// Under a flood every window is full of them; the victim's other
/// direction is then near its own home too (it was placed the same way),
/// and freeing it reads a line or two there rather than half a window.
const EVICT_AMONG: u64 = 4;

/// The table's own line, after its `m + 1` slots.
#[inline(always)]
fn meta(m: u32) -> Option<*mut CtMeta> {
    XR_CT.get_ptr_mut(m.wrapping_add(1)).map(|p| p.cast())
}

/// Claims a slot in the window from `home` (its key word set busy): the
/// first free one, else the least recently seen of the first
/// [`EVICT_AMONG`] embryonic ones but slot `keep`; but, with the table
/// full ([`ct_fill_cap`]), such an embryonic one before a free slot
/// rather than that slot. Its index (with [`EVICTED`] if it held an
/// entry), or [`NONE`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_claim(home: u32, m: u32, keep: u32) -> u64 {
    let (Some(c), Some(meta)) = (XR_CT_CLAIM.get_ptr_mut(0), meta(m)) else {
        return NONE as u64;
    };
    // SAFETY: the table's own line; read as it is, however stale.
    let full = unsafe { read_volatile(&(*meta).fill) } >= ct_fill_cap(m.wrapping_add(1));
    // The choice so far lives in this CPU's scratch value, not in
    // registers: the verifier does not follow map memory, so the two
    // outcomes of each slot's test leave it one state, not two per slot.
    // SAFETY: per-CPU scratch, no concurrent writer on this CPU.
    unsafe {
        write_volatile(&mut (*c).pick, NONE);
        write_volatile(&mut (*c).oldest, u64::MAX);
        write_volatile(&mut (*c).evicted, 0);
        write_volatile(&mut (*c).seen, 0);
    }
    for i in 0..CT_WINDOW {
        let at = home.wrapping_add(i) & m;
        // Full, with all its candidates weighed: nothing further on
        // would be taken (see below).
        // SAFETY: the scratch value as above.
        if full && unsafe { read_volatile(&(*c).seen) } >= EVICT_AMONG {
            break;
        }
        let Some(s) = slot(at) else {
            break;
        };
        // SAFETY: words and fields of a slot of the array; the scratch
        // value as above.
        unsafe {
            let sw1 = read_volatile(w1(s));
            if (sw1 == CT_W1_EMPTY || sw1 == CT_W1_FREED) && full && read_volatile(&(*c).seen) != 0
            {
                // Full: the embryonic one picked so far, not a free slot
                // further on, which would make the table fuller (a freed
                // one too: in a table once packed, freed slots on keys'
                // ways cannot become never-used, and reusing them would
                // keep it packed).
                break;
            }
            if sw1 == CT_W1_EMPTY || sw1 == CT_W1_FREED {
                write_volatile(&mut (*c).pick, at);
                write_volatile(&mut (*c).was, sw1);
                write_volatile(&mut (*c).evicted, 0);
                break;
            }
            // Below the table's size, a free slot further on is still
            // taken rather than any of these: the scan goes on for one.
            if read_volatile(&(*c).seen) < EVICT_AMONG
                && ct_w1_is_key(sw1)
                && at != keep
                && read_volatile(&(*s).entry.flags) & CT_F_ASSURED == 0
            {
                write_volatile(&mut (*c).seen, read_volatile(&(*c).seen) + 1);
                if read_volatile(&(*s).entry.last_seen) < read_volatile(&(*c).oldest) {
                    write_volatile(&mut (*c).oldest, read_volatile(&(*s).entry.last_seen));
                    write_volatile(&mut (*c).pick, at);
                    write_volatile(&mut (*c).was, sw1);
                    write_volatile(&mut (*c).evicted, EVICTED);
                }
            }
        }
    }
    // SAFETY: as above.
    let (pick, was, evicted) = unsafe {
        (
            read_volatile(&(*c).pick),
            read_volatile(&(*c).was),
            read_volatile(&(*c).evicted),
        )
    };
    let Some(s) = slot(pick) else {
        return NONE as u64;
    };
    // SAFETY: a word of a slot of the array; the claim is atomic.
    if !unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(s), was, CT_W1_BUSY) }.1 {
        // Another CPU took it first: rare enough to give up on.
        return NONE as u64;
    }
    if was == CT_W1_EMPTY {
        count_fill(c, meta, 1);
        return pick as u64;
    }
    pick as u64 | evicted | REUSED
}

/// Adds `n` never-used slots taken (or, negative, given back) to this
/// CPU's count, and the count to the table's once it is a batch.
#[inline(always)]
fn count_fill(c: *mut CtClaim, meta: *mut CtMeta, n: i64) {
    // SAFETY: this CPU's scratch; the table's own line, added to
    // atomically.
    unsafe {
        let grown = read_volatile(&(*c).grown).wrapping_add(n);
        if grown >= CT_FILL_BATCH || grown <= -CT_FILL_BATCH {
            atomic_xadd::<i64, i64, { SeqCst }>(addr_of_mut!((*meta).fill), grown);
            write_volatile(&mut (*c).grown, 0);
        } else {
            write_volatile(&mut (*c).grown, grown);
        }
    }
}

/// Frees the other direction of the embryonic entry slot `at` holds (which
/// this CPU has claimed and not yet overwritten), unless it is slot `keep`
/// or established. The slot freed (for [`xr_ct_unfree`]), or
/// [`NONE`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_evict_partner(at: u32, keep: u32, m: u32) -> u32 {
    let (Some(s), Some(c)) = (slot(at), XR_CT_CLAIM.get_ptr(0)) else {
        return NONE;
    };
    // SAFETY: the claimed slot (its entry intact until overwritten) and
    // this CPU's scratch, which `xr_ct_claim` left the slot's key word in.
    let pk = unsafe {
        let e = &(*s).entry;
        let proto = (read_volatile(&(*c).was) >> 32) as u8;
        CtKey::new(
            read_volatile(&e.new_dst),
            read_volatile(&e.new_src),
            read_volatile(&e.new_dport),
            read_volatile(&e.new_sport),
            proto,
        )
    };
    let (pw0, pw1) = pk.words();
    let home = pk.home(m);
    // `xr_ct_scan`'s loop, not a call: a call deeper would take the stack
    // past the 512 bytes the pipeline may use.
    let p = scan(home, pw0, pw1, m);
    let Some(ps) = slot(p) else {
        return NONE;
    };
    // SAFETY: words and fields of a slot of the array.
    unsafe {
        if p == keep || read_volatile(&(*ps).entry.flags) & CT_F_ASSURED != 0 {
            return NONE;
        }
        // Freed only if it still holds the partner's key.
        if atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(ps), pw1, CT_W1_FREED).1 {
            p
        } else {
            NONE
        }
    }
}

/// Turns freed slot `p` (freed by this CPU just before, by
/// [`xr_ct_evict_partner`]) back into a never-used one if no key's way
/// crosses it, as the daemon's GC does (`CtTable::reclaim`, where the
/// protocol is argued). Under a flood every new connection evicts one,
/// whose other direction is freed: without this, lookups would stop at
/// never-used slots less and less often, until every miss (every new
/// connection's first lookup) read its whole window. 1: turned.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_unfree(p: u32, m: u32) -> u32 {
    let Some(s) = slot(p) else {
        return 0;
    };
    let after = crossed(p, m);
    if after == CROSSED {
        return 0;
    }
    // In memory, not held across the reads below (the stack this
    // function may use is what the pipeline leaves: 48 bytes).
    if let Some(c) = XR_CT_CLAIM.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, no concurrent writer on this CPU.
        unsafe { write_volatile(&mut (*c).after, after) };
    }
    // SAFETY: a word of a slot of the array.
    if !unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(s), CT_W1_FREED, CT_W1_EMPTY) }.1 {
        return 0;
    }
    // Taken meanwhile, after this slot was read held (just before it was
    // freed): that key's way may start here. Freed again if anything
    // after it changed since it was read, unless another insert has
    // already taken it (which counted it never-used).
    let now = unchanged(p, m);
    let changed = match XR_CT_CLAIM.get_ptr(0) {
        // SAFETY: as above.
        Some(c) => (unsafe { read_volatile(&(*c).after) }) != now,
        None => true,
    };
    if changed
        && unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(s), CT_W1_EMPTY, CT_W1_FREED) }.1
    {
        return 0;
    }
    if let (Some(c), Some(meta)) = (XR_CT_CLAIM.get_ptr_mut(0), meta(m)) {
        count_fill(c, meta, -1);
    }
    1
}

/// [`crossed`]'s answer for a crossed slot.
const CROSSED: u64 = u64::MAX;

/// Whether a key's way crosses slot `p` (a key after it, before the next
/// never-used slot, whose home is `p` or before; a busy slot, or a key
/// that changed while read, counts as crossing): [`CROSSED`], else a
/// fingerprint of the slots read, which [`unchanged`] reads again.
#[inline(always)]
fn crossed(p: u32, m: u32) -> u64 {
    after(p, m, true)
}

/// The fingerprint [`crossed`] took of the slots after `p`, read again
/// (without working out homes): another if a key was put there since.
#[inline(always)]
fn unchanged(p: u32, m: u32) -> u64 {
    after(p, m, false)
}

/// The slots after `p` up to the next never-used one: their fingerprint,
/// or [`CROSSED`] if `ways` and a key's way crosses `p`.
#[inline(always)]
fn after(p: u32, m: u32, ways: bool) -> u64 {
    let mut fp = 0u64;
    for r in 1..CT_WINDOW {
        let q = p.wrapping_add(r) & m;
        if q == p {
            // Round a table smaller than a window.
            break;
        }
        let Some(s) = slot(q) else {
            return CROSSED;
        };
        // SAFETY: words of a slot of the array.
        unsafe {
            let sw1 = read_volatile(w1(s));
            fp = fingerprint(fp, read_volatile(w0(s)), sw1);
            if sw1 == CT_W1_EMPTY {
                return fp;
            }
            if !ways || sw1 == CT_W1_FREED {
                continue;
            }
            if !ct_w1_is_key(sw1) {
                return CROSSED;
            }
            let sw0 = read_volatile(w0(s));
            if read_volatile(w1(s)) != sw1 || q.wrapping_sub(ct_home(sw0, sw1, m)) & m >= r {
                return CROSSED;
            }
        }
    }
    // A key further on is more than a window from here.
    fp
}

#[inline(always)]
fn fingerprint(fp: u64, w0: u64, w1: u64) -> u64 {
    (fp ^ w0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w1).rotate_left(23)
}

/// Whether the key of words `kw0`/`kw1`, just published in the window
/// from `home` at the slot `xr_ct_claim` returned (`at`: its index, with
/// its flags), must withdraw (1), so that a key is never in
/// the table twice, whatever two CPUs inserting it at once do (both
/// published with a full barrier before looking: of two such inserts, at
/// least one sees the other's key or busy slot):
/// - a slot before it holds the same key, or is busy (another CPU's
///   insert in progress, perhaps of this key: rare, and a withdrawn SNAT
///   reply tries another port);
/// - a slot before it is never-used (the daemon's GC, or another CPU's
///   [`xr_ct_unfree`], turned it back from freed while this CPU chose its
///   slot: a lookup would stop there and never find the key);
/// - with [`REUSED`] in `at` (the slot was freed or evicted, not
///   never-used), a slot after it, before the next never-used one, holds
///   the same key: another CPU published it there after this CPU's lookup
///   missed, and looked before this slot was taken. (After a never-used
///   slot no such key can be: it would have taken that slot, which the
///   GC and `xr_ct_unfree` do not make never-used where a key's way
///   crosses it.)
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xr_ct_must_withdraw(kw0: u64, kw1: u64, home: u32, at: u64, m: u32) -> u32 {
    let after = at & REUSED != 0;
    let at = at as u32;
    let mut past = false;
    for i in 0..CT_WINDOW {
        let here = home.wrapping_add(i) & m;
        if here == at {
            if !after {
                return 0;
            }
            past = true;
            continue;
        }
        let Some(s) = slot(here) else {
            return 0;
        };
        // SAFETY: words of a slot of the array.
        let sw1 = unsafe { read_volatile(w1(s)) };
        if sw1 == CT_W1_EMPTY {
            return !past as u32;
        }
        if (sw1 == CT_W1_BUSY && !past) || (sw1 == kw1 && unsafe { read_volatile(w0(s)) } == kw0) {
            return 1;
        }
    }
    0
}

/// Notes (per CPU) whether an insert was refused for want of room, for a
/// caller trying many keys: in memory, not in a register the verifier
/// would follow through every try.
#[inline(always)]
pub fn note_full(full: bool) {
    if let Some(c) = XR_CT_CLAIM.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, no concurrent writer on this CPU.
        unsafe { write_volatile(&mut (*c).full, full as u32) };
    }
}

/// What [`note_full`] noted last.
#[inline(always)]
pub fn noted_full() -> bool {
    match XR_CT_CLAIM.get_ptr(0) {
        // SAFETY: as in `note_full`.
        Some(c) => unsafe { read_volatile(&(*c).full) != 0 },
        None => false,
    }
}

/// Frees a slot found for a key, if it still holds that key.
#[inline(always)]
pub fn release(f: &Found) {
    // SAFETY: a word of a slot of the array.
    unsafe {
        atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(w1(f.slot), f.w1, CT_W1_FREED);
    }
}
