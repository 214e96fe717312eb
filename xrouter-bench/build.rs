//! Builds the benchmark's BPF object (`router-ebpf` with its `bench`
//! feature: the generator, sink, bare redirect and microbenchmark wrapper,
//! with the pipeline they measure) and leaves it in OUT_DIR, where `lib.rs`
//! embeds it. The router's own object never holds these.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "router-ebpf")
        .ok_or_else(|| anyhow!("router-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("router-ebpf manifest has no parent"))?;
    let pkg = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        features: &["bench"],
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())
}
