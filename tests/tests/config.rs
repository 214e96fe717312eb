//! Invalid routers files: `xrouter check` and `xrouter reload` reject them
//! with a message naming the router, the field and the value, and a failed
//! reload leaves the running state in force.

use serde_json::{Value, json};
use tests::{
    Checks, Dataplane, Rig, RouterSpec, TcpServer, article::*, names, routers_json, sa,
    tcp_request, xrouter_check,
};

tests::planes!(reload_rejects_invalid_and_keeps_state);

/// One invalid file: its text and what the error message must contain.
struct Bad {
    what: &'static str,
    text: String,
    needles: Vec<String>,
}

/// The invalid variants of `router`'s file.
fn bad_files(router: &RouterSpec) -> Vec<Bad> {
    let id = router.id.clone();
    let base = routers_json(std::slice::from_ref(router));
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v[0]);
        serde_json::to_string_pretty(&v).unwrap()
    };
    let port0 = router.interfaces[0].id.clone();
    let mut dup = router.clone();
    for p in dup.interfaces.iter_mut().chain(dup.gateway.as_mut()) {
        p.id = names::uuid();
    }
    let dup_text = serde_json::to_string_pretty(&routers_json(&[router.clone(), dup])).unwrap();
    vec![
        Bad {
            what: "bad CIDR",
            text: edit(&|r| r["_interfaces"][0]["subnets"][0]["cidr"] = json!("81.1.180.0/33")),
            needles: vec![id.clone(), "cidr".into(), "81.1.180.0/33".into()],
        },
        Bad {
            what: "bad MAC",
            text: edit(&|r| r["_interfaces"][1]["mac_address"] = json!("fa:16:3e:zz:00:01")),
            needles: vec![id.clone(), "mac_address".into(), "fa:16:3e:zz:00:01".into()],
        },
        Bad {
            what: "floating IP outside the external subnet",
            text: edit(&|r| r["_floatingips"][0]["floating_ip_address"] = json!("10.99.0.4")),
            needles: vec![id.clone(), "floating_ip_address".into(), "10.99.0.4".into()],
        },
        Bad {
            what: "duplicate router IDs",
            text: dup_text,
            needles: vec![id.clone(), "duplicate".into()],
        },
        Bad {
            what: "port without fixed_ips",
            text: edit(&|r| r["_interfaces"][0]["fixed_ips"] = json!([])),
            needles: vec![id.clone(), "fixed_ips".into(), port0.clone()],
        },
        Bad {
            what: "unparseable JSON",
            text: serde_json::to_string_pretty(&base).unwrap()[..40].to_string(),
            needles: vec!["json".into()],
        },
    ]
}

fn names_all(stderr: &str, needles: &[String]) -> bool {
    let s = stderr.to_lowercase();
    needles.iter().all(|n| s.contains(&n.to_lowercase()))
}

/// `xrouter check` accepts the article's file and rejects each invalid one.
#[test]
fn check_rejects_invalid() {
    let tag = names::tag();
    let ext = tests::Network::new("ext", EXT, Some(EXT_GW));
    let net1 = tests::Network::new("net1", NET1, Some(QR1));
    let net2 = tests::Network::new("net2", NET2, Some(QR2));
    let router = RouterSpec::article(&tag, &ext, &net1, &net2);
    let mut c = Checks::new("check_rejects_invalid");
    let good = serde_json::to_string_pretty(&routers_json(std::slice::from_ref(&router))).unwrap();
    let out = xrouter_check(&good);
    c.ok(out.success(), "the article's file passes", out.describe());
    for bad in bad_files(&router) {
        let out = xrouter_check(&bad.text);
        println!("{}: {}", bad.what, out.stderr.trim());
        c.ok(
            !out.success() && !out.timed_out,
            &format!("{}: check fails", bad.what),
            out.describe(),
        );
        c.ok(
            names_all(&out.stderr, &bad.needles),
            &format!("{}: stderr names {:?}", bad.what, bad.needles),
            &out.stderr,
        );
    }
    c.finish();
}

/// A failed reload reports the error and leaves the old state forwarding.
fn reload_rejects_invalid_and_keeps_state(plane: Dataplane) {
    let mut rig = Rig::new(plane);
    rig.start();
    rig.vm("vm1", "net1", &format!("{VM1}/24"), QR1);
    rig.external("ext", &format!("{EXT_HOST}/24"), &[]);
    let _s = TcpServer::start(&rig.ns("ext"), "ext", 8080).unwrap();
    let mut c = Checks::new("reload_rejects_invalid_and_keeps_state");
    let show = rig.show();
    c.reply(
        "before: vm1 -> ext",
        tcp_request(&rig.ns("vm1"), sa(EXT_HOST, 8080)),
        "ext",
        QG,
    );
    for bad in bad_files(rig.router()) {
        let out = rig.reload_text(&bad.text);
        println!("{}: {}", bad.what, out.stderr.trim());
        c.ok(
            !out.success() && !out.timed_out,
            &format!("{}: reload fails", bad.what),
            out.describe(),
        );
        c.ok(
            names_all(&out.stderr, &bad.needles),
            &format!("{}: stderr names {:?}", bad.what, bad.needles),
            &out.stderr,
        );
        c.reply(
            &format!("{}: vm1 -> ext still works", bad.what),
            tcp_request(&rig.ns("vm1"), sa(EXT_HOST, 8080)),
            "ext",
            QG,
        );
        c.eq(
            &format!("{}: show --json unchanged", bad.what),
            rig.show(),
            show.clone(),
        );
    }
    c.ok(rig.daemon_alive(), "the daemon is still running", ());
    let out = rig.reload();
    c.ok(out.success(), "a valid file reloads again", out.describe());
    c.eq("show --json as before", rig.show(), show);
    c.finish();
}
