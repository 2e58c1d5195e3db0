//! What the plugin reads back from disk: a flannel state file's bytes
//! (`flannel::classify`), the subnet a saved delegate config names
//! (`delegate::saved_subnet`), and state file names (`state::parse_file_name`). No
//! panic; a file taken as this network's names it and a plain plugin type; a parsed file
//! name is written back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vxmesh_cni::flannel::{self, Saved};
use vxmesh_cni::{delegate, exec, state};

fuzz_target!(|data: &[u8]| {
    match flannel::classify(data, "cbr0") {
        Saved::Ours(map) => {
            assert_eq!(map.get("name").and_then(Value::as_str), Some("cbr0"));
            let ty = map
                .get("type")
                .and_then(Value::as_str)
                .expect("a string type");
            assert!(exec::plugin_name_ok(ty));
            let _ = delegate::saved_subnet(&map);
        }
        Saved::OtherNetwork(name) => assert_ne!(name.as_deref(), Some("cbr0")),
        Saved::Unreadable(_) => {}
    }
    if let Ok(Value::Object(map)) = serde_json::from_slice(data) {
        let _ = delegate::saved_subnet(&map);
    }
    let name = String::from_utf8_lossy(data);
    if let Some(att) = state::parse_file_name(&name) {
        assert_eq!(state::file_name(&att), name);
    }
});
