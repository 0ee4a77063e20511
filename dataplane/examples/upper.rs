//! A user-written handler, start to finish: `kind = "upper"` answers UDP datagrams to one
//! port with their payload in upper case.
//!
//! It shows the three things a handler of your own needs:
//! 1. a [`Handler`]: a batch of frames in, one [`Verdict`] per frame out; it only looks at
//!    frames still `Next` and rewrites the ones it answers in place;
//! 2. an [`Extension`] registered under a kind with [`ext::register`], so that config files
//!    and the control plane can say `[[handlers]] kind = "upper"` (settings come as JSON,
//!    deserialized into your own type with `deny_unknown_fields`);
//! 3. an engine to run it in: here a memory port the program feeds and drains itself.
//!
//! Run it with `cargo run -p dataplane --example upper`; its test runs with `cargo test -p
//! dataplane --example upper` (and with the workspace's tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::config::EngineConfig;
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::handlers::{ext, Extension, Spec};
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port};
use dataplane::wire::build::{self, Endpoints4};
use dataplane::wire::view::{Ipv4Packet, UdpPacket};
use dataplane::wire::{checksum, ip_proto, L3};
use dataplane::{Context, Frame, Handler, Pipeline, PortId, QueueId, Verdict};
use serde::{Deserialize, Serialize};

/// The handler: one instance per worker.
struct Upper {
    port: u16,
}

impl Upper {
    /// Answers `frame` in place if it is UDP/IPv4 to our port; false otherwise.
    fn answer(&self, frame: &mut Frame) -> bool {
        let l = frame.meta.layout;
        if l.l3 != L3::Ipv4 || l.l4_proto != ip_proto::UDP {
            return false;
        }
        let (l3, l4, end) = (usize::from(l.l3_off), usize::from(l.l4_off), l.l4_end());
        let data = frame.data_mut();
        let Some(ip) = data.get(l3..end) else {
            return false;
        };
        // Checked views: a stale layout or a short frame means "not ours", never a panic.
        let Ok(ipv) = Ipv4Packet::new_checked(ip) else {
            return false;
        };
        let (src, dst) = (ipv.src_addr(), ipv.dst_addr());
        let Ok(udp) = UdpPacket::new_checked(&data[l4..end]) else {
            return false;
        };
        if udp.dst_port() != self.port {
            return false;
        }
        let (sport, dport) = (udp.src_port(), udp.dst_port());
        // Reply: swap MACs, addresses and ports; upper-case the payload; fix the checksum.
        let (a, b) = data.split_at_mut(6);
        a.swap_with_slice(&mut b[..6]);
        let mut ipm = Ipv4Packet::new_unchecked(&mut data[l3..end]);
        ipm.set_src_addr(dst);
        ipm.set_dst_addr(src);
        let mut udpm = UdpPacket::new_unchecked(&mut data[l4..end]);
        udpm.set_src_port(dport);
        udpm.set_dst_port(sport);
        udpm.payload_mut().make_ascii_uppercase();
        udpm.set_checksum(0);
        let pseudo = checksum::pseudo_v4(dst, src, ip_proto::UDP, (end - l4) as u16);
        let c = checksum::finish(checksum::sum(pseudo, &data[l4..end]));
        data[l4 + 6..l4 + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
        true
    }
}

impl Handler for Upper {
    fn name(&self) -> &str {
        "upper"
    }

    fn process(&mut self, frames: &mut [Frame], verdicts: &mut [Verdict], _cx: &Context) {
        for (f, v) in frames.iter_mut().zip(verdicts.iter_mut()) {
            if *v == Verdict::Next && self.answer(f) {
                *v = Verdict::reply(f);
            }
        }
    }
}

/// `[[handlers]] kind = "upper"`: its settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UpperSpec {
    /// UDP port answered. Default: 7777.
    port: u16,
}

impl Default for UpperSpec {
    fn default() -> Self {
        UpperSpec { port: 7777 }
    }
}

impl Extension for UpperSpec {
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), String> {
        match self.port {
            0 => Err("port: 0 is not a valid UDP port; use 1-65535".into()),
            _ => Ok(()),
        }
    }

    fn build(&self) -> Box<dyn Handler> {
        Box::new(Upper { port: self.port })
    }
}

fn parse(settings: &serde_json::Value) -> Result<Arc<dyn Extension>, String> {
    let s: UpperSpec = serde_json::from_value(settings.clone()).map_err(|e| e.to_string())?;
    Ok(Arc::new(s))
}

/// Registers the kind, reads a chain from TOML, runs it over a memory port and returns the
/// payloads of the answers to `requests`.
fn run(requests: &[&[u8]]) -> Vec<Vec<u8>> {
    ext::register("upper", parse).expect("a valid kind name");
    #[derive(Deserialize)]
    struct Chain {
        handlers: Vec<Spec>,
    }
    let chain: Chain =
        toml::from_str("[[handlers]]\nkind = \"upper\"\nport = 7777\n").expect("the chain parses");
    for s in &chain.handlers {
        s.validate().expect("valid settings");
    }
    let port = Memory::new(
        PortId(0),
        MemoryOptions {
            queues: 1,
            frames: 256,
            frame_size: 2048,
            memory: dataplane::mem::Options {
                hugepages: false,
                numa_node: None,
            },
            source: Source::Ring,
            sink: Sink::Ring,
            ring_size: 256,
        },
    )
    .expect("a memory port");
    let ports: Vec<Arc<dyn Port>> = vec![port.clone()];
    let mut engine = Engine::from_parts(
        &EngineConfig {
            hugepages: false,
            ..EngineConfig::default()
        },
        ports,
        vec![WorkerPlan {
            core: None,
            queues: vec![QueueId::new(0, 0)],
        }],
        vec![Pipeline::default()],
    )
    .expect("an engine");
    engine.start().expect("started");
    // Live: the chain is installed like `ctl handlers set` would.
    engine
        .set_handlers(None, chain.handlers)
        .expect("chain accepted");
    let ep = Endpoints4 {
        dst_port: 7777,
        ..Endpoints4::default()
    };
    for r in requests {
        assert!(port.inject(0, &build::udp4(&ep, r, None)));
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < requests.len() && Instant::now() < deadline {
        port.drain_tx(0, |f| out.push(f[14 + 20 + 8..].to_vec()));
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = engine.stop().expect("clean stop");
    report
        .check_conservation()
        .expect("every packet accounted for");
    out
}

fn main() {
    for answer in run(&[b"hello", b"slipstream"]) {
        println!("{}", String::from_utf8_lossy(&answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_upper_case() {
        assert_eq!(
            run(&[b"hello", b"Mixed 123"]),
            vec![b"HELLO".to_vec(), b"MIXED 123".to_vec()]
        );
    }

    #[test]
    fn settings_are_checked_with_the_field_named() {
        ext::register("upper", parse).unwrap();
        let e = serde_json::from_str::<Spec>(r#"{"kind":"upper","prot":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `prot`"), "{e}");
        let s: Spec = serde_json::from_str(r#"{"kind":"upper","port":0}"#).unwrap();
        assert!(s.validate().unwrap_err().starts_with("port:"));
    }
}
