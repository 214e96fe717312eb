//! Project tasks: `cargo xtask setup | demo | test | bench | deb`.
//!
//! Each task first runs the idempotent setup (packages, nightly with
//! rust-src, bpf-linker, bpffs), so the README's commands work on a fresh
//! machine and cost a second when everything is there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use clap::{Parser, Subcommand};

mod deb;

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
    /// (arguments go to `xrouter-bench`, e.g. `--micro`, `--changes` or
    /// `--cases ...`); `--agent` runs the agent-mode figures instead
    /// (RabbitMQ and the stand-in neutron-server in namespaces);
    /// `--metadata` the metadata proxy against Neutron's haproxy.
    /// `cargo xtask bench --help` is the benchmark's own help.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (release build): target/debian/xrouter_VERSION_ARCH.deb
    /// ($CARGO_TARGET_DIR/debian when that is set); prints its path.
    Deb {
        /// Package this xrouter binary instead of building one (it is
        /// stripped of debug info in the package).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Directory of the package (default: target/debian, or
        /// $CARGO_TARGET_DIR/debian).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
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

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR` (relative to the
/// workspace) or the workspace's `target/`.
fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

/// A benchmark kept as an ignored test of the `tests` crate (it needs the
/// rig): release build, run alone, its output shown.
fn ignored_bench(test: &str) -> Result<()> {
    setup()?;
    run(cargo().args(["build", "--release", "--quiet", "-p", "router-user"]))?;
    run(cargo().args([
        "test",
        "--release",
        "-p",
        "tests",
        "--test",
        test,
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]))
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
            run(Command::new(target_dir().join("debug/xrouter"))
                .arg("demo")
                .args(args))
        }
        Cmd::Bench { args } if args.iter().any(|a| a == "--agent") => ignored_bench("agent_bench"),
        Cmd::Bench { args } if args.iter().any(|a| a == "--metadata") => {
            ignored_bench("metadata_bench")
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
            run(Command::new(target_dir().join("release/xrouter-bench")).args(args))
        }
        Cmd::Deb { binary, out } => {
            setup()?;
            let binary = match binary {
                Some(b) => b,
                None => {
                    run(cargo().args(["build", "--release", "--quiet", "-p", "router-user"]))?;
                    target_dir().join("release/xrouter")
                }
            };
            let out = out.unwrap_or_else(|| target_dir().join("debian"));
            let deb = deb::build(
                &root(),
                &deb::Opts {
                    binary,
                    out,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                },
            )?;
            println!("{}", deb.display());
            Ok(())
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
