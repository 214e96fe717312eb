//! The bench's BPF programs, from the embedded object: the live-frames
//! generator (`xr_bench_gen`, run on a thread of its own pinned to the
//! generator's CPU) and what is attached to rig devices (`xr_bench_sink`,
//! `xr_bench_sink_tc`, `xr_bench_redirect`, `xr_pass`).

use std::{
    os::fd::AsFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLinkId,
        xdp::{XdpLink, XdpLinkId},
    },
};
use nix::{
    sched::{CloneFlags, CpuSet, sched_setaffinity, setns},
    unistd::Pid,
};
use router_common::bench::{GenConfig, GenState, SinkCounter};

use crate::OBJECT;

pub const PROG_GEN: &str = "xr_bench_gen";
pub const PROG_SINK: &str = "xr_bench_sink";
/// The sink on tc ingress, for devices that receive skbs.
pub const PROG_SINK_TC: &str = "xr_bench_sink_tc";
pub const PROG_REDIRECT: &str = "xr_bench_redirect";
pub const PROG_PASS: &str = "xr_pass";

/// Frames per BPF_PROG_TEST_RUN call: each call has a fixed sleeping cost,
/// so calls must be long; this bounds a call to a fraction of a second.
const REPEAT: u32 = 2_000_000;
/// Frames per batch inside a call (the kernel's maximum is 256).
const BATCH: u32 = 64;

/// The programs and maps of a bench run.
pub struct Progs {
    /// Sink, redirect and pass: attached to rig devices.
    att: Ebpf,
    /// The generator's copy of the object; on the generator thread while
    /// it runs.
    generator: Option<Ebpf>,
    gen_cfg: Array<MapData, GenConfig>,
    gen_state: PerCpuArray<MapData, GenState>,
    gen_headroom: Array<MapData, u32>,
    sink: PerCpuArray<MapData, SinkCounter>,
    redirect: Array<MapData, u32>,
    /// What we attached (program, link), detached by [`Progs::detach_all`].
    links: Vec<(&'static str, XdpLinkId)>,
    tc_links: Vec<SchedClassifierLinkId>,
}

/// A running generator.
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Ebpf, Result<()>)>,
}

fn load_object() -> Result<Ebpf> {
    // The router maps come with the object; keep the preallocated ones small.
    EbpfLoader::new()
        .map_max_entries("XR_CT", router_common::conntrack::ct_entries(1024))
        .load(OBJECT)
        .context("loading the BPF object")
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not XDP"))
}

fn tc_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(PROG_SINK_TC)
        .with_context(|| format!("no program {PROG_SINK_TC}"))?
        .try_into()
        .with_context(|| format!("{PROG_SINK_TC} is not a classifier"))
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let m = ebpf
        .take_map(name)
        .with_context(|| format!("no map {name}"))?;
    T::try_from(m).with_context(|| format!("map {name}"))
}

/// Runs `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    router_user::backend::netns::run_in(Some(ns), f)
}

/// Pins the calling thread (0) or process `pid` to `cpu`.
pub fn pin(pid: i32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(pid), &set).with_context(|| format!("pinning {pid}"))
}

impl Progs {
    pub fn load() -> Result<Progs> {
        let mut att = load_object()?;
        for p in [PROG_SINK, PROG_REDIRECT, PROG_PASS] {
            xdp_mut(&mut att, p)?
                .load()
                .with_context(|| format!("verifier rejected {p}"))?;
        }
        tc_mut(&mut att)?
            .load()
            .with_context(|| format!("verifier rejected {PROG_SINK_TC}"))?;
        let mut generator = load_object()?;
        xdp_mut(&mut generator, PROG_GEN)?
            .load()
            .context("verifier rejected xr_bench_gen")?;
        let gen_cfg = take(&mut generator, "XRB_GEN")?;
        let gen_state = take(&mut generator, "XRB_GEN_STATE")?;
        let gen_headroom = take(&mut generator, "XRB_GEN_HEADROOM")?;
        let sink = take(&mut att, "XRB_SINK")?;
        let redirect = take(&mut att, "XRB_REDIRECT")?;
        Ok(Progs {
            att,
            generator: Some(generator),
            gen_cfg,
            gen_state,
            gen_headroom,
            sink,
            redirect,
            links: Vec::new(),
            tc_links: Vec::new(),
        })
    }

    /// Attaches `prog` (native XDP) to `dev` in namespace `ns`; detached by
    /// [`Progs::detach_all`] (or when the device goes).
    pub fn attach(&mut self, prog: &'static str, ns: &str, dev: &str) -> Result<()> {
        let p = xdp_mut(&mut self.att, prog)?;
        let dev_s = dev.to_string();
        let id = in_ns(ns, move || -> Result<XdpLinkId> {
            let idx = nix::net::if_::if_nametoindex(dev_s.as_str())
                .with_context(|| format!("device {dev_s}"))?;
            p.attach_to_if_index(idx, XdpMode::Driver)
                .with_context(|| format!("attaching {prog} to {dev_s}"))
        })??;
        self.links.push((prog, id));
        Ok(())
    }

    /// Attaches the tc sink (`xr_bench_sink_tc`) to the ingress of `dev` in
    /// namespace `ns` (tcx); detached by [`Progs::detach_all`] (or when the
    /// device goes).
    pub fn attach_tc_sink(&mut self, ns: &str, dev: &str) -> Result<()> {
        let p = tc_mut(&mut self.att)?;
        let dev_s = dev.to_string();
        let id = in_ns(ns, move || -> Result<SchedClassifierLinkId> {
            p.attach(&dev_s, TcAttachType::Ingress)
                .with_context(|| format!("attaching {PROG_SINK_TC} to {dev_s}"))
        })??;
        self.tc_links.push(id);
        Ok(())
    }

    /// Swaps `prog` into the pinned XDP link at `pin` (one xrouter made).
    pub fn take_over(&mut self, prog: &'static str, pin: &Path) -> Result<()> {
        let fd: FdLink = PinnedLink::from_pin(pin)
            .with_context(|| format!("{}", pin.display()))?
            .into();
        let link = XdpLink::try_from(fd).map_err(|e| anyhow!("{}: {e}", pin.display()))?;
        let id = xdp_mut(&mut self.att, prog)?
            .attach_to_link(link)
            .with_context(|| format!("updating {} to {prog}", pin.display()))?;
        self.links.push((prog, id));
        Ok(())
    }

    /// Detaches everything [`Progs::attach`] and [`Progs::take_over`] did.
    pub fn detach_all(&mut self) {
        for (prog, id) in std::mem::take(&mut self.links) {
            if let Ok(p) = xdp_mut(&mut self.att, prog) {
                let _ = p.detach(id);
            }
        }
        for id in std::mem::take(&mut self.tc_links) {
            if let Ok(p) = tc_mut(&mut self.att) {
                let _ = p.detach(id);
            }
        }
    }

    pub fn set_redirect(&mut self, ifindex: u32) -> Result<()> {
        self.redirect.set(0, ifindex, 0)?;
        Ok(())
    }

    pub fn set_gen(&mut self, cfg: &GenConfig) -> Result<()> {
        self.gen_cfg.set(0, *cfg, 0)?;
        Ok(())
    }

    /// Headroom the generator leaves in front of its frames (0: the live
    /// frame's own, 256 bytes): 64 makes the skbs a veth builds from them
    /// look like a NIC driver's.
    pub fn set_headroom(&mut self, bytes: u32) -> Result<()> {
        self.gen_headroom.set(0, bytes, 0)?;
        Ok(())
    }

    /// The sink's counters, summed over CPUs.
    pub fn sink(&self) -> Result<SinkCounter> {
        let mut s = SinkCounter::default();
        for c in self.sink.get(&0, 0)?.iter() {
            s.packets += c.packets;
            s.bytes += c.bytes;
            s.other += c.other;
            s.flood += c.flood;
        }
        Ok(s)
    }

    /// The generator's counters, summed over CPUs.
    pub fn gen_state(&self) -> Result<GenState> {
        let mut s = GenState::default();
        for c in self.gen_state.get(&0, 0)?.iter() {
            s.seq += c.seq;
            s.sent += c.sent;
            s.paced_out += c.paced_out;
        }
        Ok(s)
    }

    /// Starts the generator on a thread in namespace `ns` pinned to `cpu`,
    /// sending `frame`-byte frames as configured by [`Progs::set_gen`]
    /// (which may change while it runs).
    pub fn start(&mut self, ns: &str, cpu: usize, frame: u16) -> Result<Running> {
        let mut ebpf = self.generator.take().context("generator already running")?;
        let file = router_user::backend::netns::open(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let r = (|| -> Result<()> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
                pin(0, cpu)?;
                let prog = xdp_mut(&mut ebpf, PROG_GEN)?;
                let data = vec![0u8; frame as usize];
                while !stop2.load(Ordering::Relaxed) && !super::stopped() {
                    prog.test_run(TestRunOptions {
                        data_in: Some(&data),
                        repeat: REPEAT,
                        attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(BATCH),
                        ..Default::default()
                    })
                    .context("BPF_PROG_TEST_RUN with live frames")?;
                }
                Ok(())
            })();
            (ebpf, r)
        });
        Ok(Running { stop, handle })
    }

    /// Stops the generator and takes its object back.
    pub fn stop(&mut self, r: Running) -> Result<()> {
        r.stop.store(true, Ordering::Relaxed);
        let (ebpf, res) = r
            .handle
            .join()
            .map_err(|_| anyhow!("generator thread panicked"))?;
        self.generator = Some(ebpf);
        res
    }

    /// Whether a running generator has failed already.
    pub fn check(r: &Running) -> Result<()> {
        if r.handle.is_finished() && !r.stop.load(Ordering::Relaxed) && !super::stopped() {
            bail!("the generator stopped early");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The generator's frames, through BPF_PROG_TEST_RUN (one frame, not
    //! live): headers as configured, checksums verified here, on their
    //! own terms (a one's complement sum over the header, and over the
    //! pseudo-header and segment).

    use aya::{
        EbpfLoader,
        maps::Array,
        programs::{TestRun as _, TestRunOptions, Xdp},
    };
    use router_common::bench::{FLOOD_DPORT, GenConfig};

    fn sum(b: &[u8]) -> u32 {
        b.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum()
    }

    fn folds_to_zero(mut s: u32) -> bool {
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s == 0xffff
    }

    /// Runs the generator `n` times on a 60-byte frame; the frames it
    /// wrote.
    fn generate(cfg: GenConfig, n: usize) -> Vec<Vec<u8>> {
        let mut ebpf = EbpfLoader::new().load(crate::OBJECT).expect("load");
        let p: &mut Xdp = ebpf
            .program_mut("xr_bench_gen")
            .unwrap()
            .try_into()
            .unwrap();
        p.load().expect("verifier");
        let mut m: Array<_, GenConfig> = Array::try_from(ebpf.map_mut("XRB_GEN").unwrap()).unwrap();
        m.set(0, cfg, 0).unwrap();
        let p: &Xdp = ebpf.program("xr_bench_gen").unwrap().try_into().unwrap();
        (0..n)
            .map(|_| {
                let input = [0xeeu8; 60];
                let mut out = vec![0u8; 60];
                let r = p
                    .test_run(TestRunOptions {
                        data_in: Some(&input),
                        data_out: Some(&mut out),
                        repeat: 1,
                        ..Default::default()
                    })
                    .expect("test run");
                assert_eq!(r.return_value, 4, "XDP_REDIRECT");
                out
            })
            .collect()
    }

    fn config() -> GenConfig {
        GenConfig {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            src: [10, 0, 0, 1],
            dst: [198, 18, 0, 1],
            sport: 10000,
            dport: 5001,
            flows: 4,
            nports: 4,
            ifindex: 1,
            frame_len: 60,
            ttl: 64,
            ..Default::default()
        }
    }

    #[test]
    fn syn_flood_frames_are_tcp_syns_with_valid_checksums() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root (BPF)");
            return;
        }
        let cfg = GenConfig {
            flood_every: 2,
            flood_syn: 1,
            ..config()
        };
        let frames = generate(cfg, 4);
        // Frames 0 and 2 are the flood's (every second one), 1 and 3 the
        // flows' UDP.
        for (i, f) in frames.iter().enumerate() {
            assert!(folds_to_zero(sum(&f[14..34])), "frame {i}: IPv4 checksum");
            if i % 2 == 1 {
                assert_eq!(f[23], 17, "frame {i}: a flow's UDP");
                continue;
            }
            assert_eq!(f[23], 6, "frame {i}: TCP");
            assert_eq!(u16::from_be_bytes([f[16], f[17]]), 40, "total length");
            assert_eq!(f[26], 100, "a spoofed client of 100.64.0.0/10");
            assert_eq!(f[27] & 0xc0, 64);
            assert_eq!(&f[30..34], &[198, 18, 0, 1]);
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), FLOOD_DPORT);
            assert_eq!(f[46] >> 4, 5, "no options");
            assert_eq!(f[47], 0x02, "SYN only");
            // Pseudo-header (addresses, protocol, TCP length) and segment.
            let pseudo = sum(&f[26..34]) + 6 + 20;
            assert!(
                folds_to_zero(pseudo + sum(&f[34..54])),
                "frame {i}: TCP checksum"
            );
        }
        assert_ne!(
            frames[0][26..30],
            frames[2][26..30],
            "a new client each time"
        );
    }

    #[test]
    fn a_flood_over_many_destinations_takes_them_in_turn() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root (BPF)");
            return;
        }
        let cfg = GenConfig {
            flood_every: 1,
            flood_dsts: 3,
            ..config()
        };
        let dsts: Vec<u8> = generate(cfg, 4).iter().map(|f| f[33]).collect();
        assert_eq!(dsts, [1, 2, 3, 1]);
    }
}
