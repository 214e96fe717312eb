//! A private instance of the router's programs: the embedded BPF object
//! loaded afresh with maps of its own (unpinned, gone when it is dropped),
//! holding copies of what configures the router and of the few connection
//! entries a packet can meet. Nothing of the live router is written, ever:
//! its pinned maps are only opened for reading.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHash, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, Xdp},
};
use router_common::{
    config::RateWindow,
    conntrack::{CT_F_ASSURED, CtEntry, CtKey, FragEntry, FragKey},
    counters::{CT_EVENT_COUNT, Counter, OUTCOME_COUNT},
    port::{Neigh, NeighKey},
};

use crate::backend::bpf::{
    self, CtTable, Desired, PROG_TC, PROG_XDP, XR_CT, XR_CT_EVENTS, XR_FRAG, XR_NEIGH, XR_RATE,
};

/// Slots of the copy's connection table: a packet meets a handful.
const CT_SLOTS: u32 = 256;
const FRAG_ENTRIES: u32 = 64;

/// Read-only handles on the live router's pinned maps.
pub struct Live {
    pub maps: Desired,
    pub neigh: HashMap<NeighKey, Neigh>,
    ct: CtTable,
    frag: BpfHash<MapData, FragKey, FragEntry>,
    rate: PerCpuArray<MapData, RateWindow>,
}

fn open(pin_dir: &Path, router_id: &str, name: &str) -> Result<MapData> {
    let p = pin_dir.join(router_id).join(name);
    MapData::from_pin(&p).with_context(|| format!("opening pinned map {}", p.display()))
}

impl Live {
    pub fn open(pin_dir: &Path, router_id: &str) -> Result<Live> {
        let maps = bpf::read_pinned_maps(pin_dir, router_id)?;
        let neigh_map: BpfHash<MapData, NeighKey, Neigh> =
            BpfHash::try_from(Map::HashMap(open(pin_dir, router_id, XR_NEIGH)?))?;
        let neigh = neigh_map.iter().collect::<Result<_, _>>()?;
        Ok(Live {
            maps,
            neigh,
            ct: bpf::pinned::ct(pin_dir, router_id)?,
            frag: BpfHash::try_from(Map::LruHashMap(open(pin_dir, router_id, XR_FRAG)?))?,
            rate: PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, router_id, XR_RATE)?))?,
        })
    }

    /// The live entry of `k`: (established?, entry).
    pub fn ct(&self, k: &CtKey) -> Option<(bool, CtEntry)> {
        self.ct.get(k).map(|e| (e.flags & CT_F_ASSURED != 0, e))
    }
}

/// What of the live connection state a run starts from.
#[derive(Clone, Debug, Default)]
pub struct Seed {
    /// Connection entries (with their partners) to copy, when live.
    pub ct_keys: Vec<CtKey>,
    pub frag: Option<FragKey>,
}

/// The private instance.
pub struct Sandbox {
    pub ebpf: Ebpf,
}

impl Sandbox {
    /// Loads the object with small private maps and the router's
    /// configuration (`live`) copied in; `xdp`: load `xr_xdp` too.
    pub fn new(live: &Live, xdp: bool) -> Result<Sandbox> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(XR_CT, router_common::conntrack::ct_entries(CT_SLOTS))
            .override_global(bpf::CT_MASK_GLOBAL, &(CT_SLOTS - 1), true)
            .map_max_entries(XR_FRAG, FRAG_ENTRIES)
            .load(bpf::object::OBJECT)
            .context("loading a private copy of the BPF object")?;
        if xdp {
            let p: &mut Xdp = ebpf.program_mut(PROG_XDP).context(PROG_XDP)?.try_into()?;
            p.load().context("verifier rejected xr_xdp")?;
        }
        let p: &mut SchedClassifier = ebpf.program_mut(PROG_TC).context(PROG_TC)?.try_into()?;
        p.load().context("verifier rejected xr_tc")?;
        bpf::write_maps(&mut ebpf, &live.maps).context("copying the router's maps")?;
        {
            let mut n: BpfHash<_, NeighKey, Neigh> =
                BpfHash::try_from(ebpf.map_mut(XR_NEIGH).context(XR_NEIGH)?)?;
            for (k, v) in &live.neigh {
                n.insert(k, v, 0)?;
            }
        }
        Ok(Sandbox { ebpf })
    }

    /// The copy's connection table, mapped.
    fn ct(&self) -> Result<CtTable> {
        match self.ebpf.map(XR_CT) {
            Some(Map::Array(d)) => CtTable::of(d),
            _ => anyhow::bail!("the BPF object has no connection table {XR_CT}"),
        }
    }

    /// Empties the connection tables, fragments, counters and events of
    /// the copy, then copies in from `live` the entries of `seed` (and
    /// their partners) and the new-connection budget's windows.
    pub fn seed(&mut self, live: &Live, seed: &Seed) -> Result<()> {
        let ct = self.ct()?;
        // No program runs on the copy between runs.
        ct.clear();
        {
            let mut f: BpfHash<_, FragKey, FragEntry> =
                BpfHash::try_from(self.ebpf.map_mut(XR_FRAG).context(XR_FRAG)?)?;
            let keys: Vec<FragKey> = f.keys().collect::<Result<_, _>>()?;
            for k in keys {
                let _ = f.remove(&k);
            }
            if let Some(k) = &seed.frag
                && let Ok(e) = live.frag.get(k, 0)
            {
                f.insert(k, e, 0)?;
            }
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        {
            let mut c: PerCpuArray<_, Counter> = PerCpuArray::try_from(
                self.ebpf
                    .map_mut(bpf::XR_COUNTERS)
                    .context(bpf::XR_COUNTERS)?,
            )?;
            for i in 0..OUTCOME_COUNT as u32 {
                c.set(
                    i,
                    PerCpuValues::try_from(vec![Counter::default(); cpus])?,
                    0,
                )?;
            }
        }
        {
            let mut c: PerCpuArray<_, u64> =
                PerCpuArray::try_from(self.ebpf.map_mut(XR_CT_EVENTS).context(XR_CT_EVENTS)?)?;
            for i in 0..CT_EVENT_COUNT as u32 {
                c.set(i, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
            }
        }
        {
            // The budget as the router has it now: a router shedding new
            // connections sheds this one too.
            let w = live.rate.get(&0, 0)?;
            let mut r: PerCpuArray<_, RateWindow> =
                PerCpuArray::try_from(self.ebpf.map_mut(XR_RATE).context(XR_RATE)?)?;
            r.set(0, w, 0)?;
        }
        let put = |k: &CtKey, e: &CtEntry| {
            ct.insert(k, e)
                .map_err(|why| anyhow::anyhow!("copying a connection entry: {why:?}"))
        };
        for k in &seed.ct_keys {
            let Some((_, e)) = live.ct(k) else {
                continue;
            };
            put(k, &e)?;
            let pk = e.partner(k);
            if let Some((_, pe)) = live.ct(&pk) {
                put(&pk, &pe)?;
            }
        }
        Ok(())
    }

    /// Both connection tables of the copy: key -> (established?, entry).
    pub fn tables(&self) -> Result<HashMap<CtKey, (bool, CtEntry)>> {
        Ok(self
            .ct()?
            .all()
            .map(|(k, e)| (k, (e.flags & CT_F_ASSURED != 0, e)))
            .collect())
    }

    /// Per-CPU sums of the copy's outcome counters (packets), by index.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let c: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.ebpf.map(bpf::XR_COUNTERS).context(bpf::XR_COUNTERS)?)?;
        (0..OUTCOME_COUNT as u32)
            .map(|i| Ok(c.get(&i, 0)?.iter().map(|c| c.packets).sum()))
            .collect()
    }

    /// Per-CPU sums of the copy's connection events, by index.
    pub fn events(&self) -> Result<Vec<u64>> {
        let c: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(XR_CT_EVENTS).context(XR_CT_EVENTS)?)?;
        (0..CT_EVENT_COUNT as u32)
            .map(|i| Ok(c.get(&i, 0)?.iter().sum()))
            .collect()
    }

    /// The kernel's tag of one of the copy's programs.
    pub fn tag(&self, name: &str) -> Option<[u8; 8]> {
        use std::os::fd::AsFd as _;
        let fd = match self.ebpf.program(name)? {
            aya::programs::Program::Xdp(p) => p.fd().ok()?.as_fd(),
            aya::programs::Program::SchedClassifier(p) => p.fd().ok()?.as_fd(),
            _ => return None,
        };
        super::tags::of_program(fd)
    }
}
