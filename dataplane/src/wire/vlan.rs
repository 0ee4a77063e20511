//! A view of one IEEE 802.1Q tag: the 4 bytes that follow an outer ethertype of `0x8100`
//! (tag control information, then the inner ethertype).
//!
//! smoltcp has no VLAN support, so this is a small hand-written view in its style: one length
//! check in [`Tag::new_checked`], after which no accessor can panic.

use smoltcp::wire::{Error, Result};

/// Tag protocol identifier of an 802.1Q tag (the outer ethertype).
pub const TPID: u16 = 0x8100;
/// Bytes of one tag (TCI + inner ethertype).
pub const HEADER_LEN: usize = 4;

/// A view of one 802.1Q tag over `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    /// Wraps `buffer` without checking its length; accessors panic if it is shorter than
    /// [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Tag<T> {
        Tag { buffer }
    }

    /// Wraps `buffer` after checking that it holds a whole tag.
    pub fn new_checked(buffer: T) -> Result<Tag<T>> {
        let t = Self::new_unchecked(buffer);
        t.check_len()?;
        Ok(t)
    }

    /// Err when the buffer is shorter than a tag.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Tag control information: PCP (3 bits), DEI (1 bit), VLAN id (12 bits).
    #[inline]
    pub fn tci(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }

    /// VLAN identifier (low 12 bits of the TCI).
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// Priority code point.
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// Ethertype of what follows the tag.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tag<T> {
    /// Sets the whole tag control information.
    #[inline]
    pub fn set_tci(&mut self, tci: u16) {
        self.buffer.as_mut()[0..2].copy_from_slice(&tci.to_be_bytes());
    }

    /// Sets the inner ethertype.
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&ethertype.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields() {
        let t = Tag::new_checked([0xb0, 0x64, 0x08, 0x00]).unwrap();
        assert_eq!(t.tci(), 0xb064);
        assert_eq!(t.vid(), 100);
        assert_eq!(t.pcp(), 5);
        assert!(t.dei());
        assert_eq!(t.ethertype(), 0x0800);
    }

    #[test]
    fn writes_fields() {
        let mut buf = [0xa5u8; 4];
        let mut t = Tag::new_checked(&mut buf[..]).unwrap();
        t.set_tci(0x0fff);
        t.set_ethertype(0x86dd);
        assert_eq!(buf, [0x0f, 0xff, 0x86, 0xdd]);
    }

    #[test]
    fn short_buffers_are_refused() {
        for n in 0..HEADER_LEN {
            assert!(Tag::new_checked(&[0u8; 4][..n]).is_err());
        }
    }
}
