//! Expiry of idle connections, a slice at a time.
//!
//! A pass reads every slot of every router's connection table. With a
//! million connections that is four million slots, 256 MB streamed through
//! the caches the routers' programs run from: done at once, it takes a
//! share of their throughput for seconds. So the daemon does a [`SLICE`]
//! of the pass per tick, resuming at the slot where it stopped, as the
//! kernel's own conntrack GC works through its table in bounded runs. The
//! cost is spread thin: a small share of a core at any moment, and an idle
//! connection goes some time after its timeout (one pass: seconds for
//! small tables, tens of seconds for large ones). Entries created after
//! the pass went by are judged by the next one; new connections evict
//! embryonic ones under pressure meanwhile.

use std::{
    collections::VecDeque,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    flows::{expire_slots, pinned},
    monotonic_ns,
    table::CtTable,
};

/// Slots read between looks at the clock (256 KiB of table).
const CHUNK: u32 = 4096;

/// Wall time a tick (a second) gives the pass: 2% of a core at most,
/// less when the CPUs are busy (the slice counts time spent preempted).
pub const SLICE: Duration = Duration::from_millis(20);

/// A pass starts at most this often, however quickly the last one ended.
pub const PERIOD: Duration = Duration::from_secs(10);

/// One pass over the connection tables of a set of routers.
pub struct GcPass {
    /// The routers whose tables are still to read, the first one under
    /// way (its table mapped once it is).
    todo: VecDeque<String>,
    table: Option<CtTable>,
    /// The first table's next slot to read.
    at: u32,
    /// The routers done, with the entries deleted from each.
    done: Vec<(String, u64)>,
    pub started: Instant,
    /// Entries read and deleted so far, over all routers.
    pub scanned: u64,
    pub deleted: u64,
    /// Wall time spent in slices so far.
    pub busy: Duration,
}

impl GcPass {
    pub fn new(routers: impl IntoIterator<Item = String>) -> GcPass {
        GcPass {
            todo: routers.into_iter().collect(),
            table: None,
            at: 0,
            done: Vec::new(),
            started: Instant::now(),
            scanned: 0,
            deleted: 0,
            busy: Duration::ZERO,
        }
    }

    pub fn is_done(&self) -> bool {
        self.todo.is_empty()
    }

    /// Goes on with the pass for about `budget` of wall time (at least one
    /// batch), or until it is done. A router whose tables cannot be read
    /// is left out of the rest of the pass and returned with the error; a
    /// router removed meanwhile (its pins gone) is left out silently.
    pub fn run(&mut self, pin_dir: &Path, budget: Duration) -> Vec<(String, anyhow::Error)> {
        let t0 = Instant::now();
        let mut errors = Vec::new();
        let mut first = true;
        while let Some(id) = self.todo.front().cloned() {
            if !first && t0.elapsed() >= budget {
                break;
            }
            first = false;
            match self.table_slice(pin_dir, &id, t0, budget) {
                Ok(true) => {
                    self.todo.pop_front();
                    self.table = None;
                    self.at = 0;
                    self.router_done(&id);
                }
                Ok(false) => {}
                Err(e) => {
                    self.todo.pop_front();
                    self.table = None;
                    self.at = 0;
                    if pin_dir.join(&id).exists() {
                        errors.push((id, e));
                    }
                }
            }
        }
        self.busy += t0.elapsed();
        errors
    }

    /// Reads chunks of one table until it ends (true) or the budget is
    /// spent.
    fn table_slice(
        &mut self,
        pin_dir: &Path,
        id: &str,
        t0: Instant,
        budget: Duration,
    ) -> Result<bool> {
        let table = match self.table.take() {
            Some(t) => t,
            None => pinned::ct(pin_dir, id)?,
        };
        let mut deleted = 0;
        let end = loop {
            let to = self.at.saturating_add(CHUNK).min(table.slots());
            let (scanned, d) = expire_slots(&table, self.at..to, monotonic_ns());
            self.scanned += scanned as u64;
            deleted += d as u64;
            self.at = to;
            if to == table.slots() {
                break true;
            }
            if t0.elapsed() >= budget {
                break false;
            }
        };
        self.table = (!end).then_some(table);
        self.deleted += deleted;
        match self.done.last_mut() {
            Some((last, n)) if last == id => *n += deleted,
            _ => self.done.push((id.to_string(), deleted)),
        }
        Ok(end)
    }

    /// Logs what the pass collected from a router whose tables it finished.
    fn router_done(&self, id: &str) {
        if let Some((_, n)) = self.done.iter().rev().find(|(r, _)| r == id)
            && *n > 0
        {
            tracing::debug!(router = %id, "router {id}: {n} expired connection entries collected");
        }
    }
}
