//! The connection tables from userspace: listing, expiry and flushing, plus
//! the outcome and event counters.
//!
//! The table (`XR_CT`, read and written through [`CtTable`]) holds an
//! entry per direction, embryonic and established connections alike. Each entry's value is the packet's
//! tuple after translation, so the other direction's key is that tuple
//! reversed ([`partner`]) — for either direction. Each entry keeps its own
//! `last_seen` and TCP state (updated by packets of its direction only); a
//! connection's last activity is the later of the two and its TCP state the
//! further advanced (NONE < SYN_SENT < ESTABLISHED < FIN < CLOSED).

use std::{fmt, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::maps::{Map, PerCpuArray};
use router_common::{
    conntrack::{
        CT_F_ASSURED, CT_F_REPLIED, CT_REPLY, CtEntry, CtKey, NAT_DNAT, NAT_SNAT, TCP_CLOSED,
        TCP_ESTABLISHED, TCP_FIN, TCP_NONE, TCP_SYN_SENT, ct_ticks,
    },
    counters::{Counter, CtEvent, Outcome},
};
use serde::Serialize;

use super::{BpfRouter, XR_COUNTERS, XR_CT, XR_CT_EVENTS, monotonic_ns, table::CtTable};

/// Maps keyed by packet tuples, which the network chooses: foldhash, seeded
/// per process, is several times faster than SipHash on a million
/// connections and not trivially collided.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

const SEC: u64 = 1_000_000_000;

/// Idle timeouts, in nanoseconds.
pub const TIMEOUT_TCP_ESTABLISHED: u64 = 24 * 3600 * SEC;
pub const TIMEOUT_TCP_SYN_SENT: u64 = 120 * SEC;
pub const TIMEOUT_TCP_FIN: u64 = 120 * SEC;
pub const TIMEOUT_TCP_CLOSED: u64 = 10 * SEC;
pub const TIMEOUT_TCP_NONE: u64 = 120 * SEC;
pub const TIMEOUT_UDP: u64 = 30 * SEC;
/// UDP once a reply has been seen ("assured" in conntrack's words).
pub const TIMEOUT_UDP_REPLIED: u64 = 60 * SEC;
pub const TIMEOUT_ICMP: u64 = 30 * SEC;

/// The key of the other direction of the connection `(k, e)` belongs to.
pub fn partner(k: &CtKey, e: &CtEntry) -> CtKey {
    e.partner(k)
}

/// One connection as found in the table: either direction may be missing
/// (a new connection evicted it, or the BPF code is between its two
/// inserts).
#[derive(Clone, Copy, Debug)]
struct Conn {
    orig: Option<(CtKey, CtEntry)>,
    reply: Option<(CtKey, CtEntry)>,
}

impl Conn {
    fn entries(&self) -> impl Iterator<Item = &(CtKey, CtEntry)> {
        self.orig.iter().chain(self.reply.iter())
    }

    fn proto(&self) -> u8 {
        self.entries().next().map_or(0, |(k, _)| k.proto)
    }

    fn last_seen(&self) -> u64 {
        self.entries().map(|(_, e)| e.last_seen).max().unwrap_or(0)
    }

    fn state(&self) -> u8 {
        self.entries()
            .map(|(_, e)| e.state)
            .max()
            .unwrap_or(TCP_NONE)
    }

    /// Whether a packet was seen in the reply direction: the programs mark
    /// both entries (`CT_F_REPLIED`). (The reply entry's `last_seen`, which
    /// only replies touch, says so too, but not for a reply within the
    /// coarse clock's tick of the first packet: a LAN's.)
    fn replied(&self) -> bool {
        self.entries().any(|(_, e)| e.flags & CT_F_REPLIED != 0)
            || self
                .reply
                .is_some_and(|(_, e)| ct_ticks(e.last_seen) != e.created)
    }

    fn timeout(&self) -> u64 {
        timeout_ns(self.proto(), self.state(), self.replied())
    }

    fn expired(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen()) > self.timeout()
    }

    /// Whether any of its tuples has an address of `set`.
    fn touches(&self, set: &std::collections::HashSet<[u8; 4]>) -> bool {
        self.entries().any(|(k, e)| {
            set.contains(&k.src)
                || set.contains(&k.dst)
                || set.contains(&e.new_src)
                || set.contains(&e.new_dst)
        })
    }
}

/// Idle timeout of a connection of `proto` in TCP `state`; `replied`:
/// packets were seen both ways (matters for UDP).
pub fn timeout_ns(proto: u8, state: u8, replied: bool) -> u64 {
    match proto {
        PROTO_TCP => match state {
            TCP_ESTABLISHED => TIMEOUT_TCP_ESTABLISHED,
            TCP_SYN_SENT => TIMEOUT_TCP_SYN_SENT,
            TCP_FIN => TIMEOUT_TCP_FIN,
            TCP_CLOSED => TIMEOUT_TCP_CLOSED,
            _ => TIMEOUT_TCP_NONE,
        },
        PROTO_UDP if replied => TIMEOUT_UDP_REPLIED,
        PROTO_UDP => TIMEOUT_UDP,
        PROTO_ICMP => TIMEOUT_ICMP,
        _ => TIMEOUT_UDP,
    }
}

/// Groups a snapshot of the table into connections; every key lands in
/// exactly one. Two entries pair up only when each is the other's partner.
fn connections(table: &HashMap<CtKey, CtEntry>) -> Vec<Conn> {
    let mut seen: HashSet<CtKey> = HashSet::default();
    let mut out = Vec::new();
    for (k, e) in table {
        if !seen.insert(*k) {
            continue;
        }
        let pk = partner(k, e);
        let p = table
            .get(&pk)
            .filter(|p| pk != *k && partner(&pk, p) == *k && p.direction != e.direction)
            .filter(|_| !seen.contains(&pk))
            .map(|p| (pk, *p));
        if p.is_some() {
            seen.insert(pk);
        }
        let me = Some((*k, *e));
        out.push(if e.direction == CT_REPLY {
            Conn { orig: p, reply: me }
        } else {
            Conn { orig: me, reply: p }
        });
    }
    out
}

/// The connections of `all`, each as its entries: established ones first,
/// then the most recently seen (what a smaller table keeps).
pub(super) fn by_priority(all: &HashMap<CtKey, CtEntry>) -> Vec<Vec<(CtKey, CtEntry)>> {
    use std::cmp::Reverse;
    let mut conns = connections(all);
    conns.sort_by_key(|c| {
        let established = c.entries().any(|(_, e)| e.flags & CT_F_ASSURED != 0);
        (Reverse(established), Reverse(c.last_seen()))
    });
    conns
        .iter()
        .map(|c| c.entries().copied().collect())
        .collect()
}

/// One side of a connection, readable: addresses and ports in host form.
/// For ICMP echo both ports hold the echo id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

/// One tracked connection, as `xrouter show flows` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// "tcp", "udp", "icmp" or the protocol number.
    pub proto: String,
    /// The first packet's tuple as it arrived.
    pub orig: Tuple,
    /// That tuple after translation, as it left.
    pub translated: Tuple,
    /// TCP: NONE, SYN_SENT, ESTABLISHED, FIN, CLOSED; others: UNREPLIED or
    /// REPLIED.
    pub state: String,
    pub snat: bool,
    pub dnat: bool,
    /// Whether the reply direction's entry is present.
    pub has_reply_entry: bool,
    /// Established (embryonic connections are the ones a new connection
    /// may evict when its part of the table is full).
    pub established: bool,
    /// Seconds since the connection's first packet.
    pub age_secs: u64,
    /// Seconds since its last packet (either way).
    pub idle_secs: u64,
    /// Seconds of idleness left before [`BpfRouter::gc`] removes it.
    pub expires_secs: u64,
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        n => n.to_string(),
    }
}

fn state_name(proto: u8, state: u8, replied: bool) -> String {
    if proto == PROTO_TCP {
        match state {
            TCP_NONE => "NONE",
            TCP_SYN_SENT => "SYN_SENT",
            TCP_ESTABLISHED => "ESTABLISHED",
            TCP_FIN => "FIN",
            TCP_CLOSED => "CLOSED",
            _ => "?",
        }
    } else if replied {
        "REPLIED"
    } else {
        "UNREPLIED"
    }
    .into()
}

fn tuple(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
    Tuple {
        src: Ipv4Addr::from(src),
        sport: u16::from_be(sport),
        dst: Ipv4Addr::from(dst),
        dport: u16::from_be(dport),
    }
}

impl Flow {
    fn of(c: &Conn, now_ns: u64, established: bool) -> Option<Flow> {
        let (k, e) = c.orig?;
        let idle = now_ns.saturating_sub(c.last_seen());
        Some(Flow {
            proto: proto_name(k.proto),
            orig: tuple(k.src, k.sport, k.dst, k.dport),
            translated: tuple(e.new_src, e.new_sport, e.new_dst, e.new_dport),
            state: state_name(k.proto, c.state(), c.replied()),
            snat: e.nat & NAT_SNAT != 0,
            dnat: e.nat & NAT_DNAT != 0,
            has_reply_entry: c.reply.is_some(),
            established,
            age_secs: e.age_ns(now_ns) / SEC,
            idle_secs: idle / SEC,
            expires_secs: c.timeout().saturating_sub(idle) / SEC,
        })
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

impl fmt::Display for Flow {
    /// `tcp 81.1.180.12:40000 -> 192.168.1.15:80  =>  192.168.1.110:51123 ->
    /// 192.168.1.15:80  ESTABLISHED snat  age 12s idle 1s` (one line; ICMP
    /// shows `addr -> addr id N`). A connection whose reply entry is
    /// missing ends in `  no reply entry`: its replies are not translated
    /// back (every tracked connection has both entries; one without is
    /// broken, and what a user of it sees).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |t: &Tuple| {
            if self.proto == "icmp" {
                format!("{} -> {} id {}", t.src, t.dst, t.sport)
            } else {
                t.to_string()
            }
        };
        let nat = match (self.snat, self.dnat) {
            (true, true) => "snat+dnat",
            (true, false) => "snat",
            (false, true) => "dnat",
            (false, false) => "-",
        };
        write!(
            f,
            "{} {}  =>  {}  {} {}{}  age {}s idle {}s",
            self.proto,
            side(&self.orig),
            side(&self.translated),
            self.state,
            nat,
            if self.established { "" } else { " embryonic" },
            self.age_secs,
            self.idle_secs
        )?;
        if !self.has_reply_entry {
            write!(f, "  no reply entry")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(has_reply_entry: bool) -> Flow {
        let t = |a: [u8; 4], p| Tuple {
            src: Ipv4Addr::from(a),
            sport: p,
            dst: Ipv4Addr::new(192, 168, 1, 15),
            dport: 80,
        };
        Flow {
            proto: "tcp".into(),
            orig: t([10, 0, 0, 5], 40000),
            translated: t([192, 168, 1, 110], 51123),
            state: "ESTABLISHED".into(),
            snat: true,
            dnat: false,
            has_reply_entry,
            established: true,
            age_secs: 12,
            idle_secs: 1,
            expires_secs: 100,
        }
    }

    #[test]
    fn a_flow_reads_as_one_line_and_flags_a_missing_reply_entry() {
        let whole = "tcp 10.0.0.5:40000 -> 192.168.1.15:80  =>  192.168.1.110:51123 -> \
                     192.168.1.15:80  ESTABLISHED snat  age 12s idle 1s";
        assert_eq!(flow(true).to_string(), whole);
        assert_eq!(flow(false).to_string(), format!("{whole}  no reply entry"));
    }
}

/// Entries a `BPF_MAP_LOOKUP_BATCH` call returns at most (reading an
/// earlier build's hash tables, [`super::carry`]).
pub(super) const BATCH: usize = 4096;

/// Where the next batch read of a hash table starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cursor {
    Start,
    /// The kernel's token (a hash bucket index).
    At(u64),
    /// The last read reached the table's end.
    End,
}

/// One `BPF_MAP_LOOKUP_BATCH` of at most `max` entries at `from` into the
/// byte buffers `keys` and `values` (room for `max` of each, of the map's
/// sizes): where the next starts and how many were read; None when the
/// kernel refuses batches on this map (nothing was read).
pub(super) fn lookup_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    from: Cursor,
    keys: &mut [u8],
    values: &mut [u8],
    max: usize,
) -> Result<Option<(Cursor, usize)>> {
    use std::os::fd::AsRawFd as _;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut token_in = match from {
        Cursor::Start => 0,
        Cursor::At(t) => t,
        Cursor::End => return Ok(Some((Cursor::End, 0))),
    };
    let mut token_out = 0u64;
    // union bpf_attr, batch: in_batch, out_batch, keys, values, count,
    // map_fd, elem_flags, flags.
    let mut attr = [0u64; 8];
    attr[0] = if from == Cursor::Start {
        0
    } else {
        &mut token_in as *mut u64 as u64
    };
    attr[1] = &mut token_out as *mut u64 as u64;
    attr[2] = keys.as_mut_ptr() as u64;
    attr[3] = values.as_mut_ptr() as u64;
    attr[4] = (max as u64) | ((fd.as_raw_fd() as u64) << 32);
    // SAFETY: the caller gives buffers of `max` keys and `max` values of
    // the map's sizes, which live across the call; the kernel writes at
    // most `count` of each.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            attr.as_mut_ptr(),
            56usize,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if r < 0 && errno != libc::ENOENT {
        if from == Cursor::Start
            && (errno == libc::EINVAL || errno == libc::ENOTSUP || errno == libc::EOPNOTSUPP)
        {
            return Ok(None);
        }
        anyhow::bail!(
            "reading the connection table: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    let count = ((attr[4] & 0xffff_ffff) as usize).min(max);
    // ENOENT: that was the last batch (possibly empty).
    Ok(Some((
        if r < 0 {
            Cursor::End
        } else {
            Cursor::At(token_out)
        },
        count,
    )))
}

/// A snapshot of a connection table.
fn table(t: &CtTable) -> HashMap<CtKey, CtEntry> {
    t.all().collect()
}

/// The shortest idle timeout any connection of `proto` can have: an entry
/// idle for less cannot belong to an expired connection.
fn min_timeout_ns(proto: u8) -> u64 {
    [TCP_NONE, TCP_SYN_SENT, TCP_ESTABLISHED, TCP_FIN, TCP_CLOSED]
        .iter()
        .flat_map(|s| [false, true].map(|r| timeout_ns(proto, *s, r)))
        .min()
        .unwrap_or(0)
}

/// [`min_timeout_ns`] of every protocol number, computed once (the GC
/// consults it for every chunk of every pass).
fn timeout_floors() -> &'static [u64] {
    static FLOORS: std::sync::LazyLock<Vec<u64>> =
        std::sync::LazyLock::new(|| (0..=u8::MAX).map(min_timeout_ns).collect());
    &FLOORS
}

/// The expired connections among `old` (entries of a stretch of the
/// table idle longer than their protocol's shortest timeout): each is
/// paired with its partner, looked up in the table if it is not among
/// them, and judged as a connection.
fn expired_among(mut old: HashMap<CtKey, CtEntry>, t: &CtTable, now_ns: u64) -> Vec<Conn> {
    let partners: Vec<(CtKey, CtEntry)> = old
        .iter()
        .map(|(k, e)| partner(k, e))
        .filter(|pk| !old.contains_key(pk))
        .filter_map(|pk| t.get(&pk).map(|p| (pk, p)))
        .collect();
    old.extend(partners);
    connections(&old)
        .into_iter()
        .filter(|c| c.expired(now_ns))
        .collect()
}

/// Expires the connections among slots `slots` of the table (partners
/// may sit anywhere; they are looked up), then reclaims the range's freed
/// slots (`CtTable::reclaim`): (entries read, deleted).
pub(super) fn expire_slots(
    t: &CtTable,
    slots: std::ops::Range<u32>,
    now_ns: u64,
) -> (usize, usize) {
    let floor = timeout_floors();
    let mut scanned = 0;
    let old: HashMap<CtKey, CtEntry> = t
        .entries(slots.clone())
        .inspect(|_| scanned += 1)
        .filter(|(k, e)| now_ns.saturating_sub(e.last_seen) > floor[k.proto as usize])
        .collect();
    let deleted = if old.is_empty() {
        0
    } else {
        let doomed = expired_among(old, t, now_ns);
        delete_idle(t, &doomed)
    };
    // The slots freed, now or before, whose lookups need not read on.
    t.reclaim(slots);
    (scanned, deleted)
}

/// Expires a whole connection table at `now_ns`; returns the entries
/// deleted.
pub(super) fn gc_table(t: &CtTable, now_ns: u64) -> usize {
    expire_slots(t, 0..t.slots(), now_ns).1
}

/// Deletes the entries of `conns` whose `last_seen` did not move since
/// the snapshot they come from.
fn delete_idle(t: &CtTable, conns: &[Conn]) -> usize {
    let mut n = 0;
    for c in conns {
        let moved = c
            .entries()
            .any(|(k, e)| t.get(k).is_some_and(|now| now.last_seen != e.last_seen));
        if !moved {
            for (k, e) in c.entries() {
                n += usize::from(t.remove_if(k, |now| now.last_seen == e.last_seen));
            }
        }
    }
    n
}

/// Removes both entries of a connection; returns how many were there.
fn remove_conn(t: &CtTable, c: &Conn) -> usize {
    c.entries().filter(|(k, _)| t.remove(k)).count()
}

/// Per-CPU counters summed, in [`Outcome::ALL`] order.
fn sum_counters<T: std::borrow::Borrow<aya::maps::MapData>>(
    a: &PerCpuArray<T, Counter>,
) -> Result<Vec<(Outcome, Counter)>> {
    let mut out = Vec::with_capacity(Outcome::ALL.len());
    for o in Outcome::ALL {
        let mut sum = Counter::default();
        for c in a.get(&(o as u32), 0)?.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        out.push((o, sum));
    }
    Ok(out)
}

/// The tracked connections of a snapshot of the table, sorted by
/// original tuple.
fn flows_of(all: &HashMap<CtKey, CtEntry>) -> Vec<Flow> {
    let now = monotonic_ns();
    let mut out: Vec<Flow> = connections(all)
        .iter()
        .filter_map(|c| {
            let established = c.entries().any(|(_, e)| e.flags & CT_F_ASSURED != 0);
            Flow::of(c, now, established)
        })
        .collect();
    out.sort_by(|a, b| (&a.proto, a.orig).cmp(&(&b.proto, b.orig)));
    out
}

/// Per-CPU event counters summed, in [`CtEvent::ALL`] order.
fn sum_events<T: std::borrow::Borrow<aya::maps::MapData>>(
    a: &PerCpuArray<T, u64>,
) -> Result<Vec<(CtEvent, u64)>> {
    let mut out = Vec::with_capacity(CtEvent::ALL.len());
    for ev in CtEvent::ALL {
        out.push((ev, a.get(&(ev as u32), 0)?.iter().sum()));
    }
    Ok(out)
}

impl BpfRouter {
    /// The connection table, mapped.
    pub fn ct(&self) -> Result<CtTable> {
        match self.ebpf.map(XR_CT) {
            Some(Map::Array(d)) => CtTable::of(d),
            _ => anyhow::bail!("the BPF object has no connection table {XR_CT}"),
        }
    }

    /// A snapshot of the connection table.
    pub fn ct_entries(&self) -> Result<HashMap<CtKey, CtEntry>> {
        Ok(table(&self.ct()?))
    }

    /// Inserts one entry into the connection table (tests, tools); an
    /// entry already there for `k` is kept.
    pub fn ct_insert(&mut self, k: &CtKey, e: &CtEntry) -> Result<()> {
        self.ct()?
            .insert(k, e)
            .map_err(|why| anyhow::anyhow!("inserting into {XR_CT}: {why:?}"))
    }

    /// The tracked connections (those whose original-direction entry is
    /// present), sorted by original tuple.
    pub fn flows(&self) -> Result<Vec<Flow>> {
        Ok(flows_of(&self.ct_entries()?))
    }

    /// Deletes the connections idle longer than their timeout at `now_ns`
    /// ([`monotonic_ns`]): TCP ESTABLISHED 24 h, SYN_SENT/FIN/NONE 120 s,
    /// CLOSED 10 s; UDP 30 s, 60 s once replied; ICMP 30 s. Both directions
    /// go together. Returns the number of entries deleted (two per full
    /// connection).
    pub fn gc(&mut self, now_ns: u64) -> Result<usize> {
        Ok(gc_table(&self.ct()?, now_ns))
    }

    /// Deletes every connection (both directions) with `ip` as source or
    /// destination of its original or translated tuple — for a floating IP
    /// or gateway IP that went away. Returns the number of entries deleted.
    pub fn flush_address(&mut self, ip: Ipv4Addr) -> Result<usize> {
        self.flush_addresses(&[ip])
    }

    /// [`Self::flush_address`] for many addresses in one scan of each table
    /// (releasing thousands of floating IPs at once).
    pub fn flush_addresses(&mut self, ips: &[Ipv4Addr]) -> Result<usize> {
        if ips.is_empty() {
            return Ok(0);
        }
        let set: std::collections::HashSet<[u8; 4]> = ips.iter().map(|i| i.octets()).collect();
        let t = self.ct()?;
        // Unconditionally: a packet in between must not save it.
        Ok(connections(&table(&t))
            .iter()
            .filter(|c| c.touches(&set))
            .map(|c| remove_conn(&t, c))
            .sum())
    }

    /// The outcome counters, summed over CPUs, in [`Outcome::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Outcome, Counter)>> {
        let map = self
            .ebpf
            .map(XR_COUNTERS)
            .with_context(|| format!("the BPF object has no map {XR_COUNTERS}"))?;
        sum_counters(&PerCpuArray::try_from(map)?)
    }

    /// The connection-table events, summed over CPUs.
    pub fn events(&self) -> Result<Vec<(CtEvent, u64)>> {
        let map = self
            .ebpf
            .map(XR_CT_EVENTS)
            .with_context(|| format!("the BPF object has no map {XR_CT_EVENTS}"))?;
        sum_events(&PerCpuArray::try_from(map)?)
    }
}

#[cfg(test)]
/// An SNAT connection as the BPF code records it: both entries.
pub(super) fn snat_pair(
    inside: [u8; 4],
    sport: u16,
    outside: [u8; 4],
    dport: u16,
    gw: [u8; 4],
    port: u16,
    t: u64,
) -> [(CtKey, CtEntry); 2] {
    let k = |src, sport: u16, dst, dport: u16| CtKey {
        src,
        dst,
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: PROTO_TCP,
        ..Default::default()
    };
    let ok = k(inside, sport, outside, dport);
    let oe = CtEntry {
        new_src: gw,
        new_dst: outside,
        new_sport: port.to_be(),
        new_dport: dport.to_be(),
        direction: router_common::conntrack::CT_ORIGINAL,
        nat: NAT_SNAT,
        state: TCP_ESTABLISHED,
        flags: 0,
        last_seen: t,
        created: ct_ticks(t),
        route: Default::default(),
    };
    let rk = k(outside, dport, gw, port);
    let re = CtEntry {
        new_src: outside,
        new_dst: inside,
        new_sport: dport.to_be(),
        new_dport: sport.to_be(),
        direction: CT_REPLY,
        ..oe
    };
    [(ok, oe), (rk, re)]
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn partners_pair_up_both_ways() {
        let [(ok, oe), (rk, re)] = snat_pair(
            [81, 1, 180, 12],
            40000,
            [192, 168, 1, 15],
            80,
            [192, 168, 1, 110],
            51123,
            5,
        );
        assert_eq!(partner(&ok, &oe), rk);
        assert_eq!(partner(&rk, &re), ok);
        let table: HashMap<_, _> = [(ok, oe), (rk, re)].into_iter().collect();
        let conns = connections(&table);
        assert_eq!(conns.len(), 1);
        assert!(conns[0].orig.is_some() && conns[0].reply.is_some());
    }

    #[test]
    fn flow_prints_one_line() {
        let [(ok, mut oe), (rk, mut re)] = snat_pair(
            [81, 1, 180, 12],
            40000,
            [192, 168, 1, 15],
            80,
            [192, 168, 1, 110],
            51123,
            0,
        );
        oe.last_seen = 11 * SEC;
        re.last_seen = 11 * SEC;
        let table: HashMap<_, _> = [(ok, oe), (rk, re)].into_iter().collect();
        let f = Flow::of(&connections(&table)[0], 12 * SEC, true).unwrap();
        assert_eq!(
            f.to_string(),
            "tcp 81.1.180.12:40000 -> 192.168.1.15:80  =>  192.168.1.110:51123 -> \
             192.168.1.15:80  ESTABLISHED snat  age 12s idle 1s"
        );
        let f = Flow::of(&connections(&table)[0], 12 * SEC, false).unwrap();
        assert!(
            f.to_string().contains("ESTABLISHED snat embryonic  age"),
            "{f}"
        );
        let j = serde_json::to_value(&f).unwrap();
        assert_eq!(j["orig"]["src"], "81.1.180.12");
        assert_eq!(j["translated"]["sport"], 51123);
    }

    #[test]
    fn timeouts_follow_state_and_replies() {
        let [o, mut r] = snat_pair([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, [10, 0, 0, 3], 3, 0);
        let mut c = Conn {
            orig: Some(o),
            reply: Some(r),
        };
        assert_eq!(c.timeout(), TIMEOUT_TCP_ESTABLISHED);
        r.1.state = TCP_FIN;
        c.reply = Some(r);
        assert_eq!(c.timeout(), TIMEOUT_TCP_FIN);
        let mut o = o;
        o.0.proto = PROTO_UDP;
        r.0.proto = PROTO_UDP;
        let c = Conn {
            orig: Some(o),
            reply: Some(r),
        };
        assert_eq!(c.timeout(), TIMEOUT_UDP);
        r.1.last_seen = 5 * SEC;
        let c = Conn {
            orig: Some(o),
            reply: Some(r),
        };
        assert_eq!(c.timeout(), TIMEOUT_UDP_REPLIED);
        assert!(!c.expired(TIMEOUT_UDP_REPLIED));
        assert!(c.expired(TIMEOUT_UDP_REPLIED + 6 * SEC));
        // Answered within the clock's tick: the flag says so.
        r.1.last_seen = (r.1.created as u64) << router_common::conntrack::CT_TICK_SHIFT;
        o.1.flags |= CT_F_REPLIED;
        let c = Conn {
            orig: Some(o),
            reply: Some(r),
        };
        assert_eq!(c.timeout(), TIMEOUT_UDP_REPLIED);
        assert_eq!(state_name(PROTO_UDP, c.state(), c.replied()), "REPLIED");
    }
}

/// Read-only views of a router's pinned maps, for `xrouter show` (which
/// runs beside the daemon and must not load or attach anything).
pub mod pinned {
    use std::path::Path;

    use anyhow::{Context as _, Result};
    use aya::maps::{Map, MapData, PerCpuArray};
    use router_common::counters::{Counter, CtEvent, Outcome};

    use super::Flow;
    use crate::backend::bpf::{XR_COUNTERS, XR_CT, XR_CT_EVENTS, table::CtTable};

    fn open(pin_dir: &Path, router_id: &str, name: &str) -> Result<MapData> {
        let p = pin_dir.join(router_id).join(name);
        MapData::from_pin(&p).with_context(|| format!("opening pinned map {}", p.display()))
    }

    /// A router's connection table, mapped.
    pub fn ct(pin_dir: &Path, router_id: &str) -> Result<CtTable> {
        CtTable::of(&open(pin_dir, router_id, XR_CT)?)
            .with_context(|| format!("router {router_id}: {XR_CT}"))
    }

    /// The slots in use in a router's connection table as its programs
    /// count them (`CtTable::fill`), read without mapping the table; None
    /// for a table of an earlier layout.
    pub fn slots_in_use(pin_dir: &Path, router_id: &str) -> Result<Option<i64>> {
        CtTable::fill_of(&open(pin_dir, router_id, XR_CT)?)
            .with_context(|| format!("router {router_id}: {XR_CT}"))
    }

    /// The tracked connections of a router, sorted by original tuple.
    pub fn flows(pin_dir: &Path, router_id: &str) -> Result<Vec<Flow>> {
        Ok(super::flows_of(&super::table(&ct(pin_dir, router_id)?)))
    }

    /// Collects the expired connections of a router through its pinned
    /// table (see `BpfRouter::gc`). Blocking and proportional to the
    /// table: the daemon runs it off its event loop.
    pub fn gc(pin_dir: &Path, router_id: &str, now_ns: u64) -> Result<usize> {
        Ok(super::gc_table(&ct(pin_dir, router_id)?, now_ns))
    }

    /// The entries in a router's connection table: (established,
    /// embryonic).
    pub fn count(pin_dir: &Path, router_id: &str) -> Result<(u64, u64)> {
        let (mut est, mut emb) = (0, 0);
        for (_, e) in ct(pin_dir, router_id)?.all() {
            if e.flags & router_common::conntrack::CT_F_ASSURED != 0 {
                est += 1;
            } else {
                emb += 1;
            }
        }
        Ok((est, emb))
    }

    /// The outcome counters of a router, summed over CPUs.
    pub fn counters(pin_dir: &Path, router_id: &str) -> Result<Vec<(Outcome, Counter)>> {
        let a: PerCpuArray<MapData, Counter> =
            PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, router_id, XR_COUNTERS)?))?;
        super::sum_counters(&a)
    }

    /// The connection-table events of a router, summed over CPUs.
    pub fn events(pin_dir: &Path, router_id: &str) -> Result<Vec<(CtEvent, u64)>> {
        let a: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, router_id, XR_CT_EVENTS)?))?;
        super::sum_events(&a)
    }
}
