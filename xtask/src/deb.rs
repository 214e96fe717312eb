//! `cargo xtask deb`: the Debian package, built with `dpkg-deb` from a
//! staged tree (no extra tool to install): the binary (the BPF object is
//! embedded in it), the systemd units, a default node config and an empty
//! routers file (conffiles), the docs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// What the daemon runs: `ip`, `iptables-restore`/`iptables` (Debian's use
/// the nft backend), `conntrack` (flushing the kernel's entries of a
/// floating IP), `ethtool` (offloads of router ports). The libraries are
/// the binary's NEEDED ones (libc, libm, libgcc_s).
const DEPENDS: &str = "libc6 (>= 2.34), libgcc-s1, iproute2, iptables, conntrack, ethtool";
/// Open vSwitch plugging (`interface_driver = "openvswitch"`).
const SUGGESTS: &str = "openvswitch-switch";

const DESCRIPTION: &str = "\
Neutron-compatible virtual routers with an eBPF data plane
 xrouter builds the routers OpenStack Neutron's server hands an L3 agent
 exactly as the legacy agent does (qrouter namespaces, qr-/qg- ports,
 addresses, floating IPs, routes, Neutron's iptables rule set) and forwards
 and translates their packets with eBPF programs (TC or XDP) instead of
 netfilter; an iptables data plane that behaves like Neutron's is the
 fallback. It runs from a routers file (xrouter.service) or as an L3 agent
 speaking Neutron's RPC (xrouter-agent.service).";

pub struct Opts {
    /// The xrouter binary to package.
    pub binary: PathBuf,
    /// Where the .deb goes.
    pub out: PathBuf,
    pub version: String,
}

/// Stages the package tree and builds the .deb; returns its path.
pub fn build(root: &Path, o: &Opts) -> Result<PathBuf> {
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("xrouter_{}_{arch}", o.version);
    let stage = o.out.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let pkg = root.join("packaging");

    let bin = stage.join("usr/bin/xrouter");
    fs::create_dir_all(bin.parent().expect("usr/bin"))?;
    // Debug info out (as dh_strip does); the BPF object is data, kept.
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&o.binary)
        .arg(&bin)
        .status()
        .context("running objcopy")?;
    if !st.success() {
        bail!("objcopy --strip-debug {} failed ({st})", o.binary.display());
    }
    // The units as docs/operations.md shows them run /usr/local/bin/xrouter
    // (installed by hand); the package's binary is in /usr/bin.
    for unit in ["xrouter.service", "xrouter-agent.service"] {
        let text = fs::read_to_string(pkg.join("systemd").join(unit))
            .with_context(|| format!("reading packaging/systemd/{unit}"))?;
        write(
            &stage.join("lib/systemd/system").join(unit),
            &text.replace("/usr/local/bin/xrouter", "/usr/bin/xrouter"),
            0o644,
        )?;
    }
    install(
        &pkg.join("node.toml"),
        &stage.join("etc/xrouter/node.toml"),
        0o644,
    )?;
    install(
        &pkg.join("routers.json"),
        &stage.join("etc/xrouter/routers.json"),
        0o644,
    )?;
    let doc = stage.join("usr/share/doc/xrouter");
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md" || x == "svg"))
        .collect();
    docs.sort();
    for p in docs {
        install(&p, &doc.join(p.file_name().expect("a file")), 0o644)?;
    }
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: xrouter\n\n\
         Files: *\n\
         License: Apache-2.0\n \
         On Debian systems the full text of the Apache License 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )?;

    let debian = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        install(
            &pkg.join("debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    write(
        &debian.join("conffiles"),
        "/etc/xrouter/node.toml\n/etc/xrouter/routers.json\n",
        0o644,
    )?;
    let size_kib = du_kib(&stage)?;
    write(
        &debian.join("control"),
        &format!(
            "Package: xrouter\n\
             Version: {}\n\
             Architecture: {arch}\n\
             Maintainer: xrouter developers <xrouter@localhost>\n\
             Installed-Size: {size_kib}\n\
             Depends: {DEPENDS}\n\
             Suggests: {SUGGESTS}\n\
             Section: net\n\
             Priority: optional\n\
             Description: {DESCRIPTION}\n",
            o.version
        ),
        0o644,
    )?;
    let deb = o.out.join(format!("{name}.deb"));
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .status()
        .context("running dpkg-deb")?;
    if !st.success() {
        bail!("dpkg-deb --build {} failed ({st})", stage.display());
    }
    Ok(deb)
}

fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    put(to, &data, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    put(to, text.as_bytes(), mode)
}

fn put(to: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(to.parent().expect("a file in a directory"))?;
    fs::write(to, data).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The tree's size for Installed-Size (KiB, files rounded up).
fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            du_kib(&e.path())?
        } else {
            m.len().div_ceil(1024)
        };
    }
    Ok(total)
}
