//! `--prog-stats`: the router's programs' own run time on live traffic.
//!
//! The kernel counts each program's runs and their time while run-time
//! statistics are on (`BPF_ENABLE_STATS`, held by a file descriptor: they
//! go off when it closes, also when the bench is killed). Every BPF program
//! then pays two clock reads a run, the generator's and the sink's too, so
//! this is for finding where the time goes, not for the headline figures.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        ProgramInfo,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
    sys::{Stats, enable_stats},
};
use serde::Serialize;

/// Run-time statistics on while this lives.
pub struct Enabled(#[allow(dead_code)] OwnedFd);

/// Turns the kernel's run-time statistics of BPF programs on.
pub fn enable() -> Result<Enabled> {
    Ok(Enabled(
        enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS (run time)")?,
    ))
}

/// One program's runs, by name (a router's programs of the same name, one
/// per port, summed).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProgRuns {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
    /// Instructions after the verifier's rewrites (the translated size).
    pub insns: Option<u32>,
    /// Instructions the verifier processed to accept it (its complexity).
    pub verified: Option<u32>,
}

/// The ids of the programs behind the links pinned in `links` (a router's
/// `<pin_dir>/<id>/links`); none when there is no such directory.
pub fn prog_ids(links: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(links) else {
        return vec![];
    };
    let paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
    paths
        .iter()
        .filter_map(|p| {
            let link: FdLink = PinnedLink::from_pin(p).ok()?.into();
            Some(link.info().ok()?.program_id())
        })
        .collect()
}

/// The counts so far of programs `ids`, summed by name, in name order.
pub fn snapshot(ids: &[u32]) -> Vec<ProgRuns> {
    let mut out: Vec<ProgRuns> = Vec::new();
    // On the direct rig the bench's sink takes over the link of the
    // router's `xr_pass`: the bench's own programs are not the router's.
    let infos: Vec<ProgramInfo> = loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()))
        .filter(|p| !p.name_as_str().unwrap_or("").starts_with("xr_bench"))
        .collect();
    for p in infos {
        let name = p.name_as_str().unwrap_or("?").to_string();
        let i = match out.iter().position(|r| r.name == name) {
            Some(i) => i,
            None => {
                out.push(ProgRuns {
                    name,
                    insns: p.size_translated().map(|b| b / 8),
                    verified: p.verified_instruction_count(),
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        out[i].runs += p.run_count();
        out[i].ns += p.run_time().as_nanos() as u64;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What ran between snapshots `a` and `b` (programs that did not run left
/// out).
pub fn delta(a: &[ProgRuns], b: &[ProgRuns]) -> Vec<ProgRuns> {
    b.iter()
        .filter_map(|y| {
            let x = a.iter().find(|x| x.name == y.name);
            let runs = y.runs - x.map_or(0, |x| x.runs);
            (runs > 0).then(|| ProgRuns {
                runs,
                ns: y.ns - x.map_or(0, |x| x.ns),
                ..y.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, runs: u64, ns: u64) -> ProgRuns {
        ProgRuns {
            name: name.into(),
            runs,
            ns,
            ..Default::default()
        }
    }

    #[test]
    fn a_window_counts_only_what_ran_in_it() {
        let a = [p("xr_tc", 10, 1000), p("xr_tc_out", 5, 50)];
        let b = [
            p("xr_tc", 110, 21000),
            p("xr_tc_out", 5, 50),
            p("xr_xdp", 3, 30),
        ];
        assert_eq!(delta(&a, &b), [p("xr_tc", 100, 20000), p("xr_xdp", 3, 30)]);
    }
}
