//! `xrouter-bench`: measures xrouter's data planes side by side (see the
//! crate's documentation and `docs/benchmarks.md`). `cargo xtask bench`
//! builds it with xrouter and runs it.

use std::process::ExitCode;

use clap::Parser;
use xrouter_bench::Cli;

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
