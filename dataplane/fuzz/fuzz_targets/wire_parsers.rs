//! Every view in `vxmesh_dataplane::wire` over arbitrary bytes: no panic, the checked
//! constructors' guarantees hold, fields agree with etherparse wherever both accept
//! the input, every codec with an encoder round-trips, ECN marking changes only what
//! it should, and Neighbor Discovery accepts only what etherparse reads as valid ND.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use vxmesh_dataplane::aqm::{mark_ce, Marked};
use vxmesh_dataplane::wire::checksum::{checksum, verifies, Checksum};
use vxmesh_dataplane::wire::{
    ArpPacket, ArpRepr, EthernetFrame, Ipv4Packet, Ipv6Packet, MacAddr, TcpHeader, UdpHeader,
    VirtioNetHdr, VxlanHeader,
};

fuzz_target!(|data: &[u8]| {
    // Ethernet II.
    if let Ok(f) = EthernetFrame::new_checked(data) {
        let e = etherparse::Ethernet2HeaderSlice::from_slice(data).expect("etherparse ethernet");
        assert_eq!(f.dst().0, e.destination());
        assert_eq!(f.src().0, e.source());
        assert_eq!(f.ethertype().0, e.ether_type().0);
        assert_eq!(f.payload().len(), data.len() - 14);
    } else {
        assert!(data.len() < 14);
    }

    // ARP: parse -> emit gives back the same 28 bytes.
    if let Ok(p) = ArpPacket::new_checked(data) {
        let r = ArpRepr::parse(&p);
        let mut buf = [0u8; 28];
        r.emit(&mut buf);
        assert_eq!(&buf[..], &data[..28]);
        let e = etherparse::ArpPacketSlice::from_slice(data).expect("etherparse arp");
        assert_eq!(e.slice(), &data[..28]);
    }

    // IPv4.
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let (hl, total) = (p.header_len(), p.total_len());
        assert!(20 <= hl && hl <= total && total <= data.len());
        assert_eq!(p.payload().len(), total - hl);
        let _ = (
            p.tos(),
            p.ttl(),
            p.dont_frag(),
            p.frag_offset(),
            p.is_fragment(),
        );
        let e = etherparse::Ipv4HeaderSlice::from_slice(data).expect("etherparse ipv4");
        assert_eq!(p.src(), e.source_addr());
        assert_eq!(p.dst(), e.destination_addr());
        assert_eq!(p.ident(), e.identification());
        assert_eq!(p.protocol(), e.protocol().0);
        assert_eq!(total, usize::from(e.total_len()));
        assert_eq!(p.header_checksum(), e.header_checksum());
        // (Not etherparse's `calc_header_checksum`: its header type drops the reserved
        // flag bit, so it disagrees on headers that set it.)
        assert_eq!(
            p.verify_checksum(),
            fuzz_support::ref_fold(&data[..hl]) == 0xffff
        );
        let _ = p.pseudo_header(p.payload().len() as u16);
        // Refilling the checksum makes it verify; setters keep the view valid.
        let mut copy = data.to_vec();
        let mut q = Ipv4Packet::new_unchecked(&mut copy[..]);
        q.set_ident(p.ident().wrapping_add(1));
        q.fill_checksum();
        assert!(Ipv4Packet::new_checked(&copy[..])
            .expect("still valid")
            .verify_checksum());
    }

    // IPv6 fixed header.
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        assert!(40 + p.payload_len() <= data.len());
        assert_eq!(p.payload().len(), p.payload_len());
        let e = etherparse::Ipv6HeaderSlice::from_slice(data).expect("etherparse ipv6");
        assert_eq!(p.src(), e.source_addr());
        assert_eq!(p.dst(), e.destination_addr());
        assert_eq!(p.next_header(), e.next_header().0);
        assert_eq!(p.hop_limit(), e.hop_limit());
        assert_eq!(p.class_flow() >> 20, u32::from(e.traffic_class()));
        assert_eq!(p.class_flow() & 0xf_ffff, e.flow_label().value());
    }

    // TCP header.
    if let Ok(t) = TcpHeader::new_checked(data) {
        let hl = t.header_len();
        assert!((20..=60).contains(&hl) && hl <= data.len());
        assert_eq!(t.options().len(), hl - 20);
        let e = etherparse::TcpHeaderSlice::from_slice(data).expect("etherparse tcp");
        assert_eq!(
            (t.src_port(), t.dst_port()),
            (e.source_port(), e.destination_port())
        );
        assert_eq!(
            (t.seq(), t.ack()),
            (e.sequence_number(), e.acknowledgment_number())
        );
        assert_eq!(t.window(), e.window_size());
        assert_eq!(t.checksum(), e.checksum());
        assert_eq!(t.options(), e.options());
        assert_eq!(t.flags() & 0x01 != 0, e.fin());
        assert_eq!(t.flags() & 0x80 != 0, e.cwr());
        let mut copy = data.to_vec();
        let mut w = TcpHeader::new_unchecked(&mut copy[..]);
        w.set_seq(t.seq().wrapping_add(1));
        w.set_flags(0x18);
        w.set_checksum(0xbeef);
        let r = TcpHeader::new_checked(&copy[..]).expect("still valid");
        assert_eq!(
            (r.seq(), r.flags(), r.checksum()),
            (t.seq().wrapping_add(1), 0x18, 0xbeef)
        );
    }

    // UDP header.
    if let Ok(u) = UdpHeader::new_checked(data) {
        let e = etherparse::UdpHeaderSlice::from_slice(data).expect("etherparse udp");
        assert_eq!(
            (u.src_port(), u.dst_port()),
            (e.source_port(), e.destination_port())
        );
        assert_eq!((u.len(), u.checksum()), (e.length(), e.checksum()));
        let _ = u.is_empty();
    }

    // VXLAN: parse -> to_bytes -> parse.
    if let Ok(h) = VxlanHeader::parse(data) {
        assert!(h.vni.get() <= 0x00ff_ffff);
        assert_eq!(VxlanHeader::parse(&h.to_bytes()), Ok(h));
        assert_eq!(h.to_bytes()[4..7], data[4..7]);
    }

    // virtio-net header: bytes round-trip exactly.
    if let Ok(h) = VirtioNetHdr::parse(data) {
        assert_eq!(h.to_bytes()[..], data[..VirtioNetHdr::LEN]);
        let _ = (h.gso_kind(), h.needs_csum());
    }

    // Checksum: any even split sums like the whole; a buffer with its own checksum
    // appended at an even offset verifies.
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) * 2)
        .min(data.len() & !1);
    let mut c = Checksum::new();
    c.add_bytes(&data[..cut]);
    c.add_bytes(&data[cut..]);
    assert_eq!(c.finish(), checksum(data));
    let mut even = data.to_vec();
    if even.len() % 2 == 1 {
        even.push(0);
    }
    let sum = checksum(&even);
    even.extend_from_slice(&sum.to_be_bytes());
    assert!(verifies(&even));

    // MAC text.
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(m) = MacAddr::from_str(s) {
            assert_eq!(m.to_string().parse::<MacAddr>().ok(), Some(m));
        }
    }
    if let Some(m) = MacAddr::from_slice(data.get(..6).unwrap_or(&[])) {
        let _ = (
            m.is_unicast(),
            m.is_multicast(),
            m.is_local(),
            m.is_broadcast(),
        );
    }

    // ECN marking (aqm::mark_ce) of a frame: no panic; only the ECN bits (and an IPv4
    // header's checksum) change, to CE; a header that checked before still checks.
    let mut marked = data.to_vec();
    let v4_header = (data.len() >= 34 && data[12..14] == [0x08, 0x00]).then(|| {
        let hl = usize::from(data[14] & 0x0f) * 4;
        (data.len() >= 14 + hl && hl >= 20).then(|| verifies(&data[14..14 + hl]))
    });
    match mark_ce(&mut marked) {
        Marked::Marked => {
            let changed: Vec<usize> = (0..data.len()).filter(|&i| marked[i] != data[i]).collect();
            if data[12..14] == [0x08, 0x00] {
                assert!(changed.iter().all(|i| [15, 24, 25].contains(i)), "{changed:?}");
                assert_eq!(marked[15] & 3, 3);
                if let Some(Some(true)) = v4_header {
                    let hl = usize::from(data[14] & 0x0f) * 4;
                    assert!(verifies(&marked[14..14 + hl]));
                }
            } else {
                assert_eq!(changed, [15]);
                assert_eq!((marked[15] >> 4) & 3, 3);
            }
        }
        Marked::AlreadyCe | Marked::NotEct => assert_eq!(marked, data),
    }

    // RFC 6040 decapsulation (`wire::ecn`): writing a field (the first byte's low bits
    // choose it) changes only the ECN bits and an IPv4 header's checksum, is read back,
    // and keeps a header that checked checking; the table is total.
    {
        use vxmesh_dataplane::wire::ecn;
        let e = data.first().copied().unwrap_or(0) & 3;
        let _ = ecn::decapsulate(e, data.get(1).copied().unwrap_or(0));
        let mut set = data.to_vec();
        if ecn::set_in_frame(&mut set, e) {
            assert_eq!(ecn::of_frame(&set), Some(e));
            let changed: Vec<usize> = (0..data.len()).filter(|&i| set[i] != data[i]).collect();
            assert!(changed.iter().all(|i| [15, 24, 25].contains(i)), "{changed:?}");
            if let Some(Some(true)) = v4_header {
                let hl = usize::from(data[14] & 0x0f) * 4;
                assert!(verifies(&set[14..14 + hl]));
            }
        } else {
            assert_eq!(set, data);
        }
    }

    // Path probe answers (`path_probe::reply_from`): taken only as the echo reply to a
    // probe this engine tagged, sent at most MAX_REPLY_AGE_MS before `now`, from the IPv4
    // source the tag was made for. The bytes as they are (`now` their own send time, so
    // only the tag stands between them and acceptance), then a copy whose tag and ICMP
    // checksum are made right, so the accepting path is explored too.
    use vxmesh_dataplane::path_probe::{reply_from, ProbeKey, MAX_REPLY_AGE_MS, MAX_REPLY_LEN};
    const KEY: ProbeKey = ProbeKey::from_words(0x0123_4567_89ab_cdef, 0x5eed_0000_1234_abcd);
    let word = |d: &[u8], at: usize| {
        d.get(at..at + 8)
            .map_or(0, |t| u64::from_be_bytes(t.try_into().expect("8 bytes")))
    };
    let sent = word(data, 42);
    let now = sent.saturating_add(u64::from(data.first().copied().unwrap_or(0)) * 10);
    let check = |d: &[u8]| {
        if let Some(reply) = reply_from(d, &KEY, now) {
            assert!(d.len() <= MAX_REPLY_LEN);
            assert_eq!(reply.from.octets(), d[26..30]);
            assert_eq!(reply.sent_ms, sent);
            assert!(sent <= now && now - sent <= MAX_REPLY_AGE_MS);
            assert_eq!(d[34], 0, "an echo reply");
            assert!(verifies(&d[14..34]));
            assert_eq!(word(d, 50), KEY.tag(sent, reply.from));
        }
    };
    check(data);
    if data.len() >= 58 {
        let mut sealed = data.to_vec();
        let from = std::net::Ipv4Addr::new(sealed[26], sealed[27], sealed[28], sealed[29]);
        sealed[50..58].copy_from_slice(&KEY.tag(sent, from).to_be_bytes());
        sealed[36..38].copy_from_slice(&[0, 0]);
        let c = checksum(&sealed[34..58]);
        sealed[36..38].copy_from_slice(&c.to_be_bytes());
        check(&sealed);
    }

    // Neighbor Discovery (`wire::ndp`): a frame that parses as a solicitation or an
    // advertisement is one etherparse reads alike (IPv6, hop limit 255, ICMPv6 of that
    // type, code 0, a checksum that verifies); a solicitation's answer parses back to
    // itself and verifies by `ref_fold`; an advertisement written again reads the same.
    // The bytes as they are, then a copy made into ND (ethertype, next header, hop
    // limit, payload length, type, code and checksum right), so the accepting paths
    // are explored too.
    let nd = |d: &[u8]| {
        use vxmesh_dataplane::wire::ndp::{self, NeighborAdvert, NeighborSolicit};
        let ns = NeighborSolicit::parse(d);
        let na = NeighborAdvert::parse(d);
        if ns.is_err() && na.is_err() {
            return;
        }
        assert!(ns.is_err() || na.is_err());
        let p = etherparse::SlicedPacket::from_ethernet(d).expect("etherparse nd");
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("nd not over ipv6: {:?}", p.net);
        };
        let h = ip.header();
        assert_eq!(h.hop_limit(), 255);
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("nd not icmpv6: {:?}", p.transport);
        };
        assert!(icmp.is_checksum_valid(h.source(), h.destination()));
        assert_eq!(icmp.type_u8(), if ns.is_ok() { 135 } else { 136 });
        assert_eq!(icmp.code_u8(), 0);
        assert!(icmp.slice().len() >= 24);
        if let Ok(ns) = ns {
            assert!(ndp::looks_like_solicit(&d[14..]));
            assert!(!ns.target.is_multicast());
            assert_eq!(ns.src.octets(), h.source());
            assert_eq!(ns.target.octets()[..], icmp.slice()[8..24]);
            if ns.is_dad() {
                assert!(ns.source_lladdr.is_none());
            }
            let na = ns.answer(MacAddr([0x0e, 0, 0, 6, 0, 2]));
            let out = na.emit();
            assert_eq!(NeighborAdvert::parse(&out), Ok(na));
            assert_eq!(na.src, ns.target);
            let mut sum = Vec::new();
            sum.extend_from_slice(&na.src.octets());
            sum.extend_from_slice(&na.dst.octets());
            sum.extend_from_slice(&[0, 0, 0, 32, 0, 0, 0, 58]);
            sum.extend_from_slice(&out[54..]);
            assert_eq!(fuzz_support::ref_fold(&sum), 0xffff);
        }
        if let Ok(na) = na {
            assert!(!na.target.is_multicast());
            assert_eq!(NeighborAdvert::parse(&na.emit()), Ok(na));
        }
    };
    nd(data);
    if data.len() >= 14 + 40 + 24 {
        let mut sealed = data[..data.len().min(14 + 40 + 0xffff)].to_vec();
        let len = sealed.len() - 54;
        sealed[12..14].copy_from_slice(&[0x86, 0xdd]);
        sealed[14] = 0x60 | (sealed[14] & 0x0f);
        sealed[18..20].copy_from_slice(&(len as u16).to_be_bytes());
        sealed[20] = 58;
        sealed[21] = 255;
        sealed[54] = if data[0] & 1 == 0 { 135 } else { 136 };
        sealed[55] = 0;
        sealed[56..58].copy_from_slice(&[0, 0]);
        let mut sum = sealed[22..54].to_vec();
        sum.extend_from_slice(&(len as u32).to_be_bytes());
        sum.extend_from_slice(&[0, 0, 0, 58]);
        sum.extend_from_slice(&sealed[54..]);
        let c = !fuzz_support::ref_fold(&sum);
        sealed[56..58].copy_from_slice(&c.to_be_bytes());
        nd(&sealed);
    }
});
