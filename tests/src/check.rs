//! Soft assertions: a scenario checks everything it can, then fails once with
//! the full list, so one broken behaviour does not hide the others.

use std::fmt::Debug;

use anyhow::Result;

use crate::probe::Reply;

#[must_use = "call finish() to fail the test on failed checks"]
pub struct Checks {
    name: String,
    failures: Vec<String>,
    passed: usize,
    finished: bool,
}

impl Checks {
    pub fn new(name: &str) -> Checks {
        Checks {
            name: name.to_string(),
            failures: vec![],
            passed: 0,
            finished: false,
        }
    }

    /// Records `what` as passed if `cond`, else as failed with `detail`.
    pub fn ok(&mut self, cond: bool, what: &str, detail: impl Debug) -> bool {
        if cond {
            println!("[{}] ok: {what}", self.name);
            self.passed += 1;
        } else {
            println!("[{}] FAIL: {what}: {detail:?}", self.name);
            self.failures.push(format!("{what}: {detail:?}"));
        }
        cond
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) -> bool {
        let cond = got == want;
        self.ok(cond, what, format!("got {got:?}, want {want:?}"))
    }

    /// Expects a reply whose peer address is `want_ip`.
    pub fn peer(&mut self, what: &str, r: Result<Reply>, want_ip: &str) -> Option<Reply> {
        match r {
            Ok(rep) => {
                let good = rep.peer_ip().to_string() == want_ip;
                self.ok(
                    good,
                    what,
                    format!("server {} saw {}, want {want_ip}", rep.server, rep.peer),
                );
                Some(rep)
            }
            Err(e) => {
                self.ok(false, what, format!("no answer: {e:#}"));
                None
            }
        }
    }

    /// Expects a reply from server `server` with peer address `want_ip`.
    pub fn reply(
        &mut self,
        what: &str,
        r: Result<Reply>,
        server: &str,
        want_ip: &str,
    ) -> Option<Reply> {
        match r {
            Ok(rep) => {
                let good = rep.peer_ip().to_string() == want_ip && rep.server == server;
                self.ok(
                    good,
                    what,
                    format!(
                        "answered by {} seeing {}, want {server} seeing {want_ip}",
                        rep.server, rep.peer
                    ),
                );
                Some(rep)
            }
            Err(e) => {
                self.ok(false, what, format!("no answer: {e:#}"));
                None
            }
        }
    }

    /// Expects a failure (e.g. a probe that must time out).
    pub fn fails<T: Debug>(&mut self, what: &str, r: Result<T>) -> bool {
        match r {
            Ok(v) => self.ok(false, what, format!("unexpectedly succeeded: {v:?}")),
            Err(e) => {
                println!("[{}] ok: {what} ({e:#})", self.name);
                self.passed += 1;
                true
            }
        }
    }

    /// Expects success.
    pub fn succeeds<T: Debug>(&mut self, what: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.ok(true, what, ());
                Some(v)
            }
            Err(e) => {
                self.ok(false, what, format!("{e:#}"));
                None
            }
        }
    }

    /// Panics listing every failed check, if any.
    pub fn finish(mut self) {
        self.finished = true;
        if !self.failures.is_empty() {
            panic!(
                "{}: {} of {} checks failed:\n  - {}",
                self.name,
                self.failures.len(),
                self.failures.len() + self.passed,
                self.failures.join("\n  - ")
            );
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        if !self.finished && !self.failures.is_empty() && !std::thread::panicking() {
            panic!(
                "{}: checks failed (finish() not called): {:?}",
                self.name, self.failures
            );
        }
    }
}
