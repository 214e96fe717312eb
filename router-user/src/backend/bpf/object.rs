//! The embedded BPF object and its loading.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp},
};

/// The BPF object built by `build.rs` from the `router-ebpf` crate.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));

/// Loads the object into the kernel and verifies the programs a plane
/// uses (the TC ones; with `xdp` the XDP ones too), without attaching
/// anything: proves the plane can run on this kernel. The verifier's work
/// is most of it (about half a second per large program): a daemon on TC
/// does not pay for the XDP programs at every start.
pub fn load(xdp: bool) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the xrouter BPF object")?;
    let xdp_programs: &[&str] = if xdp { &["xr_xdp", "xr_pass"] } else { &[] };
    for &name in xdp_programs {
        load_xdp(&mut ebpf, name)?;
    }
    for name in ["xr_tc", "xr_tc_out"] {
        load_tc(&mut ebpf, name)?;
    }
    Ok(ebpf)
}

/// XDP program `name` of `ebpf`, loaded (verified) unless it is already.
pub(super) fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    Ok(prog)
}

/// TC program `name` of `ebpf`, loaded (verified) unless it is already.
pub(super) fn load_tc<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the BPF object"))?
        .try_into()
        .with_context(|| format!("{name} is not a TC classifier"))?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use aya::{
        maps::PerCpuArray,
        programs::{TestRun as _, TestRunOptions, Xdp},
    };
    use router_common::counters::{Counter, Outcome};

    /// The embedded object passes the verifier and its programs run: a
    /// crafted frame comes back XDP_PASS, unchanged, and is counted.
    #[test]
    fn embedded_object_loads_and_runs() {
        crate::testing::require_root();
        let mut ebpf = super::load(true).expect("load");
        let prog: &Xdp = ebpf.program("xr_pass").unwrap().try_into().unwrap();
        let frame: Vec<u8> = (0..64u8).collect();
        let mut out = vec![0u8; 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: 3,
                ..Default::default()
            })
            .expect("test run");
        assert_eq!(r.return_value, 2, "XDP_PASS");
        assert_eq!(&out[..r.data_size_out as usize], &frame[..]);
        // The fast path hands a frame of no router port up to TC, counted.
        let prog: &Xdp = ebpf.program("xr_xdp").unwrap().try_into().unwrap();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: 3,
                ..Default::default()
            })
            .expect("test run");
        assert_eq!(r.return_value, 2, "XDP_PASS");
        // The verifier's work, printed: the limit is 1M instructions per
        // program, and the pipeline's loops are what approach it.
        for name in ["xr_xdp", "xr_tc"] {
            let p = ebpf.program(name).unwrap();
            let n = p.info().ok().and_then(|i| i.verified_instruction_count());
            eprintln!("{name}: {n:?} instructions verified (limit 1000000)");
        }
        let counters: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(ebpf.map_mut("XR_COUNTERS").unwrap()).unwrap();
        let total: u64 = counters
            .get(&(Outcome::ToTc as u32), 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum();
        assert_eq!(total, 3);
    }

    /// The router's object holds the router's programs and maps and
    /// nothing else (the benchmark's are another object).
    #[test]
    fn the_object_holds_only_the_router() {
        crate::testing::require_root();
        let ebpf = super::load(true).expect("load");
        let mut progs: Vec<&str> = ebpf.programs().map(|(n, _)| n).collect();
        progs.sort();
        assert_eq!(progs, ["xr_pass", "xr_tc", "xr_tc_out", "xr_xdp"]);
        let maps: Vec<&str> = ebpf.maps().map(|(n, _)| n).collect();
        // .data: the global the loader sets (the table's size).
        assert!(
            maps.iter().all(|m| m.starts_with("XR_") || *m == ".data"),
            "{maps:?}"
        );
    }

    /// The start-up check for `tc` verifies the TC programs only: the XDP
    /// ones (most of the verifier's work) stay unloaded.
    #[test]
    fn the_tc_check_loads_no_xdp_program() {
        crate::testing::require_root();
        let ebpf = super::load(false).expect("load");
        let loaded = |n: &str| ebpf.program(n).unwrap().fd().is_ok();
        assert!(loaded("xr_tc") && loaded("xr_tc_out"));
        assert!(!loaded("xr_xdp") && !loaded("xr_pass"));
        let ebpf = super::load(true).expect("load");
        assert!(ebpf.programs().all(|(_, p)| p.fd().is_ok()));
    }
}
