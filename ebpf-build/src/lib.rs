//! Build-script helper of `router-user` and `xrouter-bench`: compiles
//! `router-ebpf`'s programs for the BPF target with the nightly and leaves
//! the objects in the calling crate's `OUT_DIR`, where it embeds them.
//!
//! Why not `aya-build`: it builds in a target directory under `OUT_DIR`, and
//! `OUT_DIR` changes with each cargo invocation's profile and features
//! (clippy, build, test), so every one of them recompiled `core` and the
//! programs from scratch, about a minute each. Here the nested build has a
//! target directory of its own per feature set, beside the workspace's
//! profiles, and cargo's own fingerprints make a repeat a no-op.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// The target the programs are built for (this crate builds on
/// little-endian hosts only, like the rest of xrouter).
const TARGET: &str = "bpfel-unknown-none";

/// Builds `router-ebpf` with `features` and copies the binaries `bins` to
/// `OUT_DIR`.
pub fn build(features: &[&str], bins: &[&str]) -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    // The programs are built from router-common too, which is no
    // build-dependency of the caller: without this, cargo would not rerun
    // the build when only it changed (a struct's layout, a map's flags),
    // leaving an object that disagrees with the caller's view of the maps.
    for name in ["router-ebpf", "router-common"] {
        let p = meta
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| anyhow!("package {name} not found in the workspace"))?;
        let dir = p
            .manifest_path
            .parent()
            .ok_or_else(|| anyhow!("{name}'s manifest has no parent"))?;
        println!("cargo:rerun-if-changed={dir}");
    }
    println!("cargo:rerun-if-env-changed=XROUTER_EBPF_TOOLCHAIN");
    let toolchain = env::var("XROUTER_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());

    let key = if features.is_empty() {
        "default".to_string()
    } else {
        features.join("+")
    };
    let target_dir = meta.target_directory.as_std_path().join("ebpf").join(key);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &toolchain,
        "cargo",
        "build",
        "--package",
        "router-ebpf",
        "--bins",
    ])
    .args(["--release", "--target", TARGET, "-Z", "build-std=core"])
    .arg("--features")
    .arg(features.join(","))
    .arg("--target-dir")
    .arg(&target_dir)
    // BTF for the maps; the arch cfg for aya-ebpf's per-arch helpers.
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    )
    // The outer cargo's compiler (stable, or clippy's driver) is not
    // the one for BPF.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTUP_TOOLCHAIN")
    // A build script's stdout is cargo's directives; the nested
    // cargo's messages go to stderr, which cargo shows on failure.
    .stdout(Stdio::null());
    let st = cmd
        .status()
        .with_context(|| format!("starting {cmd:?} (is rustup installed? `cargo xtask setup`)"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    let built = target_dir.join(TARGET).join("release");
    for bin in bins {
        copy(&built.join(bin), &out_dir.join(bin))?;
    }
    Ok(())
}

/// Copies through a temporary name, so a crate never embeds a half-written
/// object.
fn copy(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to)
        .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}
