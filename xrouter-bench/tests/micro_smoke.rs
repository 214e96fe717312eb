//! `xrouter-bench --micro` in its smallest configuration (a table for 16k
//! connections, one case): new connections into a table with room.
//! Proves the case runs and checks what it claims; says nothing about
//! speed.

mod common;

/// Runs `--micro` with `case` alone and small tables; its JSON, and no
/// namespace of it left.
fn micro(case: &str) -> serde_json::Value {
    micro_with(case, &[])
}

/// [`micro`] with more variables set.
fn micro_with(case: &str, vars: &[(&str, &str)]) -> serde_json::Value {
    let tag = vars
        .iter()
        .map(|(k, v)| format!("-{k}{v}"))
        .collect::<String>();
    let dir = std::env::temp_dir().join(format!(
        "xrb-micro-smoke-{case}{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("micro.json");
    let (pid, _) = common::run_bench_with(
        &["--micro".as_ref(), "--json".as_ref(), json.as_os_str()],
        &[
            &[
                ("XRB_MICRO_CASE", case),
                ("XRB_MICRO_CONNTRACK_SIZE", "16384"),
            ][..],
            vars,
        ]
        .concat(),
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let left: Vec<String> = router_user::backend::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| *n == format!("xrb-micro-{pid}"))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let cold = v["ns_cold_read_32mib"]
        .as_f64()
        .expect("a cold read's cost");
    assert!(cold > 0.0, "{v}");
    v
}

#[test]
fn micro_measures_new_connections_into_a_table_with_room() {
    let v = micro("snat-new-room");
    let rows = v["microbenchmark"].as_array().unwrap();
    // One row per table state, each forwarded (and, checked by the bench
    // itself, with no connection evicted).
    assert_eq!(rows.len(), 2, "{v}");
    for r in rows {
        assert_eq!(r["path"], "snat-new-room", "{r}");
        assert_eq!(r["redirected"], true, "{r}");
        assert!(r["ns_per_packet"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(v["xr_ct_slots"], 65536, "{v}");
}

/// XRB_MICRO_WHOLE=1 measures the whole pipeline only: the stages are
/// not measured (null in the JSON), the packet's cost is.
#[test]
fn micro_whole_measures_the_pipeline_without_its_stages() {
    let v = micro_with("snat-new-room", &[("XRB_MICRO_WHOLE", "1")]);
    let rows = v["microbenchmark"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for r in rows {
        assert_eq!(r["redirected"], true, "{r}");
        assert!(r["ns_per_packet"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ns_empty_program"].as_f64().unwrap() > 0.0, "{r}");
        let stages = r["ns_per_stage"].as_object().unwrap();
        assert!(!stages.is_empty(), "{r}");
        assert!(stages.values().all(|s| s.is_null()), "{r}");
    }
}

#[test]
fn micro_refuses_unknown_cases_and_table_sizes_before_building_anything() {
    for (var, value, says) in [
        (
            "XRB_MICRO_CASE",
            "nonsense",
            "is no case (the cases: route-only,",
        ),
        (
            "XRB_MICRO_CONNTRACK_SIZE",
            "5",
            "is not a number of connections from 1024 to 16777216",
        ),
        (
            "XRB_MICRO_CONNTRACK_SIZE",
            "abc",
            "is not a number of connections",
        ),
        (
            "XRB_MICRO_WHOLE",
            "yes",
            "is neither 1 (the whole pipeline only) nor 0",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xrouter-bench"))
            .arg("--micro")
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} accepted");
        assert!(
            err.contains(&format!("{var}: \"{value}\" {says}")),
            "{var}={value}: {err}"
        );
    }
}
