//! A stand-in for Neutron's metadata agent on its unix socket (the agent
//! itself needs neutron-server and Nova behind it): it answers every HTTP
//! request with what it received — method, path and every header, in order
//! — as JSON, so a test sees exactly what the proxy forwarded. It can be
//! told to take its time, and counts what it answered.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::{Value, json};

pub struct MetadataAgent {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    /// Milliseconds each answer waits.
    delay_ms: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MetadataAgent {
    /// Listens on `path` (replacing a stale socket file).
    pub fn start(path: &Path) -> MetadataAgent {
        let _ = std::fs::remove_file(path);
        let l =
            UnixListener::bind(path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        l.set_nonblocking(true).unwrap();
        Self::serve(path.to_path_buf(), move || {
            let (c, _) = l.accept()?;
            c.set_nonblocking(false)?;
            Ok(Box::new(c) as Box<dyn Stream>)
        })
    }

    /// The same echo on TCP `addr` inside namespace `ns` (a stand-in for
    /// Nova's metadata API behind Neutron's metadata agent).
    pub fn start_tcp(ns: &str, addr: std::net::SocketAddr) -> MetadataAgent {
        let l = router_user::backend::netns::run_in(Some(ns), || TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("binding {addr} in {ns}: {e}"));
        l.set_nonblocking(true).unwrap();
        Self::serve(PathBuf::new(), move || {
            let (c, _) = l.accept()?;
            c.set_nonblocking(false)?;
            Ok(Box::new(c) as Box<dyn Stream>)
        })
    }

    fn serve(
        path: PathBuf,
        accept: impl Fn() -> std::io::Result<Box<dyn Stream>> + Send + 'static,
    ) -> MetadataAgent {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (s, a, d) = (stop.clone(), answered.clone(), delay_ms.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match accept() {
                    Ok(c) => {
                        let (a, d) = (a.clone(), d.clone());
                        thread::spawn(move || {
                            if answer(c, &d).is_ok() {
                                a.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        MetadataAgent {
            path,
            stop,
            answered,
            delay_ms,
            thread: Some(thread),
        }
    }

    /// Makes every later answer wait `d`.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for MetadataAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A connection the echo answers on.
pub trait Stream: Read + Write + Send {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, d)
    }
}

impl Stream for TcpStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
}

/// Reads one request and answers it with its echo; the connection closes.
fn answer(mut c: Box<dyn Stream>, delay_ms: &AtomicU64) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(&mut c);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push(json!([k.trim(), v.trim()]));
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    r.read_exact(&mut body)?;
    let d = delay_ms.load(Ordering::Relaxed);
    if d > 0 {
        thread::sleep(Duration::from_millis(d));
    }
    drop(r);
    c.write_all(echo_answer(&method, &path, headers, &String::from_utf8_lossy(&body)).as_bytes())?;
    c.flush()
}

/// The stand-in agent's whole answer to a request: 200, and as JSON what
/// it received (`headers` as `[name, value]` pairs); the connection closes,
/// as the metadata agent's does.
pub fn echo_answer(method: &str, path: &str, headers: Vec<Value>, body: &str) -> String {
    let echo =
        json!({"method": method, "path": path, "headers": headers, "body": body}).to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{echo}",
        echo.len()
    )
}

/// The values of header `name` (any case) in an echo.
pub fn header_values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str().map(str::to_string))
        .collect()
}

/// What `curl` in a VM got: the status (0: no HTTP answer) and the body.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub body: String,
    pub out: crate::Out,
}

impl Fetched {
    /// The body as the stand-in agent's echo.
    pub fn echo(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `curl URL` inside `ns` with `args` before the URL (e.g. `-H` pairs),
/// bounded to 10 s.
pub fn curl(ns: &str, url: &str, args: &[&str]) -> Fetched {
    let mut a: Vec<&str> = vec!["-sS", "-m", "10", "-w", "\n%{http_code}"];
    a.extend_from_slice(args);
    a.push(url);
    let out = crate::cmd::exec(ns, "curl", &a, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    Fetched {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        out: out.clone(),
    }
}

/// The metadata URL a VM asks.
pub const METADATA_URL: &str = "http://169.254.169.254/latest/meta-data/";
