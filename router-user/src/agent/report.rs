//! The agent's state report, field for field as `neutron-l3-agent` sends
//! it: the server shows the agent alive, and schedules routers to it, on
//! the strength of these reports.

use serde_json::{Value, json};

use crate::model::Router;

/// What the report says of the agent besides its routers.
#[derive(Clone, Debug)]
pub struct Identity {
    pub host: String,
    pub availability_zone: String,
    pub agent_mode: String,
    pub handle_internal_only_routers: bool,
    pub interface_driver: Option<String>,
    pub log_agent_heartbeats: bool,
}

/// Router counts as Neutron's agent makes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub routers: usize,
    pub ex_gw_ports: usize,
    pub interfaces: usize,
    pub floating_ips: usize,
}

impl Counts {
    pub fn of<'a>(routers: impl IntoIterator<Item = &'a Router>) -> Counts {
        let mut c = Counts::default();
        for r in routers {
            c.routers += 1;
            c.ex_gw_ports += usize::from(r.gateway.is_some());
            c.interfaces += r.interfaces.len();
            c.floating_ips += r.floating_ips.len();
        }
        c
    }
}

/// The `agent_state` of a report (`start_flag` on the first one only).
pub fn agent_state(id: &Identity, counts: Counts, first: bool, uuid: &str) -> Value {
    let mut s = json!({
        "binary": "neutron-l3-agent",
        "host": id.host,
        "availability_zone": id.availability_zone,
        "topic": "l3_agent",
        "configurations": {
            "agent_mode": id.agent_mode,
            "handle_internal_only_routers": id.handle_internal_only_routers,
            "interface_driver": id.interface_driver,
            "log_agent_heartbeats": id.log_agent_heartbeats,
            "extensions": [],
            "routers": counts.routers,
            "ex_gw_ports": counts.ex_gw_ports,
            "interfaces": counts.interfaces,
            "floating_ips": counts.floating_ips,
        },
        "agent_type": "L3 agent",
        "uuid": uuid,
    });
    if first {
        s["start_flag"] = Value::Bool(true);
    }
    s
}

/// Now in UTC as Neutron stamps reports (`%Y-%m-%dT%H:%M:%S.%f`).
pub fn utc_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    iso_time(d.as_secs() as i64, d.subsec_micros())
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffff`.
pub fn iso_time(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to a civil date (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_neutrons_format() {
        assert_eq!(iso_time(0, 0), "1970-01-01T00:00:00.000000");
        assert_eq!(iso_time(951_782_400, 5), "2000-02-29T00:00:00.000005");
        assert_eq!(
            iso_time(1_795_950_245, 123_456),
            "2026-11-29T11:04:05.123456"
        );
        assert_eq!(utc_now().len(), 26);
    }

    #[test]
    fn the_first_report_carries_the_start_flag_and_every_one_the_counts() {
        let id = Identity {
            host: "net1".into(),
            availability_zone: "nova".into(),
            agent_mode: "legacy".into(),
            handle_internal_only_routers: true,
            interface_driver: Some("openvswitch".into()),
            log_agent_heartbeats: false,
        };
        let c = Counts {
            routers: 2,
            ex_gw_ports: 1,
            interfaces: 3,
            floating_ips: 4,
        };
        let s = agent_state(&id, c, true, "u");
        assert_eq!(s["start_flag"], true);
        assert_eq!(s["binary"], "neutron-l3-agent");
        assert_eq!(s["agent_type"], "L3 agent");
        assert_eq!(s["topic"], "l3_agent");
        assert_eq!(s["configurations"]["floating_ips"], 4);
        assert_eq!(s["configurations"]["interface_driver"], "openvswitch");
        assert!(agent_state(&id, c, false, "u").get("start_flag").is_none());
    }
}
