//! A router's connection table (`XR_CT`) from userspace: its slots mapped
//! into the daemon (the map is mmapable), read and written with the
//! programs' protocol (router-ebpf's `pipeline/table.rs`): a slot is
//! claimed by a compare-and-swap of its key's second word to
//! `CT_W1_BUSY`, written, then published; freed by a compare-and-swap of
//! that word to `CT_W1_FREED`; a reader checks the key words again after
//! copying the entry. No system call per entry, and nothing the programs
//! do is blocked by it. The line after the slots (`CtMeta`) counts the
//! slots in use: the daemon adds the never-used slots it takes and
//! subtracts those its GC turns back into never-used ones.

use std::{
    ops::Range,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, MapInfo, MapType};
use router_common::conntrack::{
    CT_FLAGS, CT_W1_BUSY, CT_W1_EMPTY, CT_W1_FREED, CT_WINDOW, CtEntry, CtKey, CtSlot, ct_slots_of,
    ct_w1_is_key,
};

/// The slots of one router's connection table, mapped.
pub struct CtTable {
    base: NonNull<CtSlot>,
    slots: u32,
    /// The map's entries: the slots, then the table's own line
    /// (`CtMeta`), which an earlier build's table (only read, to carry it
    /// over) has not.
    entries: u32,
}

// SAFETY: the mapping is shared memory every access to which goes through
// atomics or volatile copies; it lives until drop.
unsafe impl Send for CtTable {}
unsafe impl Sync for CtTable {}

impl Drop for CtTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len());
        }
    }
}

/// Why an insert did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum NotInserted {
    /// The key is there already (its entry kept).
    Present,
    /// No free slot in the key's window.
    Full,
}

impl CtTable {
    /// Maps the table behind `fd`, of `info`'s shape.
    pub fn map(fd: BorrowedFd<'_>, info: &MapInfo) -> Result<CtTable> {
        if !matches!(info.map_type(), Ok(MapType::Array))
            || info.value_size() as usize != size_of::<CtSlot>()
            || info.map_flags() & CT_FLAGS != CT_FLAGS
        {
            bail!(
                "not a connection table of this build (type {:?}, value size {}, flags {:#x})",
                info.map_type(),
                info.value_size(),
                info.map_flags()
            );
        }
        let entries = info.max_entries();
        let slots = match ct_slots_of(entries) {
            Some(slots) => slots,
            // An earlier build's table, without its own line.
            None if entries.is_power_of_two() => entries,
            None => bail!(
                "a connection table of {entries} entries (neither a power of two nor one more)"
            ),
        };
        let len = entries as usize * size_of::<CtSlot>();
        // SAFETY: a shared mapping of the map's whole value area, which
        // the kernel allows for an mmapable array; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                // Populated at once: a page fault per 4 KiB page as a
                // reader first touches it costs several times the read
                // itself (seconds for a table of a million connections).
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "mapping the connection table: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(CtTable {
            base: NonNull::new(p.cast()).context("mmap returned null")?,
            slots,
            entries,
        })
    }

    /// `CtMeta::fill` of the table behind `data` ([`CtTable::fill`]),
    /// through a mapping of its last page only: None for a table of an
    /// earlier layout.
    pub fn fill_of(data: &MapData) -> Result<Option<i64>> {
        let info = data.info().context("reading the connection table's info")?;
        let Some(slots) = ct_slots_of(info.max_entries()) else {
            return Ok(None);
        };
        let at = slots as usize * size_of::<CtSlot>();
        // The system's page (4 KiB on x86-64; 16 or 64 KiB on some arm64).
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        // SAFETY: a shared read-only mapping of the page holding the
        // table's own line (the map's value area is page-aligned and the
        // slots a multiple of 64 bytes), unmapped below.
        unsafe {
            let off = at / page * page;
            let p = libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                off as libc::off_t,
            );
            if p == libc::MAP_FAILED {
                bail!(
                    "mapping the connection table's own line: {}",
                    std::io::Error::last_os_error()
                );
            }
            let fill =
                AtomicI64::from_ptr(p.cast::<u8>().add(at - off).cast()).load(Ordering::Relaxed);
            libc::munmap(p, page);
            Ok(Some(fill))
        }
    }

    /// Maps a loaded table.
    pub fn of(data: &MapData) -> Result<CtTable> {
        let info = data.info().context("reading the connection table's info")?;
        CtTable::map(data.fd().as_fd(), &info)
    }

    /// Maps the table pinned at `path`.
    pub fn from_pin(path: &Path) -> Result<CtTable> {
        let data =
            MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        CtTable::of(&data)
    }

    fn len(&self) -> usize {
        self.entries as usize * size_of::<CtSlot>()
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Whether the table is of this build's layout (with its own line).
    pub fn current(&self) -> bool {
        self.entries != self.slots
    }

    /// `CtMeta::fill`, the count of used slots the programs keep, if the
    /// table has it.
    fn fill_word(&self) -> Option<&AtomicI64> {
        // SAFETY: the first word of the line after the slots, in the
        // mapping, only ever accessed atomically.
        self.current().then(|| unsafe {
            AtomicI64::from_ptr(self.base.as_ptr().add(self.slots as usize).cast())
        })
    }

    /// How many slots are in use (held, or freed and not yet never-used)
    /// as the programs count them (lagging a batch per CPU).
    pub fn fill(&self) -> Option<i64> {
        self.fill_word().map(|f| f.load(Ordering::Relaxed))
    }

    fn add_fill(&self, n: i64) {
        if let Some(f) = self.fill_word() {
            f.fetch_add(n, Ordering::SeqCst);
        }
    }

    fn slot(&self, i: u32) -> *mut CtSlot {
        // SAFETY: masked into the mapping.
        unsafe { self.base.as_ptr().add((i & (self.slots - 1)) as usize) }
    }

    /// The key words of slot `i`, atomically.
    fn words(&self, i: u32) -> (&AtomicU64, &AtomicU64) {
        let s = self.slot(i).cast::<u64>();
        // SAFETY: the key's two aligned words (slots are 64-byte aligned),
        // in the mapping, only ever accessed atomically or volatile.
        unsafe { (AtomicU64::from_ptr(s), AtomicU64::from_ptr(s.add(1))) }
    }

    /// Slot `i`'s key and entry, if it holds a key that stayed put while
    /// the entry was copied.
    pub fn read(&self, i: u32) -> Option<(CtKey, CtEntry)> {
        let (w0, w1) = self.words(i);
        let a1 = w1.load(Ordering::Acquire);
        if !ct_w1_is_key(a1) {
            return None;
        }
        let a0 = w0.load(Ordering::Acquire);
        // SAFETY: the slot's entry, in the mapping; a torn copy is caught
        // by the check of the key words that follows.
        let e = unsafe { std::ptr::read_volatile(&raw const (*self.slot(i)).entry) };
        std::sync::atomic::fence(Ordering::Acquire);
        if w1.load(Ordering::Acquire) != a1 || w0.load(Ordering::Acquire) != a0 {
            return None;
        }
        // SAFETY: the key's bytes, copied out.
        let k = unsafe { std::ptr::read_volatile(&raw const (*self.slot(i)).key) };
        Some((k, e))
    }

    /// The slots of `k`'s window, in order.
    fn window(&self, k: &CtKey) -> impl Iterator<Item = u32> + use<> {
        let m = self.slots - 1;
        let home = k.home(m);
        (0..CT_WINDOW).map(move |i| home.wrapping_add(i) & m)
    }

    /// The slot holding `k`, if any.
    pub fn find(&self, k: &CtKey) -> Option<u32> {
        let (kw0, kw1) = k.words();
        for at in self.window(k) {
            let (w0, w1) = self.words(at);
            let sw1 = w1.load(Ordering::Acquire);
            if sw1 == CT_W1_EMPTY {
                return None;
            }
            if sw1 == kw1 && w0.load(Ordering::Acquire) == kw0 {
                return Some(at);
            }
        }
        None
    }

    /// `k`'s entry, if the table has it.
    pub fn get(&self, k: &CtKey) -> Option<CtEntry> {
        let i = self.find(k)?;
        self.read(i).filter(|(sk, _)| sk == k).map(|(_, e)| e)
    }

    /// Inserts `k` with `e` into a free slot of its window (never evicting).
    pub fn insert(&self, k: &CtKey, e: &CtEntry) -> Result<(), NotInserted> {
        if self.find(k).is_some() {
            return Err(NotInserted::Present);
        }
        let (kw0, kw1) = k.words();
        for at in self.window(k) {
            let (w0, w1) = self.words(at);
            let was = w1.load(Ordering::Acquire);
            if was != CT_W1_EMPTY && was != CT_W1_FREED {
                continue;
            }
            if w1
                .compare_exchange(was, CT_W1_BUSY, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if was == CT_W1_EMPTY {
                self.add_fill(1);
            }
            w0.store(kw0, Ordering::Relaxed);
            // SAFETY: the slot is ours until published.
            unsafe { std::ptr::write_volatile(&raw mut (*self.slot(at)).entry, *e) };
            let _ = w1.compare_exchange(CT_W1_BUSY, kw1, Ordering::SeqCst, Ordering::Relaxed);
            return Ok(());
        }
        Err(NotInserted::Full)
    }

    /// Frees `k`'s slot; whether it was there.
    pub fn remove(&self, k: &CtKey) -> bool {
        self.remove_if(k, |_| true)
    }

    /// Frees `k`'s slot if its entry, read just before, passes `still`
    /// (the GC's "still idle"); whether it was freed.
    pub fn remove_if(&self, k: &CtKey, still: impl Fn(&CtEntry) -> bool) -> bool {
        let Some(i) = self.find(k) else {
            return false;
        };
        let Some((sk, e)) = self.read(i) else {
            return false;
        };
        if sk != *k || !still(&e) {
            return false;
        }
        let (_, w1) = self.words(i);
        w1.compare_exchange(
            k.words().1,
            CT_W1_FREED,
            Ordering::SeqCst,
            Ordering::Relaxed,
        )
        .is_ok()
    }

    /// The entries of slots `range` (clamped to the table).
    pub fn entries(&self, range: Range<u32>) -> impl Iterator<Item = (CtKey, CtEntry)> + '_ {
        (range.start.min(self.slots)..range.end.min(self.slots)).filter_map(|i| self.read(i))
    }

    /// Every entry.
    pub fn all(&self) -> impl Iterator<Item = (CtKey, CtEntry)> + '_ {
        self.entries(0..self.slots)
    }

    /// Turns the freed slots of `range` that are on no key's way back into
    /// never-used ones; how many.
    ///
    /// A lookup stops at the first never-used slot of its key's window, and
    /// reads on through freed ones. Without this, every slot a connection
    /// ever held would stay freed: after the table's slots have all been
    /// used once (a flood does it in seconds), every miss, which is every
    /// new connection's first lookup, would read its whole window.
    ///
    /// A freed slot is on a key's way if the key sits after it and its
    /// home slot is this one or before (within the window): a lookup of
    /// that key passes here. Any other freed slot can become never-used,
    /// even where no never-used slot follows (as after a flood, which uses
    /// them all). A busy slot after it counts as on its way (its key is
    /// not known yet). Two races are closed: an insert that took a slot
    /// after this one meanwhile (having seen this one held, just before it
    /// was freed) is caught here by looking again once this one is marked
    /// never-used (it is then marked freed again), or by the insert itself,
    /// which after publishing looks for a never-used slot before its own
    /// and withdraws (router-ebpf's `xr_ct_must_withdraw`). The programs
    /// do the same, with the same checks, for the slot of an evicted
    /// connection's other direction (router-ebpf's `xr_ct_unfree`).
    pub fn reclaim(&self, range: Range<u32>) -> usize {
        let m = self.slots - 1;
        let (start, end) = (range.start.min(self.slots), range.end.min(self.slots));
        if start >= end {
            return 0;
        }
        let len = end - start;
        // The slots of the range some key's way crosses: from its home up
        // to it. Keys up to a window after the range can cross it.
        let mut crossed = vec![false; len as usize];
        for off in 0..(len + CT_WINDOW - 1).min(self.slots) {
            let p = start.wrapping_add(off) & m;
            let Some(d) = self.way(p) else {
                continue;
            };
            for j in 1..=d {
                let q = p.wrapping_sub(j) & m;
                let at = q.wrapping_sub(start) & m;
                if at < len {
                    crossed[at as usize] = true;
                }
            }
        }
        let mut n = 0;
        for q in (start..end).rev() {
            if crossed[(q - start) as usize] {
                continue;
            }
            let (_, w1) = self.words(q);
            if w1
                .compare_exchange(
                    CT_W1_FREED,
                    CT_W1_EMPTY,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            if self.crossed(q) {
                // Taken meanwhile: its key may have its window from here.
                let _ = w1.compare_exchange(
                    CT_W1_EMPTY,
                    CT_W1_FREED,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
                continue;
            }
            n += 1;
        }
        self.add_fill(-(n as i64));
        n
    }

    /// How far slot `p`'s key sits from its home slot (a busy slot: as far
    /// as a key can), if it holds one.
    fn way(&self, p: u32) -> Option<u32> {
        let w1 = self.words(p).1.load(Ordering::SeqCst);
        if w1 == CT_W1_BUSY {
            return Some(CT_WINDOW - 1);
        }
        if !ct_w1_is_key(w1) {
            return None;
        }
        // A key freed meanwhile: as far as a key can, to be safe.
        let Some((k, _)) = self.read(p) else {
            return Some(CT_WINDOW - 1);
        };
        let m = self.slots - 1;
        Some((p.wrapping_sub(k.home(m)) & m).min(CT_WINDOW - 1))
    }

    /// Whether a key's way crosses slot `q`, by the slots after it up to
    /// the first never-used one.
    fn crossed(&self, q: u32) -> bool {
        let m = self.slots - 1;
        for r in 1..CT_WINDOW.min(self.slots) {
            let p = q.wrapping_add(r) & m;
            if self.words(p).1.load(Ordering::SeqCst) == CT_W1_EMPTY {
                return false;
            }
            if self.way(p).is_some_and(|d| d >= r) {
                return true;
            }
        }
        false
    }

    /// Empties the table: only for a table no program runs on (between
    /// the test runs of a private copy), which the protocol does not
    /// protect.
    pub fn clear(&self) {
        // SAFETY: the whole mapping, plain data; nobody else writes it.
        unsafe { std::ptr::write_bytes(self.base.as_ptr(), 0, self.entries as usize) };
    }

    /// Slots holding a key, and freed slots (not yet reclaimed): for
    /// tests (the daemon counts through `pinned::count`).
    #[cfg(test)]
    pub fn count(&self) -> (u64, u64) {
        (0..self.slots)
            .map(|i| self.words(i).1.load(Ordering::Relaxed))
            .fold((0, 0), |(held, freed), w1| {
                (
                    held + u64::from(ct_w1_is_key(w1)),
                    freed + u64::from(w1 == CT_W1_FREED),
                )
            })
    }
}
