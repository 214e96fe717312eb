//! Loads of new routers' BPF objects, started ahead of their apply.
//!
//! Most of what a new router costs on the eBPF planes is the verifier
//! (about 0.5 s for the TC programs, twice that with XDP), once per router
//! because each router's programs are bound to its own maps, and one router
//! at a time in the engine's apply. When a pass has routers that are new
//! to the node, their loads are started on blocking threads as the pass
//! begins, as many at once as the node has CPUs (up to [`MAX_PARALLEL`]),
//! in the order the pass applies them; each router's apply then takes its
//! load when it gets there (or waits for it). The other CPUs verify the
//! next routers while the engine plumbs this one.
//!
//! Only a router without pins is loaded ahead: one with pins has maps and
//! connections that a load may carry into new tables, which must happen
//! right before its programs are swapped in (connections made in between
//! would be lost).

use std::{collections::BTreeMap, path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use tokio::{sync::Semaphore, task::JoinHandle};

use super::BpfRouter;

/// At most this many verifier runs at once, whatever the node's CPUs (each
/// holds the verifier's state, tens of MB, while it runs).
pub const MAX_PARALLEL: usize = 8;

/// The loads under way or done, not yet taken, by router ID.
pub struct Preloads {
    parallel: usize,
    slots: Arc<Semaphore>,
    loads: BTreeMap<String, JoinHandle<Result<BpfRouter>>>,
}

impl Default for Preloads {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let parallel = cpus.clamp(1, MAX_PARALLEL);
        Preloads {
            parallel,
            slots: Arc::new(Semaphore::new(parallel)),
            loads: BTreeMap::new(),
        }
    }
}

impl Preloads {
    /// How many loads run at once.
    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// Starts loading router `id` (see [`BpfRouter::load`]; with `xdp` its
    /// XDP programs too) unless it is loaded or loading already, or has pins
    /// under `pin_dir`. Returns whether a load was started. Loads start in
    /// the order asked.
    pub fn start(&mut self, id: &str, pin_dir: &Path, ct_connections: u32, xdp: bool) -> bool {
        if self.loads.contains_key(id) || pin_dir.join(id).exists() {
            return false;
        }
        let (slots, rid, dir) = (self.slots.clone(), id.to_string(), pin_dir.to_path_buf());
        let h = tokio::spawn(async move {
            // The semaphore is fair: the first asked is the first loaded.
            let _slot = slots
                .acquire_owned()
                .await
                .context("the loads' semaphore")?;
            tokio::task::spawn_blocking(move || {
                tracing::debug!(router = %rid, "router {rid}: loading its BPF programs ahead");
                let mut b = BpfRouter::load(&rid, &dir, ct_connections)?;
                if xdp {
                    b.load_xdp()?;
                }
                Ok(b)
            })
            .await
            .context("a BPF load ahead of the apply")?
        });
        self.loads.insert(id.to_string(), h);
        true
    }

    /// Router `id`'s load if one was started: waits for it to end.
    pub async fn take(&mut self, id: &str) -> Option<Result<BpfRouter>> {
        let h = self.loads.remove(id)?;
        Some(
            h.await
                .context("a BPF load ahead of the apply")
                .and_then(|r| r),
        )
    }

    /// Waits for every load left and returns the routers they were for
    /// (their objects dropped: what they pinned stays).
    pub async fn drain(&mut self) -> Vec<String> {
        let mut ids = Vec::new();
        for (id, h) in std::mem::take(&mut self.loads) {
            let _ = h.await;
            ids.push(id);
        }
        ids
    }
}
