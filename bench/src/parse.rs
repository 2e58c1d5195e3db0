//! Parsers for what the measuring tools print: iperf3's JSON (`-J`, version 3.x)
//! for TCP and UDP tests, and iputils ping's per-reply lines.
//!
//! iperf3 fields used: `end.sum_received.{bytes,bits_per_second,seconds}` and
//! `end.sum_sent.retransmits` (TCP); `end.sum_sent.{packets,seconds}` and
//! `end.sum_received.{packets,lost_packets,lost_percent,seconds}` (UDP, with
//! `end.sum` as a fallback for iperf3 versions without the split sums).

use serde_json::Value;

/// One iperf3 TCP test, as the receiver saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpResult {
    pub received_bytes: u64,
    pub received_bps: f64,
    pub seconds: f64,
    /// Sender-side retransmissions (iperf3 reports them on Linux).
    pub retransmits: Option<u64>,
    /// The congestion control the sending end used (`end.sender_tcp_congestion`;
    /// iperf3 reports it on Linux).
    pub sender_congestion: Option<String>,
}

/// One iperf3 UDP test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpResult {
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_percent: f64,
    pub sent_pps: f64,
    pub received_pps: f64,
}

fn json(text: &str) -> Result<Value, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {e}"));
    }
    Ok(v)
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn u(v: &Value, path: &[&str]) -> Option<u64> {
    let x = path.iter().try_fold(v, |v, k| v.get(k))?;
    x.as_u64().or_else(|| x.as_f64().map(|f| f as u64))
}

/// Parses a TCP test (`iperf3 -c … -J`).
pub fn tcp(text: &str) -> Result<TcpResult, String> {
    let v = json(text)?;
    let missing = |what: &str| format!("iperf3 JSON lacks {what}");
    Ok(TcpResult {
        received_bytes: u(&v, &["end", "sum_received", "bytes"])
            .ok_or_else(|| missing("end.sum_received.bytes"))?,
        received_bps: f(&v, &["end", "sum_received", "bits_per_second"])
            .ok_or_else(|| missing("end.sum_received.bits_per_second"))?,
        seconds: f(&v, &["end", "sum_received", "seconds"])
            .ok_or_else(|| missing("end.sum_received.seconds"))?,
        retransmits: u(&v, &["end", "sum_sent", "retransmits"]),
        sender_congestion: v
            .pointer("/end/sender_tcp_congestion")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Parses a UDP test (`iperf3 -c … -u -J`).
pub fn udp(text: &str) -> Result<UdpResult, String> {
    let v = json(text)?;
    let recv = if v.pointer("/end/sum_received").is_some() {
        "sum_received"
    } else {
        "sum"
    };
    let sent = if v.pointer("/end/sum_sent").is_some() {
        "sum_sent"
    } else {
        "sum"
    };
    let missing = |what: &str| format!("iperf3 JSON lacks end.{what}");
    let sent_packets = u(&v, &["end", sent, "packets"]).ok_or_else(|| missing("sent packets"))?;
    let sent_secs = f(&v, &["end", sent, "seconds"]).ok_or_else(|| missing("sent seconds"))?;
    // The receiver's `packets` counts every sequence number it accounted for,
    // lost ones included.
    let packets = u(&v, &["end", recv, "packets"]).ok_or_else(|| missing("received packets"))?;
    let lost = u(&v, &["end", recv, "lost_packets"]).ok_or_else(|| missing("lost_packets"))?;
    let lost_percent =
        f(&v, &["end", recv, "lost_percent"]).ok_or_else(|| missing("lost_percent"))?;
    let recv_secs = f(&v, &["end", recv, "seconds"]).ok_or_else(|| missing("received seconds"))?;
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(UdpResult {
        sent_packets,
        lost_packets: lost,
        lost_percent,
        sent_pps: per_s(sent_packets, sent_secs),
        received_pps: per_s(packets.saturating_sub(lost), recv_secs),
    })
}

/// Round-trip times in microseconds, one per `time=… ms` reply line, plus the
/// number of requests sent (from the summary line, if present).
pub fn ping(text: &str) -> (Vec<f64>, Option<u64>) {
    let rtts = text
        .lines()
        .filter_map(|l| {
            let t = l.split("time=").nth(1)?;
            let ms: f64 = t.split_whitespace().next()?.parse().ok()?;
            Some(ms * 1000.0)
        })
        .collect();
    let sent = text.lines().find_map(|l| {
        let (n, rest) = l.split_once(" packets transmitted")?;
        let _ = rest;
        n.trim().parse().ok()
    });
    (rtts, sent)
}

/// The `Udp:` counters of `/proc/net/snmp` (header line, then values).
pub fn snmp_udp(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Default::default();
    };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Whether `nft list ruleset` output hooks a nat chain (iptables-nft's `nat` table shows
/// there too): then the kernel tracks every connection in that namespace.
pub fn has_nat_hook(ruleset: &str) -> bool {
    ruleset
        .lines()
        .any(|l| l.trim_start().starts_with("type nat hook "))
}

/// `name: state` for each CPU vulnerability entry (file name, content) that is not
/// "Not affected", sorted by name.
pub fn vulnerabilities(entries: &[(String, String)]) -> Vec<String> {
    let mut v: Vec<String> = entries
        .iter()
        .map(|(n, s)| (n, s.trim()))
        .filter(|(_, s)| *s != "Not affected")
        .map(|(n, s)| format!("{n}: {s}"))
        .collect();
    v.sort();
    v
}

/// The CPU flags among `erms` and `fsrm` on `/proc/cpuinfo`'s first `flags` line (pure).
/// With either, the kernel copies to and from user memory with an inline `rep movsb`;
/// without both it takes a slower routine, and a copy pass costs several times as much
/// (docs/benchmarks.md, "The same profile on the third machine").
pub fn copy_flags(cpuinfo: &str) -> Vec<String> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })
        .map(|v| {
            v.split_whitespace()
                .filter(|f| matches!(*f, "erms" | "fsrm"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP congestion control's name as `--tcp-cc` takes it: what the kernel's names
/// are made of (`cubic`, `bbr`, `reno`, `dctcp`…), at most 15 bytes (pure).
pub fn congestion_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a TCP congestion control name (lower-case letters, digits and _, \
             at most 15): see /proc/sys/net/ipv4/tcp_available_congestion_control, e.g. cubic"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from `iperf3 -c 10.244.2.2 -t 2 -J` (iperf 3.12).
    const TCP: &str = r#"{"start":{},"intervals":[],"end":{
        "sum_sent":{"start":0,"end":2.0,"seconds":2.0,"bytes":4000000000,"bits_per_second":16e9,"retransmits":12,"sender":true},
        "sum_received":{"start":0,"end":2.0004,"seconds":2.0004,"bytes":3999000000,"bits_per_second":15.99e9,"sender":true},
        "sender_tcp_congestion":"cubic","receiver_tcp_congestion":"cubic"}}"#;

    // Trimmed from `iperf3 -c 10.9.0.2 -u -l 64 -b 0 -t 2 -J` (iperf 3.12).
    const UDP: &str = r#"{"end":{
        "sum":{"seconds":2.000279,"packets":348580,"lost_packets":91534,"lost_percent":26.259108382580756},
        "sum_sent":{"seconds":2.000235,"bytes":22309120,"packets":348580,"lost_packets":0,"lost_percent":0},
        "sum_received":{"seconds":2.000279,"bytes":16450944,"packets":348580,"lost_packets":91534,"lost_percent":26.259108382580756}}}"#;

    #[test]
    fn congestion_names() {
        for ok in [
            "cubic",
            "bbr",
            "reno",
            "dctcp",
            "bbr2",
            "htcp",
            "scalable_x",
        ] {
            assert_eq!(congestion_name(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "Cubic",
            "cubic ",
            "-C",
            "bbr;rm",
            "a/b",
            "averyveryverylongname",
        ] {
            let e = congestion_name(bad).unwrap_err();
            assert!(e.contains("tcp_available_congestion_control"), "{bad}: {e}");
        }
    }

    #[test]
    fn tcp_fields() {
        let r = tcp(TCP).unwrap();
        assert_eq!(r.received_bytes, 3_999_000_000);
        assert_eq!(r.retransmits, Some(12));
        assert_eq!(r.sender_congestion.as_deref(), Some("cubic"));
        assert!((r.received_bps - 15.99e9).abs() < 1.0);
        assert!(tcp(r#"{"error":"unable to connect to server"}"#)
            .unwrap_err()
            .contains("unable to connect"));
        assert!(tcp("not json").is_err());
        assert!(tcp(r#"{"end":{}}"#).is_err());
        // Older iperf3 builds (or another OS) leave the congestion control out.
        let without = TCP.replace(r#""sender_tcp_congestion":"cubic","#, "");
        assert_eq!(tcp(&without).unwrap().sender_congestion, None);
    }

    #[test]
    fn udp_fields() {
        let r = udp(UDP).unwrap();
        assert_eq!(r.sent_packets, 348_580);
        assert_eq!(r.lost_packets, 91_534);
        assert!((r.sent_pps - 348_580.0 / 2.000235).abs() < 1e-6);
        assert!((r.received_pps - (348_580.0 - 91_534.0) / 2.000279).abs() < 1e-6);
        assert!((r.lost_percent - 26.259).abs() < 0.001);
        // Older iperf3: only `end.sum`.
        let old =
            r#"{"end":{"sum":{"seconds":1.0,"packets":1000,"lost_packets":5,"lost_percent":0.5}}}"#;
        let r = udp(old).unwrap();
        assert_eq!(r.received_pps, 995.0);
    }

    #[test]
    fn snmp() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
            Udp: 477 0 7 478 7\n\
            UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
            UdpLite: 0 0 0 0 0\n";
        let m = snmp_udp(t);
        assert_eq!(m["InDatagrams"], 477);
        assert_eq!(m["RcvbufErrors"], 7);
        assert_eq!(m.len(), 5);
        assert!(snmp_udp("").is_empty());
    }

    #[test]
    fn ping_lines() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
            64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.052 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=1.21 ms\n\
            \n--- 10.244.2.2 ping statistics ---\n\
            3 packets transmitted, 2 received, 33.3333% packet loss, time 21ms\n\
            rtt min/avg/max/mdev = 0.052/0.631/1.210/0.579 ms\n";
        let (rtts, sent) = ping(out);
        assert_eq!(sent, Some(3));
        assert_eq!(rtts.len(), 2);
        assert!((rtts[0] - 52.0).abs() < 1e-9 && (rtts[1] - 1210.0).abs() < 1e-9);
    }

    /// `nft list ruleset` of a bench node with vxmeshd's rules (iptables-nft), cut.
    #[test]
    fn nat_hook_in_a_ruleset() {
        let with = "table ip nat {
\tchain POSTROUTING {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\t counter packets 0 bytes 0 jump VXMESH-POSTRTG
\t}
}
table ip filter {
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy accept;
\t}
}
";
        assert!(has_nat_hook(with));
        assert!(!has_nat_hook(&with.replace("type nat", "type filter")));
        assert!(!has_nat_hook(""));
    }

    #[test]
    fn vulnerability_list() {
        let e = |n: &str, s: &str| (n.to_string(), s.to_string());
        let flags = "processor\t: 0\nflags\t\t: fpu vme rep_good erms avx2 fsrm\nbugs\t\t: sysret_ss_attrs\nflags\t\t: erms\n";
        assert_eq!(copy_flags(flags), ["erms", "fsrm"]);
        assert!(copy_flags("flags\t: fpu vme rep_good\n").is_empty());
        assert!(copy_flags("").is_empty());
        let v = vulnerabilities(&[
            e("spectre_v2", "Mitigation: Retpolines; STIBP: disabled\n"),
            e("mds", "Not affected\n"),
            e("retbleed", "Vulnerable\n"),
        ]);
        assert_eq!(
            v,
            [
                "retbleed: Vulnerable",
                "spectre_v2: Mitigation: Retpolines; STIBP: disabled"
            ]
        );
    }
}
