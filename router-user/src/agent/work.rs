//! What the server's notifications ask of the agent, gathered until the
//! agent gets to it: a burst naming one router many times is one sync of
//! it (Neutron's agent queues each; the result is the same).

use std::collections::BTreeSet;

use oslo_rpc::Request;
use serde_json::Value;

/// The L3 agent's RPC API as Neutron's server calls it (version 1.4).
pub const L3_AGENT_VERSION: &str = "1.4";

/// Methods of the agent's endpoint. The DVR-only ones are accepted and
/// ignored, as a legacy-mode Neutron agent does.
pub const METHODS: &[&str] = &[
    "routers_updated",
    "router_deleted",
    "router_removed_from_agent",
    "router_added_to_agent",
    "agent_updated",
    "network_update",
    "add_arp_entry",
    "del_arp_entry",
    "fipnamespace_delete_on_ext_net",
];

/// Work waiting for the agent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Fetch every router this host is given (`get_router_ids`, then
    /// `sync_routers`), drop the others.
    pub full: bool,
    /// Routers to fetch and apply (or remove if the server no longer
    /// gives them to this host).
    pub update: BTreeSet<String>,
    /// Routers to remove without asking.
    pub remove: BTreeSet<String>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        !self.full && self.update.is_empty() && self.remove.is_empty()
    }

    fn update(&mut self, id: String) {
        self.remove.remove(&id);
        self.update.insert(id);
    }

    fn remove(&mut self, id: String) {
        self.update.remove(&id);
        self.remove.insert(id);
    }

    /// Takes in one request. `networks_of` gives, for a network ID, the
    /// routers with a port on it. A malformed request is named in the
    /// error and changes nothing.
    pub fn take(
        &mut self,
        r: &Request,
        networks_of: impl Fn(&str) -> Vec<String>,
    ) -> Result<(), String> {
        let arg = |k: &str| r.args.get(k).unwrap_or(&Value::Null);
        let shown = |v: &Value| crate::text::tidy(&v.to_string());
        let id_of = |v: &Value| -> Result<String, String> {
            let s = match v {
                Value::String(s) => s,
                // Older servers sent router dicts.
                Value::Object(o) => match o.get("id") {
                    Some(Value::String(s)) => s,
                    _ => return Err(format!("a router without an id: {}", shown(v))),
                },
                _ => return Err(format!("not a router id: {}", shown(v))),
            };
            // IDs name namespaces and pin directories: nothing else passes.
            if crate::config::routers::is_uuid_like(s) {
                Ok(s.clone())
            } else {
                Err(format!("not a router id: {}", shown(v)))
            }
        };
        let ids = |v: &Value, what: &str| -> Result<Vec<String>, String> {
            match v {
                Value::Array(a) if !a.is_empty() => a.iter().map(id_of).collect(),
                Value::Array(_) | Value::Null => Err(format!("{what} names no router")),
                other => Ok(vec![id_of(other)?]),
            }
        };
        let bad = |e: String| format!("{}: {e}", r.method);
        match r.method.as_str() {
            "routers_updated" => ids(arg("routers"), "routers")
                .map_err(bad)?
                .into_iter()
                .for_each(|id| self.update(id)),
            "router_added_to_agent" => ids(arg("payload"), "payload")
                .map_err(bad)?
                .into_iter()
                .for_each(|id| self.update(id)),
            "router_deleted" => self.remove(id_of(arg("router_id")).map_err(bad)?),
            "router_removed_from_agent" => {
                let id = arg("payload")
                    .get("router_id")
                    .ok_or_else(|| bad("payload has no router_id".into()))?;
                self.remove(id_of(id).map_err(bad)?)
            }
            // Neutron's agent resyncs everything when its admin state
            // changes.
            "agent_updated" => self.full = true,
            "network_update" => {
                let net = arg("network")
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("network has no id".into()))?;
                for id in networks_of(net) {
                    self.update(id);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A router ID for tests: `a` -> 32 hex digits of a's.
    fn id(c: &str) -> String {
        let h = match c {
            "a" => "a",
            "b" => "b",
            "c" => "c",
            "d" => "d",
            "e" => "e",
            _ => "f",
        };
        h.repeat(32)
    }

    fn req(method: &str, args: Value) -> Request {
        Request::new(
            method,
            args.as_object().unwrap().clone(),
            "1.0",
            Default::default(),
        )
    }

    fn none(_: &str) -> Vec<String> {
        vec![]
    }

    #[test]
    fn a_burst_is_one_sync_per_router_and_the_last_word_wins() {
        let (a, b, c, d, e) = (id("a"), id("b"), id("c"), id("d"), id("e"));
        let mut p = Pending::default();
        for _ in 0..10 {
            p.take(&req("routers_updated", json!({"routers": [a, b]})), none)
                .unwrap();
        }
        p.take(&req("router_deleted", json!({"router_id": b})), none)
            .unwrap();
        p.take(&req("router_added_to_agent", json!({"payload": [c]})), none)
            .unwrap();
        p.take(
            &req(
                "router_removed_from_agent",
                json!({"payload": {"router_id": d}}),
            ),
            none,
        )
        .unwrap();
        // Older servers name routers by dict.
        p.take(
            &req("routers_updated", json!({"routers": [{"id": e}]})),
            none,
        )
        .unwrap();
        assert_eq!(
            p,
            Pending {
                full: false,
                update: [a.clone(), c.clone(), e.clone()].into(),
                remove: [b.clone(), d.clone()].into(),
            }
        );
        // Deleted, then updated again: fetched (the server decides).
        p.take(&req("routers_updated", json!({"routers": [b]})), none)
            .unwrap();
        assert!(p.update.contains(&b) && !p.remove.contains(&b));
    }

    #[test]
    fn network_updates_name_the_routers_on_the_network_and_agent_updates_resync() {
        let mut p = Pending::default();
        p.take(
            &req(
                "network_update",
                json!({"network": {"id": "n1", "mtu": 1400}}),
            ),
            |n| if n == "n1" { vec![id("a")] } else { vec![] },
        )
        .unwrap();
        assert_eq!(p.update, [id("a")].into());
        p.take(
            &req(
                "agent_updated",
                json!({"payload": {"admin_state_up": true}}),
            ),
            none,
        )
        .unwrap();
        assert!(p.full);
    }

    #[test]
    fn malformed_requests_are_named_and_change_nothing() {
        let mut p = Pending::default();
        for (method, args, error) in [
            (
                "router_removed_from_agent",
                json!({"payload": {}}),
                "router_removed_from_agent: payload has no router_id",
            ),
            (
                "routers_updated",
                json!({"routers": [1]}),
                "routers_updated: not a router id: 1",
            ),
            (
                "routers_updated",
                json!({"routers": ["../etc"]}),
                "routers_updated: not a router id: \"../etc\"",
            ),
            (
                "routers_updated",
                json!({"routers": "notalist"}),
                "routers_updated: not a router id: \"notalist\"",
            ),
            (
                "routers_updated",
                json!({}),
                "routers_updated: routers names no router",
            ),
            (
                "router_added_to_agent",
                json!({"payload": []}),
                "router_added_to_agent: payload names no router",
            ),
        ] {
            assert_eq!(p.take(&req(method, args), none).unwrap_err(), error);
        }
        assert!(p.is_empty());
    }
}
