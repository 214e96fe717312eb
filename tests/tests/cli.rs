//! The command line as an operator meets it: output piped into a command
//! that stops reading, and the help of every command.

use std::process::Command;

use tests::{Checks, RouterSpec, TempDir, article::*, names, routers_json, xrouter_bin};

/// A node config in `dir` for the iptables plane, its state in
/// `dir/state` and pins in `dir/pins`; its path.
fn node_config(dir: &std::path::Path) -> std::path::PathBuf {
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!(
            "state_dir = \"{}\"\npin_dir = \"{}\"\ndataplane = \"iptables\"\n",
            dir.join("state").display(),
            dir.join("pins").display()
        ),
    )
    .unwrap();
    node
}

/// Every command that prints exits quietly when its standard output is
/// closed (`xrouter show | head`): status 0, or killed by SIGPIPE as other
/// tools are, and never a panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    let mut c = Checks::new("closed_stdout_is_not_a_panic");
    let dir = TempDir::new(&format!("pipe-{}", names::tag()));
    let node = node_config(dir.path());
    let routers = dir.path().join("routers.json");
    let ext = tests::Network::new("ext", EXT, Some(EXT_GW));
    let net1 = tests::Network::new("net1", NET1, Some(QR1));
    let net2 = tests::Network::new("net2", NET2, Some(QR2));
    let router = RouterSpec::article(&names::tag(), &ext, &net1, &net2);
    std::fs::write(
        &routers,
        serde_json::to_string(&routers_json(&[router])).unwrap(),
    )
    .unwrap();
    // No daemon has run: `show` says so and fails, as `show flows` does.
    let out = tests::xrouter_plain(&["--config", node.to_str().unwrap(), "show", "--json"]);
    c.ok(
        out.code == Some(1) && out.stderr.contains("no daemon state") && out.stdout.is_empty(),
        "show without a daemon's state: refused, naming it",
        out.describe(),
    );
    // A daemon's state with no routers, for `show` to print.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state/state.json"),
        r#"{"dataplane":"iptables","routers_file":null,"routers":[],"bridges":[]}"#,
    )
    .unwrap();
    let (node, routers) = (node.to_str().unwrap(), routers.to_str().unwrap());
    for args in [
        vec!["--config", node, "show"],
        vec!["--config", node, "show", "--json"],
        vec!["--config", node, "check", "--routers", routers],
        // Reads the kernel (here: the test's namespace) and changes nothing.
        vec!["--config", node, "check", "--routers", routers, "--plan"],
        // No router recorded: removes nothing, still prints its count.
        vec!["--config", node, "cleanup"],
        vec!["--help"],
        vec!["check", "--help"],
        vec!["--version"],
    ] {
        let what = format!("xrouter {}", args.join(" "));
        let mut cmd = Command::new(xrouter_bin());
        cmd.args(&args);
        let out = tests::cmd::run_stdout_closed(&mut cmd, tests::cmd::CMD_TIMEOUT)
            .expect("running xrouter");
        c.ok(
            out.code == Some(0) || out.code.is_none() && !out.timed_out,
            &format!("{what} | head: exits 0 (or on SIGPIPE)"),
            out.describe(),
        );
        c.ok(
            !out.stderr.contains("panicked") && !out.stderr.contains("Broken pipe"),
            &format!("{what} | head: no panic, no error"),
            &out.stderr,
        );
    }
    c.finish();
}

/// `xrouter cleanup` leaves no empty state directory behind (a killed
/// daemon's stale socket included), keeps one that holds something else,
/// and says when it found no state file to go by.
#[test]
fn cleanup_removes_its_empty_state_dir() {
    let mut c = Checks::new("cleanup_removes_its_empty_state_dir");
    let dir = TempDir::new(&format!("cleanup-{}", names::tag()));
    for (other, stale_socket) in [
        (None, false),
        (None, true),
        (Some("operator-notes.txt"), false),
    ] {
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        if let Some(f) = other {
            std::fs::write(state.join(f), "mine\n").unwrap();
        }
        if stale_socket {
            // Bound, then closed: the file stays, nothing answers on it.
            drop(std::os::unix::net::UnixListener::bind(state.join("xrouter.sock")).unwrap());
        }
        let node = node_config(dir.path());
        let out = Command::new(xrouter_bin())
            .args(["--config", node.to_str().unwrap(), "cleanup"])
            .output()
            .expect("running xrouter");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        c.ok(out.status.success(), "cleanup succeeds", &out);
        c.ok(
            stderr.contains("no state file at"),
            "cleanup says it found no state file",
            &stderr,
        );
        if stale_socket {
            c.ok(
                stdout.contains("removed the stale control socket"),
                "the stale socket is removed",
                &stdout,
            );
        }
        match other {
            None => c.ok(
                !state.exists() && stdout.contains("removed the empty state directory"),
                "the empty state dir is removed, and said so",
                (&state, &stdout),
            ),
            Some(f) => c.ok(
                state.join(f).exists(),
                "a state dir with another file stays, the file too",
                &state,
            ),
        };
        let _ = std::fs::remove_dir_all(&state);
    }
    c.finish();
}

/// The demo builds its own node config: an operator's `--config`,
/// `--state-dir` or `--config-file` would be ignored, so each is refused,
/// named, before anything is built or read.
#[test]
fn demo_refuses_the_options_it_would_ignore() {
    let mut c = Checks::new("demo_refuses_the_options_it_would_ignore");
    for (opt, val) in [
        ("--config", "/nonexistent/node.toml"),
        ("--state-dir", "/nonexistent"),
        ("--config-file", "/nonexistent/l3_agent.ini"),
    ] {
        let mut cmd = Command::new(xrouter_bin());
        cmd.args(["demo", opt, val]);
        let out = tests::cmd::run(&mut cmd, tests::cmd::CMD_TIMEOUT).expect("running xrouter");
        c.ok(
            out.code == Some(1)
                && out.stderr.contains(&format!("demo: {opt} does not apply"))
                && !out.stderr.contains("nonexistent"),
            &format!("xrouter demo {opt} {val}: refused, naming {opt}"),
            out.describe(),
        );
    }
    let mut cmd = Command::new(xrouter_bin());
    cmd.args(["demo", "--config", "/a.toml", "--state-dir", "/b"]);
    let out = tests::cmd::run(&mut cmd, tests::cmd::CMD_TIMEOUT).expect("running xrouter");
    c.ok(
        out.code == Some(1)
            && out
                .stderr
                .contains("demo: --config, --state-dir do not apply"),
        "xrouter demo with two of them: both named",
        out.describe(),
    );
    c.finish();
}

/// Runs `xrouter --config node <cmd>` as nobody; it must fail. Its stderr.
fn as_nobody_fails(node: &std::path::Path, cmd: &str) -> String {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(xrouter_bin())
        .args(["--config", node.to_str().unwrap(), cmd])
        .output()
        .expect("running xrouter through setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "xrouter {cmd} as nobody: {stderr}");
    stderr
}

/// A command that reads the daemon's state, run by another user than
/// root, says the state is root's rather than only "permission denied".
#[test]
fn reading_the_state_as_another_user_says_it_is_roots() {
    let dir = TempDir::new(&format!("nonroot-{}", names::tag()));
    let node = node_config(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("state.json"), "{}").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let stderr = as_nobody_fails(&node, "show");
    assert!(
        stderr.contains("Permission denied") && stderr.contains("run this as root"),
        "{stderr}"
    );
    // And one that talks to the daemon: its control socket is root's.
    let _listening = std::os::unix::net::UnixListener::bind(state.join("xrouter.sock")).unwrap();
    let stderr = as_nobody_fails(&node, "reload");
    assert!(
        stderr.contains("control socket") && stderr.contains("run this as root"),
        "{stderr}"
    );
}

/// Runs `xrouter <args>`, which must be refused as a usage error (exit
/// 2); its stderr.
fn refused_usage(args: &[&str]) -> String {
    let out = Command::new(xrouter_bin())
        .args(args)
        .output()
        .expect("running xrouter");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    stderr
}

/// `monitor --duration` takes seconds from 0 to a year: anything else is
/// refused by name (a huge number was a panic, a negative one "unexpected
/// argument").
#[test]
fn monitor_duration_out_of_range_is_refused_by_name() {
    for bad in ["-1", "1e30", "nan", "inf", "abc"] {
        let stderr = refused_usage(&["monitor", "--duration", bad]);
        assert!(
            stderr.contains(&format!("invalid value '{bad}' for '--duration <SECS>'"))
                && stderr.contains("from 0 to 31536000")
                && !stderr.contains("panicked"),
            "{bad}: {stderr}"
        );
    }
    // Its neighbours too: a negative number is named, not "unexpected".
    for (opt, bad, says) in [("--count", "-1", "0 or more"), ("--sample", "-5", "1..=")] {
        let stderr = refused_usage(&["monitor", opt, bad]);
        assert!(
            stderr.contains(&format!("invalid value '{bad}' for '{opt} <N>'"))
                && stderr.contains(says),
            "{opt} {bad}: {stderr}"
        );
    }
}
