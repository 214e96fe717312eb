//! Builds the eBPF crate for bpfel-unknown-none with the nightly and leaves the
//! object in OUT_DIR, where `bpf.rs` embeds it.
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
    // `bpf-log` builds the programs with their debug log lines.
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_BPF_LOG");
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BPF_LOG").is_some() {
        &["log"]
    } else {
        &[]
    };
    let pkg = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())
}
