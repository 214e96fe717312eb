//! Calls to neutron-server, as `neutron-l3-agent` makes them: the L3
//! plugin API (topic `q-l3-plugin`) and the state reports (topic
//! `q-reports-plugin`).

use std::{collections::BTreeMap, time::Duration};

use oslo_rpc::{CallError, Object, Rpc, Target};
use serde_json::{Value, json};

pub const L3_PLUGIN: &str = "q-l3-plugin";
pub const REPORTS: &str = "q-reports-plugin";

/// Neutron's `sync_routers` chunk sizes: start big, halve on a timeout.
pub const CHUNK_MAX: usize = 256;
pub const CHUNK_MIN: usize = 32;

/// The request context Neutron's agent sends (an admin context without a
/// user, as `get_admin_context_without_session` makes it).
pub fn context() -> Object {
    let request_id = format!("req-{}", uuid_dashed());
    json!({
        "user_id": null,
        "project_id": null,
        "tenant_id": null,
        "domain_id": null,
        "user_domain_id": null,
        "project_domain_id": null,
        "is_admin": true,
        "is_advsvc": false,
        "read_only": false,
        "show_deleted": false,
        "auth_token": null,
        "request_id": request_id,
        "global_request_id": null,
        "roles": ["admin"],
        "user_name": null,
        "project_name": null,
        "tenant_name": null,
        "timestamp": super::report::utc_now().replace('T', " "),
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

fn uuid_dashed() -> String {
    let s = oslo_rpc::envelope::unique_id();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

fn args(v: Value) -> Object {
    v.as_object().cloned().unwrap_or_default()
}

/// The server side of the agent.
pub struct Plugin<'a> {
    pub rpc: &'a Rpc,
    pub host: &'a str,
    /// `rpc_response_timeout`.
    pub timeout: Duration,
    /// Set when the agent stops: a call waiting for the server gives up
    /// (a stop never waits out rpc_response_timeout).
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Plugin<'_> {
    async fn l3(&self, method: &str, version: &str, a: Value) -> Result<Value, CallError> {
        let target = Target::topic(L3_PLUGIN);
        let call = self
            .rpc
            .call(&target, method, args(a), version, context(), self.timeout);
        let Some(mut stop) = self.stop.clone() else {
            return call.await;
        };
        tokio::select! {
            r = call => r,
            _ = stop.wait_for(|s| *s) => Err(CallError::Transport {
                method: method.into(),
                error: oslo_rpc::Error::Connect {
                    host: self.rpc.broker.clone(),
                    error: "abandoned: the agent is stopping".into(),
                },
            }),
        }
    }

    pub async fn get_host_ha_router_count(&self) -> Result<Value, CallError> {
        self.l3(
            "get_host_ha_router_count",
            "1.11",
            json!({"host": self.host}),
        )
        .await
    }

    /// IDs of the routers scheduled to this host (the server schedules
    /// unhosted ones here as it answers).
    pub async fn get_router_ids(&self) -> Result<Vec<String>, CallError> {
        let v = self
            .l3("get_router_ids", "1.9", json!({"host": self.host}))
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Router dicts of `ids` (those still scheduled here).
    pub async fn sync_routers(&self, ids: &[String]) -> Result<Vec<Value>, CallError> {
        let v = self
            .l3(
                "sync_routers",
                "1.0",
                json!({"host": self.host, "router_ids": ids}),
            )
            .await?;
        Ok(match v {
            Value::Array(a) => a,
            _ => vec![],
        })
    }

    /// Router dicts of `ids` fetched in chunks of `*chunk`, halving it
    /// (down to [`CHUNK_MIN`]) when a call times out and growing it back
    /// after a success, as Neutron's agent does. A timeout at the smallest
    /// chunk is an error.
    pub async fn sync_routers_chunked(
        &self,
        ids: &[String],
        chunk: &mut usize,
    ) -> Result<Vec<Value>, CallError> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let end = (i + *chunk).min(ids.len());
            match self.sync_routers(&ids[i..end]).await {
                Ok(mut v) => {
                    out.append(&mut v);
                    i = end;
                }
                Err(CallError::Timeout { .. }) if *chunk > CHUNK_MIN => {
                    *chunk = (*chunk / 2).max(CHUNK_MIN);
                    tracing::error!(
                        "neutron-server did not return routers in time; chunk size now {}",
                        *chunk
                    );
                }
                Err(e) => return Err(e),
            }
        }
        *chunk = (*chunk + CHUNK_MIN).min(CHUNK_MAX);
        Ok(out)
    }

    pub async fn update_floatingip_statuses(
        &self,
        router_id: &str,
        statuses: &BTreeMap<String, &'static str>,
    ) -> Result<(), CallError> {
        self.l3(
            "update_floatingip_statuses",
            "1.1",
            json!({"router_id": router_id, "fip_statuses": statuses}),
        )
        .await
        .map(|_| ())
    }

    /// Sends a state report; the server's answer ("new", "alive",
    /// "revived"). The call waits at most one report interval.
    pub async fn report_state(
        &self,
        agent_state: Value,
        interval: Duration,
    ) -> Result<String, CallError> {
        let v = self
            .rpc
            .call(
                &Target::topic(REPORTS),
                "report_state",
                args(json!({
                    "agent_state": {"agent_state": agent_state},
                    "time": super::report::utc_now(),
                })),
                "1.4",
                context(),
                interval,
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }
}
