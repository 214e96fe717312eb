//! Connections carried over from a pinned table that no longer fits: a new
//! `conntrack_size`, or a build whose entries have more fields. Rather
//! than start empty (every translated connection of the router broken),
//! the new table gets the old one's entries. Fields are only ever added at
//! the end of a connection entry, and zero means "nothing" in them (the
//! route cache: nothing cached), so an old value, zero-extended, is the
//! same connection in the new layout.
//!
//! The old table stays open (not pinned) while the new object loads; its
//! entries are copied once the new table exists. The programs still
//! attached use the old table until the daemon swaps them, so a
//! connection opened in that short window is not carried.

use std::{mem::size_of, os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapInfo, MapType};
use router_common::conntrack::{CtEntry, CtKey};

use super::flows::{BATCH, Cursor, lookup_batch};

/// A pinned connection table to copy from.
pub(super) struct OldTable {
    pub name: &'static str,
    data: MapData,
    value_size: usize,
}

/// The table pinned at `path` (as `info` describes it), if its entries can
/// be carried into this build's: a hash of this build's keys whose values
/// are no longer than this build's. Opened before its pin is removed.
pub(super) fn open(name: &'static str, path: &Path, info: &MapInfo) -> Option<OldTable> {
    let hash = matches!(info.map_type(), Ok(MapType::Hash | MapType::LruHash));
    let value_size = info.value_size() as usize;
    if !hash || info.key_size() as usize != size_of::<CtKey>() || value_size > size_of::<CtEntry>()
    {
        return None;
    }
    let data = MapData::from_pin(path).ok()?;
    Some(OldTable {
        name,
        data,
        value_size,
    })
}

/// Copies every entry of `old` into `new` (entries already there are
/// kept): (copied, not copied because the new table is full).
pub(super) fn copy(old: &OldTable, new: &mut Map) -> Result<(usize, usize)> {
    let mut table: HashMap<_, CtKey, CtEntry> = HashMap::try_from(new)
        .with_context(|| format!("the new {} is not a connection table", old.name))?;
    let (ks, vs) = (size_of::<CtKey>(), old.value_size);
    let mut keys = vec![0u8; BATCH * ks];
    let mut values = vec![0u8; BATCH * vs];
    let (mut copied, mut lost) = (0, 0);
    let mut at = Cursor::Start;
    while at != Cursor::End {
        let Some((next, n)) =
            lookup_batch(old.data.fd().as_fd(), at, &mut keys, &mut values, BATCH)?
        else {
            anyhow::bail!("the kernel reads {} in batches no more", old.name);
        };
        at = next;
        for i in 0..n {
            let k: CtKey = bytemuck::pod_read_unaligned(&keys[i * ks..(i + 1) * ks]);
            let mut e = CtEntry::default();
            bytemuck::bytes_of_mut(&mut e)[..vs].copy_from_slice(&values[i * vs..(i + 1) * vs]);
            // BPF_NOEXIST: what the new table has already is newer.
            match table.insert(k, e, 1) {
                Ok(()) => copied += 1,
                Err(_) => lost += 1,
            }
        }
    }
    Ok((copied, lost))
}
