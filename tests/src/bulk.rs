//! Bulk TCP both ways, as a node carries it (with the hosts' offloads, a
//! sender hands the router large GSO segments): a client uploads N bytes,
//! the server checks them and sends M bytes back, and says which address
//! the connection came from. Bounded in time.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Bound for one whole transfer.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The byte at offset `i` of a transfer: a pattern a lost or duplicated
/// segment cannot reproduce.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A bulk server in a namespace, stopped on drop.
pub struct BulkServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BulkServer {
    /// Listens on `0.0.0.0:port` in `ns`.
    pub fn start(ns: &str, port: u16) -> Result<BulkServer> {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        let listener =
            router_user::backend::netns::run_in(Some(ns), move || TcpListener::bind(addr))?
                .with_context(|| format!("binding TCP {addr} in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => conns.push(thread::spawn(move || {
                        let _ = serve(stream, peer.to_string());
                    })),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Ok(BulkServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the header (bytes up, bytes down), the upload (checking it), and
/// answers: the download, then `ok|bad <peer>\n`.
fn serve(mut s: TcpStream, peer: String) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr)?;
    let up = u64::from_be_bytes(hdr[..8].try_into().unwrap());
    let down = u64::from_be_bytes(hdr[8..].try_into().unwrap());
    let mut buf = vec![0u8; 1 << 16];
    let (mut got, mut good) = (0u64, true);
    while got < up {
        let n = s.read(&mut buf[..((up - got) as usize).min(1 << 16)])?;
        if n == 0 {
            bail!("upload cut at {got}");
        }
        good &= buf[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(got + i as u64));
        got += n as u64;
    }
    let mut sent = 0u64;
    while sent < down {
        let n = ((down - sent) as usize).min(1 << 16);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
        }
        s.write_all(&buf[..n])?;
        sent += n as u64;
    }
    let verdict = if good { "ok" } else { "bad" };
    s.write_all(format!("{verdict} {peer}\n").as_bytes())?;
    Ok(())
}

/// What a transfer showed.
#[derive(Debug)]
pub struct Transfer {
    /// The address the server saw the connection come from.
    pub peer: SocketAddrV4,
    pub elapsed: Duration,
}

/// Uploads `up` bytes to the bulk server at `dst` from `ns`, downloads
/// `down` bytes back; fails unless every byte arrived intact both ways
/// within [`TRANSFER_TIMEOUT`].
pub fn transfer(ns: &str, dst: SocketAddrV4, up: u64, down: u64) -> Result<Transfer> {
    let t0 = Instant::now();
    let mut s = crate::probe::tcp_connect(ns, None, dst, IO_TIMEOUT)?;
    let ctx = || format!("bulk {ns} -> {dst}");
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(&up.to_be_bytes());
    hdr[8..].copy_from_slice(&down.to_be_bytes());
    s.write_all(&hdr).with_context(ctx)?;
    // Upload on a second handle while this one reads, so neither side's
    // buffers can stall the other.
    let mut w = s.try_clone()?;
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        let mut sent = 0u64;
        while sent < up {
            let n = ((up - sent) as usize).min(1 << 16);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            w.write_all(&buf[..n])?;
            sent += n as u64;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    while got < down {
        if t0.elapsed() > TRANSFER_TIMEOUT {
            bail!("{}: download stalled at {got} of {down} bytes", ctx());
        }
        let n = s
            .read(&mut buf[..((down - got) as usize).min(1 << 16)])
            .with_context(|| format!("{}: download at {got} of {down}", ctx()))?;
        if n == 0 {
            bail!("{}: closed after {got} of {down} bytes", ctx());
        }
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(got + i as u64)) {
            bail!("{}: corrupt download at byte {}", ctx(), got + i as u64);
        }
        got += n as u64;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("upload thread panicked"))?
        .with_context(|| format!("{}: upload", ctx()))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            Ok(_) => break,
            Err(e) => return Err(e).with_context(|| format!("{}: verdict", ctx())),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let Some(("ok", peer)) = line.split_once(' ') else {
        bail!("{}: the server says {line:?}", ctx());
    };
    Ok(Transfer {
        peer: peer.parse().with_context(|| format!("peer in {line:?}"))?,
        elapsed: t0.elapsed(),
    })
}
