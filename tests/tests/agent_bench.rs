//! Figures of agent mode (not tests: `cargo xtask bench --agent` runs them,
//! `--ignored`, one at a time): how soon a new floating IP carries its
//! first packet after `routers_updated`, and how long a full sync of 100
//! routers with 10,000 floating IPs takes, cold and after an agent
//! restart, on every data plane. Nothing here asserts a duration.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Dataplane, PortSpec, Rig, RouterSpec, article::*, wait_until};

const PLANES: [Dataplane; 3] = [Dataplane::Iptables, Dataplane::Xdp, Dataplane::Tc];

fn active_count(rig: &Rig) -> usize {
    let mut m = serde_json::Map::new();
    for c in rig.server().calls("update_floatingip_statuses") {
        if let Some(s) = c["args"]["fip_statuses"].as_object() {
            m.extend(s.clone());
        }
    }
    m.values().filter(|v| *v == "ACTIVE").count()
}

/// The time (epoch seconds) of the first reply in `ping -D` output.
fn first_reply(out: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.contains("bytes from"))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(']').next())
        .and_then(|t| t.parse().ok())
}

#[test]
#[ignore = "benchmark: cargo xtask bench --agent"]
fn new_fip_first_packet() {
    println!(
        "\nrouters_updated -> first packet through a new floating IP (ping every 10 ms from outside)"
    );
    println!(
        "{:<9} {:>12} {:>14}",
        "plane", "first reply", "sync_routers"
    );
    for plane in PLANES {
        let mut samples = Vec::new();
        let mut rig = Rig::new(plane);
        rig.start_agent();
        let host = rig.agent_host();
        let id = rig.router().id.clone();
        assert!(wait_until(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || active_count(&rig) == 1
        ));
        rig.article_hosts(&[]);
        for round in 0..5u8 {
            // One floating IP per fixed IP: the last round's goes.
            if round > 0 {
                let old = format!("192.168.1.{}", 119 + round);
                rig.router_mut().remove_fip(&old);
            }
            let fip = format!("192.168.1.{}", 120 + round);
            rig.router_mut().add_fip(&fip, VM1);
            rig.serve_routers();
            let syncs = rig.server().calls("sync_routers").len();
            let ext = rig.ns("ext");
            let pinger = std::thread::spawn(move || {
                tests::cmd::exec(
                    &ext,
                    "ping",
                    &["-n", "-D", "-i", "0.01", "-c", "1", "-w", "20", &fip],
                    Duration::from_secs(25),
                )
                .map(|o| o.stdout)
                .unwrap_or_default()
            });
            std::thread::sleep(Duration::from_millis(200));
            let out = rig.server().notify(&["routers_updated", &host, &id]);
            let sent = out
                .stdout
                .lines()
                .find_map(|l| serde_json::from_str::<Value>(l).ok()?["sent"].as_f64())
                .expect("notify.py prints when it sent");
            let first = first_reply(&pinger.join().unwrap());
            let sync_t = rig
                .server()
                .calls("sync_routers")
                .get(syncs)
                .and_then(|c| c["t"].as_f64());
            if let (Some(f), Some(s)) = (first, sync_t) {
                samples.push(((f - sent) * 1000.0, (s - sent) * 1000.0));
            }
        }
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (med, sync) = samples
            .get(samples.len() / 2)
            .copied()
            .unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{:<9} {:>9.0} ms {:>11.0} ms   (median of {}; all: {:?})",
            plane.to_string(),
            med,
            sync,
            samples.len(),
            samples.iter().map(|s| s.0.round()).collect::<Vec<_>>()
        );
    }
}

/// 100 routers, each with a gateway on one big external network, one
/// internal network and 100 floating IPs.
fn big_rig(plane: Dataplane) -> Rig {
    let mut rig = Rig::new(plane);
    rig.send_garp = false;
    rig.routers.clear();
    let big = rig.add_network("big", "100.64.0.0/16", Some("100.64.0.1"));
    for i in 0..100u32 {
        let (a, b) = (100 + i / 250, i % 250);
        let gw = format!("10.{a}.{b}.1");
        let net = rig.add_network(&format!("n{i}"), &format!("10.{a}.{b}.0/24"), Some(&gw));
        let mut r = RouterSpec::empty(&rig.tag);
        r.gateway = Some(PortSpec::new(&big, &format!("100.64.0.{}", 10 + i)));
        r.interfaces.push(PortSpec::new(&net, &gw));
        for j in 0..100u32 {
            r.add_fip(
                &format!("100.64.{}.{}", 1 + i, 10 + j),
                &format!("10.{a}.{b}.{}", 10 + j),
            );
        }
        rig.routers.push(r);
    }
    rig
}

#[test]
#[ignore = "benchmark: cargo xtask bench --agent"]
fn full_sync_100_routers_10k_fips() {
    println!(
        "\nfull sync of 100 routers with 10,000 floating IPs (until the server has every one ACTIVE)"
    );
    println!("{:<9} {:>10} {:>16}", "plane", "cold", "agent restart");
    for plane in PLANES {
        let mut rig = big_rig(plane);
        let t0 = Instant::now();
        rig.start_agent();
        let ok = wait_until(Duration::from_secs(900), Duration::from_millis(100), || {
            active_count(&rig) == 10_000
        });
        let cold = t0.elapsed();
        assert!(
            ok,
            "cold sync did not finish: {} ACTIVE",
            active_count(&rig)
        );
        rig.stop_daemon();
        let before = rig.server().calls("update_floatingip_statuses").len();
        let t1 = Instant::now();
        rig.start_agent();
        // A restarted agent reports every status anew, once applied.
        let ok = wait_until(Duration::from_secs(900), Duration::from_millis(100), || {
            let calls = rig.server().calls("update_floatingip_statuses");
            calls
                .iter()
                .skip(before)
                .filter_map(|c| c["args"]["fip_statuses"].as_object().map(|m| m.len()))
                .sum::<usize>()
                >= 10_000
        });
        let warm = t1.elapsed();
        assert!(ok, "resync after restart did not finish");
        println!(
            "{:<9} {:>8.1} s {:>14.1} s",
            plane.to_string(),
            cold.as_secs_f64(),
            warm.as_secs_f64()
        );
    }
}
