//! Project tasks: `cargo xtask setup | demo | test | bench | bench-changes`.
//!
//! Each task first runs the idempotent setup (packages, nightly with
//! rust-src, bpf-linker, bpffs), so the README's commands work on a fresh
//! machine and cost a second when everything is there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

mod bench_changes;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the project needs (idempotent).
    Setup,
    /// Build xrouter and run its demo (arguments go to `xrouter demo`).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build xrouter and its benchmark (release) and run the benchmark
    /// (arguments go to `xrouter-bench`, e.g. `--micro` or `--cases ...`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure live changes per data plane: applying and releasing 1k and
    /// 10k floating IPs, reload to first packet, loss across a restart.
    BenchChanges {
        /// Data planes to measure.
        #[arg(long, value_delimiter = ',', default_value = "iptables,xdp,tc")]
        planes: Vec<String>,
        /// The large number of floating IPs (at most what the eBPF planes'
        /// floating-IP map holds).
        #[arg(long, default_value_t = 10_000,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16384))]
        many: usize,
    },
    /// Build everything and run the whole test suite, with fmt and clippy.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn setup() -> Result<()> {
    run(Command::new("bash").arg(root().join("scripts/setup.sh")))
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    // bpf-linker lands in cargo's bin directory, which a fresh shell may lack.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(|h| format!("{h}/bin"))
        .unwrap_or(format!("{home}/.cargo/bin"));
    let path = std::env::var("PATH").unwrap_or_default();
    if !path.split(':').any(|p| p == cargo_bin) {
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var("PATH", format!("{cargo_bin}:{path}")) };
    }

    match Cli::parse().cmd {
        Cmd::Setup => setup(),
        Cmd::Demo { args } => {
            setup()?;
            run(cargo().args(["build", "--quiet", "-p", "router-user"]))?;
            run(Command::new(root().join("target/debug/xrouter"))
                .arg("demo")
                .args(args))
        }
        Cmd::Bench { args } => {
            setup()?;
            run(cargo().args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "router-user",
                "-p",
                "xrouter-bench",
            ]))?;
            run(Command::new(root().join("target/release/xrouter-bench")).args(args))
        }
        Cmd::BenchChanges { planes, many } => {
            setup()?;
            run(cargo().args(["build", "--release", "--quiet", "-p", "router-user"]))?;
            bench_changes::run(&root().join("target/release/xrouter"), &planes, many)
        }
        Cmd::Test { args } => {
            setup()?;
            run(cargo().args(["fmt", "--all", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "router-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // The integration tests run the binaries: build them first.
            run(cargo().args([
                "build",
                "-p",
                "router-user",
                "-p",
                "xrouter-bench",
                "--bins",
            ]))?;
            run(cargo()
                .args(["test", "--workspace", "--exclude", "router-ebpf"])
                .args(args))
        }
    }
}
