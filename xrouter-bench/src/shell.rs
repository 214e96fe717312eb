//! Commands the sandboxes of `--changes` and `--tcp` and the rigs run:
//! output or an error with stderr, always inside a namespace of theirs,
//! and a daemon stopped in bounded time.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` (stdin closed); its stdout, or an error with its stderr.
pub(crate) fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// `ip ARGS` in the current namespace.
pub(crate) fn ip(args: &str) -> Result<String> {
    sh(Command::new("ip").args(args.split_whitespace()))
}

/// `prog args` in namespace `ns` (stdin closed); an error if `ns` is gone,
/// so it never runs outside the sandbox.
pub(crate) fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Result<Command> {
    let mut c = Command::new(prog);
    c.args(args).stdin(Stdio::null());
    router_user::backend::netns::command_in(ns, &mut c)?;
    Ok(c)
}

/// Stops a daemon: SIGTERM, then SIGKILL if it has not exited within
/// `grace`.
pub(crate) fn stop_child(mut d: Child, grace: Duration) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.id() as i32),
        nix::sys::signal::SIGTERM,
    );
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = d.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = d.kill();
    let _ = d.wait();
}
