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
    Ok(pin_napi_counts(devs, cpu)?.iter().sum())
}

/// Pins as [`pin_napi`] does; returns the devices none of whose threads
/// was found.
pub fn pin_napi_each(devs: &[String], cpu: usize) -> Result<Vec<String>> {
    let n = pin_napi_counts(devs, cpu)?;
    Ok(devs
        .iter()
        .zip(n)
        .filter(|(_, n)| *n == 0)
        .map(|(d, _)| d.clone())
        .collect())
}

/// The thread name prefix of a device's NAPI threads: a thread name is at
/// most 15 characters, "napi/" and 10 of the device's name.
fn napi_prefix(dev: &str) -> String {
    let end = dev.char_indices().nth(10).map_or(dev.len(), |(i, _)| i);
    format!("napi/{}", &dev[..end])
}

/// Threads pinned per device of `devs`.
fn pin_napi_counts(devs: &[String], cpu: usize) -> Result<Vec<usize>> {
    let prefixes: Vec<String> = devs.iter().map(|d| napi_prefix(d)).collect();
    let mut n = vec![0; devs.len()];
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        let mut pinned = false;
        for (i, p) in prefixes.iter().enumerate() {
            if napi_thread_of(comm, p) {
                if !pinned {
                    super::progs::pin(pid, cpu)?;
                    pinned = true;
                }
                n[i] += 1;
            }
        }
    }
    Ok(n)
}

/// Whether thread `comm` is a NAPI thread of the device with `prefix`
/// (`napi/<dev>-<id>`, cut at 15 characters): the name goes on with "-"
/// or ends where the cut is, so `napi/qr-1` is not taken for `qr-10`'s.
fn napi_thread_of(comm: &str, prefix: &str) -> bool {
    match comm.strip_prefix(prefix) {
        Some(rest) => rest.starts_with('-') || prefix.len() >= 15,
        None => false,
    }
}

/// Run time so far of the NAPI threads of `devs`, in nanoseconds (the
/// scheduler's figure, /proc/<pid>/schedstat, which includes the softirq
/// work done in a thread's context): the CPU the packet path took on the
/// router's side, whatever else ran on its CPU.
pub fn napi_run_ns(devs: &[String]) -> u64 {
    let prefixes: Vec<String> = devs.iter().map(|d| napi_prefix(d)).collect();
    run_ns(|comm| prefixes.iter().any(|p| napi_thread_of(comm, p)))
}

/// Run time so far of the thread named `name` (e.g. `ksoftirqd/1`, where a
/// CPU's softirq work goes when it has run long), in nanoseconds.
pub fn thread_run_ns(name: &str) -> u64 {
    run_ns(|comm| comm == name)
}

/// Run time so far of the threads whose name `pick` accepts.
fn run_ns(pick: impl Fn(&str) -> bool) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        if !e
            .file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        if !pick(comm.trim()) {
            continue;
        }
        let Ok(st) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        total += st
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Pins every thread of process `pid` to `cpu` (a switch's threads:
/// ovs-vswitchd). Threads it starts later inherit the main thread's mask.
pub fn pin_threads(pid: u32, cpu: usize) -> Result<()> {
    let dir = format!("/proc/{pid}/task");
    for e in std::fs::read_dir(&dir)
        .with_context(|| dir.clone())?
        .flatten()
    {
        if let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            super::progs::pin(tid, cpu)?;
        }
    }
    Ok(())
}

/// Run time so far of every thread of process `pid`, in nanoseconds (the
/// scheduler's figure, as [`napi_run_ns`]); 0 when it is gone.
pub fn threads_run_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|st| st.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
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

/// The machine a figure comes from: CPUs, their model, the kernel, and
/// the load average when the bench started.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{} CPUs ({cpu}), kernel {}, load average at the start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn napi_threads_are_told_apart_by_device() {
        let p = napi_prefix("xnabcd1na");
        assert_eq!(p, "napi/xnabcd1na");
        assert!(napi_thread_of("napi/xnabcd1na-8204", &p));
        assert!(!napi_thread_of("napi/xnabcd1nab-1", &p));
        assert!(!napi_thread_of("napi/xnabcd1n-1", &p));
        // Long names are cut at 15 characters: the cut prefix is all there is.
        let p = napi_prefix("qr-1234567a-bc");
        assert_eq!(p, "napi/qr-1234567");
        assert!(napi_thread_of("napi/qr-1234567", &p));
        assert_eq!(napi_prefix("tap"), "napi/tap");
    }
}
