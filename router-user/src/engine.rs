//! The engine: for each router, observe (the backends read the kernel) →
//! plan (pure: [`crate::plan`]) → execute (the backends carry each action
//! out), and record the router as applied only when every action
//! succeeded. A router whose apply failed keeps its previous record and is
//! remembered with everything it may have put in place, so the next pass
//! retries it and a later release still flushes its connections.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    backend::{
        bpf::{self as ebpf, BpfRouter, DEFAULT_SNAT_PORTS, Hook},
        conntrack, ethtool, garp, iptables,
        netlink::Nl,
        netns, nft, ovs,
    },
    config::node::{Dataplane, InterfaceDriver, NodeConfig},
    desired::{DesiredRouter, NatAddresses, Plane, desired},
    model::Router,
    plan::{Action, Dev, History, HostDev, Observed, RouteId, plan},
    state::{Failed, State},
};

/// What one apply did, for logs and for `reload`'s answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub items: Vec<String>,
}

impl Changes {
    fn note(&mut self, what: impl Into<String>) {
        self.items.push(what.into());
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A router that the last apply could not bring to its desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub router: String,
    /// A removal (the router left the file) rather than an apply.
    pub removal: bool,
    /// It had never been applied: nothing of it is recorded as applied.
    pub new: bool,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = crate::text::label(&self.router);
        if self.removal {
            write!(
                f,
                "router {id}: removal failed, it stays recorded and is retried: {}",
                self.error
            )
        } else if self.new {
            write!(
                f,
                "router {id}: apply failed; it is new, so it is not recorded as applied (retried at the next resync): {}",
                self.error
            )
        } else {
            write!(
                f,
                "router {id}: apply failed, it keeps its previous state (retried at the next resync): {}",
                self.error
            )
        }
    }
}

/// What a finished pass of the connection GC did.
#[derive(Clone, Copy, Debug)]
pub struct GcSummary {
    pub started: std::time::Instant,
    /// From start to end, and the part of it spent working (slices).
    pub took: Duration,
    pub busy: Duration,
    /// Entries read, and entries deleted (two per connection).
    pub scanned: u64,
    pub deleted: u64,
}

/// What one apply did: the changes, and the routers it could not apply
/// (the others are applied and recorded).
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Changes,
    pub failures: Vec<Failure>,
    /// Routers the routers file holds.
    pub routers: usize,
}

impl Applied {
    /// What `reload` answers and the logs say: the changes; or, when some
    /// routers failed, which, what became of the others, and a line per
    /// failed router with what it keeps and why it failed.
    pub fn report(&self) -> String {
        if self.failures.is_empty() {
            return summary(&self.changes);
        }
        let failed = match self.failures.as_slice() {
            [f] => format!("router {} failed", crate::text::label(&f.router)),
            fs => format!("{} routers failed", fs.len()),
        };
        // A removal that failed is of a router the file no longer has.
        let in_file = self.failures.iter().filter(|f| !f.removal).count();
        let applied = self.routers.saturating_sub(in_file);
        let other = if in_file > 0 { "other " } else { "" };
        let rest = match applied {
            0 => format!("the file holds no {other}router"),
            1 => format!("the {other}router of the file is applied"),
            n => format!("the {other}{n} routers of the file are applied"),
        };
        let mut out = format!("{failed}; {rest} ({}):", changes(self.changes.len()));
        for f in &self.failures {
            out.push_str(&format!("\n  {f}"));
        }
        out
    }
}

/// One line for a log: the counts, not each change (each was logged as it
/// was made).
pub fn summary_line(a: &Applied) -> String {
    let mut out = changes(a.changes.len());
    if !a.failures.is_empty() {
        out.push_str(&format!(
            ", {} failed",
            crate::text::count(a.failures.len(), "router")
        ));
    }
    out
}

/// "no changes", "1 change", "2 changes".
fn changes(n: usize) -> String {
    crate::text::count(n, "change")
}

fn summary(ch: &Changes) -> String {
    if ch.is_empty() {
        "applied: no changes".to_string()
    } else {
        format!(
            "applied: {}\n  {}",
            changes(ch.len()),
            ch.items.join("\n  ")
        )
    }
}

/// The data plane of a resolved `dataplane` (never `auto`).
pub fn plane_of(d: Dataplane) -> Plane {
    match d {
        Dataplane::Xdp => Plane::Xdp,
        Dataplane::Tc => Plane::Tc,
        Dataplane::Iptables | Dataplane::Auto => Plane::Iptables,
    }
}

fn hook_of(p: Plane) -> Option<Hook> {
    match p {
        Plane::Xdp => Some(Hook::Xdp),
        Plane::Tc => Some(Hook::Tc),
        Plane::Iptables => None,
    }
}

/// What the kernel has of router `d` (the part the plan compares).
pub async fn observe(node: &NodeConfig, d: &DesiredRouter) -> Result<Observed> {
    let mut o = Observed::default();
    let host = Nl::open(None).await?;
    let host_links = host.links().await?;
    let name_of: HashMap<u32, &str> = host_links
        .iter()
        .map(|l| (l.index, l.name.as_str()))
        .collect();
    let mut host_index: HashMap<String, u32> = HashMap::new();
    for p in &d.ports {
        for name in [&p.tap, &p.bridge] {
            if let Some(l) = host_links.iter().find(|l| &l.name == name) {
                host_index.insert(name.clone(), l.index);
                o.host.insert(
                    name.clone(),
                    HostDev {
                        kind: l.kind.as_ref().map(|k| format!("{k:?}").to_lowercase()),
                        mtu: l.mtu,
                        up: l.up,
                        controller: l
                            .controller
                            .and_then(|c| name_of.get(&c).map(|n| n.to_string())),
                    },
                );
            }
        }
    }
    if d.driver == InterfaceDriver::OpenVSwitch {
        let taps: Vec<String> = d.ports.iter().map(|p| p.tap.clone()).collect();
        o.ovs = Some(ovs::observe(&node.ovsdb_connection, &taps)?);
    }
    let ns = d.namespace.as_str();
    if !netns::exists(ns) {
        return Ok(o);
    }
    o.namespace = true;
    let nl = Nl::open(Some(ns)).await?;
    let links = nl.links().await?;
    // Offloads matter only towards a userspace-datapath OVS bridge.
    let userspace = o.ovs.as_ref().is_some_and(|h| {
        d.ports
            .first()
            .is_some_and(|p| h.bridges.get(&p.bridge).is_some_and(|t| t == "netdev"))
    });
    for l in &links {
        o.ifindex.insert(l.name.clone(), l.index);
        if l.name == "lo" {
            o.lo_up = l.up;
        }
        if l.name.starts_with("qr-") || l.name.starts_with("qg-") {
            let addresses = nl
                .addresses(l.index)
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let tx_offload = if userspace {
                let name = l.name.clone();
                netns::run_in(Some(ns), move || {
                    ethtool::active(&name, &ethtool::CHECKSUM_AND_SEGMENTATION)
                })??
                .contains(&Some(true))
            } else {
                false
            };
            o.ports.insert(
                l.name.clone(),
                Dev {
                    mac: l.mac.clone(),
                    mtu: l.mtu,
                    up: l.up,
                    addresses,
                    tx_offload,
                },
            );
        }
    }
    let dev_of: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    for (k, _) in nl.static_routes().await? {
        o.routes.insert(RouteId {
            dst: k.dst,
            gateways: k.gateways,
            dev: k.oif.and_then(|i| dev_of.get(&i).map(|n| n.to_string())),
        });
    }
    o.iptables = iptables::read(ns)?;
    o.nft = nft::read(ns)?;
    let keys: Vec<&str> = d.sysctls.iter().map(|(k, _)| *k).collect();
    o.sysctls = netns::read_sysctls(ns, &keys)?;
    if let Some(hook) = hook_of(d.plane) {
        let devices: Vec<(String, u32)> = d
            .ports
            .iter()
            .filter_map(|p| Some((p.dev.clone(), *o.ifindex.get(&p.dev)?)))
            .collect();
        // Taps carry `xr_pass` only under XDP (see `apply_bpf`).
        let taps: Vec<(String, u32)> = if hook == Hook::Xdp {
            d.ports
                .iter()
                .filter_map(|p| Some((p.tap.clone(), *host_index.get(&p.tap)?)))
                .collect()
        } else {
            vec![]
        };
        o.bpf = ebpf::observe(
            &node.pin_dir,
            &d.id,
            &devices,
            &taps,
            hook,
            node.conntrack_size,
        )
        .map(|mut b| {
            // The taps must put VLAN tags into the frames (see `ethtool`).
            b.in_place &= taps.iter().all(|(t, _)| {
                ethtool::active(t, &ethtool::VLAN_TX_OFFLOADS)
                    .is_ok_and(|a| !a.contains(&Some(true)))
            });
            b
        });
    }
    Ok(o)
}

/// Gives those of `taps` that exist VLAN insertion in hardware again (the
/// veth default), which the XDP plane turns off; what was changed, in
/// words. Best effort: a tap that cannot have it keeps software insertion
/// (tagged frames are only slower), so a failure is logged, not fatal.
fn restore_vlan_insertion<'a>(taps: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut changed = Vec::new();
    for t in taps {
        match ethtool::enable(t, &ethtool::VLAN_TX_OFFLOADS) {
            Ok(true) => changed.push(format!("{t}: VLAN insertion back in hardware")),
            Ok(false) => {}
            // A tap of a port gone meanwhile: nothing to give back.
            Err(e) if ethtool::no_device(&e) => {}
            Err(e) => tracing::warn!("{t}: VLAN insertion stays in software: {e:#}"),
        }
    }
    changed
}

/// The applied state and the means to change it.
pub struct Engine {
    pub node: NodeConfig,
    pub state: State,
    /// The routers as their source last said (validated): what every apply
    /// and resync aims at, also for routers whose last apply failed.
    pub desired: Vec<Router>,
    /// Loaded BPF objects by router ID (eBPF data planes only).
    pub bpf: BTreeMap<String, BpfRouter>,
    /// Routers on record whose programs and maps an earlier run left in
    /// place and this one adopted without loading them (nothing changed):
    /// their pinned neighbour maps, mirrored all the same.
    adopted: BTreeMap<String, ebpf::PinnedNeighbours>,
    /// Neighbour event followers by router ID, with the inode of the
    /// namespace they listen in (a rebuilt namespace needs a new one).
    watchers: BTreeMap<String, (u64, tokio::task::JoinHandle<()>)>,
    /// New routers' BPF objects loading ahead of their apply.
    preloads: ebpf::preload::Preloads,
    /// Set when the daemon is asked to stop: a pass ends after the router
    /// it is applying, the others left as they were.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// The connection GC: the slice under way (it hands the pass back), or
    /// the pass between two slices.
    gc_task: Option<tokio::task::JoinHandle<ebpf::gc::GcPass>>,
    gc_pass: Option<ebpf::gc::GcPass>,
    /// What the last finished pass did.
    pub gc_last: Option<GcSummary>,
    /// Every router's metadata proxy.
    pub metadata: crate::metadata::Proxies,
    /// The last metadata listener error per router (logged once each).
    metadata_errors: BTreeMap<String, String>,
}

impl Engine {
    /// An engine on `dataplane` (resolved: not `auto`) following
    /// `routers_file` (None: routers come from Neutron over RPC), adopting
    /// what a previous run recorded.
    pub fn new(
        node: NodeConfig,
        dataplane: Dataplane,
        routers_file: Option<PathBuf>,
    ) -> Result<Engine> {
        let mut state = State::load(&node.state_file())?;
        let was_bpf = state.dataplane.is_some_and(|d| plane_of(d).is_bpf());
        if was_bpf && !plane_of(dataplane).is_bpf() {
            // Leaving eBPF: unpinning the links detaches the programs, so
            // the kernel alone forwards (and translates) from here on.
            for id in state.router_ids() {
                if let Err(e) = ebpf::remove_pins(&node.pin_dir, &id) {
                    tracing::warn!(router = %id, "router {id}: removing BPF pins: {e:#}");
                }
            }
            let taps: Vec<String> = state
                .routers
                .iter()
                .flat_map(|r| r.ports().map(|p| p.tap()))
                .collect();
            for n in restore_vlan_insertion(taps.iter().map(String::as_str)) {
                tracing::info!("{n}");
            }
            tracing::info!(
                "switched from {} to {dataplane}: BPF programs detached",
                state.dataplane.unwrap()
            );
        } else if let Some(was) = state.dataplane.filter(|&d| was_bpf && d != dataplane) {
            // Between the eBPF planes the programs stay; each router's
            // apply puts its ports' XDP programs on or takes them off.
            tracing::info!(
                "switching from {was} to {dataplane}: XDP programs {} the routers' ports as each is applied",
                if dataplane == Dataplane::Xdp {
                    "go onto"
                } else {
                    "come off"
                }
            );
        }
        state.dataplane = Some(dataplane);
        state.routers_file = routers_file;
        match node.driver() {
            InterfaceDriver::OpenVSwitch => tracing::info!(
                "plugging router ports into Open vSwitch bridge {} (ovsdb {})",
                node.ovs_integration_bridge,
                node.ovsdb_connection
            ),
            InterfaceDriver::LinuxBridge => {
                tracing::info!("plugging router ports into Linux bridges")
            }
        }
        crate::metrics::get().publish(&state);
        Ok(Engine {
            metadata: crate::metadata::Proxies::new(
                node.metadata.clone(),
                node.metadata_port,
                &node.state_dir,
            ),
            metadata_errors: BTreeMap::new(),
            node,
            desired: state.routers.clone(),
            state,
            bpf: BTreeMap::new(),
            adopted: BTreeMap::new(),
            watchers: BTreeMap::new(),
            preloads: Default::default(),
            stop: None,
            gc_task: None,
            gc_pass: None,
            gc_last: None,
        })
    }

    /// Serves the metadata of the routers recorded by the last run right
    /// away: the listeners it handed over (with the connections queued on
    /// them), new ones for the rest.
    pub fn resume_metadata(&mut self) {
        let ids = self.state.router_ids();
        self.metadata.resume(&ids);
        for id in &ids {
            if netns::exists(&crate::model::namespace_of(id)) {
                self.ensure_metadata(id);
            }
        }
    }

    /// Gives router `id` its metadata listener; a failure (the port taken
    /// by another program) is logged once, and retried at every pass.
    fn ensure_metadata(&mut self, id: &str) {
        match self.metadata.ensure(id) {
            Ok(()) => {
                if self.metadata_errors.remove(id).is_some() {
                    tracing::info!(router = %id, "router {id}: metadata proxy listening");
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if self.metadata_errors.get(id) != Some(&e) {
                    tracing::warn!(router = %id, "router {id}: {e} (VMs get no metadata; retried)");
                    self.metadata_errors.insert(id.to_string(), e);
                }
            }
        }
    }

    /// On stop: the metadata listeners go to a holder for the next run;
    /// the data plane stays as it is.
    pub async fn shutdown(&mut self) {
        // Loads ahead of routers a stopped pass did not get to: those of
        // routers never on record leave no pins (the others' `cleanup`
        // removes, or the next start uses).
        for id in self.preloads.drain().await {
            if self.state.applied(&id).is_none()
                && self.state.failure(&id).is_none()
                && let Err(e) = ebpf::remove_pins(&self.node.pin_dir, &id)
            {
                tracing::warn!(router = %id, "router {id}: removing BPF pins: {e:#}");
            }
        }
        self.metadata.hand_over().await;
    }

    /// Whether the daemon was asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Whether a pass with `left` routers still to apply ends here (the
    /// daemon was asked to stop): said in the log.
    pub fn stops_before(&self, left: usize) -> bool {
        let stop = self.stopping();
        if stop {
            tracing::info!(
                "stopping: {} of this pass left as they were",
                crate::text::count(left, "router")
            );
        }
        stop
    }

    /// Starts loading the BPF objects of those of `routers` that are new to
    /// the node (no pins) on other CPUs, in this order, for their applies
    /// to take (see [`ebpf::preload`]). Nothing on the iptables plane.
    pub fn preload(&mut self, routers: &[Router]) {
        let plane = self.plane();
        if !plane.is_bpf() {
            return;
        }
        let mut n = 0;
        for r in routers.iter().filter(|r| !self.bpf.contains_key(&r.id)) {
            let (dir, size) = (&self.node.pin_dir, self.node.conntrack_size);
            n += usize::from(self.preloads.start(&r.id, dir, size, plane == Plane::Xdp));
        }
        if n > 0 {
            tracing::info!(
                "loading ahead the BPF programs of {} with nothing pinned yet, {} at a time",
                crate::text::count(n, "router"),
                self.preloads.parallel()
            );
        }
    }

    pub fn plane(&self) -> Plane {
        plane_of(self.state.dataplane.unwrap_or(Dataplane::Iptables))
    }

    /// What `r` must be on this engine's data plane.
    pub fn desired_of(&self, r: &Router) -> DesiredRouter {
        desired(r, &self.node, self.plane(), DEFAULT_SNAT_PORTS)
    }

    /// What router `id` was (see [`history`]).
    pub fn history(&self, id: &str) -> History {
        history(&self.state, id)
    }

    /// The plan for `r` against the kernel as it is now.
    pub async fn plan(&self, r: &Router) -> Result<(DesiredRouter, Vec<Action>)> {
        let d = self.desired_of(r);
        let o = observe(&self.node, &d).await?;
        let actions = plan(&o, &d, &self.history(&r.id))?;
        Ok((d, actions))
    }

    /// Brings one router to its desired state: observe, plan, execute.
    /// `created`: the bridges made, also when a later action fails.
    async fn apply_router(
        &mut self,
        r: &Router,
        ch: &mut Changes,
        created: &mut Vec<String>,
    ) -> Result<()> {
        let (d, actions) = self.plan(r).await?;
        self.execute(&d, actions, ch, created).await
    }

    /// Carries `actions` out, in order; stops at the first that fails.
    /// `created`: bridges made (recorded for `cleanup`).
    async fn execute(
        &mut self,
        d: &DesiredRouter,
        actions: Vec<Action>,
        ch: &mut Changes,
        created: &mut Vec<String>,
    ) -> Result<()> {
        let ns = d.namespace.as_str();
        let host = Nl::open(None).await?;
        let mut nl = if netns::exists(ns) {
            Some(Nl::open(Some(ns)).await?)
        } else {
            None
        };
        let mut announce = Vec::new();
        for a in actions {
            let what = a.to_string();
            match a {
                Action::CreateNamespace => {
                    netns::create(ns)?;
                    let n = Nl::open(Some(ns)).await?;
                    let lo = index(&n, "lo").await?;
                    n.set_up(lo).await?;
                    nl = Some(n);
                    ch.note(format!("created namespace {ns}"));
                    continue;
                }
                Action::Announce { dev, mac, ip } => {
                    announce.push((dev, mac, ip));
                    continue;
                }
                Action::Bpf { flush } => {
                    let hook = hook_of(d.plane).context("BPF on the iptables plane")?;
                    self.apply_bpf(d, &flush, hook, ch)
                        .await
                        .context("eBPF data plane")?;
                    continue;
                }
                _ => {}
            }
            let n = nl
                .as_ref()
                .with_context(|| format!("namespace {ns} missing"))?;
            match a {
                Action::LoUp => n.set_up(index(n, "lo").await?).await?,
                Action::DeletePort(dev) => n.del_link(index(n, &dev).await?).await?,
                Action::CreateBridge(b) => {
                    host.add_bridge(&b).await?;
                    host.set_up(index(&host, &b).await?).await?;
                    created.push(b);
                }
                Action::DeleteTap(t) => host.del_link(index(&host, &t).await?).await?,
                Action::CreatePort { dev, tap } => {
                    host.add_veth(&dev, &tap).await?;
                    host.move_to(index(&host, &dev).await?, ns).await?;
                }
                Action::SetMac { dev, mac } => n.set_mac(index(n, &dev).await?, &mac.0).await?,
                Action::SetMtu { dev, mtu } => n.set_mtu(index(n, &dev).await?, mtu).await?,
                Action::SetUp { dev } => n.set_up(index(n, &dev).await?).await?,
                Action::SoftwareTx { dev } => {
                    netns::run_in(Some(ns), move || {
                        ethtool::disable(&dev, &ethtool::CHECKSUM_AND_SEGMENTATION)
                    })??;
                }
                Action::SetHostMtu { dev, mtu } => {
                    host.set_mtu(index(&host, &dev).await?, mtu).await?
                }
                Action::SetHostUp { dev } => host.set_up(index(&host, &dev).await?).await?,
                Action::Enslave { tap, bridge } => {
                    let b = index(&host, &bridge).await?;
                    host.set_controller(index(&host, &tap).await?, b).await?
                }
                Action::Release { tap, .. } => host.set_nomaster(index(&host, &tap).await?).await?,
                Action::OvsAddPort {
                    tap,
                    bridge,
                    external_ids,
                } => ovs::replace_port(&self.node.ovsdb_connection, &bridge, &tap, &external_ids)?,
                Action::OvsSetIds { tap, external_ids } => {
                    ovs::set_external_ids(&self.node.ovsdb_connection, &tap, &external_ids)?
                }
                Action::OvsDelPort(tap) => ovs::del_ports(&self.node.ovsdb_connection, &[tap])?,
                Action::DelAddress { dev, net } => {
                    let i = index(n, &dev).await?;
                    if let Some((_, msg)) =
                        n.addresses(i).await?.into_iter().find(|(a, _)| *a == net)
                    {
                        n.del_address(msg).await?;
                    }
                }
                Action::AddAddress { dev, net } => {
                    n.add_address(index(n, &dev).await?, net).await?
                }
                Action::DelRoute(id) => {
                    let links = n.links().await?;
                    let dev_of: HashMap<u32, &str> =
                        links.iter().map(|l| (l.index, l.name.as_str())).collect();
                    for (k, msg) in n.static_routes().await? {
                        let dev = k.oif.and_then(|i| dev_of.get(&i).map(|s| s.to_string()));
                        if k.dst == id.dst && k.gateways == id.gateways && dev == id.dev {
                            n.del_route(msg).await?;
                        }
                    }
                }
                Action::AddRoute(w) => {
                    let oif = match &w.dev {
                        Some(dev) => Some(index(n, dev).await?),
                        None => None,
                    };
                    // A next hop not reachable yet is not fatal (Neutron
                    // logs it too); the next pass tries again.
                    if let Err(e) = n.replace_route(&w, oif).await {
                        tracing::warn!("{e:#}");
                        continue;
                    }
                }
                Action::LoadIptables => iptables::load(ns, &d.iptables)?,
                Action::Nft(script) => nft::load(ns, &script)?,
                Action::NftClear => {
                    nft::clear(ns)?;
                }
                Action::Sysctl { key, value } => {
                    // A sysctl that does not exist yet (the conntrack one
                    // before the rules load conntrack) is set next pass.
                    if let Err(e) = netns::sysctl(ns, &key, &value) {
                        tracing::warn!("{e:#}");
                        continue;
                    }
                }
                Action::FlushConntrack(ips) => {
                    let k = conntrack::flush_ips(ns, &ips)?;
                    ch.note(format!(
                        "{ns}: flushed {k} kernel connection entries of {} released addresses",
                        ips.len()
                    ));
                    continue;
                }
                Action::CreateNamespace | Action::Announce { .. } | Action::Bpf { .. } => {
                    unreachable!("handled above")
                }
            }
            ch.note(format!("{ns}: {what}"));
        }
        if self.node.send_garp {
            for (dev, mac, ip) in announce {
                garp::announce(ns.to_string(), dev, mac, ip);
            }
        }
        Ok(())
    }

    /// Loads (or adopts) the router's BPF object, fills its maps, attaches
    /// it to the router's ports and their taps, follows the neighbours, and
    /// deletes the connections of `flush`.
    async fn apply_bpf(
        &mut self,
        d: &DesiredRouter,
        flush: &[Ipv4Addr],
        hook: Hook,
        ch: &mut Changes,
    ) -> Result<()> {
        let ns = d.namespace.as_str();
        if !self.bpf.contains_key(&d.id) {
            let b = match self.preloads.take(&d.id).await {
                Some(loaded) => loaded?,
                None => {
                    tracing::debug!(router = %d.id, "router {}: loading its BPF programs", d.id);
                    BpfRouter::load(&d.id, &self.node.pin_dir, self.node.conntrack_size)?
                }
            };
            ch.note(format!(
                "{ns}: BPF object loaded ({} pinned maps reused)",
                b.reused_maps().len()
            ));
            self.bpf.insert(d.id.clone(), b);
        }
        let b = self.bpf.get_mut(&d.id).expect("inserted above");
        let nl = Nl::open(Some(ns)).await?;
        let ifindex: HashMap<String, u32> = nl
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name, l.index))
            .collect();
        let maps = d.bpf.as_ref().context("no BPF maps wanted")?;
        let n = b
            .write(&ebpf::resolve(maps, &ifindex))
            .with_context(|| format!("router {}: writing BPF maps", d.id))?;
        if n > 0 {
            ch.note(format!("{ns}: {n} BPF map entries updated"));
        }
        let devices: Vec<(String, u32)> = d
            .ports
            .iter()
            .filter_map(|p| ifindex.get(&p.dev).map(|i| (p.dev.clone(), *i)))
            .collect();
        b.attach(ns, &devices, hook)?;
        // Only XDP needs the taps: a frame `xr_xdp` redirects into a veth
        // is dropped unless the peer has an XDP program, and XDP sees VLAN
        // tags only in the frame. Under TC the taps stay as they are (an
        // XDP program on a veth turns off TSO on its peer, the router's
        // port).
        let host = Nl::open(None).await?;
        let mut taps = Vec::new();
        for p in d.ports.iter().filter(|_| hook == Hook::Xdp) {
            if let Some(t) = host.link(&p.tap).await? {
                // A VLAN tag must reach the programs in the frame itself.
                if ethtool::disable(&t.name, &ethtool::VLAN_TX_OFFLOADS)? {
                    ch.note(format!("{}: VLAN insertion moved to software", t.name));
                }
                taps.push((t.name, t.index));
            }
        }
        b.attach_taps(&taps)?;
        if hook == Hook::Tc {
            // Taps an earlier run put on XDP get the veth default back.
            for n in restore_vlan_insertion(d.ports.iter().map(|p| p.tap.as_str())) {
                ch.note(n);
            }
        }
        // This build's programs are in place: a later daemon of the same
        // build and table size adopts them rather than loading again.
        b.record_build()?;
        b.sync_neighbours(ns).await?;
        self.adopted.remove(&d.id);
        self.watch_neighbours(&d.id, ns).await?;
        let b = self.bpf.get_mut(&d.id).expect("inserted above");
        if !flush.is_empty() {
            let n = b.flush_addresses(flush)?;
            ch.note(format!(
                "{ns}: {} released address(es): flushed {n} BPF connection entries \
                 (two per connection, one per direction)",
                flush.len()
            ));
        }
        Ok(())
    }

    /// Follows the neighbour events of router `id`'s namespace `ns` into
    /// its pinned `XR_NEIGH` (a watcher per namespace: started again if the
    /// namespace was made anew or the watcher ended).
    async fn watch_neighbours(&mut self, id: &str, ns: &str) -> Result<()> {
        let inode =
            std::fs::metadata(netns::path(ns)).map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        let fresh = self
            .watchers
            .get(id)
            .is_some_and(|(i, h)| *i == inode && !h.is_finished());
        if !fresh {
            let h = ebpf::watch_neighbours(ns, &self.node.pin_dir, id).await?;
            if let Some((_, old)) = self.watchers.insert(id.to_string(), (inode, h)) {
                old.abort();
            }
        }
        Ok(())
    }

    /// Mirrors the neighbours of the routers on record that this run did
    /// not load (adopted after a restart: their programs and maps were in
    /// place, and nothing about them changed): as for a loaded router, a
    /// sync now and a watcher of the namespace's neighbour events, so that
    /// a next hop's new MAC reaches XDP without the router changing first.
    async fn mirror_adopted(&mut self) {
        if !self.state.dataplane.is_some_and(|d| plane_of(d).is_bpf()) {
            return;
        }
        let ids = self.state.router_ids();
        self.adopted.retain(|id, _| ids.contains(id));
        for id in ids {
            if self.bpf.contains_key(&id) {
                self.adopted.remove(&id);
                continue;
            }
            let ns = crate::model::namespace_of(&id);
            if !netns::exists(&ns) {
                continue;
            }
            if !self.adopted.contains_key(&id) {
                // Only this build's programs, at this size, are adopted.
                if !ebpf::pins_fit(&self.node.pin_dir, &id, self.node.conntrack_size) {
                    continue;
                }
                match ebpf::PinnedNeighbours::open(&self.node.pin_dir, &id) {
                    Ok(p) => {
                        self.adopted.insert(id.clone(), p);
                    }
                    Err(e) => {
                        tracing::debug!(router = %id, "router {id}: neighbours: {e:#}");
                        continue;
                    }
                }
            }
            let p = self.adopted.get_mut(&id).expect("inserted above");
            if let Err(e) = p.sync(&ns).await {
                tracing::debug!(router = %id, "router {id}: neighbours: {e:#}");
            }
            if let Err(e) = self.watch_neighbours(&id, &ns).await {
                tracing::debug!(router = %id, "router {id}: neighbour events: {e:#}");
            }
        }
    }

    /// Removes router `id`: its ports (and so their taps), its namespace,
    /// its BPF objects.
    async fn remove_router(&mut self, id: &str, ch: &mut Changes) -> Result<()> {
        let mut errors = Vec::new();
        self.metadata.remove(id);
        self.metadata_errors.remove(id);
        if let Err(e) = remove_namespace(id, ch).await {
            errors.push(format!("{e:#}"));
        }
        // Its taps went with the namespace; their OVS ports go too.
        let router = self
            .state
            .applied(id)
            .or_else(|| self.state.failure(id).map(|f| &f.router));
        if let Some(r) = router
            && let Err(e) = remove_ovs_ports(&self.node, r, ch)
        {
            errors.push(format!("{e:#}"));
        }
        if let Some((_, h)) = self.watchers.remove(id) {
            h.abort();
        }
        self.adopted.remove(id);
        // A load ahead pins maps: let it end before the pins go.
        drop(self.preloads.take(id).await);
        let unpinned = match self.bpf.remove(id) {
            Some(b) => b.detach_and_unpin(),
            None => ebpf::remove_pins(&self.node.pin_dir, id),
        };
        if let Err(e) = unpinned {
            errors.push(format!("removing BPF objects: {e:#}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    /// Mirrors neighbour tables into the maps and runs a slice of the
    /// connection GC (every second).
    pub async fn tick(&mut self) {
        for (id, b) in self.bpf.iter_mut() {
            if let Err(e) = b.sync_neighbours(&crate::model::namespace_of(id)).await {
                tracing::debug!(router = %id, "router {id}: neighbours: {e:#}");
            }
            let dir = &self.node.state_dir;
            match b.clear_stale_monitor(|| crate::monitor::running(dir, id)) {
                Ok(true) => tracing::info!(
                    router = %id,
                    "router {id}: monitoring switched off (its monitor was killed)"
                ),
                Ok(false) => {}
                Err(e) => tracing::debug!(router = %id, "router {id}: monitor switch: {e:#}"),
            }
        }
        self.mirror_adopted().await;
        self.gc_step().await;
    }

    /// Runs the next slice of the connection GC ([`ebpf::gc`]) on a
    /// blocking thread, one at a time, never stalling reloads; starts a
    /// new pass when the last one is done and [`ebpf::gc::PERIOD`] has gone
    /// since it started.
    async fn gc_step(&mut self) {
        if let Some(t) = self.gc_task.take() {
            if !t.is_finished() {
                self.gc_task = Some(t);
                return;
            }
            match t.await {
                Ok(p) => self.gc_pass = Some(p),
                Err(e) => tracing::warn!("connection GC: {e}"),
            }
        }
        if let Some(p) = self.gc_pass.take_if(|p| p.is_done()) {
            let s = GcSummary {
                started: p.started,
                took: p.started.elapsed(),
                busy: p.busy,
                scanned: p.scanned,
                deleted: p.deleted,
            };
            tracing::debug!(
                "connection GC pass: {} entries read, {} deleted (with their other \
                 directions, wherever they were), in {:.1} s ({:.2} s working)",
                s.scanned,
                s.deleted,
                s.took.as_secs_f64(),
                s.busy.as_secs_f64()
            );
            self.gc_last = Some(s);
        }
        let pass = match self.gc_pass.take() {
            Some(p) => p,
            None if self
                .gc_last
                .is_some_and(|s| s.started.elapsed() < ebpf::gc::PERIOD) =>
            {
                return;
            }
            // Every router on record, not only those loaded by this run: a
            // restarted daemon adopts routers whose programs and maps are
            // in place without loading them, and their connections expire
            // all the same (the GC reads the pins; a router without any,
            // on the iptables plane, is passed over).
            None => ebpf::gc::GcPass::new(
                self.state
                    .router_ids()
                    .into_iter()
                    .chain(self.bpf.keys().cloned())
                    .collect::<std::collections::BTreeSet<_>>(),
            ),
        };
        let pin_dir = self.node.pin_dir.clone();
        self.gc_task = Some(tokio::task::spawn_blocking(move || {
            let mut pass = pass;
            for (id, e) in pass.run(&pin_dir, ebpf::gc::SLICE) {
                tracing::warn!(router = %id, "router {id}: connection GC: {e:#}");
            }
            pass
        }));
    }

    /// Applies `desired` router by router and records each router that
    /// succeeded; routers no longer wanted are removed. Errors only when
    /// nothing could be tried.
    pub async fn apply(&mut self, desired: Vec<Router>) -> Result<Applied> {
        let mut ch = Changes::default();
        let mut failures = Vec::new();
        let wanted: BTreeSet<&str> = desired.iter().map(|r| r.id.as_str()).collect();
        let gone: Vec<String> = self
            .state
            .router_ids()
            .into_iter()
            .filter(|id| !wanted.contains(id.as_str()))
            .collect();
        self.remove_each(&gone, &mut ch, &mut failures).await;
        self.preload(&desired);
        for (i, r) in desired.iter().enumerate() {
            if self.stops_before(desired.len() - i) {
                break;
            }
            let from = ch.len();
            let outcome = self.update(r, &mut ch).await;
            log_router(&r.id, &ch.items[from..], outcome.as_ref().err());
            if let Err(f) = outcome {
                failures.push(f);
            }
        }
        self.state.save(&self.node.state_file())?;
        crate::metrics::get().publish(&self.state);
        Ok(Applied {
            changes: ch,
            failures,
            routers: desired.len(),
        })
    }

    /// Applies one router and records the outcome (not saved to disk):
    /// applied, or failed with what it may have put in place.
    pub async fn update(&mut self, r: &Router, ch: &mut Changes) -> Result<(), Failure> {
        let prev = self.state.applied(&r.id).is_some();
        let before = self.history(&r.id).nat;
        let mut bridges = Vec::new();
        let t0 = std::time::Instant::now();
        let outcome = self.apply_router(r, ch, &mut bridges).await;
        crate::metrics::get().applied(&r.id, t0.elapsed(), outcome.is_ok());
        // A bridge made before a failure is xrouter's all the same:
        // `cleanup` removes it.
        self.state.bridges.extend(bridges);
        match outcome {
            Ok(()) => {
                self.ensure_metadata(&r.id);
                match self.state.routers.iter_mut().find(|o| o.id == r.id) {
                    Some(o) => *o = r.clone(),
                    None => self.state.routers.push(r.clone()),
                }
                self.state.failed.retain(|f| f.router.id != r.id);
                Ok(())
            }
            Err(e) => {
                let error = format!("{e:#}");
                let mut live = before;
                live.extend(&NatAddresses::of(r));
                self.state.failed.retain(|f| f.router.id != r.id);
                self.state.failed.push(Failed {
                    router: r.clone(),
                    error: error.clone(),
                    live,
                });
                Err(Failure {
                    router: r.id.clone(),
                    removal: false,
                    new: !prev,
                    error,
                })
            }
        }
    }

    /// Removes routers `ids` it has a record of (agent mode: a notification
    /// or a full sync says they go), leaving the others as they are; what
    /// is wanted from then on (`desired`) follows.
    pub async fn remove(&mut self, ids: &[String]) -> Result<Applied> {
        let mut ch = Changes::default();
        let mut failures = Vec::new();
        self.desired.retain(|r| !ids.contains(&r.id));
        let known: Vec<String> = ids
            .iter()
            .filter(|id| self.state.applied(id).is_some() || self.state.failure(id).is_some())
            .cloned()
            .collect();
        self.remove_each(&known, &mut ch, &mut failures).await;
        self.state.save(&self.node.state_file())?;
        crate::metrics::get().publish(&self.state);
        Ok(Applied {
            changes: ch,
            failures,
            routers: self.desired.len(),
        })
    }

    /// Makes `r` what every later resync aims at (agent mode: one router
    /// at a time).
    pub fn want(&mut self, r: &Router) {
        match self.desired.iter_mut().find(|d| d.id == r.id) {
            Some(d) => *d = r.clone(),
            None => self.desired.push(r.clone()),
        }
    }

    /// Removes each router of `ids` and forgets it; a failure is recorded
    /// and the router kept in the record.
    async fn remove_each(&mut self, ids: &[String], ch: &mut Changes, failures: &mut Vec<Failure>) {
        for id in ids {
            let from = ch.len();
            match self.remove_router(id, ch).await {
                Ok(()) => {
                    log_router(id, &ch.items[from..], None);
                    self.state.routers.retain(|r| &r.id != id);
                    self.state.failed.retain(|f| &f.router.id != id);
                }
                Err(e) => {
                    let f = Failure {
                        router: id.clone(),
                        removal: true,
                        new: false,
                        error: format!("{e:#}"),
                    };
                    log_router(id, &ch.items[from..], Some(&f));
                    failures.push(f);
                }
            }
        }
    }

    /// Re-reads the routers file and applies it; a file that does not
    /// validate changes nothing (an error), one that does becomes what
    /// every later pass aims at.
    pub async fn reload(&mut self) -> Result<Applied> {
        let path = self.state.routers_file.clone().context("no routers file")?;
        let desired = crate::source::read_routers(&path, &self.node)?;
        self.desired = desired.clone();
        self.apply(desired).await
    }

    /// Re-applies the source's routers, repairing what changed behind our
    /// back and retrying the routers that failed.
    pub async fn resync(&mut self) -> Result<Applied> {
        let desired = self.desired.clone();
        self.apply(desired).await
    }
}

/// Logs what one router's apply or removal changed, and its failure, with
/// the router as a field of each event (a journal field under systemd).
pub fn log_router(id: &str, changes: &[String], failure: Option<&Failure>) {
    for c in changes {
        tracing::info!(router = %id, "{c}");
    }
    if let Some(f) = failure {
        tracing::error!(router = %id, "{f}");
    }
}

/// What router `id` was by the record: the addresses it may hold (its last
/// applied state's and any failed attempt's since), the floating IPs
/// announced.
pub fn history(state: &State, id: &str) -> History {
    let prev = state.applied(id);
    History {
        nat: match state.failure(id) {
            Some(f) => f.live.clone(),
            None => prev.map(NatAddresses::of).unwrap_or_default(),
        },
        announced: prev
            .map(|p| p.floating_ips.iter().map(|f| f.floating_ip).collect())
            .unwrap_or_default(),
    }
}

/// What applying `routers` on `plane` would do now, printed router by
/// router (read-only: observes and plans, changes nothing).
pub async fn dry_run(node: &NodeConfig, plane: Plane, routers: &[Router]) -> Result<String> {
    use std::fmt::Write as _;
    let state = State::load(&node.state_file())?;
    let mut out = String::new();
    for r in routers {
        let d = desired(r, node, plane, DEFAULT_SNAT_PORTS);
        let o = observe(node, &d).await?;
        let _ = writeln!(
            out,
            "router {} ({}):",
            crate::text::label(&r.id),
            d.namespace
        );
        // Announcements are made only with send_garp (see `execute`).
        let plan = plan(&o, &d, &history(&state, &r.id)).map(|mut a| {
            a.retain(|a| node.send_garp || !matches!(a, Action::Announce { .. }));
            a
        });
        match plan {
            Ok(actions) if actions.is_empty() => {
                let _ = writeln!(out, "  nothing to change");
            }
            Ok(actions) => {
                for a in actions {
                    let _ = writeln!(out, "  {a}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  cannot apply: {e}");
            }
        }
    }
    let wanted: BTreeSet<&str> = routers.iter().map(|r| r.id.as_str()).collect();
    for id in state.router_ids() {
        if !wanted.contains(id.as_str()) {
            let _ = writeln!(out, "router {}: remove", crate::text::label(&id));
        }
    }
    Ok(out)
}

/// The ifindex of device `name` through `nl`.
async fn index(nl: &Nl, name: &str) -> Result<u32> {
    Ok(nl
        .link(name)
        .await?
        .with_context(|| format!("no device {name} in {}", nl.ns))?
        .index)
}

/// Removes a router's namespace: its ports first (so their taps vanish at
/// once), then the namespace. A leftover file of it in /run/netns that is
/// no namespace goes too: what a daemon leaves that ran in a mount
/// namespace of its own (`ip netns exec`), whose namespaces ended with it
/// and left only their files here.
async fn remove_namespace(id: &str, ch: &mut Changes) -> Result<()> {
    let ns = crate::model::namespace_of(id);
    if netns::exists(&ns) {
        let nl = Nl::open(Some(&ns)).await?;
        for l in nl.links().await? {
            if l.name.starts_with("qr-") || l.name.starts_with("qg-") {
                nl.del_link(l.index).await?;
            }
        }
        drop(nl);
        netns::delete(&ns)?;
        ch.note(format!("removed router {id}"));
    } else if netns::path(&ns).exists() {
        netns::delete(&ns)?;
        ch.note(format!(
            "removed {}, the leftover file of router {id}'s namespace",
            netns::path(&ns).display()
        ));
    }
    Ok(())
}

/// With openvswitch plugging, removes router `r`'s taps from OVS.
fn remove_ovs_ports(node: &NodeConfig, r: &Router, ch: &mut Changes) -> Result<()> {
    if node.driver() != InterfaceDriver::OpenVSwitch {
        return Ok(());
    }
    let taps: Vec<String> = r.ports().map(|p| p.tap()).collect();
    ovs::del_ports(&node.ovsdb_connection, &taps)
        .with_context(|| format!("removing router {}'s ports from OVS", r.id))?;
    ch.note(format!(
        "removed {} of router {} from OVS",
        crate::text::count(taps.len(), "port"),
        r.id
    ));
    Ok(())
}

/// `xrouter cleanup`: removes every router, tap and bridge xrouter created.
pub async fn cleanup(node: &NodeConfig) -> Result<Changes> {
    let path = node.state_file();
    let state = State::load(&path)?;
    let host = Nl::open(None).await?;
    let mut ch = Changes::default();
    // Metadata listeners a stopped daemon left to a holder go first (they
    // keep their namespaces alive).
    let released = crate::metadata::release(&node.state_dir)?;
    if released > 0 {
        ch.note(format!(
            "closed {}",
            crate::text::count(released, "held metadata listener")
        ));
    }
    // Routers whose apply failed may have left something too.
    let routers = state
        .routers
        .iter()
        .chain(state.failed.iter().map(|f| &f.router));
    for r in routers {
        remove_namespace(&r.id, &mut ch).await?;
        let pins = node.pin_dir.join(&r.id);
        let pinned = pins.exists();
        ebpf::remove_pins(&node.pin_dir, &r.id)?;
        if pinned {
            ch.note(format!("removed the BPF pins {}", pins.display()));
        }
        remove_ovs_ports(node, r, &mut ch)?;
        for p in r.ports() {
            if let Some(t) = host.link(&p.tap()).await? {
                host.del_link(t.index).await?;
                ch.note(format!("removed tap {}", t.name));
            }
        }
    }
    let links = host.links().await?;
    for b in &state.bridges {
        let Some(br) = links.iter().find(|l| &l.name == b) else {
            continue;
        };
        // A bridge that still has other ports belongs to someone else too.
        if links.iter().any(|l| l.controller == Some(br.index)) {
            tracing::warn!("bridge {b} still has ports; left in place");
            continue;
        }
        host.del_link(br.index).await?;
        ch.note(format!("removed bridge {b}"));
    }
    // The pin directory goes too once empty (it may be shared, so only then).
    if std::fs::remove_dir(&node.pin_dir).is_ok() {
        ch.note(format!(
            "removed the empty pin directory {}",
            node.pin_dir.display()
        ));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => ch.note(format!("removed the state file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    // The state directory too, if nothing else is in it (a running
    // daemon's socket, an operator's file).
    if std::fs::remove_dir(&node.state_dir).is_ok() {
        ch.note(format!(
            "removed the empty state directory {}",
            node.state_dir.display()
        ));
    }
    Ok(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5c7ef3a1-2d4b-4e8f-9a6c-1b2d3e4f5a6b";
    const B: &str = "6d8f04b2-3e5c-4f90-8b7d-2c3e4f5a6b7c";

    fn failure(router: &str, removal: bool, new: bool) -> Failure {
        Failure {
            router: router.into(),
            removal,
            new,
            error: "no device brq0 in the node namespace".into(),
        }
    }

    fn applied(failures: Vec<Failure>, routers: usize, changes: usize) -> Applied {
        Applied {
            changes: Changes {
                items: (0..changes).map(|i| format!("change {i}")).collect(),
            },
            failures,
            routers,
        }
    }

    #[test]
    fn a_report_of_failed_routers_reads_well_for_one_and_for_many() {
        let header = |a: &Applied| a.report().lines().next().unwrap().to_string();
        let one = applied(vec![failure(A, false, false)], 2, 3);
        assert_eq!(
            header(&one),
            format!("router {A} failed; the other router of the file is applied (3 changes):")
        );
        assert_eq!(
            one.report().lines().nth(1).unwrap(),
            format!(
                "  router {A}: apply failed, it keeps its previous state (retried at the next \
                 resync): no device brq0 in the node namespace"
            )
        );
        assert_eq!(
            header(&applied(vec![failure(A, false, true)], 4, 1)),
            format!("router {A} failed; the other 3 routers of the file are applied (1 change):")
        );
        assert_eq!(
            header(&applied(vec![failure(A, false, false)], 1, 0)),
            format!("router {A} failed; the file holds no other router (no changes):")
        );
        let two = applied(
            vec![failure(A, false, false), failure(B, false, true)],
            5,
            7,
        );
        assert_eq!(
            header(&two),
            "2 routers failed; the other 3 routers of the file are applied (7 changes):"
        );
        assert_eq!(two.report().lines().count(), 3);
        // A router whose removal failed is no longer in the file.
        assert_eq!(
            header(&applied(vec![failure(B, true, false)], 1, 2)),
            format!("router {B} failed; the router of the file is applied (2 changes):")
        );
        assert_eq!(
            header(&applied(vec![failure(B, true, false)], 3, 2)),
            format!("router {B} failed; the 3 routers of the file are applied (2 changes):")
        );
        for a in [one, two] {
            assert!(!a.report().contains("(s)"), "{}", a.report());
        }
    }

    #[test]
    fn a_report_of_changes_counts_them_in_words() {
        assert_eq!(applied(vec![], 1, 0).report(), "applied: no changes");
        assert_eq!(
            applied(vec![], 1, 1).report(),
            "applied: 1 change\n  change 0"
        );
        assert!(
            applied(vec![], 1, 2)
                .report()
                .starts_with("applied: 2 changes\n")
        );
    }
}
