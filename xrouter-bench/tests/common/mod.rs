//! What the smoke tests share: running xrouter-bench as root, bounded in
//! time.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs xrouter-bench with `args`, killed if it takes more than 90 s;
/// panics unless it succeeded. Returns its process id (the rigs' names
/// carry it) and its stdout.
pub fn run_bench(args: &[&std::ffi::OsStr]) -> (u32, String) {
    run_bench_with(args, &[])
}

/// [`run_bench`] with environment variables set for it.
pub fn run_bench_with(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (u32, String) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "xrouter-bench needs root: run the tests as root (`cargo xtask test`)"
    );
    // xrouter itself is found beside xrouter-bench (`cargo xtask test`
    // builds both).
    let mut child = Command::new(env!("CARGO_BIN_EXE_xrouter-bench"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning xrouter-bench");
    let pid = child.id();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("xrouter-bench {args:?} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.success(),
        "xrouter-bench {args:?} failed ({status}):\n{stdout}\n{stderr}"
    );
    (pid, stdout)
}
