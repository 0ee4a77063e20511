//! The UDP envelope: which frames are requests for us, and how reply datagrams are built.
//!
//! Requests are read through smoltcp's checked views (re-exported by `dataplane::wire`)
//! at the offsets the receive path stored in the frame's layout, so a stale or forged
//! layout makes the handler pass the frame on, never panic. The UDP checksum is verified
//! (a zero IPv4 checksum means "none"); memcached behind a kernel would never see a
//! corrupt datagram either.
//!
//! Replies are new datagrams from the request's destination to its source: Ethernet
//! addresses swapped, the 802.1Q tag kept, a fresh IPv4 header (no options, DF, TTL 64, as
//! `wire::build` makes them) or IPv6 header (hop limit 64), ports swapped, and full IP and
//! UDP checksums. One [`Template`] is made per request and stamped into every datagram of
//! its answer.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use dataplane::wire::build::DEFAULT_TTL;
use dataplane::wire::view::{Ipv4Packet, Ipv6Packet, UdpPacket};
use dataplane::wire::{checksum, ip_proto, vlan, Layout, L3};

use crate::proto::{FrameHeader, HEADER_LEN};

const ETH: usize = 14;
const IPV4: usize = 20;
const IPV6: usize = 40;
const UDP: usize = 8;
/// Longest reply header: Ethernet with one 802.1Q tag, IPv6, UDP.
pub const MAX_TEMPLATE: usize = ETH + 4 + IPV6 + UDP;

/// What a frame is for the kv handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Not a UDP datagram to the kv port (or an IP fragment): another handler's.
    NotOurs,
    /// To the kv port, but the UDP checksum is wrong: dropped.
    BadChecksum,
    /// A request: the UDP payload's range in the frame.
    Request(Range<usize>),
}

/// The key of a UDP memcached `get`, `gets` or `set` request to `port` whose command starts
/// the datagram, without any validation (no checksum, no length checks beyond the frame's
/// bytes): a hint for prefetching, never a basis for an answer.
pub fn first_key<'a>(frame: &'a [u8], layout: &Layout, port: u16) -> Option<&'a [u8]> {
    if layout.l4_proto != ip_proto::UDP {
        return None;
    }
    let l4 = usize::from(layout.l4_off);
    let udp = frame.get(l4..l4 + 8)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let cmd = frame.get(l4 + 8 + crate::proto::HEADER_LEN..)?;
    let rest = if let Some(r) = cmd.strip_prefix(b"get ") {
        r
    } else if let Some(r) = cmd.strip_prefix(b"gets ") {
        r
    } else {
        cmd.strip_prefix(b"set ")?
    };
    let end = memchr::memchr2(
        b' ',
        b'\r',
        &rest[..rest.len().min(crate::proto::KEY_MAX + 1)],
    )?;
    (end > 0).then(|| &rest[..end])
}

/// Classifies `frame` (with its receive-side `layout`) for a kv service on `port`.
pub fn classify(frame: &[u8], layout: &Layout, port: u16) -> Class {
    if layout.l4_proto != ip_proto::UDP {
        return Class::NotOurs;
    }
    let l3 = usize::from(layout.l3_off);
    let Some(ip) = frame.get(l3..layout.l4_end()) else {
        return Class::NotOurs;
    };
    if l3 < ETH {
        return Class::NotOurs;
    }
    // Pseudo-header sums without the length (both add it as a plain term).
    let (hl, pseudo): (usize, u32) = match layout.l3 {
        L3::Ipv4 => match Ipv4Packet::new_checked(ip) {
            Ok(p) if !p.more_frags() && p.frag_offset() == 0 => {
                let (s, d) = (p.src_addr(), p.dst_addr());
                if !unicast_v4(s) || !unicast_v4(d) {
                    return Class::NotOurs;
                }
                (
                    usize::from(p.header_len()),
                    checksum::pseudo_v4(s, d, ip_proto::UDP, 0),
                )
            }
            _ => return Class::NotOurs,
        },
        L3::Ipv6 => match Ipv6Packet::new_checked(ip) {
            Ok(p) => {
                let (s, d) = (p.src_addr(), p.dst_addr());
                if s.is_unspecified() || s.is_multicast() || d.is_multicast() {
                    return Class::NotOurs;
                }
                (IPV6, pseudo_v6_no_len(&s, &d))
            }
            _ => return Class::NotOurs,
        },
        _ => return Class::NotOurs,
    };
    let Some(l4) = ip.get(hl..) else {
        return Class::NotOurs;
    };
    let Ok(udp) = UdpPacket::new_checked(l4) else {
        return Class::NotOurs;
    };
    if udp.dst_port() != port || udp.src_port() == 0 {
        return Class::NotOurs;
    }
    let len = usize::from(udp.len());
    let Some(dgram) = l4.get(..len) else {
        return Class::NotOurs;
    };
    let sum = udp.checksum();
    let v4_none = layout.l3 == L3::Ipv4 && sum == 0;
    if !v4_none && !checksum::verify(pseudo + len as u32, dgram) {
        return Class::BadChecksum;
    }
    let start = l3 + hl + UDP;
    Class::Request(start..l3 + hl + len)
}

/// Recomputes the UDP checksum of a request [`classify`] accepted, after its payload was
/// changed in place (a forwarded datagram's resume mark). An IPv4 checksum of 0 ("none")
/// stays 0. False when the frame no longer parses.
pub fn refresh_checksum(frame: &mut [u8], layout: &Layout) -> bool {
    let l3 = usize::from(layout.l3_off);
    let end = layout.l4_end();
    let Some(ip) = frame.get(l3..end) else {
        return false;
    };
    let (hl, pseudo) = match layout.l3 {
        L3::Ipv4 => match Ipv4Packet::new_checked(ip) {
            Ok(p) => (
                usize::from(p.header_len()),
                checksum::pseudo_v4(p.src_addr(), p.dst_addr(), ip_proto::UDP, 0),
            ),
            Err(_) => return false,
        },
        L3::Ipv6 => match Ipv6Packet::new_checked(ip) {
            Ok(p) => (IPV6, pseudo_v6_no_len(&p.src_addr(), &p.dst_addr())),
            Err(_) => return false,
        },
        _ => return false,
    };
    let Some(l4) = frame.get_mut(l3 + hl..end) else {
        return false;
    };
    if l4.len() < UDP {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([l4[4], l4[5]])).min(l4.len());
    if layout.l3 == L3::Ipv4 && l4[6..8] == [0, 0] {
        return true;
    }
    l4[6..8].copy_from_slice(&[0, 0]);
    let c = match checksum::finish(checksum::sum(pseudo + len as u32, &l4[..len])) {
        0 => 0xffff,
        c => c,
    };
    l4[6..8].copy_from_slice(&c.to_be_bytes());
    true
}

fn unicast_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast())
}

/// The headers of every reply datagram to one request; lengths and checksums are filled in
/// per datagram.
#[derive(Clone)]
pub struct Template {
    hdr: [u8; MAX_TEMPLATE],
    len: usize,
    l3: usize,
    v6: bool,
    /// Pseudo-header sum without the length.
    pseudo: u32,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("len", &self.len)
            .field("v6", &self.v6)
            .finish()
    }
}

impl Template {
    /// The reply headers for a request that [`classify`] accepted (`None` if the frame
    /// changed meanwhile).
    pub fn for_request(frame: &[u8], layout: &Layout) -> Option<Template> {
        let l3 = usize::from(layout.l3_off);
        let mut t = Template {
            hdr: [0; MAX_TEMPLATE],
            len: 0,
            l3,
            v6: layout.l3 == L3::Ipv6,
            pseudo: 0,
        };
        // Ethernet: addresses swapped, tag and ethertype kept.
        let l2 = frame.get(..l3)?;
        if l3 != ETH && l3 != ETH + vlan::HEADER_LEN {
            return None;
        }
        t.hdr[..6].copy_from_slice(&l2[6..12]);
        t.hdr[6..12].copy_from_slice(&l2[..6]);
        t.hdr[12..l3].copy_from_slice(&l2[12..l3]);
        let ip = frame.get(l3..layout.l4_end())?;
        let (sport, dport);
        if t.v6 {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            let (src, dst) = (p.dst_addr(), p.src_addr());
            (sport, dport) = reply_ports(ip.get(IPV6..)?)?;
            let h = &mut t.hdr[l3..l3 + IPV6];
            h[0] = 0x60;
            h[6] = ip_proto::UDP;
            h[7] = DEFAULT_TTL;
            h[8..24].copy_from_slice(&src.octets());
            h[24..40].copy_from_slice(&dst.octets());
            t.pseudo = pseudo_v6_no_len(&src, &dst);
            t.len = l3 + IPV6 + UDP;
        } else {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            let (src, dst) = (p.dst_addr(), p.src_addr());
            (sport, dport) = reply_ports(ip.get(usize::from(p.header_len())..)?)?;
            let h = &mut t.hdr[l3..l3 + IPV4];
            h[0] = 0x45;
            h[6] = 0x40; // DF
            h[8] = DEFAULT_TTL;
            h[9] = ip_proto::UDP;
            h[12..16].copy_from_slice(&src.octets());
            h[16..20].copy_from_slice(&dst.octets());
            t.pseudo = checksum::pseudo_v4(src, dst, ip_proto::UDP, 0);
            t.len = l3 + IPV4 + UDP;
        }
        let u = t.len - UDP;
        t.hdr[u..u + 2].copy_from_slice(&sport.to_be_bytes());
        t.hdr[u + 2..u + 4].copy_from_slice(&dport.to_be_bytes());
        Some(t)
    }

    /// The reply headers for a datagram whose first IPv4 fragment is `frame` (its UDP
    /// header is there; its length field covers the whole datagram).
    pub fn for_first_fragment(frame: &[u8], layout: &Layout) -> Option<Template> {
        Template::for_request(frame, layout)
    }

    /// Bytes in front of the memcached frame header.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a template has at least Ethernet, IP and UDP headers.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes one datagram (headers, memcached frame header, `chunk`) at the start of
    /// `out`; returns its length, or `None` when `out` is too short.
    pub fn write(&self, out: &mut [u8], h: &FrameHeader, chunk: &[u8]) -> Option<usize> {
        let at = self.len + HEADER_LEN;
        out.get_mut(at..at + chunk.len())?.copy_from_slice(chunk);
        self.write_around(out, h, chunk.len())
    }

    /// Writes the headers of a datagram whose `payload_len` bytes of payload are already in
    /// place (at [`Template::payload_offset`] of `out`), checksums included; returns the
    /// datagram's length, or `None` when `out` is too short.
    pub fn write_around(
        &self,
        out: &mut [u8],
        h: &FrameHeader,
        payload_len: usize,
    ) -> Option<usize> {
        let total = self.len + HEADER_LEN + payload_len;
        let out = out.get_mut(..total)?;
        out[..self.len].copy_from_slice(&self.hdr[..self.len]);
        h.write(&mut out[self.len..]);
        let udp_len = (HEADER_LEN + payload_len + UDP) as u16;
        let l3 = self.l3;
        if self.v6 {
            out[l3 + 4..l3 + 6].copy_from_slice(&udp_len.to_be_bytes());
        } else {
            let total_len = udp_len + IPV4 as u16;
            out[l3 + 2..l3 + 4].copy_from_slice(&total_len.to_be_bytes());
            out[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = checksum::of(&out[l3..l3 + IPV4]);
            out[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let u = self.len - UDP;
        out[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
        out[u + 6..u + 8].copy_from_slice(&[0, 0]);
        // UDP header, memcached header and payload in one pass: they are contiguous.
        let s = checksum::sum(self.pseudo + u32::from(udp_len), &out[u..]);
        let c = match checksum::finish(s) {
            0 => 0xffff,
            c => c,
        };
        out[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
        Some(total)
    }

    /// Where a datagram's payload starts (after the headers and the memcached header).
    pub fn payload_offset(&self) -> usize {
        self.len + HEADER_LEN
    }
}

/// The reply's (source, destination) ports: the request's swapped, read straight from the
/// UDP header (whose length field a first fragment cannot satisfy).
fn reply_ports(l4: &[u8]) -> Option<(u16, u16)> {
    let h = l4.get(..UDP)?;
    Some((
        u16::from_be_bytes([h[2], h[3]]),
        u16::from_be_bytes([h[0], h[1]]),
    ))
}

fn pseudo_v6_no_len(src: &Ipv6Addr, dst: &Ipv6Addr) -> u32 {
    checksum::pseudo_v6(src, dst, ip_proto::UDP, 0)
}

#[cfg(test)]
mod tests {
    use dataplane::wire::build::{self, Endpoints4, Endpoints6};

    use super::*;

    fn layout(f: &[u8]) -> Layout {
        dataplane::wire::parse(f).unwrap()
    }

    #[test]
    fn requests_are_recognized_and_checked() {
        let e = Endpoints4 {
            dst_port: 11211,
            ..Endpoints4::default()
        };
        let f = build::udp4(&e, b"\0\x01\0\0\0\x01\0\0get a\r\n", None);
        let l = layout(&f);
        let Class::Request(r) = classify(&f, &l, 11211) else {
            panic!()
        };
        assert_eq!(&f[r], b"\0\x01\0\0\0\x01\0\0get a\r\n");
        assert_eq!(classify(&f, &l, 7), Class::NotOurs);
        let mut bad = f.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(classify(&bad, &l, 11211), Class::BadChecksum);
        let mut none = f.clone();
        none[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        none[n - 1] ^= 1;
        assert!(matches!(classify(&none, &l, 11211), Class::Request(_)));
        let e6 = Endpoints6 {
            dst_port: 11211,
            ..Endpoints6::default()
        };
        let f6 = build::udp6(&e6, b"12345678version\r\n", Some(5));
        assert!(matches!(
            classify(&f6, &layout(&f6), 11211),
            Class::Request(_)
        ));
    }

    #[test]
    fn first_key_finds_get_gets_and_set_keys_only() {
        let e = Endpoints4 {
            dst_port: 11211,
            ..Endpoints4::default()
        };
        let key = |payload: &[u8], port: u16| {
            let f = build::udp4(&e, payload, None);
            first_key(&f, &layout(&f), port).map(<[u8]>::to_vec)
        };
        let h = b"\0\x01\0\0\0\x01\0\0";
        let with = |cmd: &[u8]| [&h[..], cmd].concat();
        assert_eq!(key(&with(b"get abc\r\n"), 11211), Some(b"abc".to_vec()));
        assert_eq!(key(&with(b"gets k1 k2\r\n"), 11211), Some(b"k1".to_vec()));
        assert_eq!(
            key(&with(b"set kk 0 0 1\r\nx\r\n"), 11211),
            Some(b"kk".to_vec())
        );
        assert_eq!(key(&with(b"get abc\r\n"), 7), None);
        assert_eq!(key(&with(b"delete abc\r\n"), 11211), None);
        assert_eq!(key(&with(b"get \r\n"), 11211), None);
        assert_eq!(key(&with(b"get abc"), 11211), None);
        assert_eq!(
            key(&with(&[b"get ".as_slice(), &[b'k'; 300]].concat()), 11211),
            None
        );
        assert_eq!(key(b"\0\x01", 11211), None);
    }

    /// A reply parses as a valid frame with the addresses reversed and correct checksums.
    #[test]
    fn replies_are_reversed_and_checksummed() {
        for vlan in [None, Some(9)] {
            let e = Endpoints4 {
                dst_port: 11211,
                src_port: 4000,
                ..Endpoints4::default()
            };
            let f = build::udp4(&e, b"\0\x01\0\0\0\x01\0\0x\r\n", vlan);
            let t = Template::for_request(&f, &layout(&f)).unwrap();
            let mut out = [0xa5u8; 1600];
            let h = FrameHeader {
                request_id: 1,
                seq: 0,
                count: 1,
                reserved: 0,
            };
            let n = t.write(&mut out, &h, b"STORED\r\n").unwrap();
            let want = build::udp4(&e.reversed(), b"\0\x01\0\0\0\x01\0\0STORED\r\n", vlan);
            assert_eq!(&out[..n], &want[..]);
            let e6 = Endpoints6 {
                dst_port: 11211,
                src_port: 4000,
                ..Endpoints6::default()
            };
            let f = build::udp6(&e6, b"\0\x01\0\0\0\x01\0\0x\r\n", vlan);
            let t = Template::for_request(&f, &layout(&f)).unwrap();
            let n = t.write(&mut out, &h, b"STORED\r\n").unwrap();
            let want = build::udp6(&e6.reversed(), b"\0\x01\0\0\0\x01\0\0STORED\r\n", vlan);
            assert_eq!(&out[..n], &want[..]);
            assert_eq!(t.write(&mut out[..10], &h, b"x"), None);
        }
    }
}
