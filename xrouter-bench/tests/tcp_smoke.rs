//! `xrouter-bench --tcp` in its smallest configuration: the tc plane, one
//! stream, one round, one second per case (about 6 s in release, more in
//! debug). Proves the sandbox, iperf3's runs, the fast-path check and the
//! teardown work; says nothing about speed. Ignored by default: it needs
//! iperf3 and loads both cores for a few seconds. Run it with
//! `cargo test -p xrouter-bench --test tcp_smoke -- --ignored` (as root,
//! with xrouter built beside xrouter-bench).

use std::process::Command;

mod common;

#[test]
#[ignore = "needs iperf3 and two busy cores for a few seconds"]
fn tcp_bench_runs_the_three_cases_on_tc_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("xrbt-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tcp.json");
    let args: Vec<&std::ffi::OsStr> = [
        "--tcp",
        "--planes",
        "tc",
        "--streams",
        "1",
        "--duration",
        "1",
        "--rounds",
        "1",
        "--json",
    ]
    .iter()
    .map(|a| a.as_ref())
    .chain([json.as_os_str()])
    .collect();
    let (pid, stdout) = common::run_bench(&args);
    // The sandbox's names carry the bench's process id (4 hex digits).
    let tag = format!("xrbt-{:04x}", pid & 0xffff);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{stdout}");
    for r in runs {
        assert!(r["gbps"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(
            r["conntrack_nat"], 0,
            "the tc plane left NAT to the kernel: {r}"
        );
        let fwd = r["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o[0] == "forwarded/tc")
            .and_then(|o| o[1].as_u64())
            .unwrap_or(0);
        assert!(fwd > 0, "no packet forwarded by xr_tc: {r}");
    }
    // Nothing left behind.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(!left.contains(&tag), "namespaces left: {left}");
    let pins: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&tag))
                .collect()
        })
        .unwrap_or_default();
    assert!(pins.is_empty(), "pins left: {pins:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
