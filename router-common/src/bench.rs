//! Types of the benchmark programs (`router-ebpf/src/bench.rs`): the
//! live-frames generator, the counting sink, the bare redirect and the
//! microbenchmark wrapper. Only `xrouter-bench` uses them.

/// Generator settings, index 0 of `XRB_GEN`. The program writes the whole
/// Ethernet/IPv4/UDP header of every frame from these (live frames are
/// recycled without their template being restored).
///
/// Flow `i` of `flows` (round robin, one per frame) has source port
/// `sport + i % nports`, source address `src + i / nports` (the address
/// taken as a big-endian integer) and destination port `dport + i / nports`
/// (so many flows do not all compete for SNAT ports towards one
/// destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GenConfig {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// First source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// Number of flows (>= 1).
    pub flows: u32,
    /// Source ports per source address (>= 1).
    pub nports: u32,
    /// Where the frames go: ifindex in the generator's namespace.
    pub ifindex: u32,
    /// Frame length without FCS (>= 42): IPv4 total length is this - 14.
    pub frame_len: u16,
    pub ttl: u8,
    /// 1: a flood's frames (see `flood_every`) are TCP SYNs, IPv4 total
    /// length 40 (the rest of the frame is Ethernet padding), with valid
    /// checksums; 0: UDP like the flows'.
    pub flood_syn: u8,
    /// Pacing: nanoseconds between frames (0: as fast as possible). Frames
    /// not yet due are dropped by the generator, never sent.
    pub gap_ns: u64,
    /// A flood beside the flows (0: none): every `flood_every`-th frame is
    /// a new flow, from a source of 100.64.0.0/10 never used before (a
    /// spoofed client), to port [`FLOOD_DPORT`] of the destination.
    pub flood_every: u32,
    /// A flood's destinations: its frames go to this many addresses from
    /// `dst` up, in turn (0 or 1: `dst` only). Gateway SNAT has a port
    /// range per destination: new connections to one would exhaust it.
    pub flood_dsts: u32,
}

/// Destination port of the flood's frames (the sink counts them apart).
pub const FLOOD_DPORT: u16 = 9;

const _: () = assert!(core::mem::size_of::<GenConfig>() == 56);
const _: () = assert!(core::mem::align_of::<GenConfig>() == 8);

/// Per-CPU generator state, index 0 of `XRB_GEN_STATE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GenState {
    /// Frames written (the flow index is derived from it).
    pub seq: u64,
    /// Frames redirected to the target.
    pub sent: u64,
    /// Frames dropped by the pacer (not yet due).
    pub paced_out: u64,
    /// When the next frame is due (bpf_ktime_get_ns).
    pub next_ns: u64,
}

const _: () = assert!(core::mem::size_of::<GenState>() == 32);

/// Per-CPU counters of the sink, index 0 of `XRB_SINK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SinkCounter {
    /// IPv4/UDP frames (the generator's traffic, as forwarded).
    pub packets: u64,
    pub bytes: u64,
    /// Anything else (ARP, IPv6, ...), dropped as well.
    pub other: u64,
    /// Of `packets`, those to [`FLOOD_DPORT`] (a flood's frames let through).
    pub flood: u64,
}

const _: () = assert!(core::mem::size_of::<SinkCounter>() == 32);

/// Microbenchmark settings, index 0 of `XRB_MICRO`: the frame
/// `xr_bench_micro` restores before each run of the pipeline.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MicroConfig {
    /// The first [`MICRO_HDR`] bytes of the frame.
    pub frame: [u8; MICRO_HDR],
    /// Where the run stops: one of the `STAGE_*` values (the pipeline's
    /// stages, cumulative; [`STAGE_FULL`] runs all of it).
    pub stage: u32,
    /// A new flow each run: [`NEW_PORTS`] or [`NEW_CLIENT`]; 0: none.
    pub new_flow: u32,
    /// Nonzero (a power of two): each run takes one of this many flows, in
    /// a scattered order, the destination port `1024 + flow` (wrapping), so
    /// the connections' entries are spread over the table as many flows' are.
    pub flows: u32,
    pub _pad: u32,
}

/// `MicroConfig::new_flow`: the source and destination ports from a counter.
pub const NEW_PORTS: u32 = 1;
/// `MicroConfig::new_flow`: the ports and the source address (in
/// 100.64.0.0/10, as a flood's spoofed clients) from a counter.
pub const NEW_CLIENT: u32 = 2;

/// `MicroConfig::stage`: the whole pipeline, as `xr_xdp` runs it.
pub const STAGE_FULL: u32 = 0;
/// Nothing: the program returns at once (the cost of a test run itself).
pub const STAGE_EMPTY: u32 = 1;
/// The frame's header restored, nothing else (the wrapper's own cost).
pub const STAGE_RESTORE: u32 = 2;
/// ... then priority tags, ARP and the headers parsed.
pub const STAGE_PARSE: u32 = 3;
/// ... then the ingress port and the martian checks (classify).
pub const STAGE_CLASSIFY: u32 = 4;
/// ... then the connection: lookup or creation, NAT, route (conntrack).
pub const STAGE_CONNTRACK: u32 = 5;
/// ... then the next hop's MAC (neighbour); after it, STAGE_FULL adds the
/// rewrite, the counter and the redirect.
pub const STAGE_NEIGHBOUR: u32 = 6;

/// Header bytes the microbenchmark restores (Ethernet + IPv4 + L4 header).
pub const MICRO_HDR: usize = 64;

const _: () = assert!(core::mem::size_of::<MicroConfig>() == MICRO_HDR + 16);

impl Default for MicroConfig {
    fn default() -> Self {
        MicroConfig {
            frame: [0; MICRO_HDR],
            stage: STAGE_FULL,
            new_flow: 0,
            flows: 0,
            _pad: 0,
        }
    }
}

crate::pod!(GenConfig, GenState, SinkCounter, MicroConfig);
