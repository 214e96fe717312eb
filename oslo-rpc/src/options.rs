//! How queues and exchanges are declared, following the operator's
//! `[oslo_messaging_rabbit]` options exactly as oslo.messaging's rabbit
//! driver does: RabbitMQ refuses (PRECONDITION_FAILED) a declaration that
//! differs from one already made, e.g. by a Python agent of the same
//! deployment.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The `[oslo_messaging_rabbit]` options that shape declarations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    pub amqp_durable_queues: bool,
    pub amqp_auto_delete: bool,
    pub rabbit_quorum_queue: bool,
    pub rabbit_transient_quorum_queue: bool,
    pub rabbit_stream_fanout: bool,
    /// Seconds an unused transient (reply, fanout) queue lives.
    pub rabbit_transient_queues_ttl: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            amqp_durable_queues: false,
            amqp_auto_delete: false,
            rabbit_quorum_queue: false,
            rabbit_transient_quorum_queue: false,
            rabbit_stream_fanout: false,
            rabbit_transient_queues_ttl: 1800,
        }
    }
}

/// One queue (or exchange) declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct Declaration {
    pub durable: bool,
    pub auto_delete: bool,
    pub arguments: Vec<(&'static str, Arg)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Int(i64),
    Str(String),
}

impl Declaration {
    pub fn table(&self) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in &self.arguments {
            let v = match v {
                Arg::Int(i) => AMQPValue::LongLongInt(*i),
                Arg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            };
            t.insert(ShortString::from(*k), v);
        }
        t
    }
}

impl QueueOptions {
    /// Topic queues (`T`, `T.host`) and the control exchange.
    pub fn topic(&self) -> Declaration {
        Declaration {
            // Quorum queues are durable whatever amqp_durable_queues says.
            durable: self.amqp_durable_queues || self.rabbit_quorum_queue,
            auto_delete: self.amqp_auto_delete,
            arguments: if self.rabbit_quorum_queue {
                vec![("x-queue-type", Arg::Str("quorum".into()))]
            } else {
                vec![]
            },
        }
    }

    /// A fanout queue; its exchange is declared non-durable unless
    /// transient queues are quorum or stream queues, and auto-deleted.
    pub fn fanout(&self) -> Declaration {
        let ttl = i64::from(self.rabbit_transient_queues_ttl);
        if self.rabbit_stream_fanout {
            let mut arguments = vec![("x-queue-type", Arg::Str("stream".into()))];
            if ttl > 0 {
                arguments.push(("x-max-age", Arg::Str(format!("{ttl}s"))));
            }
            return Declaration {
                durable: true,
                auto_delete: false,
                arguments,
            };
        }
        self.transient(self.rabbit_transient_quorum_queue)
    }

    /// A reply queue.
    pub fn reply(&self) -> Declaration {
        self.transient(self.rabbit_transient_quorum_queue)
    }

    fn transient(&self, quorum: bool) -> Declaration {
        let mut arguments = vec![];
        if quorum {
            arguments.push(("x-queue-type", Arg::Str("quorum".into())));
        }
        if self.rabbit_transient_queues_ttl > 0 {
            arguments.push((
                "x-expires",
                Arg::Int(i64::from(self.rabbit_transient_queues_ttl) * 1000),
            ));
        }
        Declaration {
            durable: quorum,
            auto_delete: false,
            arguments,
        }
    }

    /// Durability of a fanout exchange.
    pub fn fanout_exchange_durable(&self) -> bool {
        self.rabbit_transient_quorum_queue || self.rabbit_stream_fanout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_oslo() {
        let o = QueueOptions::default();
        assert_eq!(
            o.topic(),
            Declaration {
                durable: false,
                auto_delete: false,
                arguments: vec![]
            }
        );
        assert_eq!(
            o.fanout().arguments,
            vec![("x-expires", Arg::Int(1_800_000))]
        );
        assert!(!o.fanout().durable);
        assert_eq!(o.reply(), o.fanout());
    }

    #[test]
    fn quorum_stream_and_ttl_options() {
        let o = QueueOptions {
            rabbit_quorum_queue: true,
            ..Default::default()
        };
        assert!(o.topic().durable);
        assert_eq!(
            o.topic().arguments,
            vec![("x-queue-type", Arg::Str("quorum".into()))]
        );
        let o = QueueOptions {
            rabbit_transient_quorum_queue: true,
            rabbit_transient_queues_ttl: 60,
            ..Default::default()
        };
        assert!(o.reply().durable && o.fanout_exchange_durable());
        assert_eq!(
            o.reply().arguments,
            vec![
                ("x-queue-type", Arg::Str("quorum".into())),
                ("x-expires", Arg::Int(60_000))
            ]
        );
        let o = QueueOptions {
            rabbit_stream_fanout: true,
            rabbit_transient_queues_ttl: 0,
            ..Default::default()
        };
        assert_eq!(
            o.fanout().arguments,
            vec![("x-queue-type", Arg::Str("stream".into()))]
        );
        assert!(o.fanout().durable);
        let o = QueueOptions {
            amqp_durable_queues: true,
            amqp_auto_delete: true,
            ..Default::default()
        };
        assert!(o.topic().durable && o.topic().auto_delete);
    }
}
