//! One connection to the broker, speaking oslo.messaging RPC: calls with
//! a reply queue and a timeout, casts, fanout casts, and RPC servers.
//!
//! Reconnecting is the owner's job: when [`Rpc::closed`] resolves the
//! connection is gone; drop the `Rpc`, connect again and serve again (oslo
//! redeclares everything after a reconnect too).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_lite::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    tcp::{OwnedIdentity, OwnedTLSConfig},
    types::FieldTable,
    uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo},
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    dedup::Dedup,
    envelope::{Failure, Object, Reply, ReplyTo, Request, unique_id},
    options::QueueOptions,
    url::{Host, TransportUrl, host_port},
    version,
};

/// TLS settings (`[oslo_messaging_rabbit] ssl = true`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM file of the CAs to trust (the system's store when None).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for brokers that ask for one.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

/// What a connection needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: TransportUrl,
    /// The control exchange (Neutron: "neutron").
    pub exchange: String,
    pub queues: QueueOptions,
    pub tls: Option<Tls>,
    /// AMQP heartbeat in seconds (oslo's heartbeat_timeout_threshold).
    pub heartbeat: u16,
    /// Unacknowledged deliveries the broker may push (0: no limit).
    pub prefetch: u16,
    /// Name shown in RabbitMQ's connection list.
    pub client_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker {host}: {error}")]
    Connect { host: String, error: String },
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Tls(String),
}

/// Why a call returned no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no reply to {method} within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    #[error("{method} failed on the server: {failure}")]
    Remote { method: String, failure: Failure },
    #[error("{method}: {error}")]
    Transport { method: String, error: Error },
}

/// Where a request goes (oslo's Target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub topic: String,
    /// A cast or call to one server: routing key `topic.server`.
    pub server: Option<String>,
    /// To every server of the topic.
    pub fanout: bool,
}

impl Target {
    pub fn topic(topic: &str) -> Target {
        Target {
            topic: topic.into(),
            server: None,
            fanout: false,
        }
    }
    pub fn server(topic: &str, server: &str) -> Target {
        Target {
            topic: topic.into(),
            server: Some(server.into()),
            fanout: false,
        }
    }
    pub fn fanout(topic: &str) -> Target {
        Target {
            topic: topic.into(),
            server: None,
            fanout: true,
        }
    }
}

/// How long one broker may take to accept a connection (TCP, TLS, AMQP).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, Failure>>>>>;

/// A live connection.
pub struct Rpc {
    conn: Connection,
    /// The channel calls and casts publish on. A refused declaration
    /// (PRECONDITION_FAILED) closes it: the next publish opens another.
    chan: tokio::sync::Mutex<Channel>,
    settings: Settings,
    /// The broker connected to, as `host:port`.
    pub broker: String,
    reply_queue: String,
    pending: Pending,
    /// Set once a consumer of this connection has stopped.
    lost: watch::Receiver<bool>,
    lost_tx: Arc<watch::Sender<bool>>,
}

/// One method call or cast received by a server.
#[derive(Debug)]
pub struct Incoming {
    pub request: Request,
    /// The topic the request came through (`T`, `T.host` or the fanout).
    pub via: String,
    chan: Channel,
}

impl Incoming {
    /// Whether the sender waits for a reply.
    pub fn is_call(&self) -> bool {
        self.request.reply_to.is_some()
    }

    /// Answers a call (a cast needs no answer: this does nothing).
    pub async fn reply(&self, result: Result<Value, Failure>) -> Result<(), Error> {
        let Some(to) = &self.request.reply_to else {
            return Ok(());
        };
        send_reply(&self.chan, to, result).await
    }
}

/// An RPC server's API: what it answers itself.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The version the endpoint implements ("1.4"); requests within it
    /// (same major, no newer minor) are served.
    pub version: String,
    /// The namespace requests must name (None: requests naming none).
    pub namespace: Option<String>,
    /// Methods served; anything else is answered NoSuchMethod.
    pub methods: Vec<String>,
}

async fn send_reply(
    chan: &Channel,
    to: &ReplyTo,
    result: Result<Value, Failure>,
) -> Result<(), Error> {
    let body = Reply {
        msg_id: to.msg_id.clone(),
        result,
        ending: true,
    }
    .encode();
    chan.basic_publish(
        "".into(),
        to.queue.as_str().into(),
        BasicPublishOptions::default(),
        &body,
        properties(None),
    )
    .await?;
    Ok(())
}

fn properties(expiration: Option<Duration>) -> BasicProperties {
    let p = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0);
    match expiration {
        Some(t) => p.with_expiration(t.as_millis().to_string().as_str().into()),
        None => p,
    }
}

fn tls_config(tls: &Tls) -> Result<OwnedTLSConfig, Error> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("reading {}: {e}", p.display())))
    };
    let cert_chain = match &tls.ca_file {
        Some(p) => Some(String::from_utf8_lossy(&read(p)?).into_owned()),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => Some(OwnedIdentity::PKCS8 {
            pem: read(c)?,
            key: read(k)?,
        }),
        (None, None) => None,
        _ => {
            return Err(Error::Tls(
                "ssl_cert_file and ssl_key_file must be given together".into(),
            ));
        }
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

impl Rpc {
    /// Connects to the first broker of the URL that answers, in order.
    pub async fn connect(settings: &Settings) -> Result<Rpc, Error> {
        let mut last = None;
        let n = settings.url.hosts.len();
        for (i, h) in settings.url.hosts.iter().enumerate() {
            // A broker that drops packets would hold the connect for the
            // kernel's SYN timeout (minutes): each gets CONNECT_TIMEOUT.
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_to(settings, h));
            let e = match attempt.await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => e,
                Err(_) => Error::Connect {
                    host: host_port(h),
                    error: format!("no answer within {CONNECT_TIMEOUT:?}"),
                },
            };
            // The last broker's error is the one returned (and logged by
            // the caller): logged here, it would be said twice.
            if i + 1 < n {
                tracing::warn!("{e}");
            }
            last = Some(e);
        }
        Err(last.unwrap_or(Error::Connect {
            host: "-".into(),
            error: "the transport URL names no broker".into(),
        }))
    }

    async fn connect_to(settings: &Settings, h: &Host) -> Result<Rpc, Error> {
        let broker = host_port(h);
        let err = |e: lapin::Error| Error::Connect {
            host: broker.clone(),
            error: e.to_string(),
        };
        let uri = AMQPUri {
            scheme: if settings.tls.is_some() {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: h.user.clone(),
                    password: h.password.clone(),
                },
                host: h.host.clone(),
                port: h.port,
            },
            vhost: settings.url.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(settings.heartbeat),
                connection_timeout: Some(CONNECT_TIMEOUT.as_millis() as u64),
                ..Default::default()
            },
        };
        let props = ConnectionProperties::default()
            .with_connection_name(settings.client_name.as_str().into());
        let conn = match &settings.tls {
            Some(tls) => {
                let runtime = lapin::runtime::default_runtime().map_err(err)?;
                Connection::connect_uri_with_config(uri, props, tls_config(tls)?, runtime)
                    .await
                    .map_err(err)?
            }
            None => Connection::connect_uri(uri, props).await.map_err(err)?,
        };
        let chan = conn.create_channel().await.map_err(err)?;
        let (lost_tx, lost) = watch::channel(false);
        let mut rpc = Rpc {
            conn,
            chan: tokio::sync::Mutex::new(chan),
            settings: settings.clone(),
            broker,
            reply_queue: format!("reply_{}", unique_id()),
            pending: Default::default(),
            lost,
            lost_tx: Arc::new(lost_tx),
        };
        rpc.start_replies().await?;
        Ok(rpc)
    }

    /// Declares the reply queue and routes replies to their callers.
    async fn start_replies(&mut self) -> Result<(), Error> {
        let d = self.settings.queues.reply();
        let chan = self.conn.create_channel().await?;
        // On the default exchange: no binding.
        declare_queue(&chan, &self.reply_queue, &d, None).await?;
        let mut consumer = chan
            .basic_consume(
                self.reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending = self.pending.clone();
        let lost = self.lost_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                match Reply::decode(&d.data) {
                    Ok(r) if r.ending => {
                        if let Some(tx) = pending.lock().unwrap().remove(&r.msg_id) {
                            let _ = tx.send(r.result);
                        }
                    }
                    // A call-monitor heartbeat: the caller keeps waiting.
                    Ok(_) => {}
                    Err(e) => tracing::warn!("unreadable reply dropped: {e}"),
                }
            }
            // No reply can come any more: the calls waiting fail now
            // rather than at their timeouts.
            fail_pending(&pending);
            let _ = lost.send(true);
        });
        Ok(())
    }

    /// Resolves once the connection is lost (a consumer stopped or the
    /// connection closed).
    pub async fn closed(&self) {
        let mut lost = self.lost.clone();
        loop {
            if *lost.borrow() || !self.conn.status().connected() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), lost.changed()).await;
        }
    }

    /// This connection's reply queue (`reply_<uuid>`), where the results
    /// of its calls arrive.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    pub fn is_connected(&self) -> bool {
        !*self.lost.borrow() && self.conn.status().connected()
    }

    /// Closes the connection (RabbitMQ then drops the exclusive queues).
    pub async fn close(&self) {
        let _ = self.conn.close(200, "bye".into()).await;
    }

    /// The publishing channel, opened again if the broker closed it (a
    /// channel error ends the channel, not the connection).
    async fn channel(&self) -> Result<Channel, Error> {
        let mut chan = self.chan.lock().await;
        if !chan.status().connected() && self.conn.status().connected() {
            tracing::debug!("publishing channel closed; opening another");
            *chan = self.conn.create_channel().await?;
        }
        Ok(chan.clone())
    }

    async fn declare_exchange(
        &self,
        chan: &Channel,
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
    ) -> Result<(), Error> {
        chan.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable,
                auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    async fn publish(
        &self,
        target: &Target,
        body: &[u8],
        expiration: Option<Duration>,
    ) -> Result<(), Error> {
        let q = &self.settings.queues;
        let chan = self.channel().await?;
        let (exchange, key) = if target.fanout {
            let ex = format!("{}_fanout", target.topic);
            self.declare_exchange(
                &chan,
                &ex,
                ExchangeKind::Fanout,
                q.fanout_exchange_durable(),
                true,
            )
            .await?;
            (ex, target.topic.clone())
        } else {
            let t = q.topic();
            self.declare_exchange(
                &chan,
                &self.settings.exchange,
                ExchangeKind::Topic,
                t.durable,
                t.auto_delete,
            )
            .await?;
            let key = match &target.server {
                Some(s) => format!("{}.{s}", target.topic),
                None => target.topic.clone(),
            };
            (self.settings.exchange.clone(), key)
        };
        chan.basic_publish(
            exchange.as_str().into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties(expiration),
        )
        .await?;
        Ok(())
    }

    /// Calls `method` on `target` and waits up to `timeout` for the result.
    pub async fn call(
        &self,
        target: &Target,
        method: &str,
        args: Object,
        version: &str,
        context: Object,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let mut r = Request::new(method, args, version, context);
        let msg_id = unique_id();
        r.reply_to = Some(ReplyTo {
            msg_id: msg_id.clone(),
            queue: self.reply_queue.clone(),
        });
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(msg_id.clone(), tx);
        let sent = self.publish(target, &r.encode(None), Some(timeout)).await;
        let out = match sent {
            Err(error) => Err(CallError::Transport {
                method: method.into(),
                error,
            }),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(v))) => Ok(v),
                Ok(Ok(Err(failure))) => Err(CallError::Remote {
                    method: method.into(),
                    failure,
                }),
                Ok(Err(_)) => Err(CallError::Transport {
                    method: method.into(),
                    error: Error::Connect {
                        host: self.broker.clone(),
                        error: "connection lost while waiting for the reply".into(),
                    },
                }),
                Err(_) => Err(CallError::Timeout {
                    method: method.into(),
                    timeout,
                }),
            },
        };
        self.pending.lock().unwrap().remove(&msg_id);
        out
    }

    /// Sends `method` to `target` without waiting for anything.
    pub async fn cast(
        &self,
        target: &Target,
        method: &str,
        args: Object,
        version: &str,
        context: Object,
    ) -> Result<(), Error> {
        let r = Request::new(method, args, version, context);
        self.publish(target, &r.encode(None), None).await
    }

    /// Serves `topic` as server `server` (oslo's RPC server): consumes the
    /// topic queue, the server's own queue and a fanout queue of its own.
    /// Requests the endpoint does not serve are answered here (NoSuchMethod,
    /// UnsupportedVersion, the ping); repeats of a `_unique_id` are dropped;
    /// the rest arrive on the returned channel.
    pub async fn serve(
        &self,
        topic: &str,
        server: &str,
        endpoint: Endpoint,
    ) -> Result<mpsc::Receiver<Incoming>, Error> {
        let q = &self.settings.queues;
        let chan = self.conn.create_channel().await?;
        if self.settings.prefetch > 0 {
            chan.basic_qos(self.settings.prefetch, BasicQosOptions::default())
                .await?;
        }
        let t = q.topic();
        let exchange = self.settings.exchange.as_str();
        self.declare_exchange(
            &chan,
            exchange,
            ExchangeKind::Topic,
            t.durable,
            t.auto_delete,
        )
        .await?;
        let mut queues = Vec::new();
        for name in [topic.to_string(), format!("{topic}.{server}")] {
            declare_queue(&chan, &name, &t, Some((exchange, &name))).await?;
            queues.push(name);
        }
        let fanout_ex = format!("{topic}_fanout");
        let fanout_q = if q.rabbit_stream_fanout {
            fanout_ex.clone()
        } else {
            format!("{topic}_fanout_{}", unique_id())
        };
        let durable = q.fanout_exchange_durable();
        self.declare_exchange(&chan, &fanout_ex, ExchangeKind::Fanout, durable, true)
            .await?;
        declare_queue(&chan, &fanout_q, &q.fanout(), Some((&fanout_ex, topic))).await?;
        queues.push(fanout_q);

        let (tx, rx) = mpsc::channel(1024);
        let dedup = Arc::new(Mutex::new(Dedup::default()));
        for name in queues {
            let mut consumer = chan
                .basic_consume(
                    name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let (tx, chan, endpoint, dedup, lost) = (
                tx.clone(),
                chan.clone(),
                endpoint.clone(),
                dedup.clone(),
                self.lost_tx.clone(),
            );
            tokio::spawn(async move {
                while let Some(Ok(d)) = consumer.next().await {
                    // oslo acknowledges on receipt: a request is never
                    // redelivered to another server after a crash.
                    let _ = d.ack(BasicAckOptions::default()).await;
                    let request = match Request::decode(&d.data) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!("{name}: unreadable message dropped: {e}");
                            continue;
                        }
                    };
                    if let Some(u) = &request.unique_id
                        && !dedup.lock().unwrap().first_time(u)
                    {
                        tracing::debug!("{name}: repeated message {u} dropped");
                        continue;
                    }
                    let incoming = Incoming {
                        request,
                        via: name.clone(),
                        chan: chan.clone(),
                    };
                    if let Some(answer) = answer_itself(&endpoint, &incoming.request) {
                        if let Err(e) = incoming.reply(answer).await {
                            tracing::warn!("{name}: reply to {}: {e}", incoming.request.method);
                        }
                        continue;
                    }
                    if tx.send(incoming).await.is_err() {
                        return;
                    }
                }
                let _ = lost.send(true);
            });
        }
        Ok(rx)
    }
}

/// Ends every call waiting for a reply: dropping their senders makes them
/// fail with "connection lost while waiting for the reply".
fn fail_pending(pending: &Pending) {
    pending.lock().unwrap().clear();
}

/// Declares queue `name` as `d` says and binds it to `(exchange, key)`.
async fn declare_queue(
    chan: &Channel,
    name: &str,
    d: &crate::options::Declaration,
    bind: Option<(&str, &str)>,
) -> Result<(), Error> {
    chan.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: d.durable,
            auto_delete: d.auto_delete,
            ..Default::default()
        },
        d.table(),
    )
    .await?;
    if let Some((exchange, key)) = bind {
        chan.queue_bind(
            name.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

/// The answer the server gives without its owner: the ping, or oslo's
/// dispatcher errors. A cast with such an error is dropped (logged).
fn answer_itself(endpoint: &Endpoint, r: &Request) -> Option<Result<Value, Failure>> {
    if r.method == "oslo_rpc_server_ping" {
        return Some(Ok(Value::String("pong".into())));
    }
    // oslo's dispatcher: an endpoint of another namespace or an
    // incompatible version does not count; with none left the version is
    // unsupported, with one the method must exist.
    let failure = if r.namespace != endpoint.namespace
        || !version::compatible(&endpoint.version, &r.version)
    {
        Failure::unsupported_version(&r.version, &r.method)
    } else if !endpoint.methods.contains(&r.method) {
        Failure::no_such_method(&r.method)
    } else {
        return None;
    };
    if r.reply_to.is_none() {
        tracing::warn!("cast dropped: {}", failure.message);
    } else {
        tracing::warn!("call answered with {}: {}", failure.class, failure.message);
    }
    Some(Err(failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, version: &str) -> Request {
        Request::new(method, Object::new(), version, Object::new())
    }

    #[test]
    fn waiting_calls_fail_once_replies_cannot_come() {
        let pending: Pending = Default::default();
        let (tx, mut rx) = oneshot::channel();
        pending.lock().unwrap().insert("m1".into(), tx);
        fail_pending(&pending);
        assert!(pending.lock().unwrap().is_empty());
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn the_server_answers_ping_and_dispatch_errors_itself() {
        let ep = Endpoint {
            version: "1.4".into(),
            namespace: None,
            methods: vec!["routers_updated".into()],
        };
        assert_eq!(
            answer_itself(&ep, &req("oslo_rpc_server_ping", "1.0")),
            Some(Ok(Value::String("pong".into())))
        );
        assert_eq!(answer_itself(&ep, &req("routers_updated", "1.1")), None);
        assert_eq!(
            answer_itself(&ep, &req("routers_updated", "1.5")),
            Some(Err(Failure::unsupported_version("1.5", "routers_updated")))
        );
        assert_eq!(
            answer_itself(&ep, &req("routers_updated", "2.0")),
            Some(Err(Failure::unsupported_version("2.0", "routers_updated")))
        );
        assert_eq!(
            answer_itself(&ep, &req("frobnicate", "1.0")),
            Some(Err(Failure::no_such_method("frobnicate")))
        );
        assert_eq!(
            answer_itself(&ep, &req("frobnicate", "3.0")),
            Some(Err(Failure::unsupported_version("3.0", "frobnicate")))
        );
        let mut r = req("routers_updated", "1.0");
        r.namespace = Some("other".into());
        assert_eq!(
            answer_itself(&ep, &r),
            Some(Err(Failure::unsupported_version("1.0", "routers_updated")))
        );
    }
}
