//! The messages oslo.messaging puts on the wire (message format 2.0).
//!
//! The AMQP body is `{"oslo.version": "2.0", "oslo.message": "<JSON text>"}`:
//! the inner message is serialized to a string, not nested. A request
//! carries `method`, `args`, `version`, optional `namespace`, a
//! `_unique_id`, one `_context_<key>` per request-context key and, for a
//! call, `_msg_id`, `_reply_q` and `_timeout`. A reply carries `result`,
//! `failure` (null or a JSON text describing the exception), `ending`,
//! `_msg_id` and `_unique_id`.

use serde_json::{Map, Value, json};

pub type Object = Map<String, Value>;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("body is not JSON: {0}")]
    Json(String),
    #[error("oslo.version {0:?} is not 2.0")]
    Version(String),
    #[error("{0}")]
    Shape(String),
}

/// Wraps an inner message in the 2.0 envelope.
pub fn wrap(inner: &Object) -> Vec<u8> {
    let text = serde_json::to_string(inner).expect("a JSON object serializes");
    serde_json::to_vec(&json!({"oslo.version": "2.0", "oslo.message": text}))
        .expect("a JSON object serializes")
}

/// The inner message of an envelope. A body without an envelope (format
/// 1.0, still accepted by oslo) is taken as the message itself.
pub fn unwrap(body: &[u8]) -> Result<Object, DecodeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(mut o) = v else {
        return Err(DecodeError::Shape("body is not a JSON object".into()));
    };
    let Some(version) = o.remove("oslo.version") else {
        return Ok(o);
    };
    if version != "2.0" {
        return Err(DecodeError::Version(
            version
                .as_str()
                .map_or_else(|| version.to_string(), str::to_string),
        ));
    }
    let Some(Value::String(text)) = o.remove("oslo.message") else {
        return Err(DecodeError::Shape("oslo.message is not a string".into()));
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(DecodeError::Shape(
            "oslo.message is not a JSON object".into(),
        )),
        Err(e) => Err(DecodeError::Json(format!("oslo.message: {e}"))),
    }
}

/// Where a call wants its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub msg_id: String,
    pub queue: String,
}

/// A request (call or cast) as the server sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub args: Object,
    /// "1.0" when the sender gave none (oslo's default target version).
    pub version: String,
    pub namespace: Option<String>,
    pub unique_id: Option<String>,
    /// The request context, without the `_context_` prefixes.
    pub context: Object,
    /// Set for a call.
    pub reply_to: Option<ReplyTo>,
}

impl Request {
    /// A new request with a fresh `_unique_id` (a cast until `reply_to` is
    /// set).
    pub fn new(method: &str, args: Object, version: &str, context: Object) -> Request {
        Request {
            method: method.to_string(),
            args,
            version: version.to_string(),
            namespace: None,
            unique_id: Some(unique_id()),
            context,
            reply_to: None,
        }
    }

    pub fn encode(&self, timeout_field: Option<f64>) -> Vec<u8> {
        let mut m = Object::new();
        m.insert("method".into(), self.method.clone().into());
        m.insert("args".into(), Value::Object(self.args.clone()));
        m.insert("version".into(), self.version.clone().into());
        if let Some(ns) = &self.namespace {
            m.insert("namespace".into(), ns.clone().into());
        }
        if let Some(r) = &self.reply_to {
            m.insert("_msg_id".into(), r.msg_id.clone().into());
            m.insert("_reply_q".into(), r.queue.clone().into());
            m.insert(
                "_timeout".into(),
                timeout_field.map_or(Value::Null, Value::from),
            );
        }
        if let Some(u) = &self.unique_id {
            m.insert("_unique_id".into(), u.clone().into());
        }
        for (k, v) in &self.context {
            m.insert(format!("_context_{k}"), v.clone());
        }
        wrap(&m)
    }

    pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
        let mut m = unwrap(body)?;
        let method = match m.remove("method") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(DecodeError::Shape("method is not a string".into())),
            None => return Err(DecodeError::Shape("no method".into())),
        };
        let args = match m.remove("args") {
            Some(Value::Object(a)) => a,
            None | Some(Value::Null) => Object::new(),
            Some(_) => return Err(DecodeError::Shape("args is not an object".into())),
        };
        let string = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string));
        let version = string(m.remove("version")).unwrap_or_else(|| "1.0".into());
        let namespace = string(m.remove("namespace"));
        let unique_id = string(m.remove("_unique_id"));
        let reply_to = match (string(m.remove("_msg_id")), string(m.remove("_reply_q"))) {
            (Some(msg_id), Some(queue)) => Some(ReplyTo { msg_id, queue }),
            _ => None,
        };
        let context = m
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("_context_").map(|k| (k.to_string(), v)))
            .collect();
        Ok(Request {
            method,
            args,
            version,
            namespace,
            unique_id,
            context,
            reply_to,
        })
    }
}

/// An exception as oslo sends it back to a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub class: String,
    pub module: String,
    pub message: String,
}

impl Failure {
    /// oslo's dispatcher error for a method no endpoint has.
    pub fn no_such_method(method: &str) -> Failure {
        Failure {
            class: "NoSuchMethod".into(),
            module: "oslo_messaging.rpc.dispatcher".into(),
            message: format!("Endpoint does not support RPC method {method}"),
        }
    }

    /// oslo's dispatcher error for a version no endpoint supports.
    pub fn unsupported_version(version: &str, method: &str) -> Failure {
        Failure {
            class: "UnsupportedVersion".into(),
            module: "oslo_messaging.rpc.dispatcher".into(),
            message: format!(
                "Endpoint does not support RPC version {version}. Attempted method: {method}"
            ),
        }
    }

    /// The JSON text of the reply's `failure` field.
    fn to_json_text(&self) -> String {
        json!({
            "class": self.class,
            "module": self.module,
            "message": self.message,
            "tb": [format!("{}: {}\n", self.class, self.message)],
            "args": [self.message],
            "kwargs": {},
        })
        .to_string()
    }

    fn from_field(v: &Value) -> Failure {
        // The field is a JSON text; anything else is shown as it is.
        let parsed: Option<Object> = v.as_str().and_then(|s| serde_json::from_str(s).ok());
        let get = |k: &str| {
            parsed
                .as_ref()
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match &parsed {
            Some(_) => Failure {
                class: get("class"),
                module: get("module"),
                message: get("message"),
            },
            None => Failure {
                class: "RemoteError".into(),
                module: String::new(),
                message: v.to_string(),
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}: {}", self.module, self.class, self.message)
    }
}

/// A reply to a call.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub msg_id: String,
    pub result: Result<Value, Failure>,
    /// False for oslo's call-monitor heartbeats (no result yet).
    pub ending: bool,
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let (result, failure) = match &self.result {
            Ok(v) => (v.clone(), Value::Null),
            Err(f) => (Value::Null, Value::String(f.to_json_text())),
        };
        let mut m = Object::new();
        m.insert("result".into(), result);
        m.insert("failure".into(), failure);
        m.insert("ending".into(), self.ending.into());
        m.insert("_msg_id".into(), self.msg_id.clone().into());
        m.insert("_unique_id".into(), unique_id().into());
        wrap(&m)
    }

    pub fn decode(body: &[u8]) -> Result<Reply, DecodeError> {
        let m = unwrap(body)?;
        let msg_id = m
            .get("_msg_id")
            .and_then(Value::as_str)
            .ok_or_else(|| DecodeError::Shape("reply without _msg_id".into()))?
            .to_string();
        let failure = m.get("failure").filter(|f| !f.is_null());
        let result = match failure {
            Some(f) => Err(Failure::from_field(f)),
            None => Ok(m.get("result").cloned().unwrap_or(Value::Null)),
        };
        // Before "ending" existed a reply was final; a message with
        // ending=false and nothing in it is a heartbeat.
        let ending = m.get("ending").and_then(Value::as_bool).unwrap_or(true);
        Ok(Reply {
            msg_id,
            result,
            ending,
        })
    }
}

/// A fresh message or unique ID: 32 hex digits, as oslo makes them.
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_call_is_wrapped_twice_and_reads_back() {
        let mut r = Request::new(
            "sync_routers",
            obj(json!({"host": "net1", "router_ids": ["a"]})),
            "1.0",
            obj(json!({"is_admin": true, "request_id": "req-1"})),
        );
        r.reply_to = Some(ReplyTo {
            msg_id: "m1".into(),
            queue: "reply_q1".into(),
        });
        let body = r.encode(None);
        let outer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        // The inner message is a string holding JSON, not an object.
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["method"], "sync_routers");
        assert_eq!(inner["_msg_id"], "m1");
        assert_eq!(inner["_reply_q"], "reply_q1");
        assert_eq!(inner["_timeout"], Value::Null);
        assert_eq!(inner["_context_is_admin"], true);
        assert_eq!(inner["_unique_id"].as_str().unwrap().len(), 32);
        assert!(inner.get("namespace").is_none());
        assert_eq!(Request::decode(&body).unwrap(), r);
    }

    #[test]
    fn python_formatted_messages_decode() {
        // As oslo.messaging 18.3 sends a cast (namespace absent, context keys).
        let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"routers_updated\", \"args\": {\"routers\": [\"r1\"]}, \"version\": \"1.0\", \"_unique_id\": \"u1\", \"_context_user_id\": null}"}"#;
        let r = Request::decode(body).unwrap();
        assert_eq!(r.method, "routers_updated");
        assert_eq!(r.args["routers"], json!(["r1"]));
        assert_eq!(r.context["user_id"], Value::Null);
        assert_eq!(r.reply_to, None);
        // Format 1.0 (no envelope) is still read.
        let r = Request::decode(br#"{"method": "x", "args": {}}"#).unwrap();
        assert_eq!((r.method.as_str(), r.version.as_str()), ("x", "1.0"));
        assert!(matches!(
            Request::decode(br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#),
            Err(DecodeError::Version(_))
        ));
        assert!(Request::decode(b"not json").is_err());
        assert!(
            Request::decode(br#"{"oslo.version": "2.0", "oslo.message": "{\"args\": {}}"}"#)
                .is_err()
        );
    }

    #[test]
    fn replies_carry_results_and_failures_in_oslo_form() {
        let ok = Reply {
            msg_id: "m".into(),
            result: Ok(json!("pong")),
            ending: true,
        };
        assert_eq!(Reply::decode(&ok.encode()).unwrap(), ok);
        let bad = Reply {
            msg_id: "m".into(),
            result: Err(Failure::no_such_method("frobnicate")),
            ending: true,
        };
        let body = bad.encode();
        let inner = unwrap(&body).unwrap();
        // failure is a JSON text with oslo's keys.
        let f: Value = serde_json::from_str(inner["failure"].as_str().unwrap()).unwrap();
        assert_eq!(f["class"], "NoSuchMethod");
        assert_eq!(f["module"], "oslo_messaging.rpc.dispatcher");
        assert_eq!(
            f["message"],
            "Endpoint does not support RPC method frobnicate"
        );
        assert_eq!(
            f["args"],
            json!(["Endpoint does not support RPC method frobnicate"])
        );
        assert!(f["tb"].is_array() && f["kwargs"].is_object());
        assert_eq!(Reply::decode(&body).unwrap(), bad);
        // A heartbeat (ending false, nothing in it).
        let hb = br#"{"oslo.version": "2.0", "oslo.message": "{\"result\": null, \"failure\": null, \"ending\": false, \"_msg_id\": \"m\"}"}"#;
        assert!(!Reply::decode(hb).unwrap().ending);
        assert_eq!(
            Failure::unsupported_version("2.0", "sync").message,
            "Endpoint does not support RPC version 2.0. Attempted method: sync"
        );
    }
}
