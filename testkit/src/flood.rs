//! Hostile underlay traffic for tests: VXLAN datagrams built by hand (a valid ICMP echo
//! inside, or garbage, or truncated) and a bounded flood sender that pushes them from
//! inside a network namespace as fast as one thread can.
//!
//! The sender uses UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18): one `send` of up to 64 equal
//! datagrams, segmented by the kernel, so a single thread reaches rates a per-datagram
//! loop cannot; without GSO it falls back to one datagram per call and says so. It sends
//! until told to stop, for at most a bounded time, to the one destination it is given
//! (tests pass addresses inside namespaces they created).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The most datagrams one GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
const MAX_SEGMENTS: usize = 64;
/// The most bytes one send may carry.
const MAX_SEND: usize = 65_000;

/// A VXLAN datagram (RFC 7348 header, I flag, `vni`) carrying an Ethernet frame to
/// `dst_mac` with an ICMP echo request from `src_ip` to `dst_ip`.
pub fn vxlan_icmp(vni: u32, dst_mac: [u8; 6], src_ip: Ipv4Addr, dst_ip: Ipv4Addr) -> Vec<u8> {
    let mut b: Vec<u8> = vec![0x08, 0, 0, 0];
    b.extend_from_slice(&(vni << 8).to_be_bytes());
    b.extend_from_slice(&dst_mac);
    b.extend_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src_ip.octets());
    ip.extend_from_slice(&dst_ip.octets());
    let sum = !fold(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let s = !fold(&icmp);
    icmp[2..4].copy_from_slice(&s.to_be_bytes());
    b.extend_from_slice(&ip);
    b.extend_from_slice(&icmp);
    b
}

/// `len` pseudo-random bytes (xorshift from `seed`) with the VXLAN I flag clear, so no
/// receiver can take them for VXLAN.
pub fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    if let Some(flags) = out.first_mut() {
        *flags &= !0x08;
    }
    out
}

/// A MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// The ones' complement sum of `d` (RFC 1071), folded to 16 bits.
fn fold(d: &[u8]) -> u16 {
    let mut s: u32 = d
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    u16::try_from(s).unwrap_or(u16::MAX)
}

/// What a flood sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodReport {
    /// Datagrams the kernel accepted, per kind, in the order given.
    pub sent: Vec<(String, u64)>,
    pub elapsed: Duration,
    /// Whether UDP GSO was used.
    pub gso: bool,
}

impl FloodReport {
    pub fn total(&self) -> u64 {
        self.sent.iter().map(|(_, n)| n).sum()
    }

    /// Datagrams per second over the whole flood.
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends the `kinds` of datagram (name, payload) round-robin to `dst` until `stop` is set
/// or `limit` has passed, from the calling thread's network namespace (run it inside
/// [`crate::in_netns`]). Send errors (a full buffer, an ICMP error reported back) are
/// skipped, not counted.
pub fn flood(
    dst: SocketAddrV4,
    kinds: &[(String, Vec<u8>)],
    stop: &AtomicBool,
    limit: Duration,
) -> io::Result<FloodReport> {
    struct Kind {
        socket: UdpSocket,
        batch: Vec<u8>,
        per_send: u64,
    }
    let mut gso = true;
    let mut ks = Vec::new();
    for (_, payload) in kinds {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(dst)?;
        let n = if gso && !payload.is_empty() && set_gso(&socket, payload.len()).is_ok() {
            (MAX_SEND / payload.len()).clamp(1, MAX_SEGMENTS)
        } else {
            gso = false;
            1
        };
        ks.push(Kind {
            socket,
            batch: payload.repeat(n),
            per_send: n as u64,
        });
    }
    let mut sent = vec![0u64; ks.len()];
    let t = Instant::now();
    while t.elapsed() < limit && !stop.load(Ordering::Relaxed) {
        for (k, count) in ks.iter().zip(sent.iter_mut()) {
            if k.socket.send(&k.batch).is_ok() {
                *count += k.per_send;
            }
        }
    }
    Ok(FloodReport {
        sent: kinds
            .iter()
            .map(|(name, _)| name.clone())
            .zip(sent)
            .collect(),
        elapsed: t.elapsed(),
        gso,
    })
}

/// Asks the kernel to cut each send on `s` into datagrams of `size` bytes (UDP_SEGMENT,
/// Linux ≥ 4.18): one `send` then hands the kernel a UDP GSO burst.
pub fn set_gso(s: &UdpSocket, size: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(size).map_err(io::Error::other)?;
    // SAFETY: `v` is a live c_int and its size is passed; the fd is open for the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_icmp_is_well_formed() {
        let mac = parse_mac("0e:00:00:00:00:01").unwrap();
        let b = vxlan_icmp(
            0x00ab_cdef,
            mac,
            Ipv4Addr::new(10, 244, 0, 99),
            Ipv4Addr::new(10, 244, 1, 2),
        );
        assert_eq!(b.len(), 8 + 14 + 20 + 8);
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        assert_eq!(&b[8..14], &mac);
        assert_eq!(&b[20..22], &[0x08, 0x00], "IPv4 ethertype");
        // Both checksums verify: the sum over the header/message folds to 0xffff.
        assert_eq!(fold(&b[22..42]), 0xffff, "IPv4 header checksum");
        assert_eq!(fold(&b[42..]), 0xffff, "ICMP checksum");
        assert_eq!(&b[34..38], &[10, 244, 0, 99]);
        assert_eq!(&b[38..42], &[10, 244, 1, 2]);
    }

    #[test]
    fn garbage_is_deterministic_and_never_vxlan() {
        for seed in 0..64 {
            let g = garbage(100, seed);
            assert_eq!(g.len(), 100);
            assert_eq!(g[0] & 0x08, 0, "I flag clear");
            assert_eq!(g, garbage(100, seed));
        }
        assert_ne!(garbage(100, 1), garbage(100, 2));
        assert!(garbage(0, 1).is_empty());
        assert_eq!(parse_mac("0e:00:00:00:00"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:00"), None);
    }

    #[test]
    fn floods_loopback_for_a_bounded_time() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(dst) = rx.local_addr().unwrap() else {
            panic!()
        };
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let kinds = vec![
            ("small".to_string(), vec![1u8; 10]),
            ("large".to_string(), vec![2u8; 1000]),
        ];
        let t = Instant::now();
        let never = AtomicBool::new(false);
        let r = flood(dst, &kinds, &never, Duration::from_millis(100)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(r.elapsed >= Duration::from_millis(100));
        assert_eq!(r.sent.len(), 2);
        assert!(r.sent.iter().all(|(_, n)| *n > 0), "{r:?}");
        assert!(r.rate() > 0.0);
        // What arrives is whole datagrams of the given sizes (segmented, if GSO was used).
        let mut buf = [0u8; 2048];
        let n = rx.recv(&mut buf).unwrap();
        assert!(n == 10 || n == 1000, "{n}");
        // Told to stop: returns at once, whatever the limit.
        let stopped = AtomicBool::new(true);
        let t = Instant::now();
        let r = flood(dst, &kinds, &stopped, Duration::from_secs(60)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(r.total(), 0);
    }
}
