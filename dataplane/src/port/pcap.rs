//! `port::Pcap`: a one-queue port that reads a capture file and writes one.
//!
//! This is the port the golden replay cases run on, so it is built for determinism rather
//! than speed:
//! - The whole input (pcap, either byte order and either timestamp resolution, or pcapng,
//!   told apart by the magic number) is read and checked at construction, so a bad file
//!   fails `Pcap::new` with a [`PortError::Capture`] naming the file and the problem instead
//!   of surfacing half-way through a run. Only Ethernet captures are accepted: every other
//!   part of the data plane assumes an Ethernet header at offset 0.
//! - Each received frame carries the packet's capture timestamp in `meta.ts_ns`, and the
//!   output is written with timestamps taken from `meta.ts_ns` (microsecond pcap, little
//!   endian, Ethernet linktype), never from a clock. The same input therefore always gives
//!   the same output bytes.
//! - A packet that does not fit a frame (`frame_size` minus the headroom) is counted as
//!   received and as an `oversize` drop in the port's counters, and is not delivered, as a
//!   NIC would drop a frame larger than its receive buffer.
//!
//! The receive cursor lives in the port (not the queue handle) so that the queue can move
//! between workers without replaying or skipping packets. The output writer is moved into
//! the queue handle while one is open and back into the port when it is dropped, so the hot
//! path takes no lock; [`Port::close`] flushes it. Rejected: a `Mutex` around the writer
//! (a lock per burst) and streaming the input lazily (errors would appear mid-run, and
//! captures used for tests are small).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, Endianness, TsResolution};

use crate::batch::Batch;
use crate::config::{EngineConfig, PcapPortConfig};
use crate::mem::{Cache, FramePool, Options, PoolId, HEADROOM};
use crate::packet::{PortId, QueueId};
use crate::pipeline::DropReason;
use crate::port::{Ownership, Port, PortError, Queue};
use crate::stats::{Padded, QueueCounters};

/// Frames in a pcap port's pool unless the config says otherwise: the config's documented
/// default (`PcapPortConfig::frames`).
pub const DEFAULT_FRAMES: u32 = 4096;

/// Settings of a pcap port, with paths already resolved.
#[derive(Debug, Clone)]
pub struct PcapOptions {
    /// Capture to read; `None`: the port receives nothing and is finished at once.
    pub input: Option<PathBuf>,
    /// Capture to write (created, or truncated, by [`Pcap::new`]); `None`: transmitted
    /// frames are counted and freed.
    pub output: Option<PathBuf>,
    /// Frames in the port's pool.
    pub frames: u32,
    /// Bytes per frame (see `engine.frame_size`).
    pub frame_size: u32,
    /// Frame memory placement.
    pub memory: Options,
}

impl PcapOptions {
    /// Options from a `kind = "pcap"` port section; relative paths are taken relative to
    /// `base_dir` (the directory of the config file).
    pub fn from_config(
        cfg: &PcapPortConfig,
        engine: &EngineConfig,
        base_dir: &Path,
    ) -> PcapOptions {
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }
        };
        PcapOptions {
            input: cfg.input.as_ref().map(resolve),
            output: cfg.output.as_ref().map(resolve),
            frames: cfg.frames.unwrap_or(DEFAULT_FRAMES),
            frame_size: engine.frame_size,
            memory: Options {
                hugepages: engine.hugepages,
                numa_node: cfg.numa_node,
            },
        }
    }
}

/// One packet of the input capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The captured bytes (the captured part only, for a capture cut by its snap length).
    pub data: Vec<u8>,
}

type Writer = PcapWriter<BufWriter<File>>;

/// Output file state, owned by the port or by the open queue.
struct Output {
    path: PathBuf,
    writer: Writer,
    /// First write error; reported by `close`.
    error: Option<std::io::Error>,
}

/// A port over capture files. See the module docs.
pub struct Pcap {
    shared: Arc<Shared>,
}

struct Shared {
    id: PortId,
    pool: Arc<FramePool>,
    input: Option<PathBuf>,
    packets: Vec<Captured>,
    /// Largest packet a frame holds.
    room: usize,
    /// Index of the next input packet to hand out; written only by the queue's owner.
    next: AtomicUsize,
    /// The output while no queue handle holds it. Locked only at open, drop and close.
    output: Mutex<Option<Output>>,
    counters: Vec<Padded<QueueCounters>>,
    owners: Ownership,
}

impl std::fmt::Debug for Pcap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pcap")
            .field("id", &self.shared.id)
            .field("input", &self.shared.input)
            .field("packets", &self.shared.packets.len())
            .finish()
    }
}

impl Pcap {
    /// Reads the whole input, creates the output (writing its file header), and maps the
    /// port's pool (pool id = port id).
    pub fn new(id: PortId, opts: &PcapOptions) -> Result<Arc<Pcap>, PortError> {
        let packets = match &opts.input {
            Some(path) => read_capture(path).map_err(|e| e.into_port_error(id, path))?,
            None => Vec::new(),
        };
        let pool = FramePool::new(
            PoolId(id.0),
            id.to_string(),
            opts.frames,
            opts.frame_size,
            opts.memory,
        )?;
        // Same headroom rule as `Frame::try_fill`.
        let room = opts.frame_size as usize - (HEADROOM as usize).min(opts.frame_size as usize / 2);
        let output = match &opts.output {
            Some(path) => Some(create_output(path).map_err(|source| PortError::Io {
                port: id,
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        Ok(Arc::new(Pcap {
            shared: Arc::new(Shared {
                id,
                pool,
                input: opts.input.clone(),
                packets,
                room,
                next: AtomicUsize::new(0),
                output: Mutex::new(output),
                counters: vec![Padded::default()],
                owners: Ownership::new(id, 1),
            }),
        }))
    }

    /// Packets in the input capture.
    pub fn input_len(&self) -> usize {
        self.shared.packets.len()
    }

    /// Input packets not handed out yet.
    pub fn pending(&self) -> usize {
        self.shared.packets.len()
            - self
                .shared
                .next
                .load(Ordering::Acquire)
                .min(self.shared.packets.len())
    }
}

impl Port for Pcap {
    fn id(&self) -> PortId {
        self.shared.id
    }

    fn kind(&self) -> &'static str {
        "pcap"
    }

    fn queue_count(&self) -> u16 {
        1
    }

    fn pool(&self) -> &Arc<FramePool> {
        &self.shared.pool
    }

    fn open_queue(&self, queue: u16, burst: usize) -> Result<Box<dyn Queue>, PortError> {
        let id = self.shared.owners.take(queue)?;
        let output = lock(&self.shared.output).take();
        Ok(Box::new(PcapQueue {
            id,
            port: self.shared.clone(),
            cache: Cache::new(self.shared.pool.clone(), burst),
            output,
        }))
    }

    fn counters(&self) -> &[Padded<QueueCounters>] {
        &self.shared.counters
    }

    fn rx_finished(&self) -> bool {
        self.shared.next.load(Ordering::Acquire) >= self.shared.packets.len()
    }

    fn close(&self) -> Result<(), PortError> {
        let taken = lock(&self.shared.output).take();
        if let Some(mut out) = taken {
            let flushed = out.writer.into_writer().flush();
            let err = out.error.take().or(flushed.err());
            if let Some(source) = err {
                return Err(PortError::Io {
                    port: self.shared.id,
                    path: out.path.display().to_string(),
                    source,
                });
            }
        }
        self.shared.pool.verify()?;
        Ok(())
    }
}

/// Locks the output slot; a poisoned lock only means a panicking thread held it, and the
/// slot itself (an `Option`) is always consistent.
fn lock(m: &Mutex<Option<Output>>) -> std::sync::MutexGuard<'_, Option<Output>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct PcapQueue {
    id: QueueId,
    port: Arc<Shared>,
    cache: Cache,
    output: Option<Output>,
}

impl Queue for PcapQueue {
    fn id(&self) -> QueueId {
        self.id
    }

    fn rx_burst(&mut self, out: &mut Batch) -> usize {
        let port = &*self.port;
        let counters = &port.counters[0];
        let mut next = port.next.load(Ordering::Relaxed);
        let (mut received, mut bytes, mut oversize, mut delivered) = (0u64, 0u64, 0u64, 0usize);
        while !out.is_full() {
            let Some(p) = port.packets.get(next) else {
                break;
            };
            if p.data.len() > port.room {
                next += 1;
                received += 1;
                bytes += p.data.len() as u64;
                oversize += 1;
                continue;
            }
            let Some(mut f) = self.cache.alloc() else {
                // Pool exhausted: try again on the next call.
                break;
            };
            // Cannot fail: the length was checked against `room` above.
            let _ = f.try_fill(&p.data);
            f.meta.rx = self.id;
            f.meta.ts_ns = p.ts_ns;
            // Cannot fail: the batch is not full.
            let _ = out.try_push(f);
            next += 1;
            received += 1;
            bytes += p.data.len() as u64;
            delivered += 1;
        }
        port.next.store(next, Ordering::Release);
        counters.rx_packets.add(received);
        counters.rx_bytes.add(bytes);
        if oversize > 0 {
            counters.drops.add(DropReason::Oversize, oversize);
        }
        delivered
    }

    fn tx_burst(&mut self, frames: &mut Batch) -> usize {
        let counters = &self.port.counters[0];
        let (mut n, mut bytes) = (0u64, 0u64);
        for f in frames.drain() {
            if let Some(out) = self.output.as_mut() {
                if out.error.is_none() {
                    let ts = Duration::from_nanos(f.meta.ts_ns);
                    let pkt = PcapPacket::new(ts, f.len() as u32, f.data());
                    if let Err(e) = out.writer.write_packet(&pkt) {
                        out.error = Some(std::io::Error::other(e.to_string()));
                    }
                }
            }
            n += 1;
            bytes += f.len() as u64;
            self.cache.free(f);
        }
        counters.tx_packets.add(n);
        counters.tx_bytes.add(bytes);
        n as usize
    }
}

impl Drop for PcapQueue {
    fn drop(&mut self) {
        self.cache.flush();
        if let Some(out) = self.output.take() {
            *lock(&self.port.output) = Some(out);
        }
        self.port.owners.release(self.id.queue);
    }
}

/// The header every output (and every generated case input) gets: classic pcap, little
/// endian, microsecond timestamps, Ethernet, 65535-byte snap length.
pub fn output_header() -> PcapHeader {
    PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: 65535,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
    }
}

fn create_output(path: &Path) -> std::io::Result<Output> {
    let file = File::create(path)?;
    let writer = PcapWriter::with_header(BufWriter::new(file), output_header())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Output {
        path: path.to_path_buf(),
        writer,
        error: None,
    })
}

/// Encodes `packets` as a pcap file with [`output_header`] (timestamps rounded down to the
/// microsecond). Used by the replay harness to write case inputs.
///
/// # Panics
/// If a packet is longer than the 65535-byte snap length (no Ethernet frame is).
pub fn encode_pcap(packets: &[Captured]) -> Vec<u8> {
    let mut w =
        PcapWriter::with_header(Vec::new(), output_header()).expect("writing to a Vec cannot fail");
    for p in packets {
        let pkt = PcapPacket::new(Duration::from_nanos(p.ts_ns), p.data.len() as u32, &p.data);
        w.write_packet(&pkt)
            .expect("packet longer than the snap length");
    }
    w.into_writer()
}

/// Writes `packets` to `path` as [`encode_pcap`] does.
pub fn write_capture(path: &Path, packets: &[Captured]) -> std::io::Result<()> {
    std::fs::write(path, encode_pcap(packets))
}

/// Why a capture file could not be read.
#[derive(Debug)]
pub enum CaptureError {
    /// The file could not be opened or read.
    Io(std::io::Error),
    /// The file is not a usable capture.
    Format(String),
}

impl CaptureError {
    fn into_port_error(self, port: PortId, path: &Path) -> PortError {
        let path = path.display().to_string();
        match self {
            CaptureError::Io(source) => PortError::Io { port, path, source },
            CaptureError::Format(reason) => PortError::Capture { port, path, reason },
        }
    }
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Io(e) => write!(f, "{e}"),
            CaptureError::Format(r) => write!(f, "not a readable pcap or pcapng file: {r}"),
        }
    }
}

impl std::error::Error for CaptureError {}

const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
    [0x4d, 0x3c, 0xb2, 0xa1],
];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads every packet of a pcap or pcapng file (told apart by the magic number). Refuses
/// captures whose link type is not Ethernet.
pub fn read_capture(path: &Path) -> Result<Vec<Captured>, CaptureError> {
    let bytes = std::fs::read(path).map_err(CaptureError::Io)?;
    parse_capture(&bytes).map_err(CaptureError::Format)
}

/// [`read_capture`] over bytes in memory; the error is the reason.
pub fn parse_capture(bytes: &[u8]) -> Result<Vec<Captured>, String> {
    let Some(magic) = bytes.get(..4) else {
        return Err(format!(
            "{} bytes is too short for a capture file header",
            bytes.len()
        ));
    };
    if PCAP_MAGICS.iter().any(|m| m == magic) {
        parse_pcap(bytes)
    } else if magic == PCAPNG_MAGIC {
        parse_pcapng(bytes)
    } else {
        Err(format!(
            "unknown magic number {:02x}{:02x}{:02x}{:02x} (pcap starts with a1b2c3d4 or a1b23c4d, \
             pcapng with 0a0d0d0a)",
            magic[0], magic[1], magic[2], magic[3]
        ))
    }
}

fn not_ethernet(link: DataLink) -> String {
    format!(
        "link type {link:?} ({}) is not Ethernet (1); only Ethernet captures can be replayed",
        u32::from(link)
    )
}

fn parse_pcap(bytes: &[u8]) -> Result<Vec<Captured>, String> {
    let mut reader = PcapReader::new(bytes).map_err(|e| format!("file header: {e}"))?;
    let header = reader.header();
    if header.datalink != DataLink::ETHERNET {
        return Err(not_ethernet(header.datalink));
    }
    let mut out = Vec::new();
    // Raw records: `PcapPacket` refuses orig_len > snaplen, which is exactly what a capture
    // cut by its snap length contains.
    while let Some(rec) = reader.next_raw_packet() {
        let n = out.len();
        let rec = rec.map_err(|e| format!("packet {n}: {e}"))?;
        let frac = match header.ts_resolution {
            TsResolution::MicroSecond => u64::from(rec.ts_frac) * 1000,
            TsResolution::NanoSecond => u64::from(rec.ts_frac),
        };
        if frac >= 1_000_000_000 {
            return Err(format!(
                "packet {n}: fractional timestamp {} is out of range",
                rec.ts_frac
            ));
        }
        out.push(Captured {
            ts_ns: u64::from(rec.ts_sec) * 1_000_000_000 + frac,
            data: rec.data.into_owned(),
        });
    }
    Ok(out)
}

/// Nanoseconds per timestamp unit from an `if_tsresol` option (default 10^-6 s).
fn tsresol_to_ns(resol: Option<u8>) -> Result<f64, String> {
    let r = resol.unwrap_or(6);
    let exp = i32::from(r & 0x7f);
    let unit_s = if r & 0x80 == 0 {
        10f64.powi(-exp)
    } else {
        2f64.powi(-exp)
    };
    if unit_s <= 0.0 || !unit_s.is_finite() {
        return Err(format!("if_tsresol {r:#x} is not usable"));
    }
    Ok(unit_s * 1e9)
}

fn parse_pcapng(bytes: &[u8]) -> Result<Vec<Captured>, String> {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;

    let mut reader = PcapNgReader::new(bytes).map_err(|e| format!("section header: {e}"))?;
    // Per interface of the current section: ns per timestamp unit.
    let mut interfaces: Vec<f64> = Vec::new();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        let n = out.len();
        let block = block.map_err(|e| format!("block after packet {n}: {e}"))?;
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                if idb.linktype != DataLink::ETHERNET {
                    return Err(format!(
                        "interface {}: {}",
                        interfaces.len(),
                        not_ethernet(idb.linktype)
                    ));
                }
                let resol = idb.options.iter().find_map(|o| match o {
                    InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                    _ => None,
                });
                interfaces.push(tsresol_to_ns(resol)?);
            }
            Block::EnhancedPacket(epb) => {
                let unit = *interfaces.get(epb.interface_id as usize).ok_or_else(|| {
                    format!(
                        "packet {n}: interface {} was never described",
                        epb.interface_id
                    )
                })?;
                // pcap-file hands the raw 64-bit timestamp over as nanoseconds.
                let raw = epb.timestamp.as_nanos() as u64;
                let ts_ns = if unit == 1.0 {
                    raw
                } else if unit.fract() == 0.0 {
                    raw.saturating_mul(unit as u64)
                } else {
                    (raw as f64 * unit) as u64
                };
                out.push(Captured {
                    ts_ns,
                    data: epb.data.into_owned(),
                });
            }
            Block::SimplePacket(spb) => {
                if interfaces.is_empty() {
                    return Err(format!("packet {n}: simple packet before any interface"));
                }
                out.push(Captured {
                    ts_ns: 0,
                    data: spb.data.into_owned(),
                });
            }
            Block::Packet(pb) => {
                let unit = *interfaces.get(pb.interface_id as usize).ok_or_else(|| {
                    format!(
                        "packet {n}: interface {} was never described",
                        pb.interface_id
                    )
                })?;
                out.push(Captured {
                    ts_ns: (pb.timestamp as f64 * unit) as u64,
                    data: pb.data.into_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("slipstream-pcap-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn opts(input: Option<PathBuf>, output: Option<PathBuf>) -> PcapOptions {
        PcapOptions {
            input,
            output,
            frames: 64,
            frame_size: 2048,
            memory: Options {
                hugepages: false,
                numa_node: None,
            },
        }
    }

    fn pkt(ts_us: u64, len: usize, fill: u8) -> Captured {
        Captured {
            ts_ns: ts_us * 1000,
            data: vec![fill; len],
        }
    }

    #[test]
    fn reads_in_order_drops_oversize_and_writes_output() {
        let dir = tmp("roundtrip");
        let input = dir.join("in.pcap");
        let output = dir.join("out.pcap");
        let packets = vec![
            pkt(1_000_001, 60, 1),
            pkt(1_000_002, 2048 - HEADROOM as usize + 1, 2),
            pkt(1_000_003, 2048 - HEADROOM as usize, 3),
            pkt(1_000_004, 100, 4),
        ];
        write_capture(&input, &packets).unwrap();
        let port = Pcap::new(PortId(3), &opts(Some(input), Some(output.clone()))).unwrap();
        assert_eq!(port.pool().id(), PoolId(3));
        assert!(!port.rx_finished());
        let mut q = port.open_queue(0, 2).unwrap();
        let mut batch = Batch::with_capacity(2);
        assert_eq!(q.rx_burst(&mut batch), 2);
        assert!(!port.rx_finished());
        let f = &batch.as_slice()[0];
        assert_eq!(f.data(), &packets[0].data[..]);
        assert_eq!(f.meta.ts_ns, packets[0].ts_ns);
        assert_eq!(f.meta.rx, QueueId::new(3, 0));
        assert_eq!(batch.as_slice()[1].data(), &packets[2].data[..]);
        assert_eq!(q.tx_burst(&mut batch), 2);
        assert_eq!(q.rx_burst(&mut batch), 1);
        assert!(port.rx_finished());
        assert_eq!(q.rx_burst(&mut batch), 0);
        assert_eq!(q.tx_burst(&mut batch), 1);
        let s = port.stats();
        assert_eq!(s.rx_packets, 4);
        assert_eq!(s.drops.get(DropReason::Oversize), 1);
        assert_eq!(s.drops.total(), 1);
        assert_eq!(s.tx_packets, 3);
        assert_eq!(s.tx_bytes, (60 + 2048 - HEADROOM as usize + 100) as u64);
        drop(q);
        port.close().unwrap();
        let back = read_capture(&output).unwrap();
        assert_eq!(
            back,
            vec![packets[0].clone(), packets[2].clone(), packets[3].clone()]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn queue_hand_over_keeps_the_cursor() {
        let dir = tmp("handover");
        let input = dir.join("in.pcap");
        let packets: Vec<Captured> = (0..5).map(|i| pkt(i, 64, i as u8)).collect();
        write_capture(&input, &packets).unwrap();
        let port = Pcap::new(PortId(0), &opts(Some(input), None)).unwrap();
        let mut batch = Batch::with_capacity(3);
        let mut q = port.open_queue(0, 4).unwrap();
        assert!(port.open_queue(0, 4).is_err());
        assert_eq!(q.rx_burst(&mut batch), 3);
        drop(q);
        let mut q = port.open_queue(0, 4).unwrap();
        assert_eq!(q.tx_burst(&mut batch), 3);
        assert_eq!(q.rx_burst(&mut batch), 2);
        assert_eq!(batch.as_slice()[0].data()[0], 3);
        assert_eq!(q.tx_burst(&mut batch), 2);
        drop(q);
        assert!(port.rx_finished());
        assert_eq!(port.stats().tx_packets, 5);
        port.close().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_exhausted_pool_delays_but_loses_nothing() {
        let dir = tmp("exhausted");
        let input = dir.join("in.pcap");
        let packets: Vec<Captured> = (0..80).map(|i| pkt(i, 64, i as u8)).collect();
        write_capture(&input, &packets).unwrap();
        let port = Pcap::new(PortId(0), &opts(Some(input), None)).unwrap();
        let mut q = port.open_queue(0, 8).unwrap();
        let mut held = Batch::with_capacity(128);
        assert_eq!(q.rx_burst(&mut held), 64);
        assert!(!port.rx_finished());
        let mut more = Batch::with_capacity(128);
        assert_eq!(q.rx_burst(&mut more), 0);
        q.tx_burst(&mut held);
        assert_eq!(q.rx_burst(&mut more), 16);
        assert_eq!(more.as_slice()[0].data()[0], 64);
        q.tx_burst(&mut more);
        assert!(port.rx_finished());
        drop(q);
        port.close().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_input_is_finished_and_no_output_counts_and_frees() {
        let port = Pcap::new(PortId(1), &opts(None, None)).unwrap();
        assert!(port.rx_finished());
        let mut q = port.open_queue(0, 4).unwrap();
        let mut batch = Batch::with_capacity(4);
        let mut f = port.pool().alloc().unwrap();
        assert!(f.try_fill(&[0u8; 60]));
        batch.try_push(f).unwrap();
        assert_eq!(q.tx_burst(&mut batch), 1);
        assert_eq!(port.stats().tx_packets, 1);
        assert_eq!(port.stats().tx_bytes, 60);
        drop(q);
        port.close().unwrap();
    }

    #[test]
    fn an_output_that_got_nothing_is_a_valid_empty_capture() {
        let dir = tmp("empty");
        let output = dir.join("out.pcap");
        let port = Pcap::new(PortId(0), &opts(None, Some(output.clone()))).unwrap();
        port.close().unwrap();
        assert_eq!(read_capture(&output).unwrap(), vec![]);
        assert_eq!(std::fs::metadata(&output).unwrap().len(), 24);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_leaked_frame_fails_close() {
        let port = Pcap::new(PortId(0), &opts(None, None)).unwrap();
        let f = port.pool().alloc().unwrap();
        assert!(matches!(port.close(), Err(PortError::Leak(_))));
        port.pool().free(f);
        port.close().unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_file_and_the_reason() {
        let dir = tmp("bad");
        let garbage = dir.join("garbage.pcap");
        std::fs::write(&garbage, b"hello world, this is no capture").unwrap();
        let e = Pcap::new(PortId(2), &opts(Some(garbage), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p2") && e.contains("garbage.pcap") && e.contains("unknown magic"),
            "{e}"
        );

        let short = dir.join("short.pcap");
        std::fs::write(&short, [0xd4, 0xc3]).unwrap();
        let e = Pcap::new(PortId(0), &opts(Some(short), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");

        // A valid header followed by a record cut in half.
        let cut = dir.join("cut.pcap");
        write_capture(&cut, &[pkt(1, 100, 7)]).unwrap();
        let bytes = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let e = Pcap::new(PortId(0), &opts(Some(cut), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.pcap") && e.contains("packet 0"), "{e}");

        let raw = dir.join("raw.pcap");
        let mut w = PcapWriter::with_header(
            File::create(&raw).unwrap(),
            PcapHeader {
                datalink: DataLink::RAW,
                ..output_header()
            },
        )
        .unwrap();
        w.write_packet(&PcapPacket::new(Duration::ZERO, 20, &[0x45; 20]))
            .unwrap();
        drop(w);
        let e = Pcap::new(PortId(0), &opts(Some(raw), None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not Ethernet"), "{e}");

        let missing = dir.join("missing.pcap");
        let e = Pcap::new(PortId(0), &opts(Some(missing), None)).unwrap_err();
        assert!(matches!(e, PortError::Io { .. }), "{e}");

        let e = Pcap::new(
            PortId(0),
            &opts(None, Some(dir.join("no/such/dir/out.pcap"))),
        )
        .unwrap_err();
        assert!(e.to_string().contains("out.pcap"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_nanosecond_big_endian_pcap_and_snap_cut_records() {
        let mut w = PcapWriter::with_header(
            Vec::new(),
            PcapHeader {
                ts_resolution: TsResolution::NanoSecond,
                endianness: Endianness::Big,
                snaplen: 64,
                ..output_header()
            },
        )
        .unwrap();
        // orig_len 1514 > snaplen 64: the capture was cut.
        let raw = pcap_file::pcap::RawPcapPacket {
            ts_sec: 7,
            ts_frac: 123_456_789,
            incl_len: 64,
            orig_len: 1514,
            data: std::borrow::Cow::Owned(vec![9; 64]),
        };
        w.write_raw_packet(&raw).unwrap();
        let bytes = w.into_writer();
        let got = parse_capture(&bytes).unwrap();
        assert_eq!(
            got,
            vec![Captured {
                ts_ns: 7_123_456_789,
                data: vec![9; 64]
            }]
        );
    }

    #[test]
    fn reads_pcapng_with_default_and_explicit_resolution() {
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        })
        .unwrap();
        for (iface, raw_ts, fill) in [(0u32, 1_500_000u64, 1u8), (1, 2_000_000_123, 2)] {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: iface,
                // Raw units: pcap-file stores the Duration's nanoseconds verbatim.
                timestamp: Duration::from_nanos(raw_ts),
                original_len: 60,
                data: std::borrow::Cow::Owned(vec![fill; 60]),
                options: vec![],
            })
            .unwrap();
        }
        let bytes = w.into_inner();
        let got = parse_capture(&bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Captured {
                    ts_ns: 1_500_000_000,
                    data: vec![1; 60]
                },
                Captured {
                    ts_ns: 2_000_000_123,
                    data: vec![2; 60]
                },
            ]
        );

        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::IEEE802_11, 0))
            .unwrap();
        let bytes = w.into_inner();
        assert!(parse_capture(&bytes).unwrap_err().contains("not Ethernet"));
    }
}
