//! Per-source request rate limit of the metadata proxy, as Neutron's
//! haproxy config has it: every request of a source address is counted
//! (refused ones too, so a client that keeps hammering stays refused), and
//! a request is refused (429) when the source made more than `base_limit`
//! requests in the last `base_window` seconds or more than `burst_limit`
//! in the last `burst_window`.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::config::node::RateLimit;

/// Sources tracked at most (haproxy's stick table has `size 10k`); when
/// full, sources silent for a whole window are forgotten first, then the
/// longest silent one.
const MAX_SOURCES: usize = 10_240;

pub struct Limiter {
    rate: RateLimit,
    /// Times of each source's recent requests, oldest first; at most
    /// max(limit)+1 kept, enough to tell whether a window is over its
    /// limit.
    seen: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Limiter {
    pub fn new(rate: RateLimit) -> Limiter {
        Limiter {
            rate,
            seen: HashMap::new(),
        }
    }

    fn longest_window(&self) -> Duration {
        Duration::from_secs(self.rate.base_window.max(self.rate.burst_window))
    }

    /// Counts a request of `src` at `now`; false when it must be refused.
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if !self.seen.contains_key(&src) && self.seen.len() >= MAX_SOURCES {
            self.forget_one(now);
        }
        let keep = self.rate.base_limit.max(self.rate.burst_limit) as usize + 1;
        let longest = self.longest_window();
        let times = self.seen.entry(src).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= longest)
        {
            times.pop_front();
        }
        times.push_back(now);
        while times.len() > keep {
            times.pop_front();
        }
        let within = |secs: u64| {
            let w = Duration::from_secs(secs);
            times
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < w)
                .count() as u64
        };
        within(self.rate.base_window) <= self.rate.base_limit
            && within(self.rate.burst_window) <= self.rate.burst_limit
    }

    /// Makes room for one source.
    fn forget_one(&mut self, now: Instant) {
        let longest = self.longest_window();
        self.seen.retain(|_, t| {
            t.back()
                .is_some_and(|last| now.duration_since(*last) < longest)
        });
        if self.seen.len() >= MAX_SOURCES {
            let oldest = self
                .seen
                .iter()
                .min_by_key(|(_, t)| t.back().copied())
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                self.seen.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_over_its_limit_is_refused_until_its_window_passes() {
        let mut l = Limiter::new(RateLimit {
            base_window: 10,
            base_limit: 3,
            burst_window: 10,
            burst_limit: 10,
        });
        let t0 = Instant::now();
        let a = ip("10.0.0.5");
        assert!(l.allow(a, t0));
        assert!(l.allow(a, t0 + Duration::from_secs(1)));
        assert!(l.allow(a, t0 + Duration::from_secs(2)));
        assert!(!l.allow(a, t0 + Duration::from_secs(3)), "4th in 10 s");
        // Another source is not affected.
        assert!(l.allow(ip("10.0.0.6"), t0 + Duration::from_secs(3)));
        assert!(!l.allow(a, t0 + Duration::from_secs(4)));
        // Refused requests count: at 11.5 s the window holds 2, 3, 4 and
        // 11.5 (2 and 11.5 alone if refused ones did not count).
        assert!(!l.allow(a, t0 + Duration::from_millis(11_500)));
        // At 20 s it holds 11.5 and 20 only.
        assert!(l.allow(a, t0 + Duration::from_secs(20)));
    }

    #[test]
    fn the_burst_window_limits_short_bursts_too() {
        let mut l = Limiter::new(RateLimit {
            base_window: 60,
            base_limit: 100,
            burst_window: 1,
            burst_limit: 2,
        });
        let t0 = Instant::now();
        let a = ip("10.0.0.5");
        assert!(l.allow(a, t0));
        assert!(l.allow(a, t0 + Duration::from_millis(100)));
        assert!(!l.allow(a, t0 + Duration::from_millis(200)));
        assert!(l.allow(a, t0 + Duration::from_millis(1300)));
    }

    #[test]
    fn the_table_of_sources_stays_bounded() {
        let mut l = Limiter::new(RateLimit::default());
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.allow(a, t0));
        }
        assert!(l.seen.len() <= MAX_SOURCES);
    }
}
