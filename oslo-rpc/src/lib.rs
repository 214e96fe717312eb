//! oslo.messaging's RPC over RabbitMQ (its `rabbit` driver), from Rust:
//! what an OpenStack agent needs to talk to its server.
//!
//! - [`url`]: `transport_url` with several brokers, credentials, vhost;
//! - [`envelope`]: the wire format (message format 2.0, replies, failures);
//! - [`options`]: queue and exchange declarations as the operator's
//!   `[oslo_messaging_rabbit]` options make them;
//! - [`version`], [`dedup`]: oslo's version rule and duplicate filter;
//! - [`rpc`]: a connection with calls, casts, fanout and RPC servers.
pub mod dedup;
pub mod envelope;
pub mod options;
pub mod rpc;
pub mod tls;
pub mod url;
pub mod version;

pub use envelope::{Failure, Object, Request};
pub use options::QueueOptions;
pub use rpc::{CallError, Endpoint, Error, Incoming, Rpc, Settings, Target, Tls};
pub use tls::{TlsProblem, check_tls};
pub use url::TransportUrl;
