//! Attaching the programs: `xr_tc` (tcx ingress), `xr_tc_out` (tcx egress)
//! and `xr_xdp` (native XDP) on the router's qr-/qg- devices, `xr_pass` on
//! their tap peers (XDP only). Every
//! attachment is a BPF link pinned under `<router dir>/links/`, so it
//! outlives the daemon; a later run takes the pinned link over and swaps its
//! own program in (`bpf_link_update`), which neither stacks a duplicate nor
//! leaves a gap.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, TcAttachType, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};

use super::object::{load_tc, load_xdp};
use super::{
    BpfRouter, LINKS_DIR, PROG_PASS, PROG_TC, PROG_TC_OUT, PROG_XDP, in_netns,
    remove_file_if_present,
};

/// Which hook carries the fast path of a router's devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `xr_xdp` in native (driver) mode, with `xr_tc` behind it for what
    /// XDP hands up.
    Xdp,
    /// `xr_tc` on tcx ingress only.
    Tc,
}

/// What one link attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Xdp,
    Tc,
    TcOut,
    Pass,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::Xdp => "xdp",
            Kind::Tc => "tc",
            Kind::TcOut => "out",
            Kind::Pass => "pass",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Kind::Xdp => PROG_XDP,
            Kind::Tc => PROG_TC,
            Kind::TcOut => PROG_TC_OUT,
            Kind::Pass => PROG_PASS,
        }
    }

    /// The kind of a pin name (`<dev>_<suffix>`).
    fn of_pin(name: &str) -> Option<Kind> {
        let (_, suffix) = name.rsplit_once('_')?;
        [Kind::Xdp, Kind::Tc, Kind::TcOut, Kind::Pass]
            .into_iter()
            .find(|k| k.suffix() == suffix)
    }
}

fn pin_name(dev: &str, kind: Kind) -> String {
    format!("{dev}_{}", kind.suffix())
}

/// A link this instance holds. Dropping it closes the fd only: a pinned link
/// stays attached; [`HeldLink::release`] detaches it.
pub(super) struct HeldLink {
    pub(super) ifindex: u32,
    link: FdLink,
    pin: Option<PathBuf>,
}

impl HeldLink {
    /// Removes the pin and closes the link: the program is detached.
    pub(super) fn release(self) -> Result<()> {
        if let Some(p) = &self.pin {
            remove_file_if_present(p).with_context(|| format!("removing {}", p.display()))?;
        }
        drop(self.link);
        Ok(())
    }
}

impl BpfRouter {
    fn links_dir(&self) -> PathBuf {
        self.dir.join(LINKS_DIR)
    }

    /// Loads (verifies) the XDP programs now rather than at the first
    /// [`Self::attach`] with [`Hook::Xdp`]: for a load made ahead of the
    /// router's apply (see [`super::preload`]).
    pub fn load_xdp(&mut self) -> Result<()> {
        for name in [PROG_XDP, PROG_PASS] {
            load_xdp(&mut self.ebpf, name).with_context(|| format!("router {}", self.router_id))?;
        }
        Ok(())
    }

    /// Attaches the router's programs to `devices` (name, ifindex), the
    /// qr-/qg- devices inside namespace `ns`: `xr_tc` on tcx ingress of each
    /// (first in the tcx chain), and with [`Hook::Xdp`] also `xr_xdp` in
    /// native mode; a device whose driver has no native XDP is served by TC
    /// alone (said once in the log). Work happens on a thread inside `ns`, where the
    /// names and ifindexes belong.
    ///
    /// Idempotent: a device already attached with the same ifindex is left
    /// alone; a pinned link of an earlier run is taken over; a device whose
    /// ifindex changed is re-attached. Links of devices not in `devices`
    /// (and XDP links when `mode` is [`Hook::Tc`]) are detached and unpinned.
    pub fn attach(&mut self, ns: &str, devices: &[(String, u32)], mode: Hook) -> Result<()> {
        let mut want: Vec<(String, String, u32, Kind)> = Vec::new();
        for (dev, ifindex) in devices {
            // TC first, so XDP never hands up to a TC that is not there yet.
            want.push((pin_name(dev, Kind::Tc), dev.clone(), *ifindex, Kind::Tc));
            want.push((
                pin_name(dev, Kind::TcOut),
                dev.clone(),
                *ifindex,
                Kind::TcOut,
            ));
            if mode == Hook::Xdp {
                want.push((pin_name(dev, Kind::Xdp), dev.clone(), *ifindex, Kind::Xdp));
            }
        }
        self.reconcile_links(Some(ns), want, &[Kind::Xdp, Kind::Tc, Kind::TcOut])
    }

    /// Attaches `xr_pass` (XDP, native mode) to each tap (name, ifindex) in
    /// the daemon's own namespace: a frame `xr_xdp` redirects into a veth is
    /// dropped unless the peer has an XDP program. Idempotent like
    /// [`Self::attach`]; taps no longer listed are detached.
    pub fn attach_taps(&mut self, taps: &[(String, u32)]) -> Result<()> {
        let want = taps
            .iter()
            .map(|(dev, ifindex)| (pin_name(dev, Kind::Pass), dev.clone(), *ifindex, Kind::Pass))
            .collect();
        self.reconcile_links(None, want, &[Kind::Pass])
    }

    /// Makes the held links of `kinds` equal `want` (pin name, device,
    /// ifindex, kind), attaching in namespace `ns` (None: the caller's).
    fn reconcile_links(
        &mut self,
        ns: Option<&str>,
        want: Vec<(String, String, u32, Kind)>,
        kinds: &[Kind],
    ) -> Result<()> {
        let links_dir = self.links_dir();
        std::fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating {}", links_dir.display()))?;
        let wanted: BTreeSet<&str> = want.iter().map(|w| w.0.as_str()).collect();

        // Detach what is no longer wanted: held links, and pins left by an
        // earlier run that this instance never took over.
        let stale: Vec<String> = self
            .links
            .keys()
            .filter(|k| Kind::of_pin(k).is_some_and(|kind| kinds.contains(&kind)))
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        for k in stale {
            if let Some(l) = self.links.remove(&k) {
                tracing::debug!("router {}: detaching {k}", self.router_id);
                l.release()?;
            }
        }
        for e in std::fs::read_dir(&links_dir)
            .with_context(|| format!("reading {}", links_dir.display()))?
        {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let ours = Kind::of_pin(&name).is_some_and(|kind| kinds.contains(&kind));
            if ours && !wanted.contains(name.as_str()) && !self.links.contains_key(&name) {
                tracing::debug!("router {}: removing stale link pin {name}", self.router_id);
                remove_file_if_present(&e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }

        // Links detached behind our back (e.g. `bpftool link detach`) are
        // dropped here and attached again below.
        let dead: Vec<String> = self
            .links
            .iter()
            .filter(|(k, l)| {
                Kind::of_pin(k).is_some_and(|kind| kinds.contains(&kind))
                    && l.pin.as_deref().is_some_and(|p| !link_attached(p))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            if let Some(l) = self.links.remove(&k) {
                tracing::warn!(
                    "router {}: link {k} was detached behind our back; attaching again",
                    self.router_id
                );
                l.release()?;
            }
        }

        // Attach what is missing, or whose device changed.
        let todo: Vec<(String, String, u32, Kind)> = want
            .into_iter()
            .filter(|(pin, _, ifindex, _)| {
                self.links.get(pin).is_none_or(|l| l.ifindex != *ifindex)
                    && !self.tc_only.contains(pin)
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        for (pin, ..) in &todo {
            if let Some(old) = self.links.remove(pin) {
                old.release()?;
            }
        }
        let router_id = self.router_id.clone();
        let ebpf = &mut self.ebpf;
        // Attaches in order and stops at the first error, handing back what
        // it attached before it.
        let work = move || -> (Vec<(String, Option<HeldLink>)>, Option<anyhow::Error>) {
            let mut done = Vec::new();
            for (pin, dev, ifindex, kind) in todo {
                match attach_one(ebpf, &links_dir, &pin, &dev, ifindex, kind) {
                    Ok(l) => done.push((pin, l)),
                    Err(e) => {
                        let e = e.context(format!(
                            "router {router_id}: attaching {} to {dev}",
                            kind.program()
                        ));
                        return (done, Some(e));
                    }
                }
            }
            (done, None)
        };
        let (done, err) = match ns {
            Some(ns) => in_netns(ns, work)?,
            None => work(),
        };
        for (pin, l) in done {
            match l {
                Some(l) => {
                    self.links.insert(pin, l);
                }
                None => {
                    self.tc_only.insert(pin);
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Attaches one program to one device (in the current thread's namespace),
/// taking over `links_dir/pin` when it holds a live link of an earlier run.
fn attach_one(
    ebpf: &mut Ebpf,
    links_dir: &Path,
    pin: &str,
    dev: &str,
    ifindex: u32,
    kind: Kind,
) -> Result<Option<HeldLink>> {
    let found =
        nix::net::if_::if_nametoindex(dev).with_context(|| format!("device {dev} not found"))?;
    if found != ifindex {
        bail!("device {dev} has ifindex {found}, not {ifindex}");
    }
    let path = links_dir.join(pin);
    if path.exists() {
        match take_over(ebpf, &path, kind) {
            Ok(link) => {
                return Ok(Some(HeldLink {
                    ifindex,
                    link,
                    pin: Some(path),
                }));
            }
            Err(e) => {
                // Typically the device went away and the link is defunct.
                tracing::debug!("{}: not reusable ({e:#}); attaching anew", path.display());
                remove_file_if_present(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    let link = match kind {
        Kind::Xdp | Kind::Pass => {
            let prog = load_xdp(ebpf, kind.program())?;
            let id = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => id,
                Err(e) if kind == Kind::Xdp => {
                    tracing::info!("{dev}: no native XDP ({e}); TC alone serves this device");
                    return Ok(None);
                }
                Err(e) => return Err(e).context("native XDP"),
            };
            let link = prog.take_link(id)?;
            FdLink::try_from(link)
                .context("XDP went through netlink, not a BPF link; it cannot be pinned")?
        }
        Kind::Tc | Kind::TcOut => {
            let prog = load_tc(ebpf, kind.program())?;
            let at = if kind == Kind::Tc {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            let id =
                prog.attach_with_options(dev, at, TcAttachOptions::TcxOrder(LinkOrder::first()))?;
            FdLink::try_from(prog.take_link(id)?)?
        }
    };
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(Some(HeldLink {
        ifindex,
        link: pinned.into(),
        pin: Some(path),
    }))
}

/// Swaps our program into a pinned link of an earlier run. Fails (and the
/// caller attaches anew) when the link is defunct (its device is gone) or
/// of another kind.
fn take_over(ebpf: &mut Ebpf, path: &Path, kind: Kind) -> Result<FdLink> {
    let fd: FdLink = PinnedLink::from_pin(path)?.into();
    Ok(match kind {
        Kind::Xdp | Kind::Pass => {
            let prog = load_xdp(ebpf, kind.program())?;
            let id = prog.attach_to_link(XdpLink::try_from(fd)?)?;
            FdLink::try_from(prog.take_link(id)?)?
        }
        Kind::Tc | Kind::TcOut => {
            let prog = load_tc(ebpf, kind.program())?;
            let id = prog.attach_to_link(SchedClassifierLink::try_from(fd)?)?;
            FdLink::try_from(prog.take_link(id)?)?
        }
    })
}

/// XDP program `name`, loaded (verified) first if it is not yet: a
/// router's XDP programs are loaded only once one of its devices is put on
/// XDP (see [`BpfRouter::load`]).
/// Whether the BPF link pinned at `pin` is still attached to a device: a
/// detached XDP or tcx link reports ifindex 0.
fn link_attached(pin: &Path) -> bool {
    link_ifindex(pin).is_some_and(|i| i != 0)
}

/// Whether the router's links pinned under `links_dir` are what `hook`
/// wants: every port device (name, ifindex in the router namespace) has
/// its TC link (and with XDP its XDP link) attached to that very device,
/// every tap (name, ifindex in the node namespace) its XDP_PASS link, and
/// nothing else is pinned. Read-only: for the plan.
pub(crate) fn links_in_place(
    links_dir: &Path,
    devices: &[(String, u32)],
    taps: &[(String, u32)],
    hook: Hook,
) -> bool {
    let mut want: Vec<(String, u32)> = Vec::new();
    for (dev, i) in devices {
        want.push((pin_name(dev, Kind::Tc), *i));
        want.push((pin_name(dev, Kind::TcOut), *i));
        if hook == Hook::Xdp {
            want.push((pin_name(dev, Kind::Xdp), *i));
        }
    }
    for (tap, i) in taps {
        want.push((pin_name(tap, Kind::Pass), *i));
    }
    let pinned: BTreeSet<String> = std::fs::read_dir(links_dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    pinned.len() == want.len()
        && want
            .iter()
            .all(|(pin, i)| link_ifindex(&links_dir.join(pin)) == Some(*i))
}

/// The ifindex the BPF link pinned at `pin` is attached to (0: detached;
/// None: no such link). aya 0.14 does not expose a link's fd or ifindex,
/// hence the two raw `bpf(2)` calls.
fn link_ifindex(pin: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let Ok(path) = std::ffi::CString::new(pin.as_os_str().as_bytes()) else {
        return None;
    };
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr-sized buffer with the path set.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 128usize) };
    if fd < 0 {
        return None;
    }
    // struct bpf_link_info: type, id, prog_id, then the union (8-aligned)
    // whose xdp and tcx members both start with the ifindex.
    let mut info = [0u32; 32];
    let mut attr = [0u64; 16];
    attr[0] = (fd as u64) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: as above; info is large enough for the kernel's answer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            128usize,
        )
    };
    // SAFETY: fd came from the kernel above and is ours to close.
    unsafe { libc::close(fd as i32) };
    (r == 0).then_some(info[4])
}
