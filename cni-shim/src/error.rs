//! The CNI error result: a code, a short message and details an operator can act on.
//!
//! Read first: CNI SPEC.md section 5 "Error" (codes 0-99 are reserved, 100+ are
//! plugin-specific). The plugin prints this JSON on stdout and exits non-zero; logs go to stderr.

use std::fmt;

use serde::Serialize;

use crate::version::SpecVersion;

/// Well-known CNI error codes (SPEC.md) and vxmesh's own (100+).
pub mod code {
    /// Incompatible CNI version (unknown `cniVersion`, or an operation the version lacks).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Container unknown.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing environment variables (the message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content (stdin is not JSON, a result is not a result).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration (the message names the field).
    pub const INVALID_CONFIG: u32 = 7;
    /// CNI_NETNS is not a network namespace (libcni's ErrInvalidNetNS).
    pub const INVALID_NETNS: u32 = 8;
    /// Try again later: subnet.env is not there yet (vxmeshd not up).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The delegate plugin failed without printing a CNI error.
    pub const DELEGATE_FAILED: u32 = 100;
    /// CHECK: no saved state for this (container, ifname).
    pub const NO_STATE: u32 = 101;
    /// CHECK: the pod's subnet is no longer this node's subnet (the lease changed).
    pub const SUBNET_CHANGED: u32 = 102;
}

/// A CNI error as printed on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The CNI error code (see [`code`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// What happened and what to do about it.
    pub details: String,
}

impl CniError {
    /// Builds an error from a code, a short message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Renders the error JSON for the given protocol version.
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        let wire = Wire {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // Serializing a struct of strings and an integer cannot fail; fall back to a fixed text
        // anyway rather than panic.
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{}\",\"code\":{},\"msg\":\"unprintable error\"}}",
                SpecVersion::LATEST,
                self.code
            )
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "code {}: {}", self.code, self.msg)
        } else {
            write!(f, "code {}: {}: {}", self.code, self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_spec_shape() {
        let e = CniError::new(code::INVALID_CONFIG, "invalid network config", "dataDir: x");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap_or_default();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "invalid network config");
        assert_eq!(v["details"], "dataDir: x");
    }

    #[test]
    fn escapes_quotes_in_messages() {
        let e = CniError::new(code::DECODE, "bad \"json\"\n", "");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap_or_default();
        assert_eq!(v["msg"], "bad \"json\"\n");
    }
}
