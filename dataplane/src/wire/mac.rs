//! [`MacAddr`]: an Ethernet address that prints, parses and (de)serializes as
//! `aa:bb:cc:dd:ee:ff`.
//!
//! smoltcp's `EthernetAddress` prints the same way but does not parse from text and has no
//! serde support; configuration and the control plane need both, so this newtype owns the
//! text form and converts to and from smoltcp's type for the views.

use std::fmt;
use std::str::FromStr;

use smoltcp::wire::EthernetAddress;

/// A six-byte Ethernet (MAC) address; text form `02:00:00:00:00:01` (lower-case hex).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// `00:00:00:00:00:00` (unset; ARP requests carry it as the target hardware address).
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The address in the first six bytes of `bytes`; `None` when there are fewer.
    #[inline]
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        bytes.get(..6)?.try_into().ok().map(MacAddr)
    }

    /// The six bytes.
    #[inline]
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Group bit set (multicast, broadcast included).
    #[inline]
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// All ones.
    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// A usable station address: neither group nor all zeros.
    #[inline]
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::ZERO
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a [`MacAddr`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address: expected six hex bytes separated by colons, like 02:00:00:00:00:01")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl From<EthernetAddress> for MacAddr {
    fn from(a: EthernetAddress) -> Self {
        MacAddr(a.0)
    }
}

impl From<MacAddr> for EthernetAddress {
    fn from(a: MacAddr) -> Self {
        EthernetAddress(a.0)
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address string like \"02:00:00:00:00:01\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses() {
        let m = MacAddr([0x02, 0, 0, 0xab, 0xcd, 0x01]);
        assert_eq!(m.to_string(), "02:00:00:ab:cd:01");
        assert_eq!(format!("{m:?}"), "02:00:00:ab:cd:01");
        assert_eq!("02:00:00:AB:cd:01".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "zz",
            "02:00:00:ab:cd",
            "02:00:00:ab:cd:01:02",
            "02:00:00:ab:cd:1",
            "02:00:00:ab:cd:+1",
            "02-00-00-ab-cd-01",
            "02:00:00:ab:cd:01:",
            "002:00:00:ab:cd:01",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e
                .to_string()
                .starts_with(&format!("`{bad}` is not a MAC address")));
        }
    }

    #[test]
    fn classifies() {
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
        assert!(!MacAddr::ZERO.is_unicast());
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_unicast());
        assert_eq!(
            MacAddr::from_slice(&[1, 2, 3, 4, 5, 6, 7]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn serde_uses_the_text_form() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            mac: MacAddr,
        }
        let t: T = toml::from_str("mac = \"02:00:00:00:00:01\"").unwrap();
        assert_eq!(t.mac, MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(
            toml::to_string(&t).unwrap().trim(),
            "mac = \"02:00:00:00:00:01\""
        );
        let e = toml::from_str::<T>("mac = \"zz\"").unwrap_err().to_string();
        assert!(e.contains("`zz` is not a MAC address"), "{e}");
        assert!(toml::from_str::<T>("mac = 5").is_err());
    }
}
