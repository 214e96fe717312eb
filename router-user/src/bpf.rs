//! The embedded BPF object and its loading.

use anyhow::{Context as _, Result};
use aya::{Ebpf, programs::Xdp};

/// The BPF object built by `build.rs` from the `router-ebpf` crate.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));

/// Loads the object into the kernel and verifies the XDP program, without
/// attaching it anywhere.
pub fn load() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the xrouter BPF object")?;
    let prog: &mut Xdp = ebpf
        .program_mut("xrouter_xdp")
        .context("program xrouter_xdp missing from the BPF object")?
        .try_into()
        .context("xrouter_xdp is not an XDP program")?;
    prog.load().context("verifier rejected xrouter_xdp")?;
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use aya::{
        maps::PerCpuArray,
        programs::{TestRun as _, TestRunOptions, Xdp},
    };
    use router_common::counters::{Counter, Outcome};

    /// The embedded object passes the verifier and its program runs: a
    /// crafted frame comes back XDP_PASS, unchanged, and is counted.
    #[test]
    fn embedded_object_loads_and_runs() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: loading BPF needs root");
            return;
        }
        let mut ebpf = super::load().expect("load");
        let prog: &Xdp = ebpf.program("xrouter_xdp").unwrap().try_into().unwrap();
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
        let counters: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(ebpf.map_mut("COUNTERS").unwrap()).unwrap();
        let total: u64 = counters
            .get(&(Outcome::Passed as u32), 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum();
        assert_eq!(total, 3);
    }
}
