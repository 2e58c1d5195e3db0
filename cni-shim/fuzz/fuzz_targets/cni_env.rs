//! The CNI_* environment (`env::parse`) from `KEY=VALUE` lines: no panic; what is accepted
//! has what its command needs (a container ID and interface name that are valid as file
//! and interface names for ADD, DEL and CHECK, a netns for ADD and CHECK, a CNI_PATH for
//! all but VERSION).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use vxmesh_cni::env::{self, Command, ContainerId, IfName};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let Ok(args) = env::parse(|k| vars.get(k).map(|v| v.to_string())) else {
        return;
    };
    let needs_attachment = matches!(args.command, Command::Add | Command::Del | Command::Check);
    assert_eq!(args.attachment.is_some(), needs_attachment);
    if let Some(a) = &args.attachment {
        assert_eq!(
            ContainerId::new(a.container_id.as_str()).as_ref(),
            Some(&a.container_id)
        );
        assert_eq!(IfName::new(a.ifname.as_str()).as_ref(), Ok(&a.ifname));
    }
    if matches!(args.command, Command::Add | Command::Check) {
        assert!(args.netns.as_deref().is_some_and(|n| !n.is_empty()));
    }
    if args.command != Command::Version {
        assert!(!args.cni_path.is_empty());
    }
});
