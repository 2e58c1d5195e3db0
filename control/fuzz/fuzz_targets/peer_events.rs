//! Sequences of watch events (put/delete of arbitrary keys and values, full
//! listings) into `PeerTable`: no panic; our own subnet is never a peer; every peer
//! has a unicast VtepMAC and our VNI; a listing leaves exactly the valid leases.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::peers::PeerTable;

const KEYS: [&str; 4] = [
    "/coreos.com/network/subnets/10.244.1.0-24",
    "/coreos.com/network/subnets/10.244.2.0-24",
    "/coreos.com/network/subnets/10.244.3.0-24&fc00::-64",
    "/coreos.com/network/subnets/garbage",
];

fuzz_target!(|data: &[u8]| {
    let mut t = PeerTable::new(1);
    let _ = t.set_own(Some("10.244.1.0/24".parse().unwrap()));
    let mut skips = Vec::new();
    // Records: [op, key index, len, value bytes...]
    let mut rest = data;
    while let [op, k, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (value, next) = tail.split_at(n);
        let key = KEYS[*k as usize % KEYS.len()];
        match op % 3 {
            0 => {
                let _ = t.put(key, value, &mut skips);
            }
            1 => {
                let _ = t.delete(key);
            }
            _ => {
                let _ = t.reset(&[(key.to_string(), value.to_vec())], &mut skips);
                assert!(t.len() <= 1);
            }
        }
        for p in t.peers() {
            assert_ne!(p.subnet.to_string(), "10.244.1.0/24", "own subnet became a peer");
            assert!(p.vtep_mac.is_unicast());
        }
        rest = next;
    }
});
