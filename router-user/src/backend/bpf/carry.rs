//! Connections carried over from a pinned table that no longer fits: a
//! new `conntrack_size`, or an earlier build's tables (the hash tables
//! `XR_CT` and `XR_CT_NEW`, whose entries had a longer layout). Rather
//! than start empty (every translated connection of the router broken),
//! the new table gets the old one's connections.
//!
//! The old table stays open (not pinned) while the new object loads; its
//! entries are copied once the new table exists. The programs still
//! attached use the old table until the daemon swaps them, so a
//! connection opened in that short window is not carried.

use std::{mem::size_of, os::fd::AsFd as _, path::Path};

use anyhow::Result;
use aya::maps::{MapData, MapInfo, MapType};
use router_common::conntrack::{CT_F_ASSURED, CT_F_REPLIED, CtEntry, CtKey, ct_ticks};

use super::{
    XR_CT,
    flows::{BATCH, Cursor, HashMap, by_priority, lookup_batch},
    table::{CtTable, NotInserted},
};

/// A pinned connection table to copy from.
pub(super) enum OldTable {
    /// An earlier build's hash table: entries of `value_size` bytes, of
    /// established connections (`XR_CT`) or embryonic ones.
    Hash {
        name: String,
        data: MapData,
        value_size: usize,
        established: bool,
    },
    /// This build's table, of another size.
    Slots(CtTable),
}

/// Value sizes of earlier builds' hash entries: the translation, flags and
/// `last_seen` (24 bytes), `created` in nanoseconds (8), then a route
/// cache (24) or nothing.
const OLD_VALUE_SIZES: [usize; 2] = [32, 56];

/// The table pinned at `path` (as `info` describes it), if its entries can
/// be carried into this build's. Opened before its pin is removed.
pub(super) fn open(name: &str, path: &Path, info: &MapInfo) -> Option<OldTable> {
    match info.map_type() {
        Ok(MapType::Hash | MapType::LruHash)
            if info.key_size() as usize == size_of::<CtKey>()
                && OLD_VALUE_SIZES.contains(&(info.value_size() as usize)) =>
        {
            Some(OldTable::Hash {
                name: name.to_string(),
                data: MapData::from_pin(path).ok()?,
                value_size: info.value_size() as usize,
                established: name == XR_CT && matches!(info.map_type(), Ok(MapType::Hash)),
            })
        }
        Ok(MapType::Array) => CtTable::from_pin(path).ok().map(OldTable::Slots),
        _ => None,
    }
}

impl OldTable {
    pub fn name(&self) -> &str {
        match self {
            OldTable::Hash { name, .. } => name,
            OldTable::Slots(_) => XR_CT,
        }
    }
}

/// An earlier build's entry in this build's layout (nothing cached).
fn convert(old: &[u8], established: bool) -> CtEntry {
    let mut e = CtEntry::default();
    bytemuck::bytes_of_mut(&mut e)[..24].copy_from_slice(&old[..24]);
    let created = u64::from_ne_bytes(old[24..32].try_into().unwrap_or_default());
    e.created = ct_ticks(created);
    // Earlier flags other than "replied" meant nothing now.
    e.flags &= CT_F_REPLIED;
    if established {
        e.flags |= CT_F_ASSURED;
    }
    e
}

/// Copies the connections of `old` into `new`, established ones first,
/// then the most recently seen, both directions of each or neither (an
/// entry already in `new` is kept: it is newer): (entries copied,
/// connections that did not fit).
pub(super) fn copy(old: &OldTable, new: &CtTable) -> Result<(usize, usize)> {
    let mut all = HashMap::default();
    match old {
        OldTable::Slots(t) => all.extend(t.all()),
        OldTable::Hash {
            name,
            data,
            value_size,
            established,
        } => {
            let (ks, vs) = (size_of::<CtKey>(), *value_size);
            let mut keys = vec![0u8; BATCH * ks];
            let mut values = vec![0u8; BATCH * vs];
            let mut at = Cursor::Start;
            while at != Cursor::End {
                let Some((next, n)) =
                    lookup_batch(data.fd().as_fd(), at, &mut keys, &mut values, BATCH)?
                else {
                    anyhow::bail!("the kernel reads {name} in batches no more");
                };
                at = next;
                for i in 0..n {
                    let k: CtKey = bytemuck::pod_read_unaligned(&keys[i * ks..(i + 1) * ks]);
                    all.insert(k, convert(&values[i * vs..(i + 1) * vs], *established));
                }
            }
        }
    }
    let (mut copied, mut lost) = (0, 0);
    for conn in by_priority(&all) {
        let mut put = Vec::new();
        let mut fits = true;
        for (k, e) in &conn {
            match new.insert(k, e) {
                Ok(()) => put.push(*k),
                Err(NotInserted::Present) => {}
                Err(NotInserted::Full) => fits = false,
            }
        }
        if fits {
            copied += put.len();
        } else {
            // Never half a connection: its other half alone would keep a
            // translation whose reply port another connection could take.
            for k in &put {
                new.remove(k);
            }
            lost += 1;
        }
    }
    Ok((copied, lost))
}
