//! Builds the router's BPF object (`router-ebpf`) and leaves it in OUT_DIR,
//! where `backend/bpf/object.rs` embeds it.
fn main() -> anyhow::Result<()> {
    // `bpf-log` builds the programs with their debug log lines.
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_BPF_LOG");
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BPF_LOG").is_some() {
        &["log"]
    } else {
        &[]
    };
    ebpf_build::build(features, &["router-ebpf"])
}
