//! Drops a message seen before: RabbitMQ may deliver a message twice (a
//! publisher retrying after a lost confirm), and oslo receivers remember
//! the last 16 `_unique_id`s to drop repeats.

use std::collections::VecDeque;

/// How many IDs oslo remembers.
pub const REMEMBERED: usize = 16;

#[derive(Debug, Default)]
pub struct Dedup {
    seen: VecDeque<String>,
}

impl Dedup {
    /// True the first time `id` is seen among the last [`REMEMBERED`].
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.seen.iter().any(|s| s == id) {
            return false;
        }
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_within_the_window_only() {
        let mut d = Dedup::default();
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        for i in 0..REMEMBERED {
            assert!(d.first_time(&i.to_string()));
        }
        // "a" has left the window.
        assert!(d.first_time("a"));
        assert!(!d.first_time(&(REMEMBERED - 1).to_string()));
    }
}
