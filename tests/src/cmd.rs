//! Running commands inside network namespaces, always bounded in time.

use std::{
    io::Read,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Default bound for a helper command (`ip`, `conntrack`, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a finished (or killed) command left behind.
#[derive(Clone, Debug)]
pub struct Out {
    /// Shell-style description of the command, for messages.
    pub what: String,
    /// Exit code; None if killed by a signal (or by the timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// stdout and stderr together, for messages and searches.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Ok(stdout) on success, otherwise an error with everything known.
    pub fn ok(self) -> Result<String> {
        if self.success() {
            Ok(self.stdout)
        } else {
            bail!("{}", self.describe())
        }
    }

    pub fn describe(&self) -> String {
        let how = if self.timed_out {
            "timed out".to_string()
        } else {
            match self.code {
                Some(c) => format!("exited {c}"),
                None => "killed by a signal".to_string(),
            }
        };
        format!(
            "`{}` {how}\n--- stdout:\n{}--- stderr:\n{}",
            self.what, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion, killing it after `timeout`. Standard input is
/// empty; output is captured.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Out> {
    run_with_stdout(cmd, timeout, Stdio::piped())
}

/// Runs `cmd` as [`run`] does, its standard output a pipe nobody reads
/// (its reading end closed before the command starts), as in `cmd | head`
/// once `head` has exited: every write to it fails with EPIPE.
pub fn run_stdout_closed(cmd: &mut Command, timeout: Duration) -> Result<Out> {
    let (reader, writer) = nix::unistd::pipe().context("pipe")?;
    drop(reader);
    run_with_stdout(cmd, timeout, Stdio::from(writer))
}

/// [`run`] with `stdout` as standard output (captured only if piped).
fn run_with_stdout(cmd: &mut Command, timeout: Duration, stdout: Stdio) -> Result<Out> {
    let what = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning `{what}`"))?;
    let so = child.stdout.take();
    let mut se = child.stderr.take().expect("piped");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut so) = so {
            let _ = so.read_to_end(&mut v);
        }
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait()? {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait()?;
            }
            None => thread::sleep(Duration::from_millis(5)),
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(Out {
        what,
        code: status.code(),
        stdout,
        stderr,
        timed_out,
    })
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Builds a command that runs in network namespace `ns` (None: the test's
/// own namespace).
pub fn command(ns: Option<&str>, program: &str, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(ns) = ns {
        router_user::backend::netns::command_in(ns, &mut cmd)?;
    }
    Ok(cmd)
}

/// Runs `program args` in `ns` with a timeout; the Out whatever the exit code.
pub fn exec(ns: &str, program: &str, args: &[&str], timeout: Duration) -> Result<Out> {
    let mut cmd = command(Some(ns), program, args)?;
    let mut out = run(&mut cmd, timeout)?;
    out.what = format!("[{ns}] {}", out.what);
    Ok(out)
}

/// Runs `program args` in `ns`; Ok(stdout) only if it exits 0.
pub fn sh(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    exec(ns, program, args, CMD_TIMEOUT)?.ok()
}

/// `ip ARGS` in `ns` (ARGS split on whitespace); Ok(stdout) if it succeeded.
pub fn ip(ns: &str, args: &str) -> Result<String> {
    let v: Vec<&str> = args.split_whitespace().collect();
    sh(ns, "ip", &v)
}

/// `ip -j ARGS` in `ns`, parsed.
pub fn ip_json(ns: &str, args: &str) -> Result<serde_json::Value> {
    let out = ip(ns, &format!("-j {args}"))?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_str(&out).with_context(|| format!("parsing `ip -j {args}` output: {out}"))
}

/// Polls `f` every `every` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}
