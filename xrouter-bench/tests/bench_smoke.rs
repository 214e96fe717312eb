//! `xrouter-bench` in its smallest configurations: one case (east-west on
//! the xdp and iptables planes of the direct rig; on the xdp plane of the
//! production rig; with the ceiling on the tc plane of the ovs rig), one
//! round, half a second, no sweep. Proves the rigs, the
//! generator, the sink and the outputs work; says nothing about speed.

mod common;

/// Runs xrouter-bench with `args` (plus --json and --svg), checks it
/// succeeded and left no namespace behind; returns the JSON, the SVG and
/// stdout.
fn bench(name: &str, args: &[&str]) -> (serde_json::Value, String, String) {
    let dir = std::env::temp_dir().join(format!("xrb-smoke-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    all.extend([
        "--json".as_ref(),
        json.as_os_str(),
        "--svg".as_ref(),
        svg.as_os_str(),
    ]);
    let (pid, stdout) = common::run_bench(&all);
    // The rig's names carry the bench's process id (4 hex digits).
    let tag = format!("{:04x}", pid & 0xffff);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let svg = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // Nothing of the rig is left.
    let left: Vec<String> = router_user::backend::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| {
            n.starts_with(&format!("xrb-{tag}")) || n.starts_with(&format!("qrouter-{tag}"))
        })
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    (v, svg, stdout)
}

/// The XDP plane forwarded the first sample's frames.
fn xdp_forwarded(v: &serde_json::Value) {
    forwarded(&v["samples"][0], "forwarded/xdp");
}

/// Sample `s` counted frames as `outcome` (the router's BPF counters).
fn forwarded(s: &serde_json::Value, outcome: &str) {
    let fwd = s["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o[0] == outcome)
        .and_then(|o| o[1].as_u64())
        .unwrap_or(0);
    assert!(fwd > 0, "no {outcome}: {s}");
}

const ONE_CASE: [&str; 8] = [
    "--cases",
    "east-west",
    "--rounds",
    "1",
    "--duration",
    "0.5",
    "--sweep",
    "0",
];

#[test]
fn bench_runs_one_case_and_writes_json_and_svg() {
    let mut args = vec!["--rig", "direct", "--planes", "xdp,iptables"];
    args.extend(ONE_CASE);
    let (v, svg, stdout) = bench("direct", &args);
    let r = &v["results"][0];
    assert_eq!(r["case"], "east-west", "{v}");
    assert_eq!(r["plane"], "xdp", "{v}");
    assert_eq!(r["rig"], "direct", "{v}");
    assert!(
        r.get("rig_error").is_some(),
        "each result says its rig error: {r}"
    );
    assert_eq!(v["options"]["cases"][0], "east-west", "{v}");
    assert!(
        r["mpps"]["median"].as_f64().unwrap() > 0.0,
        "nothing reached the sink: {v}"
    );
    xdp_forwarded(&v);
    // Every plane says where what did not arrive was dropped: flooded, the
    // loss is large, and the kernel's counters must account for most of it.
    for r in v["results"].as_array().unwrap() {
        let lost = r["lost"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&lost), "{r}");
        let explained: f64 = r["drops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[1].as_f64().unwrap())
            .sum();
        assert!(
            lost < 0.05 || explained >= lost / 2.0,
            "{} lost {lost} but the drop counters explain only {explained}: {r}",
            r["plane"]
        );
    }
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["plane"] == "iptables"),
        "{v}"
    );
    assert!(svg.contains("<svg"));
    assert!(stdout.contains("east-west"), "{stdout}");
}

/// The production rig: frames through a NIC stand-in and the network's
/// bridge as skbs to the router and out through the egress bridge; with
/// the router's programs' own run time.
#[test]
fn bench_runs_one_case_on_the_production_rig() {
    let mut args = vec!["--rig", "production", "--planes", "xdp", "--prog-stats"];
    args.extend(ONE_CASE);
    let (v, _, stdout) = bench("production", &args);
    // --prog-stats: the router's XDP program's own runs and time.
    let xdp = v["samples"][0]["progs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "xr_xdp")
        .cloned()
        .unwrap_or_else(|| panic!("no xr_xdp in the program statistics: {v}"));
    assert!(
        xdp["runs"].as_u64().unwrap() > 0 && xdp["ns"].as_u64().unwrap() > 0,
        "{xdp}"
    );
    assert!(
        stdout.contains("xr_xdp") && stdout.contains("ns a run"),
        "{stdout}"
    );
    let r = &v["results"][0];
    assert_eq!(
        (&r["case"], &r["rig"], &r["plane"]),
        (&"east-west".into(), &"production".into(), &"xdp".into()),
        "{v}"
    );
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        r["mpps"]["median"].as_f64().unwrap() > 0.0,
        "nothing reached the sink across the bridges: {v}"
    );
    xdp_forwarded(&v);
    assert!(stdout.contains("production"), "{stdout}");
}

/// The ovs rig: frames through a NIC stand-in and Open vSwitch's
/// integration bridge (userspace datapath) to the router's tap, plugged by
/// xrouter itself, and out the same way; its ceiling too. Nothing of the
/// switch is left.
#[test]
fn bench_runs_the_ceiling_and_one_case_on_the_ovs_rig() {
    let mut args = vec![
        "--rig",
        "ovs",
        "--planes",
        "tc",
        "--cases",
        "ceiling,east-west",
    ];
    // ONE_CASE without its own --cases.
    args.extend(&ONE_CASE[2..]);
    let (v, _, stdout) = bench("ovs", &args);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v}");
    for r in results {
        assert_eq!(r["rig"], "ovs", "{v}");
        assert!(
            r["mpps"]["median"].as_f64().unwrap() > 0.0,
            "nothing reached the sink through Open vSwitch: {r}"
        );
    }
    let routed = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["plane"] == "tc")
        .expect("a tc sample");
    forwarded(routed, "forwarded/tc");
    assert!(stdout.contains("ovs"), "{stdout}");
    let left = std::process::Command::new("pgrep")
        .args(["-f", "xrouter-bench-.*/ovs/"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "Open vSwitch daemons left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
