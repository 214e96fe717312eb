//! The Debian package on a fresh Debian 12: built with `cargo xtask deb`,
//! installed with apt into a minimal Debian 12 root (debootstrap's minbase
//! with systemd, made by the setup script; apt resolves the package's
//! dependencies there from the archive's lists, offline), booted with
//! systemd-nspawn on a network namespace of its own, and its unit started,
//! reloaded and stopped by the container's systemd.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tests::{
    cmd::{self, Out},
    rig::xrouter_bin,
};

const MIN: Duration = Duration::from_secs(60);

/// The Debian 12 root the setup script builds.
fn rootfs() -> PathBuf {
    std::env::var_os("XROUTER_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/xrouter-tests/bookworm"))
}

/// A booted container on a copy of the root: killed (its whole PID
/// namespace) and its copy removed when dropped, even after a panic.
struct Container {
    name: String,
    root: PathBuf,
    nspawn: Option<Child>,
    init: Option<u32>,
}

impl Container {
    fn new(name: &str) -> Container {
        let root = PathBuf::from("/var/tmp").join(name);
        let src = rootfs();
        assert!(
            src.join("etc/debian_version").is_file(),
            "no Debian 12 root at {} (`cargo xtask test` runs the setup that builds it)",
            src.display()
        );
        run(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(&src)
                .arg(&root),
            MIN,
        );
        Container {
            name: name.to_string(),
            root,
            nspawn: None,
            init: None,
        }
    }

    /// Runs a command in the (not yet booted) root, on a network namespace
    /// of its own: apt finds nothing to download there, only the archive
    /// the setup fetched.
    fn chroot(&self, args: &[&str]) -> Out {
        let mut c = Command::new("unshare");
        c.args(["--net", "chroot"])
            .arg(&self.root)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd::run(&mut c, 3 * MIN).expect("running chroot")
    }

    /// A bpffs of the container's own, mounted on the host beside the root
    /// (a new instance: nothing of the host's pins) and bound at
    /// /sys/fs/bpf, where a node's systemd mounts one (nspawn has none).
    fn bpffs(&self) -> PathBuf {
        self.root.with_extension("bpf")
    }

    /// Boots the root with its systemd, alone on a network namespace of
    /// its own (loopback only), with what the package's unit needs of the
    /// host: the capabilities to load BPF, bpf() past nspawn's filter, and
    /// a bpffs.
    fn boot(&mut self) {
        std::fs::create_dir_all(self.bpffs()).unwrap();
        nix::mount::mount(
            Some("bpf"),
            &self.bpffs(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mounting a bpffs for the container");
        let bind = format!("--bind={}:/sys/fs/bpf", self.bpffs().display());
        let log = std::fs::File::create(self.root.with_extension("log")).unwrap();
        let child = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&self.root)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN",
                "--system-call-filter=bpf",
                &bind,
                "-M",
                &self.name,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting systemd-nspawn");
        let pid = child.id();
        self.nspawn = Some(child);
        // The container's init is nspawn's child once that has become
        // systemd (before, it is nspawn setting the container up).
        let t0 = Instant::now();
        while self.init.is_none() && t0.elapsed() < MIN {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            self.init = kids
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                });
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(self.init.is_some(), "no container init: {}", self.log());
        // Until its bus is up, systemctl cannot even ask.
        let mut st = self.exec(&["systemctl", "is-system-running", "--wait"], MIN);
        while st.stderr.contains("Failed to connect to bus") && t0.elapsed() < MIN {
            std::thread::sleep(Duration::from_millis(300));
            st = self.exec(&["systemctl", "is-system-running", "--wait"], MIN);
        }
        assert!(
            ["running", "degraded"].contains(&st.stdout.trim()),
            "the container's systemd did not come up: {}\n{}",
            st.describe(),
            self.log()
        );
    }

    /// Runs a command in the booted container.
    fn exec(&self, args: &[&str], timeout: Duration) -> Out {
        let pid = self.init.expect("booted").to_string();
        let mut c = Command::new("nsenter");
        c.args(["-t", &pid, "-a"]).args(args);
        cmd::run(&mut c, timeout).expect("running nsenter")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.exec(args, MIN);
        assert!(o.success(), "{}\n{}", o.describe(), self.journal());
        o.stdout
    }

    fn journal(&self) -> String {
        self.exec(&["journalctl", "--no-pager", "-n", "60"], MIN)
            .combined()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.with_extension("log")).unwrap_or_default()
    }

    fn poweroff(&mut self) {
        let _ = self.exec(&["systemctl", "poweroff"], MIN);
        if let Some(mut c) = self.nspawn.take() {
            let t0 = Instant::now();
            while t0.elapsed() < MIN {
                if c.try_wait().ok().flatten().is_some() {
                    self.init = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            self.nspawn = Some(c);
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(pid) = self.init.take() {
            // The PID namespace's init: the whole container goes with it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.nspawn.take() {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if nix::mount::umount2(&self.bpffs(), nix::mount::MntFlags::MNT_DETACH).is_ok() {
            let _ = std::fs::remove_dir(self.bpffs());
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_file(self.root.with_extension("log"));
    }
}

fn run(c: &mut Command, timeout: Duration) -> String {
    cmd::run(c, timeout)
        .expect("running a command")
        .ok()
        .unwrap()
}

/// Builds the package from the binary under test with the project's own
/// `cargo xtask deb` (the xtask binary `cargo xtask` left beside it).
fn build_deb(out: &Path) -> PathBuf {
    let bin = xrouter_bin();
    let xtask = bin.with_file_name("xtask");
    assert!(
        xtask.is_file(),
        "no xtask binary at {} (run the tests with `cargo xtask test`)",
        xtask.display()
    );
    let printed = run(
        Command::new(&xtask)
            .arg("deb")
            .arg("--binary")
            .arg(&bin)
            .arg("--out")
            .arg(out),
        5 * MIN,
    );
    let deb = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "xtask deb printed no package: {printed}");
    deb
}

#[test]
fn the_package_installs_and_its_unit_runs_on_debian_12() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the package test needs root (chroot, systemd-nspawn): run `cargo xtask test` as root"
    );
    let name = format!("xrpkg-{}", std::process::id());
    let mut ct = Container::new(&name);
    let deb = build_deb(&ct.root.with_extension("deb.d"));
    let _ = std::fs::copy(&deb, ct.root.join("tmp/xrouter.deb")).unwrap();
    let _ = std::fs::remove_dir_all(ct.root.with_extension("deb.d"));

    let o = ct.chroot(&["apt-get", "install", "-y", "/tmp/xrouter.deb"]);
    assert!(o.success(), "apt-get install: {}", o.describe());
    // What it brought along: the dependencies, from the archive.
    for pkg in ["xrouter", "iproute2", "iptables", "conntrack", "ethtool"] {
        let s = ct.chroot(&["dpkg-query", "-W", "-f=${Status}", pkg]);
        assert_eq!(s.stdout, "install ok installed", "{pkg}: {}", s.describe());
    }
    for f in [
        "usr/bin/xrouter",
        "lib/systemd/system/xrouter.service",
        "lib/systemd/system/xrouter-agent.service",
        "etc/xrouter/node.toml",
        "etc/xrouter/routers.json",
        "usr/share/doc/xrouter/operations.md",
    ] {
        assert!(ct.root.join(f).is_file(), "{f} not installed");
    }
    let unit = std::fs::read_to_string(ct.root.join("lib/systemd/system/xrouter.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/xrouter run") && !unit.contains("/usr/local/bin"),
        "the packaged unit runs the packaged binary: {unit}"
    );
    // The default config as shipped is valid.
    let o = ct.chroot(&[
        "/usr/bin/xrouter",
        "check",
        "--config",
        "/etc/xrouter/node.toml",
        "--routers",
        "/etc/xrouter/routers.json",
    ]);
    assert!(o.success(), "{}", o.describe());

    ct.boot();
    // Installed, not enabled: the node's config comes first.
    let enabled = ct.exec(&["systemctl", "is-enabled", "xrouter.service"], MIN);
    assert_eq!(enabled.stdout.trim(), "disabled", "{}", enabled.describe());
    assert_eq!(
        ct.ok(&["stat", "-f", "-c", "%T", "/sys/fs/bpf"]).trim(),
        "bpf_fs"
    );

    // Type=notify: `start` returns once the daemon said READY=1.
    ct.ok(&["systemctl", "start", "xrouter.service"]);
    assert_eq!(
        ct.ok(&["systemctl", "is-active", "xrouter.service"]).trim(),
        "active"
    );
    let log = ct.ok(&[
        "journalctl",
        "--no-pager",
        "-u",
        "xrouter.service",
        "-o",
        "cat",
    ]);
    // Within the unit's capabilities the BPF programs load: auto is tc.
    assert!(log.contains("data plane: tc"), "{log}");
    let shown = ct.ok(&["xrouter", "show", "--json"]);
    assert!(shown.contains("\"routers\""), "{shown}");
    ct.ok(&["systemctl", "reload", "xrouter.service"]);
    ct.ok(&["systemctl", "stop", "xrouter.service"]);
    let st = ct.exec(&["systemctl", "is-active", "xrouter.service"], MIN);
    assert_eq!(st.stdout.trim(), "inactive", "{}", st.describe());
    ct.poweroff();
}
