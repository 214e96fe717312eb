//! Tiny TCP probes run inside namespaces: a server that tells each client
//! the address it saw, and a client that asks. Used by `xrouter demo`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::backend::netns;

/// A server in a namespace answering each connection with "<peer ip>\n".
pub struct Server {
    pub seen: mpsc::Receiver<SocketAddr>,
}

/// Starts a server on `addr` inside `ns`, serving at most `max` connections
/// and giving up after `life` (so it never outlives the demo).
pub fn serve(ns: &str, addr: SocketAddr, max: usize, life: Duration) -> Result<Server> {
    let listener = netns::run_in(Some(ns), move || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr} in {ns}"))?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + life;
        let mut served = 0;
        while served < max && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    served += 1;
                    let _ = s.set_nonblocking(false);
                    let _ = writeln!(s, "{}", peer.ip());
                    let _ = tx.send(peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Ok(Server { seen: rx })
}

/// Connects from `ns` to `to` and returns the address the server saw.
pub fn ask(ns: &str, to: SocketAddr, timeout: Duration) -> Result<String> {
    let s = netns::run_in(Some(ns), move || TcpStream::connect_timeout(&to, timeout))?
        .with_context(|| format!("connecting from {ns} to {to}"))?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .with_context(|| format!("reading the answer of {to}"))?;
    Ok(line.trim().to_string())
}
