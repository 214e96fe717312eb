//! The monitor's maps of a router through their pins: its switch
//! (`XR_MON_CTL`), its ring of events (`XR_MON_RING`) and its per-CPU
//! sampling state and lost events (`XR_MON_CPU`). Used by `xrouter
//! monitor`, beside the daemon, which only switches off what a killed
//! monitor left on ([`BpfRouter::clear_stale_monitor`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues, RingBuf};
use router_common::monitor::{MonitorCpu, MonitorCtl, MonitorEvent};

use super::{BpfRouter, XR_MON_CPU, XR_MON_CTL, XR_MON_RING, router_dir};

/// One router's monitor maps, opened from its pins.
pub struct MonitorMaps {
    ctl: Array<MapData, MonitorCtl>,
    cpu: PerCpuArray<MapData, MonitorCpu>,
    /// Taken by the reader ([`MonitorMaps::take_ring`]).
    ring: Option<RingBuf<MapData>>,
    /// The switch's pin and the kernel's ID of the map it named when
    /// opened: a router removed or rebuilt no longer has that map there.
    ctl_pin: PathBuf,
    ctl_id: u32,
}

impl MonitorMaps {
    /// Opens the monitor maps pinned under `<pin_dir>/<router_id>/`. A
    /// router whose pins have none was loaded by a build without the
    /// monitor: the message says how to get them.
    pub fn open(pin_dir: &Path, router_id: &str) -> Result<MonitorMaps> {
        let dir = router_dir(pin_dir, router_id)?;
        if !dir.exists() {
            bail!(
                "router {router_id} has no pinned maps under {} (has the daemon applied it? the \
                 directory is the node config's pin_dir: give the daemon's --config)",
                dir.display()
            );
        }
        let path = |name: &str| dir.join(name);
        for name in [XR_MON_CTL, XR_MON_RING, XR_MON_CPU] {
            if !path(name).exists() {
                bail!(
                    "router {router_id}: no {name} pinned: its programs were loaded by an xrouter \
                     without monitoring; restart the daemon with this build (the routers keep \
                     forwarding, their connections are kept)"
                );
            }
        }
        let open = |name: &str| {
            MapData::from_pin(path(name))
                .with_context(|| format!("opening pinned map {}", path(name).display()))
        };
        let ctl_data = open(XR_MON_CTL)?;
        let ctl_id = ctl_data.info()?.id();
        let ctl = Array::try_from(Map::Array(ctl_data))?;
        let cpu = PerCpuArray::try_from(Map::PerCpuArray(open(XR_MON_CPU)?))?;
        let ring = RingBuf::try_from(Map::RingBuf(open(XR_MON_RING)?))?;
        Ok(MonitorMaps {
            ctl,
            cpu,
            ring: Some(ring),
            ctl_pin: path(XR_MON_CTL),
            ctl_id,
        })
    }

    /// Whether the router's pins still hold the maps opened: false once the
    /// daemon removed the router, or rebuilt it with new maps.
    pub fn still_pinned(&self) -> bool {
        MapData::from_pin(&self.ctl_pin)
            .ok()
            .and_then(|d| d.info().ok())
            .is_some_and(|i| i.id() == self.ctl_id)
    }

    /// What the switch says now.
    pub fn ctl(&self) -> Result<MonitorCtl> {
        Ok(self.ctl.get(&0, 0)?)
    }

    /// Sets the switch (all zero: off).
    pub fn set_ctl(&mut self, ctl: MonitorCtl) -> Result<()> {
        self.ctl.set(0, ctl, 0)?;
        Ok(())
    }

    /// Starts afresh: sampling counters and lost events at zero on every
    /// CPU, and whatever a monitor that was killed left in the ring read
    /// and dropped. Before the switch is set.
    pub fn reset(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let zero = PerCpuValues::try_from(vec![MonitorCpu::default(); cpus])?;
        self.cpu.set(0, zero, 0)?;
        if let Some(ring) = self.ring.as_mut() {
            while ring.next().is_some() {}
        }
        Ok(())
    }

    /// Events the full ring refused since [`MonitorMaps::reset`], summed
    /// over CPUs.
    pub fn lost(&self) -> Result<u64> {
        Ok(self.cpu.get(&0, 0)?.iter().map(|c| c.lost).sum())
    }

    /// The ring, for its reader (once).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }
}

/// An event as the ring holds it (None: a record of another size).
pub fn decode(bytes: &[u8]) -> Option<MonitorEvent> {
    if bytes.len() < size_of::<MonitorEvent>() {
        return None;
    }
    // SAFETY: long enough (checked), and every bit pattern is a valid
    // MonitorEvent (plain data, `bytemuck::Pod` in router-common).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<MonitorEvent>()) })
}

impl BpfRouter {
    /// Switches the router's monitoring off when it is on and no monitor
    /// runs: `alive` says whether the monitor named by the router's lock
    /// file is. A monitor switches on only after taking its lock and off
    /// before leaving it, so an on switch without a live monitor was left
    /// by one killed outright (SIGKILL), and would have the programs write
    /// events nobody reads. Returns whether it switched off.
    pub fn clear_stale_monitor(&mut self, alive: impl FnOnce() -> bool) -> Result<bool> {
        let map = self
            .ebpf
            .map_mut(XR_MON_CTL)
            .context("the BPF object has no XR_MON_CTL")?;
        let mut ctl: Array<_, MonitorCtl> = Array::try_from(map)?;
        if ctl.get(&0, 0)?.flags == 0 || alive() {
            return Ok(false);
        }
        ctl.set(0, MonitorCtl::default(), 0)?;
        Ok(true)
    }
}
