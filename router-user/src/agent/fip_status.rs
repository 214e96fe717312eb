//! Floating IP statuses reported to the server: the API shows a floating
//! IP as ACTIVE only once the agent said so. Like Neutron's agent, only
//! changes are sent: ACTIVE once applied, ERROR when its router could not
//! be applied, DOWN when it left a router that remains.

use std::collections::{BTreeMap, BTreeSet};

pub const ACTIVE: &str = "ACTIVE";
pub const DOWN: &str = "DOWN";
pub const ERROR: &str = "ERROR";

/// What was last reported, per router and floating IP.
#[derive(Debug, Default)]
pub struct Reported {
    by_router: BTreeMap<String, BTreeMap<String, &'static str>>,
}

impl Reported {
    /// The statuses to send for `router` whose floating IPs are now `fips`,
    /// all in `status` (ACTIVE or ERROR): changes only, DOWN for those gone.
    pub fn changes(
        &self,
        router: &str,
        fips: &BTreeSet<String>,
        status: &'static str,
    ) -> BTreeMap<String, &'static str> {
        let before = self.by_router.get(router);
        let mut out = BTreeMap::new();
        for f in fips {
            if before.and_then(|b| b.get(f)) != Some(&status) {
                out.insert(f.clone(), status);
            }
        }
        for (f, s) in before.into_iter().flatten() {
            if !fips.contains(f) && *s != DOWN {
                out.insert(f.clone(), DOWN);
            }
        }
        out
    }

    /// Records statuses the server accepted.
    pub fn record(&mut self, router: &str, sent: &BTreeMap<String, &'static str>) {
        let m = self.by_router.entry(router.to_string()).or_default();
        for (f, s) in sent {
            if *s == DOWN {
                m.remove(f);
            } else {
                m.insert(f.clone(), s);
            }
        }
    }

    /// Forgets a router that left this agent (the server sets its floating
    /// IPs' statuses itself).
    pub fn forget(&mut self, router: &str) {
        self.by_router.remove(router);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_changes_are_sent_and_released_ips_go_down() {
        let mut r = Reported::default();
        let c = r.changes("r1", &set(&["f1", "f2"]), ACTIVE);
        assert_eq!(c.len(), 2);
        r.record("r1", &c);
        // Nothing changed: nothing to send.
        assert!(r.changes("r1", &set(&["f1", "f2"]), ACTIVE).is_empty());
        // f2 released, f3 new.
        let c = r.changes("r1", &set(&["f1", "f3"]), ACTIVE);
        assert_eq!(
            c,
            [("f2".to_string(), DOWN), ("f3".to_string(), ACTIVE)].into()
        );
        r.record("r1", &c);
        assert!(r.changes("r1", &set(&["f1", "f3"]), ACTIVE).is_empty());
        // The router fails: every floating IP in ERROR.
        let c = r.changes("r1", &set(&["f1", "f3"]), ERROR);
        assert_eq!(c.values().filter(|s| **s == ERROR).count(), 2);
        r.record("r1", &c);
        r.forget("r1");
        assert_eq!(r.changes("r1", &set(&["f1"]), ACTIVE).len(), 1);
    }
}
