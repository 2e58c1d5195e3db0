//! The TAP device: `/dev/net/tun` opened in TAP mode, with the virtio-net header
//! (`IFF_VNET_HDR`) and checksum/segmentation offloads (`TUNSETOFFLOAD`) when the
//! kernel accepts them.
//!
//! With offloads on, the kernel hands us TCP frames of up to 64 KiB with a partial
//! checksum and a [`VirtioNetHdr`](crate::wire::VirtioNetHdr) describing how to
//! segment them, and accepts the same from us. Every feature is probed at open
//! time: if the kernel refuses one, we fall back to the next smaller set and say so
//! in [`TapOffloads`] (the agent logs it and exports it as a metric).
//!
//! Read first: Linux `Documentation/networking/tuntap.rst`,
//! `include/uapi/linux/if_tun.h`. Configuration of the link (MAC, MTU, addresses,
//! up) is the control plane's job, through netlink.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::ifname::IfName;

// include/uapi/linux/if_tun.h
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

/// What we ask of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOptions {
    /// Ask for the virtio-net header and offloads (the fast path).
    pub vnet_hdr: bool,
    /// Also ask for UDP segmentation offload (needs a dataplane that segments UDP).
    pub uso: bool,
    /// Number of queues (`IFF_MULTI_QUEUE` when more than one).
    pub queues: usize,
}

impl Default for TapOptions {
    fn default() -> Self {
        TapOptions {
            vnet_hdr: true,
            uso: true,
            queues: 1,
        }
    }
}

/// What the kernel granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TapOffloads {
    /// Frames carry a 10-byte virtio-net header.
    pub vnet_hdr: bool,
    /// The `TUN_F_*` flags TUNSETOFFLOAD accepted.
    pub flags: u32,
}

impl TapOffloads {
    pub fn csum(&self) -> bool {
        self.flags & TUN_F_CSUM != 0
    }
    pub fn tso(&self) -> bool {
        self.flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0
    }
    pub fn uso(&self) -> bool {
        self.flags & (TUN_F_USO4 | TUN_F_USO6) != 0
    }
    /// A short human description, e.g. "vnet_hdr csum tso4 tso6 tso_ecn uso4 uso6".
    pub fn describe(&self) -> String {
        if !self.vnet_hdr {
            return "none (1 frame per syscall)".to_string();
        }
        let mut s = vec!["vnet_hdr"];
        for (bit, name) in [
            (TUN_F_CSUM, "csum"),
            (TUN_F_TSO4, "tso4"),
            (TUN_F_TSO6, "tso6"),
            (TUN_F_TSO_ECN, "tso_ecn"),
            (TUN_F_USO4, "uso4"),
            (TUN_F_USO6, "uso6"),
        ] {
            if self.flags & bit != 0 {
                s.push(name);
            }
        }
        s.join(" ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and are we root or CAP_NET_ADMIN?)")]
    Open(#[source] io::Error),
    #[error("cannot create TAP device {name}: {source} (does another process hold it, or a non-TAP link of that name exist?)")]
    Create {
        name: IfName,
        #[source]
        source: io::Error,
    },
    #[error("TAP device {name}: {what}: {source}")]
    Configure {
        name: IfName,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF reads it: name, then flags, padded to 40 bytes.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `struct ifreq` as SIOCGIFMTU and SIOCGIFTXQLEN read it: name, then one int (the
/// MTU, the transmit queue's length), padded to 40 bytes.
#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// One of the `SIOCGIF*` requests that answer a device's int (`SIOCGIFMTU`,
/// `SIOCGIFTXQLEN`), in this process's network namespace.
fn ifreq_int(name: &IfName, request: libc::Ioctl) -> io::Result<libc::c_int> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut req = IfReqInt {
        name: [0; libc::IFNAMSIZ],
        value: 0,
        _pad: [0; 20],
    };
    // IfName guarantees 1..=15 bytes, so the name stays NUL-terminated.
    for (d, s) in req.name.iter_mut().zip(name.as_str().bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: both requests read the name from and write one int into a `struct
    // ifreq` (40 bytes, `IfReqInt` has that layout), live for the call; the fd is an
    // open socket.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req.value)
}

/// The length of a device's transmit queue (`SIOCGIFTXQLEN`): for a TAP, how many
/// frames the kernel holds for its reader before it drops (`--tap-txqueuelen`).
/// Read live, so a change made with `ip link set … txqueuelen` shows.
pub fn txqueuelen(name: &IfName) -> io::Result<u32> {
    let v = ifreq_int(name, libc::SIOCGIFTXQLEN)?;
    u32::try_from(v).map_err(|_| io::Error::other(format!("negative txqueuelen {v}")))
}

/// An open TAP queue. Unless made persistent ([`Tap::set_persist`]) the device
/// disappears when the last queue is closed, taking its addresses and routes with
/// it. A queue handed to another process (its descriptor passed or inherited) is
/// the same queue there: see [`Tap::from_fd`].
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: IfName,
    offloads: TapOffloads,
}

impl Tap {
    /// Opens (creating if needed) the TAP `name`, probing offloads. With
    /// `opts.queues > 1`, returns that many queues of one multi-queue device.
    pub fn open(name: &IfName, opts: TapOptions) -> Result<Vec<Tap>, TapError> {
        let queues = opts.queues.max(1);
        let mut out = Vec::with_capacity(queues);
        let first = Self::open_queue(name, opts, queues > 1, None)?;
        let granted = first.offloads;
        out.push(first);
        for _ in 1..queues {
            out.push(Self::open_queue(name, opts, true, Some(granted))?);
        }
        Ok(out)
    }

    fn open_queue(
        name: &IfName,
        opts: TapOptions,
        multi: bool,
        granted: Option<TapOffloads>,
    ) -> Result<Tap, TapError> {
        let file = open_tun()?;
        let base = IFF_TAP | IFF_NO_PI | if multi { IFF_MULTI_QUEUE } else { 0 };
        let want_vnet = granted.map_or(opts.vnet_hdr, |g| g.vnet_hdr);
        let vnet_hdr = if want_vnet {
            match set_iff(&file, name, base | IFF_VNET_HDR) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    set_iff(&file, name, base).map_err(|source| TapError::Create {
                        name: name.clone(),
                        source,
                    })?;
                    false
                }
                Err(source) => {
                    return Err(TapError::Create {
                        name: name.clone(),
                        source,
                    })
                }
            }
        } else {
            set_iff(&file, name, base).map_err(|source| TapError::Create {
                name: name.clone(),
                source,
            })?;
            false
        };
        let mut offloads = TapOffloads { vnet_hdr, flags: 0 };
        if vnet_hdr {
            let sz: libc::c_int = crate::wire::VirtioNetHdr::LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which
            // points at a live local for the duration of the call.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &sz) };
            if r < 0 {
                return Err(TapError::Configure {
                    name: name.clone(),
                    what: "TUNSETVNETHDRSZ",
                    source: io::Error::last_os_error(),
                });
            }
            let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
            let candidates: Vec<u32> = match granted {
                Some(g) => vec![g.flags],
                None if opts.uso => vec![tso | TUN_F_USO4 | TUN_F_USO6, tso, TUN_F_CSUM, 0],
                None => vec![tso, TUN_F_CSUM, 0],
            };
            for flags in candidates {
                // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long).
                let r = unsafe {
                    libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags))
                };
                if r == 0 {
                    offloads.flags = flags;
                    break;
                }
            }
        }
        Ok(Tap {
            file,
            name: name.clone(),
            offloads,
        })
    }

    /// A queue over any file (one end of a socket pair), without offloads: lets
    /// tests run the engine's threads without a TAP device or root.
    #[cfg(test)]
    pub(crate) fn over_file(file: File, name: IfName) -> Tap {
        Tap {
            file,
            name,
            offloads: TapOffloads::default(),
        }
    }

    pub fn name(&self) -> &IfName {
        &self.name
    }

    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// Keeps the device (with its addresses, routes and neighbours) when the last
    /// queue is closed, e.g. by a crash (`TUNSETPERSIST`); the next `open` of the
    /// name attaches to it again. `false` makes it go with the last queue.
    pub fn set_persist(&self, on: bool) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its argument by value (an int flag).
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETPERSIST,
                libc::c_ulong::from(on),
            )
        };
        if r < 0 {
            return Err(TapError::Configure {
                name: self.name.clone(),
                what: "TUNSETPERSIST",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// A second descriptor for this queue (to pass to another process).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    /// Takes a queue another process opened (its descriptor passed to us): checks
    /// with `TUNGETIFF` that it is an attached queue of the TAP `name`, reads
    /// whether it carries virtio-net headers, and re-applies `offload_flags` (what
    /// the first opener was granted; the kernel has no way to read them back).
    pub fn from_fd(fd: OwnedFd, name: &IfName, offload_flags: u32) -> Result<Tap, TapError> {
        let file = File::from(fd);
        let cfg = |what, source| TapError::Configure {
            name: name.clone(),
            what,
            source,
        };
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes) through the pointer;
        // `req` is a live, correctly sized #[repr(C)] local.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF, &mut req) };
        if r < 0 {
            return Err(cfg(
                "TUNGETIFF (is the descriptor a TAP queue?)",
                io::Error::last_os_error(),
            ));
        }
        let got: Vec<u8> = req
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        let wrong = |why: String| cfg("check of a passed queue", io::Error::other(why));
        if got != name.as_str().as_bytes() {
            return Err(wrong(format!(
                "the descriptor belongs to {:?}, not {name}",
                String::from_utf8_lossy(&got)
            )));
        }
        if req.flags & IFF_TAP == 0 {
            return Err(wrong("the descriptor is a TUN, not a TAP".into()));
        }
        let vnet_hdr = req.flags & IFF_VNET_HDR != 0;
        let mut offloads = TapOffloads { vnet_hdr, flags: 0 };
        if vnet_hdr {
            let mut sz: libc::c_int = 0;
            // SAFETY: TUNGETVNETHDRSZ writes one c_int through the pointer, a live local.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETVNETHDRSZ, &mut sz) };
            if r < 0 || sz != crate::wire::VirtioNetHdr::LEN as libc::c_int {
                return Err(wrong(format!(
                    "virtio-net header size {sz}, want {}",
                    crate::wire::VirtioNetHdr::LEN
                )));
            }
            // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long).
            let r = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    TUNSETOFFLOAD,
                    libc::c_ulong::from(offload_flags),
                )
            };
            if r < 0 {
                return Err(cfg("TUNSETOFFLOAD", io::Error::last_os_error()));
            }
            offloads.flags = offload_flags;
        }
        Ok(Tap {
            file,
            name: name.clone(),
            offloads,
        })
    }

    /// The device's current MTU (`SIOCGIFMTU`): the largest IP packet it carries
    /// unsegmented. The control plane sets it before the dataplane starts.
    pub fn mtu(&self) -> io::Result<usize> {
        let v = ifreq_int(&self.name, libc::SIOCGIFMTU)?;
        usize::try_from(v).map_err(|_| io::Error::other("negative MTU"))
    }

    /// Reads one frame (with its virtio header when `offloads().vnet_hdr`).
    /// Non-blocking: `WouldBlock` when nothing is queued.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame, with `hdr` in front when the device has vnet headers.
    #[inline]
    pub fn write_frame(&self, hdr: &[u8], frame: &[u8]) -> io::Result<usize> {
        if self.offloads.vnet_hdr {
            (&self.file).write_vectored(&[IoSlice::new(hdr), IoSlice::new(frame)])
        } else {
            (&self.file).write(frame)
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A write-only queue of the underlay TAP: frames written to it are whole VXLAN
/// packets (outer Ethernet, IPv4, UDP, VXLAN, inner frame) behind a 24-byte
/// virtio-net header that may ask for UDP-tunnel segmentation
/// ([`crate::offload::tunnel`]). The kernel takes each as received on this device
/// and routes it to the underlay. Needs Linux 6.17 or later (`TUN_F_UDP_TUNNEL_GSO`).
///
/// The device is multi-queue so that a successor agent can attach its own queue
/// while the one it takes over still holds one, and not persistent, so that it goes
/// with the last agent that holds it. Nothing is routed to it, so nothing is read.
#[derive(Debug)]
pub struct UnderlayTap {
    file: File,
}

impl UnderlayTap {
    /// Opens a queue of `name` (creating the device if needed) with the tunnel
    /// header and offloads. `Configure` with `EINVAL` from `TUNSETVNETHDRSZ` or
    /// `TUNSETOFFLOAD` means the kernel is too old for tunnel GSO.
    pub fn open(name: &IfName) -> Result<UnderlayTap, TapError> {
        let file = open_tun()?;
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
        set_iff(&file, name, flags).map_err(|source| TapError::Create {
            name: name.clone(),
            source,
        })?;
        let cfg = |what: &'static str| TapError::Configure {
            name: name.clone(),
            what,
            source: io::Error::last_os_error(),
        };
        let sz = crate::offload::tunnel::TNL_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which points at
        // a live local for the duration of the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &sz) } < 0 {
            return Err(cfg("TUNSETVNETHDRSZ"));
        }
        let offloads = TUN_F_CSUM
            | TUN_F_TSO4
            | TUN_F_TSO6
            | TUN_F_TSO_ECN
            | crate::offload::tunnel::TUN_F_UDP_TUNNEL_GSO;
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long).
        if unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(offloads),
            )
        } < 0
        {
            return Err(cfg(
                "TUNSETOFFLOAD (UDP tunnel GSO needs Linux 6.17 or later)",
            ));
        }
        Ok(UnderlayTap { file })
    }

    /// Writes one packet: `prefix` (virtio-net header and outer headers) and the
    /// inner `frame`, in one system call without copying either in user space.
    #[inline]
    pub fn write(&self, prefix: &[u8], frame: &[u8]) -> io::Result<usize> {
        (&self.file).write_vectored(&[IoSlice::new(prefix), IoSlice::new(frame)])
    }
}

/// A new, non-blocking descriptor of `/dev/net/tun` (not yet attached to a device).
fn open_tun() -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(TapError::Open)
}

fn set_iff(file: &File, name: &IfName, flags: libc::c_short) -> io::Result<()> {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    // IfName guarantees 1..=15 bytes, so the name stays NUL-terminated.
    for (d, s) in req.name.iter_mut().zip(name.as_str().bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads/writes a `struct ifreq` (40 bytes) through the
    // pointer; `req` is a live, correctly sized #[repr(C)] local.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_is_kernel_sized() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<IfReqInt>(), 40);
    }

    #[test]
    fn loopback_txqueuelen_and_a_missing_device() {
        // `lo` exists in every network namespace; its queue length is the kernel's
        // own (1000 by default; a namespace's owner may change it, never to a value
        // this call cannot read).
        let lo = IfName::new("lo").unwrap();
        let sysfs = std::fs::read_to_string("/sys/class/net/lo/tx_queue_len")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let got = txqueuelen(&lo).expect("SIOCGIFTXQLEN on lo");
        if let Some(want) = sysfs {
            assert_eq!(got, want);
        }
        let missing = IfName::new("vxm-no-such0").unwrap();
        let err = txqueuelen(&missing).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    }

    #[test]
    fn describe_names_flags() {
        let o = TapOffloads {
            vnet_hdr: true,
            flags: TUN_F_CSUM | TUN_F_TSO4,
        };
        assert_eq!(o.describe(), "vnet_hdr csum tso4");
        assert!(o.tso() && o.csum() && !o.uso());
        assert!(TapOffloads::default().describe().starts_with("none"));
    }
}
