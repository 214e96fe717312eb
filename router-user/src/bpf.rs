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
