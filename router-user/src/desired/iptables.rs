//! Neutron's L3-agent rule set of one router (chain prefix
//! `neutron-l3-agent-`), IPv4 only, rendered as `iptables-restore` input.
//!
//! Rules are written in the canonical form `iptables-save` prints them in,
//! so what is loaded and what is read back compare equal (the iptables
//! backend loads it, nat, mangle and filter at once).

use std::collections::BTreeMap;

use crate::{config::node::NodeConfig, model::Router};

/// Neutron's wrapped-chain prefix (`neutron-<binary name>-`).
const PREFIX: &str = "neutron-l3-agent-";
/// The metadata service address, as a match.
const METADATA_IP: &str = "169.254.169.254/32";
/// Packets for the metadata proxy (set in mangle, accepted in filter INPUT).
const METADATA_MARK: &str = "0x1/0xffff";
/// Packets that entered through qg- (exempt from hairpin SNAT).
const EXTERNAL_MARK: &str = "0x2/0xffff";

/// The tables xrouter owns, with their builtin chains in the order
/// `iptables-save` lists them (hook order).
pub const TABLES: [(&str, &[&str]); 3] = [
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
    (
        "mangle",
        &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
    ),
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
];

/// A wrapped chain name: `neutron-l3-agent-<name>`.
fn w(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// One table being built: the rules of each chain, in order.
struct Table {
    name: &'static str,
    builtin: &'static [&'static str],
    /// User chains sort by name, which is also iptables-save's order.
    user: BTreeMap<String, Vec<String>>,
    builtin_rules: BTreeMap<&'static str, Vec<String>>,
}

impl Table {
    fn new((name, builtin): (&'static str, &'static [&'static str])) -> Table {
        Table {
            name,
            builtin,
            user: BTreeMap::new(),
            builtin_rules: BTreeMap::new(),
        }
    }

    /// The rules of a user chain, declaring it.
    fn chain(&mut self, chain: &str) -> &mut Vec<String> {
        self.user.entry(chain.to_string()).or_default()
    }

    /// Appends `-A <chain> <spec>`. The chain, and a `neutron-*` chain it
    /// jumps to, are declared (a jump to an undeclared chain fails, even if
    /// that chain is to stay empty).
    fn add(&mut self, chain: &str, spec: impl AsRef<str>) {
        let spec = spec.as_ref();
        if let Some((_, target)) = spec.rsplit_once("-j ")
            && target.starts_with("neutron-")
        {
            self.chain(target);
        }
        let rule = format!("-A {chain} {spec}");
        match self.builtin.iter().find(|b| **b == chain) {
            Some(b) => self.builtin_rules.entry(b).or_default().push(rule),
            None => self.chain(chain).push(rule),
        }
    }

    /// Renders the table as iptables-save would print it.
    fn render(&self, out: &mut String) {
        out.push_str(&format!("*{}\n", self.name));
        for b in self.builtin {
            out.push_str(&format!(":{b} ACCEPT [0:0]\n"));
        }
        for c in self.user.keys() {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        let builtin = self
            .builtin
            .iter()
            .filter_map(|b| self.builtin_rules.get(b));
        for rule in builtin.chain(self.user.values()).flatten() {
            out.push_str(rule);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
}

/// The complete `iptables-restore` input for `router`: Neutron's legacy
/// router rules, in Neutron's order within each chain.
pub fn ruleset(router: &Router, node: &NodeConfig) -> String {
    render(router, node, true)
}

/// The kernel's copy of the rules on the eBPF planes: Neutron's rule set
/// without the per-floating-IP rules, which [`crate::backend::nft`] keeps as two
/// maps instead (30,000 rules for 10,000 floating IPs cost iptables-restore
/// most of a second; map elements cost almost nothing).
pub fn ruleset_without_fips(router: &Router, node: &NodeConfig) -> String {
    render(router, node, false)
}

fn render(router: &Router, node: &NodeConfig, with_fips: bool) -> String {
    let [mut nat, mut mangle, mut filter] = TABLES.map(Table::new);
    let port = node.metadata_port;
    // Neutron adds the qg- rules only for an IPv4 gateway address, and the
    // floating IP rules only while there is a gateway at all.
    let gw = router
        .gateway
        .as_ref()
        .and_then(|g| Some((g.port.device(), g.snat_ip()?)));
    let fips = if router.gateway.is_some() && with_fips {
        &router.floating_ips[..]
    } else {
        &[]
    };

    // nat: wrapped builtin chains, then the bottom chain that feeds SNAT.
    for c in ["PREROUTING", "OUTPUT", "POSTROUTING"] {
        nat.add(c, format!("-j {}", w(c)));
    }
    nat.add("POSTROUTING", "-j neutron-postrouting-bottom");
    nat.add(
        "neutron-postrouting-bottom",
        format!(
            "-m comment --comment \"Perform source NAT on outgoing traffic.\" -j {}",
            w("snat")
        ),
    );
    for f in fips {
        let dnat = format!(
            "-d {}/32 -j DNAT --to-destination {}",
            f.floating_ip, f.fixed_ip
        );
        nat.add(&w("PREROUTING"), &dnat);
        // OUTPUT: the router namespace itself reaching a floating IP.
        nat.add(&w("OUTPUT"), &dnat);
    }
    nat.add(
        &w("PREROUTING"),
        format!("-d {METADATA_IP} -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports {port}"),
    );
    if let Some((qg, _)) = &gw {
        // East-west traffic (not leaving qg-) is never NATed unless DNATed.
        nat.add(
            &w("POSTROUTING"),
            format!("! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT"),
        );
    }
    nat.add(&w("snat"), format!("-j {}", w("float-snat")));
    if let Some((qg, ip)) = &gw {
        if router.enable_snat {
            nat.add(
                &w("snat"),
                format!("-o {qg} -j SNAT --to-source {ip} --random-fully"),
            );
        }
        // Hairpin: DNATed traffic that did not come in through qg- is SNATed
        // to the gateway so replies return through the router.
        nat.add(
            &w("snat"),
            format!(
                "-m mark ! --mark {EXTERNAL_MARK} -m conntrack --ctstate DNAT -j SNAT --to-source {ip} --random-fully"
            ),
        );
    }
    for f in fips {
        nat.add(
            &w("float-snat"),
            format!(
                "-s {}/32 -j SNAT --to-source {} --random-fully",
                f.fixed_ip, f.floating_ip
            ),
        );
    }

    // mangle: mark metadata requests and everything entering through qg-.
    mangle.add("PREROUTING", format!("-j {}", w("PREROUTING")));
    mangle.add(&w("PREROUTING"), format!("-j {}", w("mark")));
    mangle.add(
        &w("PREROUTING"),
        format!(
            "-d {METADATA_IP} -i qr-+ -p tcp -m tcp --dport 80 -j MARK --set-xmark {METADATA_MARK}"
        ),
    );
    if let Some((qg, _)) = &gw {
        mangle.add(
            &w("mark"),
            format!("-i {qg} -j MARK --set-xmark {EXTERNAL_MARK}"),
        );
    }

    // filter: only redirected metadata requests may reach the proxy port.
    filter.add("INPUT", format!("-j {}", w("INPUT")));
    for c in ["FORWARD", "OUTPUT"] {
        filter.add(c, "-j neutron-filter-top");
        filter.add(c, format!("-j {}", w(c)));
    }
    filter.add("neutron-filter-top", format!("-j {}", w("local")));
    filter.add(
        &w("INPUT"),
        format!("-m mark --mark {METADATA_MARK} -j ACCEPT"),
    );
    filter.add(&w("INPUT"), format!("-p tcp -m tcp --dport {port} -j DROP"));

    let mut out = String::new();
    for t in [nat, mangle, filter] {
        t.render(&mut out);
    }
    out
}

/// The tables with their builtin chains only (policy ACCEPT, no rules):
/// what an emptied namespace holds.
pub fn empty() -> String {
    let mut out = String::new();
    for t in TABLES.map(Table::new) {
        t.render(&mut out);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::example;

    /// The `-A` lines of the ruleset.
    fn rules(router: &Router, node: &NodeConfig) -> Vec<String> {
        let text = ruleset(router, node);
        text.lines()
            .filter(|l| l.starts_with("-A "))
            .map(String::from)
            .collect()
    }

    pub(crate) const EXAMPLE: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:neutron-l3-agent-OUTPUT - [0:0]
:neutron-l3-agent-POSTROUTING - [0:0]
:neutron-l3-agent-PREROUTING - [0:0]
:neutron-l3-agent-float-snat - [0:0]
:neutron-l3-agent-snat - [0:0]
:neutron-postrouting-bottom - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A OUTPUT -j neutron-l3-agent-OUTPUT
-A POSTROUTING -j neutron-l3-agent-POSTROUTING
-A POSTROUTING -j neutron-postrouting-bottom
-A neutron-l3-agent-OUTPUT -d 192.168.1.111/32 -j DNAT --to-destination 10.0.1.10
-A neutron-l3-agent-POSTROUTING ! -o qg-gggggggg-11 -m conntrack ! --ctstate DNAT -j ACCEPT
-A neutron-l3-agent-PREROUTING -d 192.168.1.111/32 -j DNAT --to-destination 10.0.1.10
-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697
-A neutron-l3-agent-float-snat -s 10.0.1.10/32 -j SNAT --to-source 192.168.1.111 --random-fully
-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat
-A neutron-l3-agent-snat -o qg-gggggggg-11 -j SNAT --to-source 192.168.1.110 --random-fully
-A neutron-l3-agent-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source 192.168.1.110 --random-fully
-A neutron-postrouting-bottom -m comment --comment "Perform source NAT on outgoing traffic." -j neutron-l3-agent-snat
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:neutron-l3-agent-PREROUTING - [0:0]
:neutron-l3-agent-mark - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A neutron-l3-agent-PREROUTING -j neutron-l3-agent-mark
-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x1/0xffff
-A neutron-l3-agent-mark -i qg-gggggggg-11 -j MARK --set-xmark 0x2/0xffff
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:neutron-filter-top - [0:0]
:neutron-l3-agent-FORWARD - [0:0]
:neutron-l3-agent-INPUT - [0:0]
:neutron-l3-agent-OUTPUT - [0:0]
:neutron-l3-agent-local - [0:0]
-A INPUT -j neutron-l3-agent-INPUT
-A FORWARD -j neutron-filter-top
-A FORWARD -j neutron-l3-agent-FORWARD
-A OUTPUT -j neutron-filter-top
-A OUTPUT -j neutron-l3-agent-OUTPUT
-A neutron-filter-top -j neutron-l3-agent-local
-A neutron-l3-agent-INPUT -m mark --mark 0x1/0xffff -j ACCEPT
-A neutron-l3-agent-INPUT -p tcp -m tcp --dport 9697 -j DROP
COMMIT
"#;

    #[test]
    fn example_ruleset_is_neutrons() {
        assert_eq!(ruleset(&example(), &NodeConfig::default()), EXAMPLE);
    }

    #[test]
    fn example_lines_in_neutron_order() {
        // The semantics file's lines, per chain in its order (iptables-save
        // groups rules by chain, so only the order within a chain is kept).
        let got = rules(&example(), &NodeConfig::default());
        let pos = |l: &str| {
            got.iter()
                .position(|g| g == l)
                .unwrap_or_else(|| panic!("missing {l}"))
        };
        for pair in [
            [
                "-A neutron-l3-agent-PREROUTING -d 192.168.1.111/32 -j DNAT --to-destination 10.0.1.10",
                "-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697",
            ],
            [
                "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat",
                "-A neutron-l3-agent-snat -o qg-gggggggg-11 -j SNAT --to-source 192.168.1.110 --random-fully",
            ],
            [
                "-A neutron-l3-agent-snat -o qg-gggggggg-11 -j SNAT --to-source 192.168.1.110 --random-fully",
                "-A neutron-l3-agent-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source 192.168.1.110 --random-fully",
            ],
            [
                "-A neutron-l3-agent-PREROUTING -j neutron-l3-agent-mark",
                "-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x1/0xffff",
            ],
            [
                "-A neutron-l3-agent-INPUT -m mark --mark 0x1/0xffff -j ACCEPT",
                "-A neutron-l3-agent-INPUT -p tcp -m tcp --dport 9697 -j DROP",
            ],
            [
                "-A POSTROUTING -j neutron-l3-agent-POSTROUTING",
                "-A POSTROUTING -j neutron-postrouting-bottom",
            ],
        ] {
            assert!(
                pos(pair[0]) < pos(pair[1]),
                "{} before {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn no_snat_drops_only_the_gateway_snat_rule() {
        let node = NodeConfig::default();
        let mut r = example();
        let with = rules(&r, &node);
        r.enable_snat = false;
        let without = rules(&r, &node);
        let gone: Vec<_> = with.iter().filter(|l| !without.contains(l)).collect();
        assert_eq!(
            gone,
            [
                "-A neutron-l3-agent-snat -o qg-gggggggg-11 -j SNAT --to-source 192.168.1.110 --random-fully"
            ]
        );
        assert_eq!(with.len(), without.len() + 1);
    }

    #[test]
    fn no_gateway_no_qg_rules() {
        let mut r = example();
        r.gateway = None;
        let text = ruleset(&r, &NodeConfig::default());
        for absent in ["SNAT", "DNAT --to", "qg-", "0x2", "192.168.1."] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        for present in [
            "-A neutron-l3-agent-PREROUTING -d 169.254.169.254/32 -i qr-+ -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697",
            "-A neutron-l3-agent-snat -j neutron-l3-agent-float-snat",
            ":neutron-l3-agent-float-snat - [0:0]",
            ":neutron-l3-agent-mark - [0:0]",
            "-A neutron-l3-agent-INPUT -p tcp -m tcp --dport 9697 -j DROP",
        ] {
            assert!(text.lines().any(|l| l == present), "missing {present}");
        }
    }

    #[test]
    fn metadata_port_from_node_config() {
        let node = NodeConfig {
            metadata_port: 8775,
            ..NodeConfig::default()
        };
        let text = ruleset(&example(), &node);
        assert!(!text.contains("9697"));
        assert!(text.contains("-j REDIRECT --to-ports 8775\n"));
        assert!(text.contains("-A neutron-l3-agent-INPUT -p tcp -m tcp --dport 8775 -j DROP\n"));
    }
}
