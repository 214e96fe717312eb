//! Expiry of idle connections, a slice at a time.
//!
//! A pass reads every entry of every router's two connection tables. With
//! a million connections that is two million entries and hundreds of MB
//! streamed through the caches the routers' programs run from: done at
//! once, it takes a quarter of their throughput for seconds. So the daemon
//! does a [`SLICE`] of the pass per tick, resuming where it stopped (the
//! kernel's batch token, a hash bucket index, stays valid however the
//! table changed meanwhile), as the kernel's own conntrack GC works through
//! its table in bounded runs. The cost is spread thin: a small share of a
//! core at any moment, and an idle connection goes some time after its
//! timeout (one pass: seconds for thousands of connections, about half a
//! minute for a million). Entries created after the pass went by are
//! judged by the next one; the LRU tables evict under pressure meanwhile.

use std::{
    collections::VecDeque,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    CT_MAPS,
    flows::{Batch, Cursor, expire_batch, gc_table, pinned},
    monotonic_ns,
};

/// Wall time a tick (a second) gives the pass: 2% of a core at most,
/// less when the CPUs are busy (the slice counts time spent preempted).
pub const SLICE: Duration = Duration::from_millis(20);

/// A pass starts at most this often, however quickly the last one ended.
pub const PERIOD: Duration = Duration::from_secs(10);

/// One pass over the connection tables of a set of routers.
pub struct GcPass {
    /// The tables still to read, the first one under way.
    todo: VecDeque<(String, &'static str)>,
    /// Where the first table's next read starts.
    at: Cursor,
    batch: Batch,
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
            todo: routers
                .into_iter()
                .flat_map(|id| CT_MAPS.map(|t| (id.clone(), t)))
                .collect(),
            at: Cursor::Start,
            batch: Batch::new(),
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
        while let Some((id, table)) = self.todo.front().cloned() {
            if !first && t0.elapsed() >= budget {
                break;
            }
            first = false;
            match self.table_slice(pin_dir, &id, table, t0, budget) {
                Ok(()) if self.at == Cursor::End => {
                    self.todo.pop_front();
                    self.at = Cursor::Start;
                    self.router_done(&id);
                }
                Ok(()) => {}
                Err(e) => {
                    self.todo.retain(|(i, _)| *i != id);
                    self.at = Cursor::Start;
                    if pin_dir.join(&id).exists() {
                        errors.push((id, e));
                    }
                }
            }
        }
        self.busy += t0.elapsed();
        errors
    }

    /// Reads batches of one table until it ends or the budget is spent.
    fn table_slice(
        &mut self,
        pin_dir: &Path,
        id: &str,
        table: &str,
        t0: Instant,
        budget: Duration,
    ) -> Result<()> {
        let mut map = pinned::ct(pin_dir, id, table)?;
        let mut deleted = 0;
        loop {
            let now = monotonic_ns();
            match expire_batch(&mut map, self.at, &mut self.batch, now)? {
                Some(g) => {
                    self.at = g.next;
                    self.scanned += g.scanned as u64;
                    deleted += g.deleted as u64;
                }
                None => {
                    // No batches on this kernel: the table in one go.
                    deleted += gc_table(&mut map, now)? as u64;
                    self.at = Cursor::End;
                }
            }
            if self.at == Cursor::End || t0.elapsed() >= budget {
                break;
            }
        }
        self.deleted += deleted;
        match self.done.last_mut() {
            Some((last, n)) if last == id => *n += deleted,
            _ => self.done.push((id.to_string(), deleted)),
        }
        Ok(())
    }

    /// Logs what the pass collected from a router whose tables it finished.
    fn router_done(&self, id: &str) {
        if self.todo.front().is_some_and(|(next, _)| next == id) {
            return;
        }
        if let Some((_, n)) = self.done.iter().rev().find(|(r, _)| r == id)
            && *n > 0
        {
            tracing::debug!(router = %id, "router {id}: {n} expired connection entries collected");
        }
    }
}
