//! The eBPF data plane from userspace: one loaded copy of the BPF object per
//! router ([`BpfRouter`]), its pins, its attachments and its maps.
//!
//! Layout under the node's `pin_dir` (bpffs):
//!
//! ```text
//! <pin_dir>/<router id>/XR_PORTS ... XR_MON_CPU    the maps (names of router-ebpf/src/maps.rs)
//! <pin_dir>/<router id>/links/<dev>_xdp            xr_xdp on a qr-/qg- device
//! <pin_dir>/<router id>/links/<dev>_tc             xr_tc on tcx ingress of a qr-/qg- device
//! <pin_dir>/<router id>/links/<tap>_pass           xr_pass on a tap peer (daemon's namespace)
//! ```
//!
//! Everything is pinned, so the data path keeps forwarding (and keeps its
//! connection table) while the daemon restarts; a new [`BpfRouter::load`]
//! reuses the pinned maps and [`BpfRouter::attach`] takes the pinned links
//! over, swapping in the new programs atomically (`bpf_link_update`).
//! Dropping a [`BpfRouter`] leaves all of that in place; only
//! [`BpfRouter::detach_and_unpin`] (or [`remove_pins`]) removes it.
//!
//! - `load.rs`: loading, map pins and their reuse.
//! - `attach.rs`: attaching the programs, link pins.
//! - `sync.rs`: the router's desired state into the maps.
//! - `neigh.rs`: the kernel neighbour table into `XR_NEIGH`.
//! - `flows.rs`: connection table (listing, expiry, flush) and counters.
//! - `monitor.rs`: the monitor's maps through their pins (`xrouter monitor`).
//! - `object.rs`: the embedded BPF object and a check that it loads.

mod attach;
mod carry;
mod flows;
pub mod gc;
mod load;
#[cfg(feature = "bpf-log")]
mod log;
pub mod monitor;
mod neigh;
pub mod object;
pub mod preload;
mod sync;
mod table;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    io,
    os::fd::AsFd as _,
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::Ebpf;
use nix::sched::{CloneFlags, setns};

pub use attach::Hook;
pub use flows::{Flow, Tuple, pinned, timeout_ns};
pub use load::{CT_MASK_GLOBAL, build_id, pins_fit};
pub use neigh::{PinnedNeighbours, dump_neighbours, watch as watch_neighbours, write_neighbours};
pub use sync::{Desired, bump_generation, desired, hint_of, resolve, write_maps};
pub use table::{CtTable, NotInserted};

/// What the kernel has of a router's BPF data path, read through its pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfState {
    /// The maps' contents.
    pub maps: Desired,
    /// The programs are attached where `hook` wants them, to the devices of
    /// now (see `attach::links_in_place`).
    pub in_place: bool,
}

/// A router's BPF state through its pins under `pin_dir` (None: it has no
/// usable pins). `devices`: (name, ifindex) of its ports in its namespace;
/// `taps`: of their peers in the node namespace. In place only when the
/// programs are attached there and the pins are this build's, sized for
/// `ct_connections` ([`pins_fit`]).
pub fn observe(
    pin_dir: &Path,
    router_id: &str,
    devices: &[(String, u32)],
    taps: &[(String, u32)],
    hook: Hook,
    ct_connections: u32,
) -> Option<BpfState> {
    let dir = router_dir(pin_dir, router_id).ok()?;
    let maps = sync::read_pinned(pin_dir, router_id).ok()?;
    Some(BpfState {
        maps,
        in_place: attach::links_in_place(&dir.join(LINKS_DIR), devices, taps, hook)
            && pins_fit(pin_dir, router_id, ct_connections),
    })
}

/// Port range for gateway SNAT when the node config does not give one.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (1024, 65535);

/// Map names: the contract with `router-ebpf/src/maps.rs`.
pub const XR_PORTS: &str = "XR_PORTS";
pub const XR_PORT_SLOTS: &str = "XR_PORT_SLOTS";
pub const XR_LOCAL: &str = "XR_LOCAL";
/// Which addresses are surely not in `XR_LOCAL`, and not in `XR_FIP` (`LocalHint`).
pub const XR_LOCAL_HINT: &str = "XR_LOCAL_HINT";
pub const XR_ROUTES: &str = "XR_ROUTES";
pub const XR_NEIGH: &str = "XR_NEIGH";
/// Per CPU, the next hops XDP sent to (`NeighUsed`).
pub const XR_NEIGH_USED: &str = "XR_NEIGH_USED";
/// Per CPU, recent destinations' routes (`DstRoute`).
pub const XR_DST_CACHE: &str = "XR_DST_CACHE";
pub const XR_FIP: &str = "XR_FIP";
pub const XR_FIP_REV: &str = "XR_FIP_REV";
pub const XR_CONFIG: &str = "XR_CONFIG";
/// The generation of the maps a route depends on (`sync::bump_generation`).
pub const XR_GEN: &str = "XR_GEN";
/// The build of the object the pinned maps were last loaded with
/// ([`load::build_id`]).
pub const XR_BUILD: &str = "XR_BUILD";
/// The connection table (`CtSlot`s, mmapable: [`CtTable`]).
pub const XR_CT: &str = "XR_CT";
/// The embryonic connections' table of earlier builds (an LRU hash): its
/// connections are carried into `XR_CT` and its pin removed.
pub const XR_CT_NEW_OLD: &str = "XR_CT_NEW";
/// Per CPU, the programs' scratch while they pick a slot of `XR_CT`.
pub const XR_CT_CLAIM: &str = "XR_CT_CLAIM";
pub const XR_COUNTERS: &str = "XR_COUNTERS";
pub const XR_FRAG: &str = "XR_FRAG";
pub const XR_RATE: &str = "XR_RATE";
pub const XR_CT_EVENTS: &str = "XR_CT_EVENTS";
/// `xrouter monitor`: its switch, its ring of events, its per-CPU state.
pub const XR_MON_CTL: &str = "XR_MON_CTL";
pub const XR_MON_RING: &str = "XR_MON_RING";
pub const XR_MON_CPU: &str = "XR_MON_CPU";

/// Every map of the object, in the order they are pinned.
pub const MAP_NAMES: [&str; 22] = [
    XR_PORTS,
    XR_PORT_SLOTS,
    XR_LOCAL,
    XR_LOCAL_HINT,
    XR_ROUTES,
    XR_NEIGH,
    XR_NEIGH_USED,
    XR_DST_CACHE,
    XR_FIP,
    XR_FIP_REV,
    XR_CONFIG,
    XR_GEN,
    XR_BUILD,
    XR_CT,
    XR_CT_CLAIM,
    XR_COUNTERS,
    XR_FRAG,
    XR_RATE,
    XR_CT_EVENTS,
    XR_MON_CTL,
    XR_MON_RING,
    XR_MON_CPU,
];

/// Program names of the object.
pub const PROG_XDP: &str = "xr_xdp";
pub const PROG_TC: &str = "xr_tc";
pub const PROG_PASS: &str = "xr_pass";
/// TC egress of the router's ports: the router's own ICMP errors.
pub const PROG_TC_OUT: &str = "xr_tc_out";

/// Sub-directory of a router's pin directory that holds its link pins.
pub const LINKS_DIR: &str = "links";

/// One router's loaded BPF object: its maps (pinned), its programs and the
/// links attaching them.
///
/// Not thread-safe by itself (`&mut self` for anything that changes maps or
/// links); the daemon keeps one per router in eBPF mode.
pub struct BpfRouter {
    router_id: String,
    /// `<pin_dir>/<router id>`.
    dir: PathBuf,
    ebpf: Ebpf,
    /// Links this instance holds, by pin name (`<dev>_xdp`, `<dev>_tc`,
    /// `<tap>_pass`).
    links: BTreeMap<String, attach::HeldLink>,
    /// Maps taken over from pins of an earlier run.
    reused: Vec<String>,
    /// Gateway SNAT port range (inclusive, host order).
    snat_ports: (u16, u16),
    /// Devices without native XDP: TC alone serves them (generic XDP
    /// would cost more than it saves). Pin names of their XDP links.
    tc_only: std::collections::BTreeSet<String>,
    /// Forwards the programs' debug log lines (`bpf-log` builds only).
    #[cfg(feature = "bpf-log")]
    _log: Option<log::Forwarder>,
}

impl BpfRouter {
    /// The router this object belongs to.
    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    /// `<pin_dir>/<router id>`: where the maps and links are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// Names of the maps that were reused from pins of an earlier run (their
    /// contents, e.g. the connection table, survived).
    pub fn reused_maps(&self) -> &[String] {
        &self.reused
    }

    /// The links held, as (pin name, ifindex), sorted by pin name.
    pub fn links(&self) -> Vec<(String, u32)> {
        self.links
            .iter()
            .map(|(k, l)| (k.clone(), l.ifindex))
            .collect()
    }

    /// The loaded object itself (e.g. for `TestRun` of its programs).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Sets the gateway SNAT port range written by the next [`Self::sync`]
    /// (default [`DEFAULT_SNAT_PORTS`]).
    pub fn set_snat_ports(&mut self, min: u16, max: u16) -> Result<()> {
        if min == 0 || min > max {
            bail!("bad SNAT port range {min}-{max}");
        }
        self.snat_ports = (min, max);
        Ok(())
    }

    /// Detaches every program this instance attached (or took over), removes
    /// all of the router's pins (maps and links, including stale ones of
    /// earlier runs) and unloads the object.
    pub fn detach_and_unpin(mut self) -> Result<()> {
        let links = std::mem::take(&mut self.links);
        let mut first_err = None;
        for (name, link) in links {
            if let Err(e) = link.release() {
                tracing::warn!("router {}: detaching {name}: {e:#}", self.router_id);
                first_err.get_or_insert(e);
            }
        }
        let BpfRouter { dir, ebpf, .. } = self;
        drop(ebpf);
        remove_dir(&dir)?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Removes a router's pin directory (`<pin_dir>/<router id>`) recursively:
/// its maps, and its links, which detaches their programs. For cleanup when
/// the object is not loaded; nothing to do when the directory is absent.
pub fn remove_pins(pin_dir: &Path, router_id: &str) -> Result<()> {
    remove_dir(&router_dir(pin_dir, router_id)?)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// `<pin_dir>/<router id>`, refusing IDs that are not one plain path
/// component (so cleanup can never remove more than one router's pins).
fn router_dir(pin_dir: &Path, router_id: &str) -> Result<PathBuf> {
    let mut comps = Path::new(router_id).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(c)), None) if c == router_id => Ok(pin_dir.join(router_id)),
        _ => bail!("router id {router_id:?} cannot name a pin directory"),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which
/// stamps the connection table.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out pointer.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `f` on a scoped thread that joined network namespace `ns`, so `f`
/// may borrow from the caller (unlike [`crate::backend::netns::run_in`]). Device
/// names and ifindexes (BPF link creation included) resolve in `ns` there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = crate::backend::netns::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Removes a file, treating "already gone" as success.
fn remove_file_if_present(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

// The daemon moves routers between tasks and threads.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<BpfRouter>();
};

/// What a router's pinned configuration maps hold (ports, local addresses,
/// routes, floating IPs, config), read-only: for `xrouter explain`, which
/// copies them into a private instance of the programs.
pub fn read_pinned_maps(pin_dir: &Path, router_id: &str) -> Result<Desired> {
    router_dir(pin_dir, router_id)?;
    sync::read_pinned(pin_dir, router_id)
}
