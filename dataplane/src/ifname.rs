//! Linux interface names as a checked newtype.
//!
//! The kernel accepts 1..=15 bytes (IFNAMSIZ 16 with the NUL), no '/', no
//! whitespace, not "." or "..". Checking once here means a TAP or vxlan device is
//! never half-created from a name the kernel would refuse.

use std::fmt;
use std::str::FromStr;

/// A valid Linux interface name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

/// Why a string is not a usable interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {why} (use 1-15 characters without '/', ':' or spaces, e.g. vxmesh0)")]
pub struct IfNameError {
    pub name: String,
    pub why: &'static str,
}

impl IfName {
    pub const MAX_LEN: usize = 15;

    pub fn new(name: &str) -> Result<IfName, IfNameError> {
        let err = |why| IfNameError {
            name: name.to_string(),
            why,
        };
        if name.is_empty() {
            return Err(err("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(err("longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(err("reserved name"));
        }
        if name.bytes().any(|b| {
            b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control() || b > 0x7e
        }) {
            return Err(err("contains '/', ':', whitespace or non-ASCII"));
        }
        Ok(IfName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = IfNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IfName::new(s)
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        for ok in ["vxmesh0", "flannel.1", "a", "eth1", "123456789012345"] {
            assert!(IfName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1234567890123456", ".", "..", "a/b", "a b", "a:1", "é"] {
            assert!(IfName::new(bad).is_err(), "{bad}");
        }
    }
}
