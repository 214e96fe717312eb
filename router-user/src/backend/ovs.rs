//! Open vSwitch: the router ports' taps as ports of the integration bridge,
//! with the Interface `external_ids` Neutron's OVSInterfaceDriver sets
//! (`iface-id`, `iface-status`, `attached-mac`), which is how the OVS agent
//! finds and binds them.
//!
//! Through `ovs-vsctl --db=<ovsdb_connection> --timeout=<n>`: OVS's own
//! client, each call one atomic OVSDB transaction. There is no maintained
//! OVSDB client crate (`ovsdb` 0.0.6 and `ovsdb-client` 0.0.1 are early
//! work in progress), and ovs-vsctl is on every node that has OVS.
//! Reading is one call per router (three `list`s in one transaction).

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Seconds an ovs-vsctl call may wait for ovsdb-server (and, for a
/// change, for ovs-vswitchd to take it), Neutron's `ovsdb_timeout`.
pub const TIMEOUT_SECS: u32 = 10;

/// The keys of an Interface's `external_ids` xrouter sets and compares;
/// other keys are left as they are.
pub const EXTERNAL_ID_KEYS: [&str; 3] = ["iface-id", "iface-status", "attached-mac"];

/// Neutron's dead VLAN: a port added is isolated (tag 4095, trunk of 4095
/// only) until the OVS agent binds it and sets its network's tag.
pub const DEAD_VLAN: u16 = 4095;

/// What OVSDB has of some taps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Have {
    /// Every bridge, with its `datapath_type` ("" is the default, system).
    pub bridges: BTreeMap<String, String>,
    /// The taps asked about that are ports, by name.
    pub ports: BTreeMap<String, Port>,
}

/// A tap as OVSDB has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Port {
    /// The bridge it is a port of (None: a Port row no bridge holds).
    pub bridge: Option<String>,
    /// Its Interface's `external_ids` (all of them).
    pub external_ids: BTreeMap<String, String>,
}

/// `ovs-vsctl --db=DB --timeout=N ARGS`: its stdout, or an error naming
/// the command and its stderr.
fn vsctl(db: &str, args: &[String]) -> Result<String> {
    let mut c = Command::new("ovs-vsctl");
    c.arg(format!("--db={db}"))
        .arg(format!("--timeout={TIMEOUT_SECS}"))
        .args(args);
    let shown = format!(
        "ovs-vsctl --db={db} --timeout={TIMEOUT_SECS} {}",
        args.join(" ")
    );
    let out = c
        .output()
        .with_context(|| format!("running `{shown}` (is Open vSwitch installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // The usual cause names the setting to look at.
        let hint = if err.contains("database connection failed") {
            format!(" (is ovsdb-server listening at ovsdb_connection {db}?)")
        } else {
            String::new()
        };
        bail!(
            "`{shown}` failed ({}): {}{hint}",
            out.status,
            crate::text::tidy(err.trim())
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What OVSDB has of `taps`, and its bridges: one transaction.
pub fn observe(db: &str, taps: &[String]) -> Result<Have> {
    let mut args: Vec<String> = vec![
        "--format=json".into(),
        "--".into(),
        "--if-exists".into(),
        "--columns=name,external_ids".into(),
        "list".into(),
        "Interface".into(),
    ];
    args.extend(taps.iter().cloned());
    args.extend(
        ["--", "--if-exists", "--columns=_uuid,name", "list", "Port"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(taps.iter().cloned());
    args.extend(
        ["--", "--columns=name,ports,datapath_type", "list", "Bridge"]
            .iter()
            .map(|s| s.to_string()),
    );
    if taps.is_empty() {
        // `list Interface` with no record named would list them all.
        args = [
            "--format=json",
            "--",
            "--columns=name,ports,datapath_type",
            "list",
            "Bridge",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
    }
    let out = vsctl(db, &args)?;
    parse(&out, !taps.is_empty()).with_context(|| format!("reading ovs-vsctl's answer: {out:.300}"))
}

/// The answer of [`observe`]'s call: three JSON tables (one, the bridges,
/// when no tap was asked about).
fn parse(out: &str, with_taps: bool) -> Result<Have> {
    let tables: Vec<Value> = serde_json::Deserializer::from_str(out)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()?;
    let rows = |t: &Value| -> Vec<Vec<Value>> {
        t["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_array().cloned())
            .collect()
    };
    let (ifaces, ports, bridges) = match (with_taps, tables.as_slice()) {
        (true, [i, p, b]) => (rows(i), rows(p), rows(b)),
        (false, [b]) => (vec![], vec![], rows(b)),
        _ => bail!("expected {} tables", if with_taps { 3 } else { 1 }),
    };
    let mut have = Have::default();
    let mut bridge_of_port: BTreeMap<String, String> = BTreeMap::new();
    for b in &bridges {
        let name = b.first().and_then(Value::as_str).context("a bridge name")?;
        let dp = b.get(2).and_then(Value::as_str).unwrap_or_default();
        have.bridges.insert(name.to_string(), dp.to_string());
        for u in uuids(b.get(1).unwrap_or(&Value::Null)) {
            bridge_of_port.insert(u, name.to_string());
        }
    }
    for p in &ports {
        let uuid = uuids(p.first().unwrap_or(&Value::Null));
        let name = p.get(1).and_then(Value::as_str).context("a port name")?;
        have.ports.insert(
            name.to_string(),
            Port {
                bridge: uuid.first().and_then(|u| bridge_of_port.get(u).cloned()),
                external_ids: BTreeMap::new(),
            },
        );
    }
    for i in &ifaces {
        let name = i
            .first()
            .and_then(Value::as_str)
            .context("an interface name")?;
        if let Some(p) = have.ports.get_mut(name) {
            p.external_ids = map(i.get(1).unwrap_or(&Value::Null));
        }
    }
    Ok(have)
}

/// The UUIDs of an OVSDB JSON value: `["uuid", U]` or `["set", [...]]`.
fn uuids(v: &Value) -> Vec<String> {
    match v.as_array().map(Vec::as_slice) {
        Some([t, u]) if t == "uuid" => u.as_str().map(str::to_string).into_iter().collect(),
        Some([t, s]) if t == "set" => s.as_array().into_iter().flatten().flat_map(uuids).collect(),
        _ => vec![],
    }
}

/// An OVSDB JSON map `["map", [[k, v], ...]]`.
fn map(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some([t, pairs]) = v.as_array().map(Vec::as_slice)
        && t == "map"
    {
        for p in pairs.as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (p[0].as_str(), p[1].as_str()) {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// `external_ids:K="V"` arguments of `set Interface`.
fn id_args(ids: &[(String, String)]) -> Vec<String> {
    ids.iter()
        .map(|(k, v)| format!("external_ids:{k}=\"{v}\""))
        .collect()
}

/// Makes `tap` a port of `bridge` anew, as Neutron's `replace_port` does:
/// any Port of that name goes first (its own transaction: a Port deleted
/// and added in one is not seen as new by ovs-vswitchd), then one
/// transaction adds it on the dead VLAN with its `external_ids`.
pub fn replace_port(db: &str, bridge: &str, tap: &str, ids: &[(String, String)]) -> Result<()> {
    del_ports(db, &[tap.to_string()])?;
    let mut args: Vec<String> = ["--", "add-port", bridge, tap]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(
        [
            "--".to_string(),
            "set".into(),
            "Port".into(),
            tap.into(),
            format!("tag={DEAD_VLAN}"),
            "vlan_mode=trunk".into(),
            format!("trunks={DEAD_VLAN}"),
            "--".into(),
            "set".into(),
            "Interface".into(),
            tap.into(),
        ]
        .into_iter()
        .chain(id_args(ids)),
    );
    vsctl(db, &args)?;
    Ok(())
}

/// Sets `ids` in `tap`'s Interface `external_ids` (other keys stay).
pub fn set_external_ids(db: &str, tap: &str, ids: &[(String, String)]) -> Result<()> {
    let mut args: Vec<String> = vec!["--".into(), "set".into(), "Interface".into(), tap.into()];
    args.extend(id_args(ids));
    vsctl(db, &args)?;
    Ok(())
}

/// Removes the Ports `taps` from whatever bridge has them (those absent
/// are no error): one transaction.
pub fn del_ports(db: &str, taps: &[String]) -> Result<()> {
    if taps.is_empty() {
        return Ok(());
    }
    let mut args = Vec::new();
    for t in taps {
        args.extend([
            "--".into(),
            "--if-exists".into(),
            "del-port".into(),
            t.clone(),
        ]);
    }
    vsctl(db, &args)?;
    Ok(())
}

/// The taps of `have` whose port is not on `bridge` with `ids`.
pub fn differ(have: &Have, tap: &str, bridge: &str, ids: &[(String, String)]) -> PortState {
    match have.ports.get(tap) {
        None => PortState::Missing,
        Some(p) if p.bridge.as_deref() != Some(bridge) => PortState::Missing,
        Some(p) if ids.iter().any(|(k, v)| p.external_ids.get(k) != Some(v)) => PortState::WrongIds,
        Some(_) => PortState::Right,
    }
}

/// How a tap stands on the integration bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not a port of it (absent, or on another bridge).
    Missing,
    /// A port of it whose `external_ids` differ.
    WrongIds,
    Right,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ovs_vsctl_json() {
        let out = r#"{"data":[["tapaaa",["map",[["attached-mac","fa:16:3e:00:00:01"],["iface-id","p1"],["iface-status","active"]]]]],"headings":["name","external_ids"]}
{"data":[[["uuid","5e34"],"tapaaa"]],"headings":["_uuid","name"]}
{"data":[["br-int",["set",[["uuid","5e34"],["uuid","6805"]]],"netdev"],["br-ex",["set",[]],""]],"headings":["name","ports","datapath_type"]}
"#;
        let h = parse(out, true).unwrap();
        assert_eq!(h.bridges["br-int"], "netdev");
        assert_eq!(h.bridges["br-ex"], "");
        let p = &h.ports["tapaaa"];
        assert_eq!(p.bridge.as_deref(), Some("br-int"));
        assert_eq!(p.external_ids["iface-id"], "p1");
        let ids = vec![
            ("iface-id".to_string(), "p1".to_string()),
            ("iface-status".into(), "active".into()),
        ];
        assert_eq!(differ(&h, "tapaaa", "br-int", &ids), PortState::Right);
        assert_eq!(differ(&h, "tapaaa", "br-ex", &ids), PortState::Missing);
        assert_eq!(differ(&h, "tapbbb", "br-int", &ids), PortState::Missing);
        let other = vec![("iface-id".to_string(), "p2".to_string())];
        assert_eq!(differ(&h, "tapaaa", "br-int", &other), PortState::WrongIds);
        // A single-port bridge's ports are one uuid, not a set.
        let one = r#"{"data":[["br-int",["uuid","6805"],"system"]],"headings":[]}"#;
        assert_eq!(parse(one, false).unwrap().bridges["br-int"], "system");
        assert!(parse("{}", true).is_err());
    }
}
