//! Builds the benchmark's BPF object (`router-ebpf` with its `bench`
//! feature: the generator, sink, bare redirect and microbenchmark wrapper,
//! with the pipeline they measure) and leaves it in OUT_DIR, where `lib.rs`
//! embeds it. The router's own object never holds these.
fn main() -> anyhow::Result<()> {
    ebpf_build::build(&["bench"], &["xrouter-bench-ebpf"])
}
