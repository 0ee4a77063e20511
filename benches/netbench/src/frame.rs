//! The UDP/IPv4 request frame the generator sends, and the MAC address argument type.
//!
//! `size` follows RFC 2544: the Ethernet frame on the wire including its 4-byte FCS, so
//! `--size 64` builds a 60-byte buffer (14 Ethernet + 20 IPv4 + 8 UDP + 18 payload bytes).
//! The UDP checksum is 0 ("none", allowed for IPv4 by RFC 768) so that the generator's XDP
//! program can rewrite the source port per packet without touching a checksum; the IPv4
//! header checksum is computed by etherparse.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{bail, Context as _};

/// Ethernet + IPv4 (no options) + UDP header bytes.
pub const HEADERS: usize = 14 + 20 + 8;
/// Frame check sequence, counted in `size` but not in the buffer.
pub const FCS: usize = 4;
/// Smallest `size`: the Ethernet minimum frame.
pub const MIN_SIZE: usize = 64;
/// Largest `size`: a 1500-byte MTU frame plus header and FCS.
pub const MAX_SIZE: usize = 1518;
/// Offset of the UDP checksum in the frame.
const UDP_CSUM: usize = 14 + 20 + 6;

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Mac> {
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            bail!("MAC {s:?}: expected six hex bytes separated by ':', e.g. 02:00:c6:12:00:01");
        }
        for (b, p) in mac.iter_mut().zip(parts) {
            *b = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() <= 2)
                .with_context(|| format!("MAC {s:?}: {p:?} is not a hex byte"))?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What the request frame carries.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// Wire size including FCS, [`MIN_SIZE`]..=[`MAX_SIZE`].
    pub size: usize,
}

/// UDP payload bytes of a frame of wire size `size`.
pub fn payload_len(size: usize) -> anyhow::Result<usize> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        bail!("frame size {size}: use {MIN_SIZE}..={MAX_SIZE} (bytes on the wire, FCS included)");
    }
    Ok(size - FCS - HEADERS)
}

/// Builds the request frame (`size - 4` bytes), payload zero-filled, UDP checksum 0.
pub fn udp_request(spec: &Spec) -> anyhow::Result<Vec<u8>> {
    udp_with_payload(spec, &vec![0u8; payload_len(spec.size)?])
}

/// Builds a frame carrying `payload` (`spec.size` is not used), UDP checksum 0 ("none"), so
/// that the generator may rewrite ports and payload without updating it.
pub fn udp_with_payload(spec: &Spec, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let builder = etherparse::PacketBuilder::ethernet2(spec.src_mac.0, spec.dst_mac.0)
        .ipv4(spec.src_ip.octets(), spec.dst_ip.octets(), 64)
        .udp(spec.src_port, spec.dst_port);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .context("building the UDP request frame")?;
    frame[UDP_CSUM..UDP_CSUM + 2].copy_from_slice(&[0, 0]);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: usize) -> Spec {
        Spec {
            src_mac: "02:00:c6:12:00:02".parse().unwrap(),
            dst_mac: "02:00:c6:12:00:01".parse().unwrap(),
            src_ip: Ipv4Addr::new(198, 18, 0, 2),
            dst_ip: Ipv4Addr::new(198, 18, 0, 1),
            src_port: 9000,
            dst_port: 7,
            size,
        }
    }

    #[test]
    fn request_of_64_bytes_is_60_without_fcs_and_parses_back() {
        let f = udp_request(&spec(64)).unwrap();
        assert_eq!(f.len(), 60);
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().destination(), [198, 18, 0, 1]);
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (9000, 7));
        assert_eq!(udp.checksum(), 0);
        assert_eq!(udp.length() as usize, 8 + 18);
        assert_eq!(&f[..6], &[2, 0, 0xc6, 0x12, 0, 1]);
    }

    #[test]
    fn sizes_outside_ethernet_limits_are_refused() {
        assert!(udp_request(&spec(63)).is_err());
        assert!(udp_request(&spec(1519)).is_err());
        assert_eq!(udp_request(&spec(1518)).unwrap().len(), 1514);
    }

    #[test]
    fn mac_parses_and_prints() {
        let m: Mac = "02:00:C6:12:00:0a".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:c6:12:00:0a");
        for bad in [
            "02:00:c6:12:00",
            "02:00:c6:12:00:001",
            "zz:00:c6:12:00:01",
            "",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
