//! Traffic probes, all bounded in time.
//!
//! Sockets are created on a thread that joined the namespace (setns affects
//! only the calling thread) and stay in that namespace wherever they are used
//! afterwards.
//!
//! The TCP and UDP servers answer each line (datagram) with
//! `<server name> <peer ip>:<peer port>\n`: which host answered and the
//! address the connection came from.

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::{
    socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt},
    time::TimeVal,
};

use crate::cmd::{self, Out};

/// Bound for one probe (connect, or waiting for a reply).
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// `ip:port` as a SocketAddrV4 (panics on a typo in a test).
pub fn sa(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(
        ip.parse()
            .unwrap_or_else(|_| panic!("{ip} is not an IPv4 address")),
        port,
    )
}

/// What a server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The name of the server that answered.
    pub server: String,
    /// The address the server saw the request coming from.
    pub peer: SocketAddrV4,
}

impl Reply {
    pub fn peer_ip(&self) -> Ipv4Addr {
        *self.peer.ip()
    }

    fn parse(line: &str) -> Result<Reply> {
        let mut it = line.split_whitespace();
        let (Some(server), Some(peer)) = (it.next(), it.next()) else {
            bail!("malformed server reply {line:?}");
        };
        Ok(Reply {
            server: server.to_string(),
            peer: peer
                .parse()
                .with_context(|| format!("malformed server reply {line:?}"))?,
        })
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("unexpected IPv6 peer {a}"),
    }
}

fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    router_user::backend::netns::run_in(Some(ns), f)
}

/// A TCP echo-who server in a namespace, stopped on drop.
pub struct TcpServer {
    pub name: String,
    pub addr: SocketAddrV4,
    peers: Arc<Mutex<Vec<SocketAddrV4>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `0.0.0.0:port` in `ns`; answers as `name`.
    pub fn start(ns: &str, name: &str, port: u16) -> Result<TcpServer> {
        Self::start_on(ns, name, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
    }

    pub fn start_on(ns: &str, name: &str, addr: SocketAddrV4) -> Result<TcpServer> {
        let listener = in_ns(ns, move || TcpListener::bind(addr))?
            .with_context(|| format!("binding TCP {addr} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, n) = (peers.clone(), stop.clone(), name.to_string());
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let peer = v4(peer);
                        p.lock().unwrap().push(peer);
                        let (s, n) = (s.clone(), n.clone());
                        conns.push(thread::spawn(move || serve_tcp(stream, peer, &n, &s)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Ok(TcpServer {
            name: name.to_string(),
            addr,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    /// Source addresses of every connection accepted so far.
    pub fn peers(&self) -> Vec<SocketAddrV4> {
        self.peers.lock().unwrap().clone()
    }
}

fn serve_tcp(stream: TcpStream, peer: SocketAddrV4, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                line.clear();
                if w.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP echo-who server in a namespace, stopped on drop.
pub struct UdpServer {
    pub name: String,
    pub addr: SocketAddrV4,
    peers: Arc<Mutex<Vec<SocketAddrV4>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    /// Listens on `0.0.0.0:port` in `ns`; answers as `name`.
    pub fn start(ns: &str, name: &str, port: u16) -> Result<UdpServer> {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let sock = in_ns(ns, move || UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in {ns}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, n) = (peers.clone(), stop.clone(), name.to_string());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = sock.recv_from(&mut buf) {
                    let peer = v4(peer);
                    p.lock().unwrap().push(peer);
                    let mut answer = format!("{n} {peer}\n").into_bytes();
                    // "size=N": the answer padded to N bytes (a large reply).
                    if let Some(size) = std::str::from_utf8(&buf[..len])
                        .ok()
                        .and_then(|t| t.trim().strip_prefix("size="))
                        .and_then(|v| v.parse::<usize>().ok())
                    {
                        answer.resize(size.clamp(answer.len(), 60_000), b'.');
                    }
                    let _ = sock.send_to(&answer, peer);
                }
            }
        });
        Ok(UdpServer {
            name: name.to_string(),
            addr,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    pub fn peers(&self) -> Vec<SocketAddrV4> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Opens a TCP connection from namespace `ns` to `dst`, optionally bound to
/// `src` first; fails after `timeout`.
pub fn tcp_connect(
    ns: &str,
    src: Option<SocketAddrV4>,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream> {
    let fd = in_ns(ns, move || -> std::io::Result<OwnedFd> {
        socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(errno)
    })??;
    if let Some(src) = src {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        socket::bind(fd.as_raw_fd(), &SockaddrIn::from(src))
            .with_context(|| format!("binding {src} in {ns}"))?;
    }
    // On Linux, SO_SNDTIMEO bounds connect(); it then fails with EINPROGRESS.
    socket::setsockopt(
        &fd,
        sockopt::SendTimeout,
        &TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _),
    )?;
    match socket::connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINPROGRESS) | Err(nix::errno::Errno::EAGAIN) => {
            bail!("TCP connect from {ns} to {dst}: timed out after {timeout:?}")
        }
        Err(e) => bail!("TCP connect from {ns} to {dst}: {}", errno(e)),
    }
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// A TCP connection to an echo-who server that stays open across changes.
pub struct TcpSession {
    pub from: String,
    pub dst: SocketAddrV4,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl TcpSession {
    pub fn open(ns: &str, dst: SocketAddrV4) -> Result<TcpSession> {
        Self::open_from(ns, None, dst)
    }

    pub fn open_from(ns: &str, src: Option<SocketAddrV4>, dst: SocketAddrV4) -> Result<TcpSession> {
        let stream = tcp_connect(ns, src, dst, TIMEOUT)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(TcpSession {
            from: ns.to_string(),
            dst,
            stream,
            reader,
        })
    }

    /// The session's local address (as its own host sees it).
    pub fn local(&self) -> SocketAddrV4 {
        v4(self.stream.local_addr().expect("connected socket"))
    }

    /// Sends a line and waits (bounded) for the answer.
    pub fn exchange(&mut self) -> Result<Reply> {
        let ctx = || format!("TCP session {} -> {}", self.from, self.dst);
        self.stream.write_all(b"ping\n").with_context(ctx)?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(anyhow!("{}: closed by the peer", ctx())),
            Ok(_) if line.ends_with('\n') => Reply::parse(&line),
            Ok(_) => Err(anyhow!("{}: partial answer {line:?}", ctx())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(anyhow!("{}: no answer within {TIMEOUT:?}", ctx()))
            }
            Err(e) => Err(anyhow!("{}: {e}", ctx())),
        }
    }
}

/// One request on a fresh TCP connection from `ns` to `dst`.
pub fn tcp_request(ns: &str, dst: SocketAddrV4) -> Result<Reply> {
    TcpSession::open(ns, dst)?.exchange()
}

/// Same, with the client socket bound to `src` first (address and/or port).
pub fn tcp_request_from(ns: &str, src: SocketAddrV4, dst: SocketAddrV4) -> Result<Reply> {
    TcpSession::open_from(ns, Some(src), dst)?.exchange()
}

/// An unconnected UDP socket in `ns` on an ephemeral port.
pub fn udp_socket(ns: &str) -> Result<UdpSocket> {
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    in_ns(ns, move || UdpSocket::bind(any))?.with_context(|| format!("UDP socket in {ns}"))
}

/// A connected UDP socket in `ns` (bound to `src` if given).
pub fn udp_connected(ns: &str, src: Option<SocketAddrV4>, dst: SocketAddrV4) -> Result<UdpSocket> {
    let bind = src.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let sock = in_ns(ns, move || UdpSocket::bind(bind))?
        .with_context(|| format!("binding UDP {bind} in {ns}"))?;
    sock.connect(dst)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    Ok(sock)
}

/// One UDP request from `ns` to an echo-who server at `dst`.
pub fn udp_request(ns: &str, src: Option<SocketAddrV4>, dst: SocketAddrV4) -> Result<Reply> {
    let sock = udp_connected(ns, src, dst)?;
    sock.send(b"ping\n")
        .with_context(|| format!("UDP send from {ns} to {dst}"))?;
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => Reply::parse(&String::from_utf8_lossy(&buf[..n])),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("UDP {ns} -> {dst}: no answer within {TIMEOUT:?}")
        }
        Err(e) => Err(e).with_context(|| format!("UDP {ns} -> {dst}")),
    }
}

/// One UDP request from `ns` to an echo-who server at `dst` asking for an
/// answer of `size` bytes; the reply and the size that arrived.
pub fn udp_request_sized(ns: &str, dst: SocketAddrV4, size: usize) -> Result<(Reply, usize)> {
    let sock = udp_connected(ns, None, dst)?;
    sock.send(format!("size={size}").as_bytes())
        .with_context(|| format!("UDP send from {ns} to {dst}"))?;
    let mut buf = vec![0u8; 65536];
    match sock.recv(&mut buf) {
        Ok(n) => {
            let line = String::from_utf8_lossy(&buf[..n]);
            let first = line.lines().next().unwrap_or_default();
            Ok((Reply::parse(first)?, n))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("UDP {ns} -> {dst}: no {size}-byte answer within {TIMEOUT:?}")
        }
        Err(e) => Err(e).with_context(|| format!("UDP {ns} -> {dst}")),
    }
}

/// `ping -n -c 1 -W 2 ARGS DST` in `ns` (ARGS may override -c). The Out
/// whatever the result; see [`Out::success`] and `stdout`.
pub fn ping(ns: &str, dst: &str, args: &[&str]) -> Out {
    let mut a = vec!["-n", "-c", "1", "-W", "2"];
    a.extend_from_slice(args);
    a.push(dst);
    cmd::exec(ns, "ping", &a, Duration::from_secs(8)).unwrap_or_else(|e| Out {
        what: format!("ping {dst} in {ns}"),
        code: None,
        stdout: String::new(),
        stderr: format!("{e:#}"),
        timed_out: false,
    })
}

/// `conntrack -L` in `ns`: one line per entry (empty if none).
pub fn conntrack(ns: &str) -> Result<Vec<String>> {
    let out = cmd::exec(ns, "conntrack", &["-L"], cmd::CMD_TIMEOUT)?;
    if !out.success() {
        bail!("{}", out.describe());
    }
    Ok(out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Conntrack entries in `ns` that mention address `addr` (as src= or dst=).
pub fn conntrack_with(ns: &str, addr: &str) -> Result<Vec<String>> {
    let s = format!("src={addr} ");
    let d = format!("dst={addr} ");
    Ok(conntrack(ns)?
        .into_iter()
        .filter(|l| {
            let l = format!("{l} ");
            l.contains(&s) || l.contains(&d)
        })
        .collect())
}

/// IPv4 addresses (with prefix) on `dev` in `ns`, e.g. "192.168.1.104/32".
pub fn addresses(ns: &str, dev: &str) -> Result<Vec<String>> {
    let v = cmd::ip_json(ns, &format!("-4 addr show dev {dev}"))?;
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                out.push(format!("{ip}/{p}"));
            }
        }
    }
    Ok(out)
}

/// `ip -j link show dev DEV` in `ns`: the link object, or None if absent.
pub fn link(ns: &str, dev: &str) -> Option<serde_json::Value> {
    let out = cmd::exec(
        ns,
        "ip",
        &["-j", "link", "show", "dev", dev],
        cmd::CMD_TIMEOUT,
    )
    .ok()?;
    if !out.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    v.as_array()?.first().cloned()
}

/// Whether device `dev` exists in `ns`.
pub fn link_exists(ns: &str, dev: &str) -> bool {
    link(ns, dev).is_some()
}

/// Reads a sysctl (`net.ipv4.ip_forward`) as seen inside `ns`.
pub fn sysctl_get(ns: &str, key: &str) -> Result<String> {
    let p = format!("/proc/sys/{}", key.replace('.', "/"));
    let v = in_ns(ns, move || std::fs::read_to_string(&p))?
        .with_context(|| format!("reading {key} in {ns}"))?;
    Ok(v.trim().to_string())
}
