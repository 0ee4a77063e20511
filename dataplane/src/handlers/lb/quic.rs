//! QUIC server-id routing: the server id a QUIC server encodes in the connection ids it
//! issues, read from the destination connection id of a packet to a QUIC VIP.
//!
//! Only the spec's fixed positions are read (no varint walking): a long header carries its
//! destination CID at bytes 6.. after a length byte at 5, a short header at bytes 1...
//! Initial and 0-RTT packets carry a CID the client chose, so they fall through to the
//! connection table and the ring.

/// The server id in a UDP payload that starts with a QUIC header, or `None` when the packet
/// has none to route by (too short, Initial/0-RTT, CID shorter than 8 bytes, an unknown CID
/// version, or id 0).
pub fn server_id(payload: &[u8]) -> Option<u32> {
    let b0 = *payload.first()?;
    let cid = if b0 & 0x80 != 0 {
        // Long header: flags, version (4), DCID length, DCID.
        let h = payload.get(..14)?;
        if b0 & 0x30 < 0x20 || h[5] < 8 {
            return None;
        }
        &h[6..14]
    } else {
        payload.get(1..9)?
    };
    let c = |i: usize| u32::from(cid[i]);
    let id = match cid[0] >> 6 {
        1 => ((c(0) & 0x3f) << 10) | (c(1) << 2) | (c(2) >> 6),
        2 => (c(1) << 16) | (c(2) << 8) | c(3),
        3 => u32::from_be_bytes([cid[1], cid[2], cid[3], cid[4]]),
        _ => 0,
    };
    (id != 0).then_some(id)
}

/// A CID of `version` (1..=3) carrying `id`, padded to 8 bytes (for tests and case
/// generators; the inverse of [`server_id`]'s decoding).
pub fn cid_for(version: u8, id: u32) -> [u8; 8] {
    let mut c = [0u8; 8];
    match version {
        1 => {
            let id = id & 0xffff;
            c[0] = 0x40 | (id >> 10) as u8;
            c[1] = (id >> 2) as u8;
            c[2] = ((id & 3) << 6) as u8;
        }
        2 => {
            c[0] = 0x80;
            c[1] = (id >> 16) as u8;
            c[2] = (id >> 8) as u8;
            c[3] = id as u8;
        }
        _ => {
            c[0] = 0xc0;
            c[1..5].copy_from_slice(&id.to_be_bytes());
        }
    }
    c
}

/// A short-header QUIC payload with `cid` and some protected bytes.
pub fn short_header(cid: &[u8; 8], rest: &[u8]) -> Vec<u8> {
    let mut p = vec![0x40];
    p.extend_from_slice(cid);
    p.extend_from_slice(rest);
    p
}

/// A long-header QUIC payload of `kind` (0 Initial, 1 0-RTT, 2 Handshake, 3 Retry) with
/// destination CID `dcid` (any length) and an empty source CID.
pub fn long_header(kind: u8, dcid: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut p = vec![0xc0 | (kind & 3) << 4];
    p.extend_from_slice(&1u32.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(0);
    p.extend_from_slice(rest);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode_as_specified() {
        // v1: 16 bits spread over bytes 0..2.
        let c = [0x41, 0x02, 0xc0, 0, 0, 0, 0, 0];
        // ((0x41 & 0x3f) << 10) | (0x02 << 2) | (0xc0 >> 6) = 1024 + 8 + 3
        assert_eq!(server_id(&short_header(&c, b"")), Some(1035));
        // v2: bytes 1..4.
        let c = [0x80, 0x01, 0x02, 0x03, 0, 0, 0, 0];
        assert_eq!(server_id(&short_header(&c, b"")), Some(0x010203));
        // v3: bytes 1..5.
        let c = [0xc0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0];
        assert_eq!(server_id(&short_header(&c, b"")), Some(0xdead_beef));
        // v0 and id 0: nothing to route by.
        assert_eq!(
            server_id(&short_header(&[0x3f, 0xff, 0xff, 0, 0, 0, 0, 0], b"")),
            None
        );
        assert_eq!(server_id(&short_header(&cid_for(2, 0), b"")), None);
        for v in 1..=3 {
            assert_eq!(
                server_id(&short_header(&cid_for(v, 1025), b"x")),
                Some(1025)
            );
        }
    }

    #[test]
    fn long_headers() {
        let cid = cid_for(2, 77);
        // Handshake and Retry route; Initial and 0-RTT do not.
        assert_eq!(server_id(&long_header(2, &cid, b"")), Some(77));
        assert_eq!(server_id(&long_header(3, &cid, b"")), Some(77));
        assert_eq!(server_id(&long_header(0, &cid, b"")), None);
        assert_eq!(server_id(&long_header(1, &cid, b"")), None);
        // DCID shorter than 8 bytes.
        assert_eq!(server_id(&long_header(2, &cid[..7], b"abcdef")), None);
        // Longer DCIDs are fine (only the first 8 bytes are read).
        let mut long = cid.to_vec();
        long.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(server_id(&long_header(2, &long, b"")), Some(77));
    }

    #[test]
    fn too_short() {
        assert_eq!(server_id(&[]), None);
        let p = short_header(&cid_for(3, 5), b"");
        assert_eq!(server_id(&p[..8]), None);
        assert_eq!(server_id(&p[..9]), Some(5));
        let l = long_header(2, &cid_for(3, 5), b"");
        assert_eq!(server_id(&l[..13]), None);
        assert_eq!(server_id(&l[..14]), Some(5));
    }
}
