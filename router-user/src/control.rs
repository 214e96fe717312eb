//! The daemon's control socket: one JSON request line, one JSON answer line.
//! The socket lives in the state directory (mode 0700) and is itself 0600,
//! so only root can talk to the daemon.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Re-read the routers file and apply it.
    Reload,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    /// Routers whose apply failed (they keep their previous state); empty
    /// when the whole request failed (e.g. a file that does not validate)
    /// or succeeded.
    #[serde(default)]
    pub failed: Vec<String>,
}

impl Reply {
    /// A request that failed as a whole.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            message: message.into(),
            failed: vec![],
        }
    }
}

/// One connection to the daemon: its request (read within 5 s), or the
/// answer that it could not be read; then [`Connection::answer`].
pub struct Connection {
    w: tokio::net::unix::OwnedWriteHalf,
}

/// Takes a connection in: the request, or the reply saying why there is
/// none, and the connection to answer on.
pub async fn receive(stream: UnixStream) -> (Result<Request, Reply>, Connection) {
    let (r, w) = stream.into_split();
    let req = match tokio::time::timeout(std::time::Duration::from_secs(5), read_request(r)).await {
        Ok(Ok(req)) => Ok(req),
        Ok(Err(e)) => Err(Reply::error(format!("{e:#}"))),
        Err(_) => Err(Reply::error("timed out reading the request")),
    };
    (req, Connection { w })
}

impl Connection {
    /// Writes the answer line (a client gone meanwhile is no error).
    pub async fn answer(mut self, reply: &Reply) -> Result<()> {
        let mut line = serde_json::to_string(reply)?;
        line.push('\n');
        let _ = self.w.write_all(line.as_bytes()).await;
        Ok(())
    }
}

/// Sends a request to the daemon and waits for its answer.
pub async fn call(socket: &Path, req: &Request) -> Result<Reply> {
    let s = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(e).with_context(|| {
                format!(
                    "the daemon's control socket {} is root's: run this as root",
                    socket.display()
                )
            });
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "no xrouter daemon answers on {} (is `xrouter run` or `xrouter agent` running, \
                     with this --config, --state-dir or --config-file?)",
                    socket.display()
                )
            });
        }
    };
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    serde_json::from_str(&answer).context("malformed answer from the daemon")
}

/// Reads one request from a connection.
pub async fn read_request(r: tokio::net::unix::OwnedReadHalf) -> Result<Request> {
    let mut line = String::new();
    BufReader::new(r)
        .take(64 * 1024)
        .read_line(&mut line)
        .await?;
    serde_json::from_str(&line)
        .with_context(|| format!("bad request {}", crate::text::quote(line.trim())))
}

use tokio::io::AsyncReadExt as _;
