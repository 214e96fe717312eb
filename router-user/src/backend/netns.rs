//! Named network namespaces, as `ip netns` keeps them: a bind mount of the
//! namespace file under `/run/netns/<name>`.
//!
//! Work inside a namespace runs on a short-lived thread that has joined it
//! (setns affects only the calling thread), so the daemon itself never moves.
//! Sockets opened there stay bound to that namespace after the thread ends.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::fd::AsFd,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether a named namespace exists (its file is a live mount).
pub fn exists(name: &str) -> bool {
    File::open(path(name)).is_ok_and(|f| is_netns(&f))
}

fn is_netns(f: &File) -> bool {
    // NSFS_MAGIC: a bind-mounted namespace, not a leftover empty file.
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| s.filesystem_type().0 == 0x6e736673)
}

/// Opens a named namespace.
pub fn open(name: &str) -> Result<File> {
    let f =
        File::open(path(name)).with_context(|| format!("network namespace {name} not found"))?;
    if !is_netns(&f) {
        bail!("{} is not a network namespace", path(name).display());
    }
    Ok(f)
}

/// Lists named namespaces.
pub fn list() -> Result<Vec<String>> {
    let mut out = Vec::new();
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).context(NETNS_DIR),
    };
    for e in dir {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether the namespaces this process creates stay out of reach of the
/// rest of the node: the mount holding /run/netns is a slave (`master:` in
/// /proc/self/mountinfo), as in the mount namespace of its own that `ip
/// netns exec` gives a process (or a service's private mounts). Mounts made
/// there do not propagate back to the master, and go when the last process
/// of that mount namespace ends.
pub fn created_namespaces_stay_private() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| slave_holds(&m, NETNS_DIR))
}

/// Whether, by `mountinfo`, the mount that holds `path` is a slave (mount
/// points are compared component-wise; of the longest, the last mounted is
/// the one seen).
fn slave_holds(mountinfo: &str, path: &str) -> bool {
    let mut best: Option<(usize, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        if !Path::new(path).starts_with(point) || best.is_some_and(|(len, _)| point.len() < len) {
            continue;
        }
        let slave = fields
            .iter()
            .skip(6)
            .take_while(|f| **f != "-")
            .any(|t| t.starts_with("master:"));
        best = Some((point.len(), slave));
    }
    best.is_some_and(|(_, slave)| slave)
}

/// Makes /run/netns a shared mount point, as iproute2 does, so namespaces
/// created here are visible to `ip netns` in other mount namespaces too.
fn prepare_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_DIR).context(NETNS_DIR)?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_err() {
        mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .context("bind-mounting /run/netns")?;
        shared().context("making /run/netns shared")?;
    }
    Ok(())
}

/// Creates a named namespace; does nothing if it already exists.
pub fn create(name: &str) -> Result<()> {
    if exists(name) {
        return Ok(());
    }
    prepare_dir()?;
    let target = path(name);
    // A leftover file of a half-deleted namespace is reused.
    File::create(&target).with_context(|| format!("creating {}", target.display()))?;
    let t = target.clone();
    let res = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        let tid = nix::unistd::gettid();
        let src = format!("/proc/self/task/{tid}/ns/net");
        mount(
            Some(src.as_str()),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting {src} on {}", t.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?;
    if let Err(e) = res {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(())
}

/// Deletes a named namespace; does nothing if it is absent. Devices inside go
/// with it once no process holds it.
pub fn delete(name: &str) -> Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", p.display())),
    }
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

/// Runs `f` on a thread that has joined namespace `ns` (None: the caller's
/// own namespace, still on a fresh thread so the behaviour is the same).
/// The thread is scoped: `f` may borrow from the caller.
pub fn run_in<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = ns.map(open).transpose()?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            if let Some(file) = file {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {}", ns.unwrap_or_default()))?;
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    })
}

/// Makes `cmd` run inside namespace `ns` (network namespace only, like
/// `nsenter --net`, so named namespaces stay visible to it).
pub fn command_in(ns: &str, cmd: &mut Command) -> Result<()> {
    let file = open(ns)?;
    // SAFETY: setns is async-signal-safe; the closure only uses the fd.
    unsafe {
        cmd.pre_exec(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
        });
    }
    Ok(())
}

/// Writes a sysctl under /proc/sys inside namespace `ns`; the net.* tree is
/// resolved against the namespace of the thread that opens it.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/{}", key.replace('.', "/"));
    let v = value.to_string();
    run_in(Some(ns), move || -> io::Result<bool> {
        let cur = std::fs::read_to_string(&p)?;
        if cur.trim() == v {
            return Ok(false);
        }
        std::fs::write(&p, &v)?;
        Ok(true)
    })?
    .with_context(|| format!("sysctl {key}={value} in {ns}"))?;
    Ok(())
}

/// The values of sysctls `keys` as seen inside `ns` (a key that does not
/// exist there is left out).
pub fn read_sysctls(ns: &str, keys: &[&str]) -> Result<BTreeMap<String, String>> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    run_in(Some(ns), move || {
        keys.into_iter()
            .filter_map(|k| {
                let p = format!("/proc/sys/{}", k.replace('.', "/"));
                let v = std::fs::read_to_string(p).ok()?;
                Some((k, v.trim().to_string()))
            })
            .collect()
    })
}

/// Runs `program args` in namespace `ns`, feeding it `stdin`; returns its
/// stdout, or an error naming the namespace with the tool's stderr.
pub fn run_tool(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::{io::Write as _, process::Stdio};
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command_in(ns, &mut cmd).with_context(|| format!("router namespace {ns}"))?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("router namespace {ns}: running {program}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that fails early closes its stdin: its stderr says why.
        match pipe.write_all(input.as_bytes()) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                return Err(e)
                    .with_context(|| format!("router namespace {ns}: writing to {program}"));
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("router namespace {ns}: waiting for {program}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} failed in router namespace {ns} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slave_mount_of_run_netns_keeps_namespaces_private() {
        let host = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    43 27 254:0 /run/netns /run/netns rw,relatime shared:5 - ext4 /dev/vda rw\n";
        assert!(!slave_holds(host, NETNS_DIR));
        // Under `ip netns exec`: / made a slave, /run/netns with it.
        let exec = "47 46 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw\n\
                    68 47 254:0 /run/netns /run/netns rw,relatime master:5 - ext4 /dev/vda rw\n";
        assert!(slave_holds(exec, NETNS_DIR));
        // /run/netns not a mount point: the mount holding it decides.
        let root_only = "47 46 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw\n\
                         50 47 0:40 / /run rw shared:9 - tmpfs tmpfs rw\n";
        assert!(!slave_holds(root_only, NETNS_DIR));
        assert!(slave_holds(
            &root_only.replace("shared:9", "master:9"),
            NETNS_DIR
        ));
        // "/run/net" holds no /run/netns.
        let prefix =
            "1 0 0:1 / / rw shared:1 - ext4 a rw\n2 1 0:2 / /run/net rw master:2 - tmpfs b rw\n";
        assert!(!slave_holds(prefix, NETNS_DIR));
    }
}
