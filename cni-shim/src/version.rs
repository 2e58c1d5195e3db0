//! CNI specification versions this plugin speaks, and what each one allows.
//!
//! Read first: CNI SPEC.md, "Version considerations" and the per-operation sections. The
//! versions differ in which operations exist (CHECK from 0.4.0, GC and STATUS from 1.1.0) and in
//! the layout of results (see [`crate::result`]). This module does no I/O.

use std::fmt;

/// A CNI specification version vxmesh implements. Ordered oldest to newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    /// 0.3.0: `interfaces`/`ips`/`routes` results, `ips[].version` required.
    V0_3_0,
    /// 0.3.1: same layout as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds GC, STATUS, interface `mtu`/`socketPath`/`pciID`, route attributes.
    V1_1_0,
}

impl SpecVersion {
    /// Every version vxmesh supports, oldest first (what VERSION advertises).
    pub const ALL: [SpecVersion; 5] = [
        SpecVersion::V0_3_0,
        SpecVersion::V0_3_1,
        SpecVersion::V0_4_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    /// The newest version vxmesh speaks.
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    /// Parses an exact version string such as `"1.0.0"`; `None` when vxmesh does not speak it.
    pub fn parse(s: &str) -> Option<SpecVersion> {
        SpecVersion::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The version as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= SpecVersion::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= SpecVersion::V1_1_0
    }

    /// Results carry `ips[].version` ("4"/"6") before 1.0.0.
    pub fn ips_have_version(self) -> bool {
        self < SpecVersion::V1_0_0
    }

    /// Interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/`table`/`scope`
    /// exist from 1.1.0 on.
    pub fn has_1_1_attributes(self) -> bool {
        self >= SpecVersion::V1_1_0
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Picks the version to speak with a delegate: the requested one if the delegate supports it,
/// else the newest version the delegate supports that is older than the requested one.
/// `delegate_supports` holds the strings from the delegate's VERSION answer.
pub fn negotiate(requested: SpecVersion, delegate_supports: &[String]) -> Option<SpecVersion> {
    SpecVersion::ALL
        .into_iter()
        .rev()
        .filter(|v| *v <= requested)
        .find(|v| delegate_supports.iter().any(|s| s == v.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_version() {
        for v in SpecVersion::ALL {
            assert_eq!(SpecVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(SpecVersion::parse("0.2.0"), None);
        assert_eq!(SpecVersion::parse("1.1"), None);
        assert_eq!(SpecVersion::parse(""), None);
    }

    #[test]
    fn operations_per_version() {
        assert!(!SpecVersion::V0_3_1.has_check());
        assert!(SpecVersion::V0_4_0.has_check());
        assert!(!SpecVersion::V1_0_0.has_gc_and_status());
        assert!(SpecVersion::V1_1_0.has_gc_and_status());
        assert!(SpecVersion::V0_4_0.ips_have_version());
        assert!(!SpecVersion::V1_0_0.ips_have_version());
    }

    #[test]
    fn negotiate_with_debian_bridge_1_1_1() {
        // `CNI_COMMAND=VERSION /usr/lib/cni/bridge` on Debian 12 (containernetworking-plugins 1.1.1)
        let bridge: Vec<String> = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            negotiate(SpecVersion::V1_1_0, &bridge),
            Some(SpecVersion::V1_0_0)
        );
        assert_eq!(
            negotiate(SpecVersion::V0_3_0, &bridge),
            Some(SpecVersion::V0_3_0)
        );
        assert_eq!(negotiate(SpecVersion::V0_3_0, &["1.0.0".to_string()]), None);
    }
}
