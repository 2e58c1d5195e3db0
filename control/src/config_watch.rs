//! The network config in etcd, compared with the one this node runs.
//!
//! A node reads `<prefix>/config` once, at its start (flanneld too: it reads it again
//! only when it re-acquires a lost lease). A config changed, deleted or garbled in etcd
//! afterwards changes nothing on a running node, but the next node to start or restart
//! runs what etcd holds then: with another Network it takes a subnet the others reject
//! ("outside Network"), and with none or an invalid one it does not start. So the
//! running node follows the key and says at once when etcd's config is no longer the
//! one it runs, with what differs and what to do.
//!
//! Pure: [`judge`] compares a value read from etcd with the running config, and
//! [`Tracker`] turns a sequence of such verdicts into notices, one per change. The
//! agent reads and watches the key ([`crate::registry::Registry::watch_config`]).

use crate::config::NetworkConfig;

/// What etcd holds at the config key, against the config this node runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stored {
    /// The same config (perhaps written differently: only the meaning counts).
    #[default]
    Same,
    /// A valid config that differs: each difference as "Field old → new".
    Changed(Vec<String>),
    /// No config key.
    Deleted,
    /// A value that does not pass the config's check: the check's message.
    Invalid(String),
}

impl Stored {
    /// Every state's name, as [`Stored::as_str`] gives them.
    pub const STATES: [&'static str; 4] = ["same", "changed", "deleted", "invalid"];

    /// The state as `/v1/status` names it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Stored::Same => "same",
            Stored::Changed(_) => "changed",
            Stored::Deleted => "deleted",
            Stored::Invalid(_) => "invalid",
        }
    }

    /// What differs, or what is wrong (None when the same or deleted).
    pub fn detail(&self) -> Option<String> {
        match self {
            Stored::Same | Stored::Deleted => None,
            Stored::Changed(d) => Some(d.join("; ")),
            Stored::Invalid(e) => Some(e.clone()),
        }
    }
}

/// Compares the value at `key` (None: the key is absent) with `running`.
pub fn judge(running: &NetworkConfig, key: &str, value: Option<&[u8]>) -> Stored {
    let Some(value) = value else {
        return Stored::Deleted;
    };
    match NetworkConfig::parse(key, value) {
        // One line: the check's message may hold an example on a line of its own.
        Err(e) => Stored::Invalid(
            e.to_string()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Ok(stored) => {
            let d = differences(running, &stored);
            if d.is_empty() {
                Stored::Same
            } else {
                Stored::Changed(d)
            }
        }
    }
}

/// Every field whose meaning differs between `a` and `b`, in flannel's names, as
/// "Field a → b". The notes (what the parser had to say) are not compared.
pub fn differences(a: &NetworkConfig, b: &NetworkConfig) -> Vec<String> {
    let mut d = Differences(Vec::new());
    match (&a.ipv4, &b.ipv4) {
        (Some(x), Some(y)) => {
            d.field("Network", x.network, y.network);
            d.field("SubnetLen", x.subnet_len, y.subnet_len);
            d.field("SubnetMin", x.subnet_min, y.subnet_min);
            d.field("SubnetMax", x.subnet_max, y.subnet_max);
        }
        (x, y) => d.field("EnableIPv4", x.is_some(), y.is_some()),
    }
    let (x, y) = (&a.backend, &b.backend);
    d.field("Backend.VNI", x.vni, y.vni);
    d.field("Backend.Port", x.port, y.port);
    let mtu = |m: Option<u32>| m.map_or_else(|| "unset".to_string(), |m| m.to_string());
    d.field("Backend.MTU", mtu(x.mtu), mtu(y.mtu));
    d.field("Backend.DirectRouting", x.direct_routing, y.direct_routing);
    d.field("EnableNFTables", a.enable_nftables, b.enable_nftables);
    match (&a.ipv6, &b.ipv6) {
        (Some(x), Some(y)) => {
            d.field("IPv6Network", x.network, y.network);
            d.field("IPv6SubnetLen", x.subnet_len, y.subnet_len);
            d.field("IPv6SubnetMin", x.subnet_min, y.subnet_min);
            d.field("IPv6SubnetMax", x.subnet_max, y.subnet_max);
        }
        (x, y) => d.field("EnableIPv6", x.is_some(), y.is_some()),
    }
    d.0
}

struct Differences(Vec<String>);

impl Differences {
    fn field<T: PartialEq + std::fmt::Display>(&mut self, name: &str, a: T, b: T) {
        if a != b {
            self.0.push(format!("{name} {a} → {b}"));
        }
    }
}

/// What to tell the operator about a change of [`Stored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// A warning (etcd's config is not the running one) or news that it is again.
    pub warn: bool,
    /// The event's kind (`vxmeshctl events`).
    pub kind: &'static str,
    pub message: String,
}

/// Remembers the last verdict so that each change is told once.
#[derive(Debug, Clone)]
pub struct Tracker {
    key: String,
    last: Stored,
    /// The last value seen that was the running config, as written (for a deleted
    /// key: the command that puts it back).
    running_as_written: Option<String>,
}

impl Tracker {
    /// At the start the node runs what etcd held: [`Stored::Same`].
    pub fn new(key: &str) -> Tracker {
        Tracker {
            key: key.to_string(),
            last: Stored::Same,
            running_as_written: None,
        }
    }

    pub fn last(&self) -> &Stored {
        &self.last
    }

    /// Takes a new verdict on `value` (as read at the key); a notice when it differs
    /// from the last one.
    pub fn observe(&mut self, now: Stored, value: Option<&[u8]>) -> Option<Notice> {
        if now == Stored::Same {
            // A value with a quote in it cannot be put back with the command below.
            self.running_as_written = value
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|v| v.lines().map(str::trim).collect::<Vec<_>>().join(" "))
                .filter(|v| !v.contains('\''));
        }
        if now == self.last {
            return None;
        }
        self.last = now;
        let key = &self.key;
        const KEEPS: &str = "this node keeps running the config it started with";
        Some(match &self.last {
            Stored::Same => Notice {
                warn: false,
                kind: "config_same",
                message: format!("the network config in etcd ({key}) is again the one this node runs"),
            },
            Stored::Changed(d) => Notice {
                warn: true,
                kind: "config_changed",
                message: format!(
                    "the network config in etcd ({key}) changed since this node started: {}; {KEEPS}, and a node that starts now runs the new one (a subnet outside the running Network is rejected by the nodes that still run the old one); put the old config back, or restart every node to apply the new one",
                    d.join("; ")
                ),
            },
            Stored::Deleted => Notice {
                warn: true,
                kind: "config_deleted",
                message: format!(
                    "the network config {key} was deleted from etcd; {KEEPS}, but a node that starts now waits for a config; put it back: etcdctl put {key} '{}'",
                    self.running_as_written.as_deref().unwrap_or("<the JSON config>")
                ),
            },
            Stored::Invalid(e) => Notice {
                warn: true,
                kind: "config_invalid",
                message: format!(
                    "the network config in etcd no longer passes the check: {e}; {KEEPS}, but a node that starts now waits for a valid config; fix the value at {key}"
                ),
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const KEY: &str = "/coreos.com/network/config";

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(KEY, json.as_bytes()).unwrap()
    }

    const RUNNING: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

    #[test]
    fn the_same_config_written_differently_is_the_same() {
        let running = cfg(RUNNING);
        for same in [
            RUNNING,
            r#"{ "network": "10.244.0.0/16", "backend": { "type": "vxlan", "VNI": 1, "Port": 8472 } }"#,
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"},"EnableIPv6":false}"#,
        ] {
            assert_eq!(
                judge(&running, KEY, Some(same.as_bytes())),
                Stored::Same,
                "{same}"
            );
        }
    }

    #[test]
    fn each_difference_is_named_with_both_values() {
        let running = cfg(RUNNING);
        let v = br#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1400,"DirectRouting":true},"EnableNFTables":true}"#;
        let Stored::Changed(d) = judge(&running, KEY, Some(v)) else {
            panic!("changed")
        };
        assert_eq!(
            d,
            [
                "Network 10.244.0.0/16 → 10.245.0.0/16",
                "SubnetMin 10.244.1.0 → 10.245.1.0",
                "SubnetMax 10.244.255.0 → 10.245.255.0",
                "Backend.VNI 1 → 4096",
                "Backend.Port 8472 → 4789",
                "Backend.MTU unset → 1400",
                "Backend.DirectRouting false → true",
                "EnableNFTables false → true",
            ]
        );
    }

    #[test]
    fn the_ipv6_half_is_compared_field_by_field() {
        let dual = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"vxlan"}}"#;
        let running = cfg(dual);
        assert_eq!(
            judge(&running, KEY, Some(RUNNING.as_bytes())),
            Stored::Changed(vec!["EnableIPv6 true → false".into()])
        );
        let wider = br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","IPv6SubnetLen":80,"Backend":{"Type":"vxlan"}}"#;
        let Stored::Changed(d) = judge(&running, KEY, Some(wider)) else {
            panic!("changed")
        };
        assert_eq!(d[0], "IPv6SubnetLen 64 → 80");
        assert_eq!(
            judge(&cfg(RUNNING), KEY, Some(dual.as_bytes())),
            Stored::Changed(vec!["EnableIPv6 false → true".into()])
        );
    }

    #[test]
    fn a_missing_or_invalid_value_is_told_apart() {
        let running = cfg(RUNNING);
        assert_eq!(judge(&running, KEY, None), Stored::Deleted);
        for bad in [
            &b"not json"[..],
            b"",
            br#"{"Network":"10.244.0.0/33"}"#,
            b"\xff\xfe",
        ] {
            match judge(&running, KEY, Some(bad)) {
                Stored::Invalid(e) => assert!(!e.is_empty()),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn each_change_is_told_once_and_the_way_back_too() {
        let mut t = Tracker::new(KEY);
        let as_written = b"{\"Network\": \"10.244.0.0/16\",\n  \"Backend\": {\"Type\": \"vxlan\"}}";
        assert_eq!(
            t.observe(Stored::Same, Some(as_written)),
            None,
            "the start is not news"
        );
        let changed = Stored::Changed(vec!["Network 10.244.0.0/16 → 10.245.0.0/16".into()]);
        let n = t
            .observe(changed.clone(), Some(b"{}"))
            .expect("a change is told");
        assert!(n.warn);
        assert_eq!(n.kind, "config_changed");
        assert!(
            n.message.contains("Network 10.244.0.0/16 → 10.245.0.0/16"),
            "{}",
            n.message
        );
        assert!(n.message.contains("restart every node"), "{}", n.message);
        assert_eq!(t.observe(changed, Some(b"{}")), None, "told once");
        // Another change is news again.
        let other = Stored::Changed(vec!["Backend.VNI 1 → 2".into()]);
        assert_eq!(
            t.observe(other, Some(b"{}")).map(|n| n.kind),
            Some("config_changed")
        );
        let n = t.observe(Stored::Deleted, None).expect("deleted");
        assert!(
            n.message.ends_with(
                r#"put it back: etcdctl put /coreos.com/network/config '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}'"#
            ),
            "the running config as written, on one line: {}",
            n.message
        );
        let n = t
            .observe(Stored::Invalid("bad JSON".into()), Some(b"x"))
            .expect("invalid");
        assert_eq!(n.kind, "config_invalid");
        assert!(n.message.contains("bad JSON"), "{}", n.message);
        let n = t
            .observe(Stored::Same, Some(b"{\"Network\":\"it's\"}"))
            .expect("back");
        assert!(!n.warn);
        assert_eq!(n.kind, "config_same");
        assert_eq!(t.last(), &Stored::Same);
        // A value the shell command could not quote is not offered.
        let n = t.observe(Stored::Deleted, None).expect("deleted");
        assert!(n.message.ends_with("'<the JSON config>'"), "{}", n.message);
    }

    #[test]
    fn an_invalid_value_is_told_on_one_line() {
        let Stored::Invalid(e) = judge(&cfg(RUNNING), KEY, Some(b"garbage")) else {
            panic!("invalid")
        };
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("not valid JSON"), "{e}");
    }

    proptest::proptest! {
        /// Any bytes at the key: no panic; a config is the same as itself; what is told
        /// fits on one line.
        #[test]
        fn any_value_is_judged(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let running = cfg(RUNNING);
            let verdict = judge(&running, KEY, Some(&value));
            proptest::prop_assert!(verdict.detail().is_none_or(|d| !d.contains('\n')));
            if let Ok(c) = NetworkConfig::parse(KEY, &value) {
                proptest::prop_assert_eq!(judge(&c, KEY, Some(&value)), Stored::Same);
            }
            let mut t = Tracker::new(KEY);
            let _ = t.observe(verdict, Some(&value));
        }

        /// Valid configs with random fields: the same when compared with themselves,
        /// and a difference exactly when the parsed configs differ.
        #[test]
        fn configs_differ_exactly_when_their_meaning_does(
            a in 0u8..3, b in 0u8..3, vni in 0u32..3, port in 0u16..2, dr in proptest::prelude::any::<bool>()
        ) {
            let net = |n: u8| format!("10.{}.0.0/16", 240 + n);
            let make = |n: u8, vni: u32, port: u16, dr: bool| format!(
                r#"{{"Network":"{}","Backend":{{"Type":"vxlan","VNI":{vni},"Port":{},"DirectRouting":{dr}}}}}"#,
                net(n), 8472 + port
            );
            let x = cfg(&make(a, vni, port, dr));
            let y_text = make(b, 1, 0, false);
            let y = cfg(&y_text);
            let verdict = judge(&x, KEY, Some(y_text.as_bytes()));
            proptest::prop_assert_eq!(verdict == Stored::Same, differences(&x, &y).is_empty());
            proptest::prop_assert_eq!(differences(&x, &y).is_empty(), x.ipv4 == y.ipv4 && x.backend == y.backend);
        }
    }
}
