//! `xrouter-bench`: measures xrouter's data planes side by side (see the
//! crate's documentation and `docs/benchmarks.md`). `cargo xtask bench`
//! builds it with xrouter and runs it.

use std::process::ExitCode;

use clap::Parser;

/// Packet rate and cost per packet of each xrouter data plane, on a rig of
/// namespaces (built-in live-frames generator, XDP sink); `--micro`
/// measures the data path alone, `--scale` with the connection table
/// pre-filled. Needs root; tears everything down, also on Ctrl-C.
#[derive(Parser)]
#[command(name = "xrouter-bench", version)]
struct Cli {
    #[command(flatten)]
    opts: xrouter_bench::Opts,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match xrouter_bench::run(cli.opts).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xrouter-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
