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
    // The programs are built from router-common too, which is no
    // build-dependency of ours: cargo would not rebuild them when only it
    // changed (a struct's layout, a map's flags), leaving an object that
    // disagrees with this crate's view of the maps.
    for p in packages
        .iter()
        .filter(|p| p.name.as_str() == "router-common")
    {
        if let Some(dir) = p.manifest_path.parent() {
            println!("cargo:rerun-if-changed={dir}");
        }
    }
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
