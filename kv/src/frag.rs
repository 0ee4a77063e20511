//! Requests larger than the link MTU: IPv4 fragments, reassembled on the key's owner.
//!
//! memcached behind a kernel never sees fragments (the kernel reassembles), and clients
//! rely on it: `memcslap --udp` sends values of up to 5 KB. The data plane does not
//! reassemble, so the kv handler does, for UDP datagrams of up to [`MAX_DATAGRAM`] bytes:
//!
//! - The **first** fragment holds the UDP header and the start of the request, so it names
//!   the key (the first command's). If another core owns that key, the fragment is
//!   forwarded there and the datagram's identity (source, destination, IP id) is remembered
//!   in a small route table, so that its later fragments follow it.
//! - A **later** fragment goes where its route says, or stays here.
//! - A core keeps a few reassembly slots (copying each fragment's bytes, consuming its
//!   frame); the frame of the fragment that completes a datagram carries the first
//!   datagram of the answer. The UDP checksum is checked over the whole datagram.
//! - A datagram whose commands need more than one core after reassembly gets
//!   `SERVER_ERROR out of memory reading request` for the rest (it cannot travel between
//!   cores as one frame); slots not completed within [`TIMEOUT_NS`] are reused.
//!
//! Steering must send the fragments here: a later fragment has no UDP header, so only a
//! rule without a port (`udp 198.18.0.1`) matches it. IPv6 fragments are not reassembled.
//! Fragments that arrive before the first one of their datagram are kept where they land;
//! when the first one then goes to another core, the kept bytes follow it as fragments
//! rebuilt in frames from `Emit` (behind it on the same ring).

use std::net::Ipv4Addr;

use dataplane::wire::view::Ipv4Packet;
use dataplane::wire::{checksum, ip_proto, Layout, L3};
use dataplane::WorkerId;

use crate::wire::Template;

/// Largest reassembled UDP datagram (header included).
pub const MAX_DATAGRAM: usize = 16 * 1024;
/// Reassembly slots per core.
pub const SLOTS: usize = 16;
/// Route table entries per core.
const ROUTES: usize = 256;
/// An unfinished datagram older than this gives its slot up.
pub const TIMEOUT_NS: u64 = 2_000_000_000;

const BLOCKS: usize = MAX_DATAGRAM / 8;

/// Which datagram a fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Id {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ident: u16,
}

/// One fragment, as read from its frame.
#[derive(Debug, Clone)]
pub struct Fragment {
    pub id: Id,
    /// Byte offset of this fragment's payload in the datagram.
    pub offset: usize,
    /// The IP payload's range in the frame.
    pub payload: std::ops::Range<usize>,
    pub more: bool,
}

/// The fragment `frame` is, if it is a UDP/IPv4 fragment.
pub fn fragment(frame: &[u8], layout: &Layout) -> Option<Fragment> {
    if layout.l3 != L3::Ipv4 || layout.l4_proto != ip_proto::UDP {
        return None;
    }
    let l3 = usize::from(layout.l3_off);
    let ip = Ipv4Packet::new_checked(frame.get(l3..layout.l4_end())?).ok()?;
    let offset = usize::from(ip.frag_offset());
    if !ip.more_frags() && offset == 0 {
        return None;
    }
    let hl = usize::from(ip.header_len());
    Some(Fragment {
        id: Id {
            src: ip.src_addr().octets(),
            dst: ip.dst_addr().octets(),
            ident: ip.ident(),
        },
        offset,
        payload: l3 + hl..layout.l4_end(),
        more: ip.more_frags(),
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Route {
    id: Id,
    to: u16,
    stamp: u64,
    used: bool,
}

struct Slot {
    id: Id,
    used: bool,
    stamp: u64,
    buf: Vec<u8>,
    blocks: [u64; BLOCKS / 64],
    total: Option<usize>,
    tpl: Option<Template>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            id: Id::default(),
            used: false,
            stamp: 0,
            buf: vec![0; MAX_DATAGRAM],
            blocks: [0; BLOCKS / 64],
            total: None,
            tpl: None,
        }
    }

    fn reset(&mut self, id: Id, now: u64) {
        self.id = id;
        self.used = true;
        self.stamp = now;
        self.blocks = [0; BLOCKS / 64];
        self.total = None;
        self.tpl = None;
    }

    fn complete(&self) -> bool {
        let Some(total) = self.total else {
            return false;
        };
        let n = total.div_ceil(8);
        (0..n).all(|b| self.blocks[b / 64] & (1 << (b % 64)) != 0) && self.tpl.is_some()
    }
}

/// What the handler does with a fragment.
pub enum Step {
    /// Not a fragment of a request for us: another handler's.
    NotOurs,
    /// Forward the frame to this worker (the datagram's owner).
    Forward(WorkerId),
    /// Kept a copy; the frame is consumed.
    Kept,
    /// Dropped (too large, or a bad checksum once complete); the frame is consumed.
    Dropped,
    /// The datagram is complete: slot `usize` holds it; answer with this frame.
    Complete(usize),
}

/// One core's reassembly state.
pub struct Reassembly {
    slots: Vec<Slot>,
    routes: Vec<Route>,
}

impl Default for Reassembly {
    fn default() -> Self {
        Reassembly {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            routes: vec![Route::default(); ROUTES],
        }
    }
}

fn route_index(id: &Id) -> usize {
    let h = u32::from_be_bytes(id.src)
        ^ u32::from_be_bytes(id.dst).rotate_left(7)
        ^ u32::from(id.ident).wrapping_mul(0x9e37_79b9);
    (h as usize ^ (h >> 16) as usize) % ROUTES
}

impl Reassembly {
    /// Where a fragment whose datagram was routed goes (`None`: not routed).
    pub fn route(&self, id: &Id, now: u64) -> Option<WorkerId> {
        let r = &self.routes[route_index(id)];
        (r.used && r.id == *id && now.saturating_sub(r.stamp) < TIMEOUT_NS)
            .then_some(WorkerId(r.to))
    }

    /// Remembers that the datagram `id` belongs to worker `to`.
    pub fn set_route(&mut self, id: Id, to: WorkerId, now: u64) {
        self.routes[route_index(&id)] = Route {
            id,
            to: to.0,
            stamp: now,
            used: true,
        };
        // Fragments of it that arrived earlier cannot follow any more.
        if let Some(s) = self.slots.iter_mut().find(|s| s.used && s.id == id) {
            s.used = false;
        }
    }

    /// The byte runs held for datagram `id` (fragments that arrived before its first one):
    /// `(offset, bytes, last)`, `last` when the run ends the datagram.
    pub fn held(&self, id: &Id) -> Vec<(usize, &[u8], bool)> {
        let Some(s) = self.slots.iter().find(|s| s.used && s.id == *id) else {
            return Vec::new();
        };
        let has = |b: usize| s.blocks[b / 64] & (1 << (b % 64)) != 0;
        let end = s.total.unwrap_or(MAX_DATAGRAM);
        let mut runs = Vec::new();
        let mut b = 0;
        while b * 8 < end {
            if !has(b) {
                b += 1;
                continue;
            }
            let start = b;
            while b * 8 < end && has(b) {
                b += 1;
            }
            let (from, to) = (start * 8, (b * 8).min(end));
            runs.push((from, &s.buf[from..to], Some(to) == s.total));
        }
        runs
    }

    /// Forgets the route of datagram `id` (its first fragment stays here: an IP id that
    /// a sender reuses must not follow an old route).
    pub fn clear_route(&mut self, id: &Id) {
        let r = &mut self.routes[route_index(id)];
        if r.id == *id {
            r.used = false;
        }
    }

    /// Copies `frag`'s bytes (from `frame`) into the datagram's slot.
    pub fn keep(&mut self, frame: &[u8], layout: &Layout, frag: &Fragment, now: u64) -> Step {
        let Some(bytes) = frame.get(frag.payload.clone()) else {
            return Step::Dropped;
        };
        let end = frag.offset + bytes.len();
        if end > MAX_DATAGRAM || (frag.more && bytes.len() % 8 != 0) {
            return Step::Dropped;
        }
        let i = match self.slots.iter().position(|s| s.used && s.id == frag.id) {
            Some(i) => i,
            None => {
                // A free slot, else a timed-out one, else the oldest.
                let i = self
                    .slots
                    .iter()
                    .position(|s| !s.used || now.saturating_sub(s.stamp) >= TIMEOUT_NS)
                    .unwrap_or_else(|| {
                        (0..self.slots.len())
                            .min_by_key(|&i| self.slots[i].stamp)
                            .unwrap_or(0)
                    });
                self.slots[i].reset(frag.id, now);
                i
            }
        };
        let s = &mut self.slots[i];
        s.buf[frag.offset..end].copy_from_slice(bytes);
        for b in frag.offset / 8..end.div_ceil(8) {
            s.blocks[b / 64] |= 1 << (b % 64);
        }
        if !frag.more {
            s.total = Some(end);
        }
        if frag.offset == 0 {
            s.tpl = Template::for_first_fragment(frame, layout);
        }
        if !s.complete() {
            return Step::Kept;
        }
        // Checksum over the whole datagram (0: none).
        let total = s.total.unwrap_or(0);
        if total < 8 {
            s.used = false;
            return Step::Dropped;
        }
        let d = &s.buf[..total];
        let udp_len = usize::from(u16::from_be_bytes([d[4], d[5]]));
        let ok = udp_len == total
            && (d[6..8] == [0, 0]
                || checksum::verify(
                    checksum::pseudo_v4(
                        Ipv4Addr::from(s.id.src),
                        Ipv4Addr::from(s.id.dst),
                        ip_proto::UDP,
                        total as u16,
                    ),
                    d,
                ));
        if !ok {
            s.used = false;
            return Step::Dropped;
        }
        Step::Complete(i)
    }

    /// The complete datagram of slot `i` (UDP header included) and its reply template;
    /// frees the slot.
    pub fn take(&mut self, i: usize) -> Option<(&[u8], Template)> {
        let s = self.slots.get_mut(i)?;
        s.used = false;
        let tpl = s.tpl.take()?;
        let total = s.total?;
        Some((&s.buf[..total], tpl))
    }
}

#[cfg(test)]
mod tests {
    use dataplane::wire::build::{self, Endpoints4};

    use super::*;

    /// Splits an IPv4 frame into fragments of at most `mtu` bytes of IP packet.
    pub(crate) fn fragments(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let l3 = 14;
        let hl = 20;
        let payload = &frame[l3 + hl..];
        let step = (mtu - hl) / 8 * 8;
        let mut out = Vec::new();
        let mut off = 0;
        while off < payload.len() {
            let end = (off + step).min(payload.len());
            let mut f = frame[..l3 + hl].to_vec();
            f.extend_from_slice(&payload[off..end]);
            let more = end < payload.len();
            let total = (hl + end - off) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            let fo = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
            f[l3 + 6..l3 + 8].copy_from_slice(&fo.to_be_bytes());
            f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = checksum::of(&f[l3..l3 + hl]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            out.push(f);
            off = end;
        }
        out
    }

    #[test]
    fn fragments_reassemble_in_any_order() {
        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let frame = build::udp4(
            &Endpoints4 {
                dst_port: 11211,
                ..Endpoints4::default()
            },
            &payload,
            None,
        );
        let mut frags = fragments(&frame, 1500);
        assert_eq!(frags.len(), 3);
        frags.swap(0, 2);
        let mut r = Reassembly::default();
        let mut done = None;
        for f in &frags {
            let l = dataplane::wire::parse(f).unwrap();
            let fr = fragment(f, &l).unwrap();
            match r.keep(f, &l, &fr, 0) {
                Step::Complete(i) => done = Some(i),
                Step::Kept => {}
                _ => panic!("dropped"),
            }
        }
        let (d, _) = r.take(done.unwrap()).unwrap();
        assert_eq!(&d[8..], &payload[..]);
        // A corrupted fragment fails the checksum once complete.
        let mut bad = fragments(&frame, 1500);
        let n = bad[1].len();
        bad[1][n - 1] ^= 1;
        let mut last = None;
        for f in &bad {
            let l = dataplane::wire::parse(f).unwrap();
            let fr = fragment(f, &l).unwrap();
            last = Some(matches!(r.keep(f, &l, &fr, 0), Step::Dropped));
        }
        assert_eq!(last, Some(true));
    }
}
