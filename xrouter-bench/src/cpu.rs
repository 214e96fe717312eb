//! Busy time of one CPU from /proc/stat, and NAPI threads: threaded NAPI on
//! veth devices and pinning their kernel threads (`napi/<dev>-<id>`).

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Busy nanoseconds of `cpu` since boot: all but idle and iowait.
pub fn busy_ns(cpu: usize) -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let key = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&key))
        .with_context(|| format!("no {key} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        bail!("short /proc/stat line: {line}");
    }
    let total: u64 = v.iter().take(8).sum();
    let busy = total - v[3] - v[4];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(busy * (1_000_000_000 / hz))
}

/// Switches `devs` in namespace `ns` to threaded NAPI (sysfs is per
/// namespace: `ip netns exec` mounts the namespace's own). A device's NAPI
/// exists only once it has an XDP program (or GRO); the write fails while it
/// is being set up, so it is retried for a second.
pub fn threaded(ns: &str, devs: &[String]) -> Result<()> {
    let script: String = devs
        .iter()
        .map(|d| {
            format!(
                "f=/sys/class/net/{d}/threaded; \
                 [ \"$(cat $f)\" = 1 ] || echo 1 > $f || ok=1; "
            )
        })
        .collect();
    let script = format!("ok=0; {script} exit $ok");
    let mut last = String::new();
    for _ in 0..10 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .context("ip netns exec")?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        super::nap(std::time::Duration::from_millis(100))?;
    }
    bail!("threaded NAPI on {devs:?} in {ns}: {last}")
}

/// Pins the NAPI threads of `devs` to `cpu`; returns how many it pinned.
/// The threads are re-created when an XDP program is attached or detached,
/// so this runs again before every measurement.
pub fn pin_napi(devs: &[String], cpu: usize) -> Result<usize> {
    // A thread name is at most 15 characters: "napi/" and 10 of the device.
    let prefixes: Vec<String> = devs
        .iter()
        .map(|d| format!("napi/{}", &d[..d.len().min(10)]))
        .collect();
    let mut n = 0;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if prefixes.iter().any(|p| comm.starts_with(p.as_str())) {
            super::progs::pin(pid, cpu)?;
            n += 1;
        }
    }
    Ok(n)
}

/// CPU time (user + system, all threads) of process `pid` since it started,
/// in nanoseconds; 0 when it cannot be read (the process is gone).
pub fn process_ns(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces: the fields start after its ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    f.iter().sum::<u64>() * (1_000_000_000 / hz)
}
