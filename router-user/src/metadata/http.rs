//! One VM connection of the metadata proxy: HTTP/1.1 with keep-alive, each
//! request forwarded to the metadata agent's unix socket with the headers
//! Neutron's haproxy config sets, the answer passed back. Everything that
//! can go wrong on the agent's side becomes an error page for the VM, never
//! a hang.

use std::{
    convert::Infallible,
    future::Future as _,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};

use super::{RouterProxy, limit::Limiter};

/// The largest request head a VM may send (haproxy's default buffer).
const MAX_HEAD: usize = 16 * 1024;
/// The largest request body (metadata requests are GETs, and the POST of
/// an instance password is 255 bytes).
pub const MAX_BODY: usize = 1024 * 1024;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_NEUTRON_ROUTER_ID: HeaderName = HeaderName::from_static("x-neutron-router-id");
const X_NEUTRON_NETWORK_ID: HeaderName = HeaderName::from_static("x-neutron-network-id");

/// Headers of one hop only: never passed on either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Serves one VM connection until it closes, times out, or `stop` turns
/// true (then the request under way, if any, is answered first).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<RouterProxy>,
    limiter: Option<Arc<Mutex<Limiter>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let s = &proxy.settings;
    // An idle keep-alive connection and a request head share hyper's one
    // timer, which starts when a request head is awaited.
    let head_timeout = Duration::from_secs(s.timeout_http_request.min(s.timeout_http_keep_alive));
    let io = TokioIo::new(Stalling::new(stream, Duration::from_secs(s.timeout_client)));
    let p = proxy.clone();
    let (asked, mut first) = tokio::sync::watch::channel(false);
    let svc = hyper::service::service_fn(move |req| {
        let p = p.clone();
        let limiter = limiter.clone();
        asked.send_replace(true);
        async move {
            let _counted = p.in_flight.enter();
            Ok::<_, Infallible>(handle(req, peer, &p, limiter.as_deref()).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true)
        // A VM may close its side once its request is sent.
        .half_close(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = super::stopped(&mut stop) => {}
    }
    // Stopping. A connection accepted but whose request has not been read
    // yet is not idle: its request is on its way. It gets a moment to
    // arrive before the connection is closed after its answer.
    if !*first.borrow() {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = first.wait_for(|f| *f) => {}
            _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// How long a stopping proxy waits for the first request of a connection
/// it accepted.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// One request: limited, rewritten, forwarded, answered.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    proxy: &RouterProxy,
    limiter: Option<&Mutex<Limiter>>,
) -> Response<Body> {
    if let Some(l) = limiter
        && !l.lock().unwrap().allow(peer.ip(), Instant::now())
    {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "You have sent too many requests in a given amount of time.",
        );
    }
    let too_long = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY as u64);
    if too_long {
        return page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large.",
        );
    }
    let req = rewrite(req, peer, &proxy.router);
    let mut cut_off = proxy.cut_off.subscribe();
    let forwarded = tokio::select! {
        r = forward(req, proxy) => r,
        _ = cut_off.wait_for(|c| *c) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the proxy stopped before the metadata agent answered".to_string(),
        )),
    };
    match forwarded {
        Ok(resp) => resp,
        Err((status, why)) => {
            proxy.complain(&why);
            page(status, message(status))
        }
    }
}

/// The request as the metadata agent must see it: `X-Forwarded-For` the
/// VM's address (whatever the VM wrote there is dropped, so it cannot
/// claim another instance's address), `X-Neutron-Router-ID` this router,
/// no `X-Neutron-Network-ID` (the agent would trust either).
fn rewrite(req: Request<Incoming>, peer: SocketAddr, router: &str) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    for name in HOP_BY_HOP {
        h.remove(*name);
    }
    // A WSGI server reads `X_Forwarded_For` as `X-Forwarded-For`: every
    // spelling of the three headers the proxy vouches for goes.
    let vouched: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            let n = k.as_str().replace('_', "-");
            [
                &X_FORWARDED_FOR,
                &X_NEUTRON_ROUTER_ID,
                &X_NEUTRON_NETWORK_ID,
            ]
            .iter()
            .any(|v| v.as_str() == n)
        })
        .cloned()
        .collect();
    for k in vouched {
        h.remove(k);
    }
    let ip = peer.ip().to_canonical();
    h.insert(
        X_FORWARDED_FOR,
        HeaderValue::from_str(&ip.to_string()).expect("an address is a valid header value"),
    );
    // Router ids are checked printable when read.
    if let Ok(v) = HeaderValue::from_str(router) {
        h.insert(X_NEUTRON_ROUTER_ID, v);
    }
    // One connection to the agent per request (haproxy's
    // `option http-server-close`).
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let body = Limited::new(body, MAX_BODY)
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e })
        .boxed();
    Request::from_parts(parts, body)
}

/// Sends `req` to the metadata agent and returns its answer, or the status
/// the VM gets instead and why.
async fn forward(
    req: Request<Body>,
    proxy: &RouterProxy,
) -> Result<Response<Body>, (StatusCode, String)> {
    let s = &proxy.settings;
    let socket = &s.socket;
    let unavailable = |e: String| (StatusCode::SERVICE_UNAVAILABLE, e);
    let stream = tokio::time::timeout(Duration::from_secs(s.timeout_connect), connect(socket))
        .await
        .map_err(|_| {
            unavailable(format!(
                "connecting to the metadata agent at {} timed out",
                socket.display()
            ))
        })?
        .map_err(|e| {
            unavailable(format!(
                "the metadata agent at {} is unreachable: {e}",
                socket.display()
            ))
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("metadata agent: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tokio::time::timeout(
        Duration::from_secs(s.timeout_server),
        sender.send_request(req),
    )
    .await
    .map_err(|_| {
        (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the metadata agent at {} did not answer within {} s",
                socket.display(),
                s.timeout_server
            ),
        )
    })?
    .map_err(|e| {
        (
            StatusCode::BAD_GATEWAY,
            format!("the exchange with the metadata agent failed: {e}"),
        )
    })?;
    let (mut parts, body) = resp.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let body = body
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .boxed();
    Ok(Response::from_parts(parts, body))
}

/// Connects to the metadata agent's socket; while its queue of pending
/// connections is full (a burst), tries again (the caller bounds it with
/// `timeout_connect`). Missing or refusing: an error at once.
async fn connect(socket: &std::path::Path) -> std::io::Result<UnixStream> {
    let mut pause = Duration::from_millis(5);
    loop {
        match UnixStream::connect(socket).await {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

fn message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => "No server is available to handle this request.",
        StatusCode::GATEWAY_TIMEOUT => "The server didn't respond in time.",
        _ => "The server returned an invalid or incomplete response.",
    }
}

/// An error page as haproxy words them.
fn page(status: StatusCode, text: &str) -> Response<Body> {
    let body = format!(
        "<html><body><h1>{} {}</h1>\n{text}\n</body></html>\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A VM's stream whose writes fail once they have made no progress for
/// `limit` (a client that stops reading must not hold its connection and
/// a slot of the router's 1,024 forever; reads are bounded by hyper's head
/// timeout and the agent's answer by `timeout_server`).
struct Stalling {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stalling {
    fn new(inner: TcpStream, limit: Duration) -> Stalling {
        Stalling {
            inner,
            limit,
            stalled: None,
        }
    }

    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        p: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if p.is_ready() {
            self.stalled = None;
            return p;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
