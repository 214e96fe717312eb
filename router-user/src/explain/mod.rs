//! `xrouter explain`: what a router's eBPF data path does with one packet,
//! stage by stage, found by running the router's own programs on it
//! (BPF_PROG_TEST_RUN) against private copies of its maps — never its live
//! connection table or counters.
//!
//! - `spec.rs`: the packet spec (`tcp A:P -> B:Q [flags S]`) and `--hex`;
//! - `frame.rs`: frames built and read back, checksums recomputed;
//! - `sandbox.rs`: the private instance and what is copied into it;
//! - `run.rs`: the test runs and what they show;
//! - `report.rs`: the stages reconstructed, as text or JSON;
//! - `tags.rs`: whether the attached programs are this build.
//!
//! Why copies rather than the live maps: a test run executes the program
//! for real, so on the live maps it would create connections, claim SNAT
//! ports and move counters. Why the router's stages are reconstructed
//! rather than traced: the data path has no trace hook, and the programs'
//! effects (return code, counter, table entries, rewritten frame) pin down
//! every stage but the route, which is looked up in the same map here.

pub mod frame;
pub mod kernel_neigh;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod spec;
pub mod tags;

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result, bail};
use router_common::conntrack::{CtKey, FragKey};

use crate::{
    backend::{bpf, netns},
    config::node::{Dataplane, NodeConfig},
    model::{Role, Router},
    state::State,
    text,
};

/// The packet asked about.
#[derive(Clone, Debug)]
pub enum Packet {
    /// A spec, parsed.
    Spec(spec::Spec),
    /// A whole Ethernet frame.
    Frame(Vec<u8>),
}

impl Packet {
    /// From the command line: a spec, or with `hex` a frame in hex.
    pub fn parse(text: &str, hex: bool) -> Result<Packet> {
        if hex {
            spec::parse_hex(text)
                .map(Packet::Frame)
                .map_err(|e| anyhow::anyhow!("bad --hex frame: {e}"))
        } else {
            spec::parse(text)
                .map(Packet::Spec)
                .map_err(|e| anyhow::anyhow!("bad packet spec: {e}"))
        }
    }
}

/// Which programs see a packet arriving on a port: `xr_xdp` then `xr_tc`
/// when XDP hands it up, or `xr_tc` alone; from the link pins.
fn hooks_at(pin_dir: &Path, router_id: &str, dev: &str) -> Result<bool> {
    let links = pin_dir.join(router_id).join(bpf::LINKS_DIR);
    let xdp = links.join(format!("{dev}_xdp")).exists();
    if !xdp && !links.join(format!("{dev}_tc")).exists() {
        bail!(
            "no program is attached to {dev} (no link pinned under {}): has the daemon applied router {router_id}?",
            links.display()
        );
    }
    Ok(xdp)
}

pub(crate) fn find_router<'a>(state: &'a State, id: &str) -> Result<&'a Router> {
    if let Some(r) = state.routers.iter().find(|r| r.id == id) {
        return Ok(r);
    }
    // A unique prefix (`xrouter monitor` prints the first 8 characters).
    let by_prefix: Vec<&Router> = state
        .routers
        .iter()
        .filter(|r| !id.is_empty() && r.id.starts_with(id))
        .collect();
    match by_prefix[..] {
        [r] => return Ok(r),
        [_, _, ..] => bail!(
            "{} is the start of more than one router's ID: {}",
            text::quote(id),
            by_prefix
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        [] => {}
    }
    if state.failure(id).is_some() {
        bail!(
            "router {} was never applied (its apply failed; see `xrouter show`)",
            text::label(id)
        );
    }
    let known: Vec<&str> = state.routers.iter().map(|r| r.id.as_str()).collect();
    bail!(
        "no router {} (routers: {})",
        text::quote(id),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// The connection entries and fragment record a packet can meet.
fn seed_of(frame: &[u8]) -> sandbox::Seed {
    let mut seed = sandbox::Seed::default();
    let Some(ip) = frame::read(frame).ok().and_then(|h| h.ip) else {
        return seed;
    };
    if ip.fragment {
        seed.frag = Some(FragKey {
            src: ip.src.octets(),
            dst: ip.dst.octets(),
            id: ip.id.to_be(),
            proto: ip.proto,
            _pad: 0,
        });
    }
    seed.ct_keys.push(report::packet_key(&ip));
    // An ICMP error is matched through the connection it quotes, by the
    // reverse of the quoted tuple.
    if let Some((s, d, sp, dp, proto)) = ip.quoted {
        seed.ct_keys.push(CtKey::new(
            d.octets(),
            s.octets(),
            dp.to_be(),
            sp.to_be(),
            proto,
        ));
    }
    seed
}

/// Whether the programs attached to `dev` are this binary's (None: their
/// tags could not be read), and a note when they are not.
fn same_build(
    sb: &sandbox::Sandbox,
    links: &Path,
    dev: &str,
    xdp: bool,
) -> (Option<bool>, Vec<String>) {
    let mut progs = vec![(bpf::PROG_TC, "tc")];
    if xdp {
        progs.insert(0, (bpf::PROG_XDP, "xdp"));
    }
    let mut same = Some(true);
    let mut notes = Vec::new();
    for (prog, suffix) in progs {
        match (
            tags::of_link(&links.join(format!("{dev}_{suffix}"))),
            sb.tag(prog),
        ) {
            (Some(live), Some(here)) if live != here => {
                same = Some(false);
                notes.push(format!(
                    "the {prog} attached to {dev} is another build (tag {}) than this binary's (tag {}): \
                     this is what this build's programs do; run the daemon's own binary to explain its",
                    tags::hex(&live),
                    tags::hex(&here)
                ));
            }
            (Some(_), Some(_)) => {}
            _ => same = None,
        }
    }
    (same, notes)
}

/// The port of `router` that `name` names: its device (`qr-`/`qg-`), a
/// unique start of it, or a unique start of the port's ID.
fn find_port<'a>(router: &'a Router, name: &str) -> Result<&'a crate::model::Port> {
    if let Some(p) = router.ports().find(|p| p.device() == name) {
        return Ok(p);
    }
    let starts: Vec<&crate::model::Port> = router
        .ports()
        .filter(|p| !name.is_empty() && (p.device().starts_with(name) || p.id.starts_with(name)))
        .collect();
    let devices = |ports: &[&crate::model::Port]| {
        ports
            .iter()
            .map(|p| p.device())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match starts[..] {
        [p] => Ok(p),
        [_, _, ..] => bail!(
            "{} is the start of more than one port of router {}: {}",
            text::quote(name),
            router.id,
            devices(&starts)
        ),
        [] => bail!(
            "router {} has no port {} (its ports: {})",
            router.id,
            text::quote(name),
            devices(&router.ports().collect::<Vec<_>>())
        ),
    }
}

/// Explains what router `router_id` does with `packet` arriving on port
/// device `port`: the report as text, or JSON.
pub fn explain(
    state: &State,
    node: &NodeConfig,
    router_id: &str,
    port: &str,
    packet: &Packet,
    json: bool,
) -> Result<String> {
    let plane = match state.dataplane {
        Some(Dataplane::Xdp) => "xdp",
        Some(Dataplane::Tc) => "tc",
        Some(d) => bail!(
            "the data plane is {d}: explain runs the eBPF programs on a packet and needs the xdp or tc plane \
             (the kernel's own tools trace the iptables plane: `ip netns exec qrouter-ID iptables -t raw -j TRACE ...`)"
        ),
        None => bail!("{}", crate::show::no_state(node)),
    };
    let router = find_router(state, router_id)?;
    let in_port = find_port(router, port)?;
    let dev = in_port.device();
    let port = dev.as_str();
    let ns = router.namespace();
    if !netns::exists(&ns) {
        bail!("namespace {ns} of router {} is missing", router.id);
    }
    let xdp = hooks_at(&node.pin_dir, &router.id, port)?;
    let frame_in = match packet {
        Packet::Spec(s) => s.frame(in_port.mac.0),
        Packet::Frame(f) => f.clone(),
    };
    let devices: Vec<(String, Role, String)> = router
        .ports()
        .map(|p| (p.device(), p.role, p.mac.to_string()))
        .collect();
    let seed = seed_of(&frame_in);
    let pin_dir = &node.pin_dir;
    let rid = router.id.as_str();
    let frame_ref = frame_in.as_slice();
    let devs = &devices;
    // Ifindexes, the copy and the runs: all inside the router's namespace,
    // where the kernel resolves the context's ifindex.
    let (ifx, maps, neigh, obs, (same_build, build_notes)) =
        netns::run_in(Some(&ns), move || -> Result<_> {
            let mut ifx = HashMap::new();
            for (dev, ..) in devs {
                let i = nix::net::if_::if_nametoindex(dev.as_str()).with_context(|| {
                    format!(
                        "device {dev} not found in {}",
                        crate::model::namespace_of(rid)
                    )
                })?;
                ifx.insert(dev.clone(), i);
            }
            let live = sandbox::Live::open(pin_dir, rid)
                .with_context(|| format!("reading router {rid}'s pinned maps"))?;
            let mut sb = sandbox::Sandbox::new(&live, xdp)?;
            let same = same_build(&sb, &pin_dir.join(rid).join(bpf::LINKS_DIR), port, xdp);
            let obs = run::observe(&mut sb, &live, seed, xdp, ifx[port], frame_ref)?;
            Ok((ifx, live.maps, live.neigh, obs, same))
        })??;
    let view = |(dev, role, mac): &(String, Role, String)| report::PortView {
        device: dev.clone(),
        ifindex: ifx.get(dev).copied().unwrap_or(0),
        role: match role {
            Role::Internal => "internal",
            Role::Gateway => "gateway",
        }
        .into(),
        mac: mac.clone(),
    };
    let ports: Vec<report::PortView> = devices.iter().map(view).collect();
    let ingress = ports
        .iter()
        .find(|p| p.device == port)
        .cloned()
        .expect("the ingress port is one of the router's");
    let ctx = report::Context {
        router: &router.id,
        plane,
        ingress,
        ports,
        maps: &maps,
        neigh: &neigh,
        frame_in: &frame_in,
        same_build,
        notes: build_notes,
    };
    let r = report::build(&ctx, &obs);
    Ok(if json {
        serde_json::to_string_pretty(&r)? + "\n"
    } else {
        report::text(&r)
    })
}
