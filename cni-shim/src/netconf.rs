//! The plugin's network configuration (stdin), flannel-compatible, parsed and validated.
//!
//! Read first: ../shared/reference/flannel-compat.md "flannel CNI plugin" and CNI SPEC.md
//! section 1 "Plugin configuration objects". Fields: `cniVersion`, `name`, `type`,
//! `subnetFile` (default /run/flannel/subnet.env), `dataDir` (default /var/lib/cni/vxmesh),
//! `delegate` (object whose keys override the rendered defaults), `ipam` (base for the
//! delegate's IPAM), `runtimeConfig` and `args` (passed to the delegate), `prevResult`, and for
//! GC `cni.dev/valid-attachments` (older text: `cni.dev/attachments`). Every validation error
//! names the field. Pure: takes stdin's bytes.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::env::{ContainerId, IfName};
use crate::error::{code, CniError};
use crate::version::SpecVersion;

/// Where flannel (and vxmeshd) write the node's subnet.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Where the rendered delegate configs are kept.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/vxmesh";

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`, one vxmesh speaks.
    pub cni_version: SpecVersion,
    /// `name`: the network name (also the delegate's name, so host-local keeps its
    /// reservations under `<ipam dataDir>/<name>`).
    pub name: String,
    /// `subnetFile`.
    pub subnet_file: String,
    /// `dataDir`.
    pub data_dir: String,
    /// `delegate`: overrides for the delegate config (never `name`/`ipam`).
    pub delegate: Map<String, Value>,
    /// `ipam`: base for the delegate's IPAM section.
    pub ipam: Map<String, Value>,
    /// `runtimeConfig`, passed through to the delegate.
    pub runtime_config: Option<Value>,
    /// `args`, passed through to the delegate.
    pub args: Option<Value>,
    /// `prevResult`, as given.
    pub prev_result: Option<Value>,
    /// GC only: the attachments still valid; `None` when the key is absent.
    pub valid_attachments: Option<BTreeSet<(ContainerId, IfName)>>,
    /// Things worth a log line (ignored fields).
    pub warnings: Vec<String>,
    /// [`parse_for_del`] only: why `delegate` or `ipam` would not do for an ADD (they
    /// are then taken as far as they are objects, else empty). `None` from [`parse`].
    pub invalid: Option<CniError>,
}

impl NetConf {
    /// The delegate plugin's binary name (`delegate.type`, default `bridge`).
    pub fn delegate_type(&self) -> &str {
        self.delegate
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("bridge")
    }
}

fn invalid(field: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid network config: field {field}"),
        format!("{field}: {why}"),
    )
}

/// Reads only `cniVersion` from stdin, for VERSION and for echoing a version in errors.
/// Never fails: returns `None` when stdin is not an object with a string `cniVersion`.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_string)
}

fn network_name_ok(name: &str) -> bool {
    ContainerId::new(name).is_some()
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, CniError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(field, format!("expected a string, found {other}"))),
    }
}

fn opt_object(obj: &Map<String, Value>, field: &str) -> Result<Map<String, Value>, CniError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(invalid(field, format!("expected an object, found {other}"))),
    }
}

fn absolute_path(field: &str, value: Option<String>, default: &str) -> Result<String, CniError> {
    let path = value.unwrap_or_else(|| default.to_string());
    if !path.starts_with('/') {
        return Err(invalid(field, format!("{path:?} must be an absolute path")));
    }
    if path.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(path)
}

fn validate_delegate(delegate: &Map<String, Value>) -> Result<(), CniError> {
    match delegate.get("type") {
        None => {}
        Some(Value::String(t)) if t == "vxmesh" => {
            return Err(invalid(
                "delegate.type",
                "\"vxmesh\" would delegate to itself; use \"bridge\" (the default)",
            ))
        }
        Some(Value::String(t)) if crate::exec::plugin_name_ok(t) => {}
        Some(other) => {
            return Err(invalid(
                "delegate.type",
                format!("{other} must be a plugin binary name such as \"bridge\""),
            ))
        }
    }
    if delegate.contains_key("name") {
        return Err(invalid(
            "delegate.name",
            "must not be set: vxmesh gives the delegate the network's name",
        ));
    }
    if delegate.contains_key("ipam") {
        return Err(invalid(
            "delegate.ipam",
            "must not be set: put IPAM settings in the top-level \"ipam\" object",
        ));
    }
    if let Some(bridge) = delegate.get("bridge") {
        match bridge.as_str() {
            Some(b) if IfName::new(b).is_ok() => {}
            _ => {
                return Err(invalid(
                    "delegate.bridge",
                    format!("{bridge} must be an interface name of 1 to 15 bytes"),
                ))
            }
        }
    }
    if let Some(mtu) = delegate.get("mtu") {
        if mtu.as_u64().is_none_or(|m| !(68..=65535).contains(&m)) {
            return Err(invalid(
                "delegate.mtu",
                format!("{mtu} must be an integer between 68 and 65535"),
            ));
        }
    }
    for flag in ["isGateway", "isDefaultGateway", "ipMasq", "hairpinMode"] {
        if let Some(v) = delegate.get(flag) {
            if !v.is_boolean() {
                return Err(invalid(
                    &format!("delegate.{flag}"),
                    format!("{v} must be true or false"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_ipam(ipam: &Map<String, Value>, warnings: &mut Vec<String>) -> Result<(), CniError> {
    match ipam.get("type") {
        None => {}
        Some(Value::String(t)) if t == "vxmesh" => {
            return Err(invalid(
                "ipam.type",
                "\"vxmesh\" would run this plugin again as the delegate's IPAM; use \"host-local\" (the default)",
            ))
        }
        Some(Value::String(t)) if crate::exec::plugin_name_ok(t) => {}
        Some(other) => {
            return Err(invalid(
                "ipam.type",
                format!("{other} must be a plugin binary name such as \"host-local\""),
            ))
        }
    }
    for key in ["subnet", "rangeStart", "rangeEnd", "gateway"] {
        if ipam.contains_key(key) {
            return Err(invalid(
                &format!("ipam.{key}"),
                "must not be set: vxmesh hands the delegate this node's subnet from subnet.env",
            ));
        }
    }
    if ipam.contains_key("ranges") {
        warnings.push(
            "ipam.ranges is ignored: the range is this node's FLANNEL_SUBNET from subnet.env"
                .to_string(),
        );
    }
    if let Some(routes) = ipam.get("routes") {
        let Some(list) = routes.as_array() else {
            return Err(invalid("ipam.routes", "must be a list of {\"dst\": CIDR}"));
        };
        for (i, route) in list.iter().enumerate() {
            let dst = route.get("dst").and_then(Value::as_str);
            match dst.map(vxmesh_subnet_env::cidr::parse) {
                Some(Ok(_)) => {}
                Some(Err(why)) => return Err(invalid(&format!("ipam.routes[{i}].dst"), why)),
                None => {
                    return Err(invalid(
                        &format!("ipam.routes[{i}].dst"),
                        "missing: every route needs a destination in CIDR notation",
                    ))
                }
            }
        }
    }
    Ok(())
}

fn attachments(
    top: &Map<String, Value>,
) -> Result<Option<BTreeSet<(ContainerId, IfName)>>, CniError> {
    let (field, value) = match (
        top.get("cni.dev/valid-attachments"),
        top.get("cni.dev/attachments"),
    ) {
        (Some(v), _) => ("cni.dev/valid-attachments", v),
        (None, Some(v)) => ("cni.dev/attachments", v),
        (None, None) => return Ok(None),
    };
    let Some(list) = value.as_array() else {
        return Err(invalid(field, "must be a list of {containerID, ifname}"));
    };
    let mut out = BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        let cid = item.get("containerID").and_then(Value::as_str);
        let ifn = item.get("ifname").and_then(Value::as_str);
        let cid = cid.and_then(ContainerId::new).ok_or_else(|| {
            invalid(
                &format!("{field}[{i}].containerID"),
                "missing or not a valid container ID",
            )
        })?;
        let ifn = ifn.and_then(|s| IfName::new(s).ok()).ok_or_else(|| {
            invalid(
                &format!("{field}[{i}].ifname"),
                "missing or not a valid interface name",
            )
        })?;
        out.insert((cid, ifn));
    }
    Ok(Some(out))
}

/// Parses and validates the network configuration from stdin.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    parse_with(stdin, true)
}

/// Like [`parse`], for DEL: what DEL needs (`cniVersion`, `name`, `dataDir`, `subnetFile`,
/// `prevResult`) is checked as strictly, but an invalid `delegate` or `ipam` (a conflist
/// edited after its pods were made) is recorded in [`NetConf::invalid`] instead of failing:
/// DEL undoes an attachment with the config saved at ADD, so such an edit must not leave
/// the pods it made undeletable.
pub fn parse_for_del(stdin: &[u8]) -> Result<NetConf, CniError> {
    parse_with(stdin, false)
}

fn parse_with(stdin: &[u8], strict: bool) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "error decoding network config from stdin",
            format!("{e}; the runtime must pass the plugin's JSON configuration on stdin"),
        )
    })?;
    let Value::Object(top) = value else {
        return Err(CniError::new(
            code::DECODE,
            "error decoding network config from stdin",
            "expected a JSON object",
        ));
    };

    let version = match top.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        None => return Err(invalid("cniVersion", "missing")),
        Some(other) => return Err(invalid("cniVersion", format!("{other} is not a string"))),
    };
    let supported: Vec<&str> = SpecVersion::ALL.iter().map(|v| v.as_str()).collect();
    let cni_version = SpecVersion::parse(&version).ok_or_else(|| {
        CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "config is {version:?}, plugin supports [{}]",
                supported.join(" ")
            ),
        )
    })?;

    let name = match top.get("name") {
        Some(Value::String(n)) if network_name_ok(n) => n.clone(),
        Some(Value::String(n)) if n.is_empty() => return Err(invalid("name", "missing")),
        None => return Err(invalid("name", "missing")),
        Some(other) => {
            return Err(invalid(
                "name",
                format!("{other} must match ^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
            ))
        }
    };

    let subnet_file = absolute_path(
        "subnetFile",
        opt_string(&top, "subnetFile")?,
        DEFAULT_SUBNET_FILE,
    )?;
    let data_dir = absolute_path("dataDir", opt_string(&top, "dataDir")?, DEFAULT_DATA_DIR)?;

    let mut warnings = Vec::new();
    let mut not_for_add = None;
    let mut lenient = |checked: Result<(), CniError>| match checked {
        Err(e) if !strict => {
            not_for_add.get_or_insert(e);
            Ok(())
        }
        other => other,
    };
    let delegate = opt_object(&top, "delegate").or_else(|e| {
        lenient(Err(e))?;
        Ok::<_, CniError>(Map::new())
    })?;
    lenient(validate_delegate(&delegate))?;
    let ipam = opt_object(&top, "ipam").or_else(|e| {
        lenient(Err(e))?;
        Ok::<_, CniError>(Map::new())
    })?;
    lenient(validate_ipam(&ipam, &mut warnings))?;

    let runtime_config = match top.get("runtimeConfig") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(invalid(
                "runtimeConfig",
                format!("{other} is not an object"),
            ))
        }
    };
    let args = match top.get("args") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => return Err(invalid("args", format!("{other} is not an object"))),
    };
    let prev_result = match top.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => return Err(invalid("prevResult", format!("{other} is not an object"))),
    };

    Ok(NetConf {
        cni_version,
        name,
        subnet_file,
        data_dir,
        delegate,
        ipam,
        runtime_config,
        args,
        prev_result,
        valid_attachments: attachments(&top)?,
        warnings,
        invalid: not_for_add,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// flannel's netconf as shipped in kube-flannel.yml (cni-conf.json, first plugin).
    const KUBE_FLANNEL: &str = r#"{
      "name": "cbr0",
      "cniVersion": "0.3.1",
      "type": "flannel",
      "delegate": { "hairpinMode": true, "isDefaultGateway": true }
    }"#;

    #[test]
    fn kube_flannel_netconf_gets_defaults() {
        let n = parse(KUBE_FLANNEL.as_bytes()).unwrap();
        assert_eq!(n.cni_version, SpecVersion::V0_3_1);
        assert_eq!(n.name, "cbr0");
        assert_eq!(n.subnet_file, DEFAULT_SUBNET_FILE);
        assert_eq!(n.data_dir, DEFAULT_DATA_DIR);
        assert_eq!(n.delegate_type(), "bridge");
        assert_eq!(n.delegate["hairpinMode"], true);
        assert!(n.valid_attachments.is_none());
    }

    #[test]
    fn del_takes_a_netconf_add_would_refuse() {
        let edited = r#"{"cniVersion":"1.0.0","name":"vx","ipam":{"subnet":"10.0.0.0/8"},"delegate":"bridge"}"#;
        let e = parse(edited.as_bytes()).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let n = parse_for_del(edited.as_bytes()).unwrap();
        assert_eq!(n.name, "vx");
        assert!(n.delegate.is_empty());
        let why = n.invalid.unwrap();
        assert_eq!(why.code, code::INVALID_CONFIG);
        assert!(why.msg.contains("field delegate"), "{why:?}");
        // What DEL needs stays strict; a valid netconf parses alike either way.
        let no_name = r#"{"cniVersion":"1.0.0","ipam":{"subnet":"10.0.0.0/8"}}"#;
        assert_eq!(
            parse_for_del(no_name.as_bytes()).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let relative = r#"{"cniVersion":"1.0.0","name":"vx","dataDir":"x"}"#;
        assert_eq!(
            parse_for_del(relative.as_bytes()).unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            parse_for_del(KUBE_FLANNEL.as_bytes()).unwrap(),
            parse(KUBE_FLANNEL.as_bytes()).unwrap()
        );
    }

    #[test]
    fn decode_errors_are_code_6() {
        for bad in [&b"{not json"[..], b"", b"[1,2]", b"\"x\"", b"\xff\xfe"] {
            assert_eq!(parse(bad).unwrap_err().code, code::DECODE);
        }
    }

    #[test]
    fn unknown_version_is_code_1() {
        let e = parse(br#"{"cniVersion":"9.9.9","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = parse(br#"{"cniVersion":"0.2.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    }

    fn field_of(json: &str) -> String {
        let e = parse(json.as_bytes()).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{json}: {e}");
        e.msg
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (r#"{"name":"n"}"#, "cniVersion"),
            (r#"{"cniVersion":1,"name":"n"}"#, "cniVersion"),
            (r#"{"cniVersion":"1.0.0"}"#, "name"),
            (r#"{"cniVersion":"1.0.0","name":"a b"}"#, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","dataDir":"rel"}"#,
                "dataDir",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","subnetFile":7}"#,
                "subnetFile",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","delegate":[]}"#,
                "delegate",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","delegate":{"type":"../x"}}"#,
                "delegate.type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","delegate":{"name":"x"}}"#,
                "delegate.name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","delegate":{"ipam":{}}}"#,
                "delegate.ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","delegate":{"mtu":"9000"}}"#,
                "delegate.mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","delegate":{"bridge":"a-very-long-bridge"}}"#,
                "delegate.bridge",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","delegate":{"hairpinMode":"yes"}}"#,
                "delegate.hairpinMode",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":"host-local"}"#,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/8"}}"#,
                "ipam.subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"routes":[{"dst":"x"}]}}"#,
                "ipam.routes[0].dst",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":{}}"#,
                "cni.dev/valid-attachments",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"c"}]}"#,
                "cni.dev/attachments[0].ifname",
            ),
        ];
        for (json, field) in cases {
            assert!(
                field_of(json).ends_with(&format!("field {field}")),
                "{json}"
            );
        }
    }

    #[test]
    fn attachments_either_key() {
        let n = parse(br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#).unwrap();
        assert_eq!(n.valid_attachments.unwrap().len(), 1);
        let n =
            parse(br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[]}"#).unwrap();
        assert_eq!(n.valid_attachments.unwrap().len(), 0);
    }

    #[test]
    fn ranges_are_ignored_with_a_warning() {
        let n = parse(br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[]}}"#).unwrap();
        assert_eq!(n.warnings.len(), 1);
    }

    #[test]
    fn peek_version_never_fails() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"1.0.0"}"#).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(peek_version(b"garbage"), None);
        assert_eq!(peek_version(b""), None);
    }
}
