//! An in-process appliance for control-plane tests: an engine over a generating memory
//! port, the control server, and a stand-in for `slipstream run`'s main loop that stops
//! the engine when the Shutdown call (or the test) raises the stop flag.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use control::pb;
use control::server::{outcome, Options, PortInfo};
use control::{Daemon, SharedEngine};
use dataplane::config::{EngineConfig, Idle};
use dataplane::engine::{Engine, WorkerPlan};
use dataplane::handlers::{Spec, UdpEchoSpec};
use dataplane::port::memory::{MemoryOptions, Sink, Source};
use dataplane::port::{Memory, Port};
use dataplane::{Pipeline, PortId, QueueId};

pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub listeners: Vec<String>,
    pub engine: SharedEngine,
    stop: Arc<AtomicBool>,
    main: Option<JoinHandle<pb::ShutdownResponse>>,
}

/// A memory port with `queues` queues generating `per_queue` UDP echo requests each
/// (0: forever), transmitted packets discarded.
pub fn generator(queues: u16, per_queue: u64) -> Arc<Memory> {
    Memory::new(
        PortId(0),
        MemoryOptions {
            queues,
            frames: 2048,
            frame_size: 2048,
            memory: dataplane::mem::Options {
                hugepages: false,
                numa_node: None,
            },
            source: Source::Generate {
                templates: (0..16)
                    .map(|f| dataplane::wire::build::udp4_request_of_size(64, f, 7))
                    .collect(),
                limit: (per_queue > 0).then_some(per_queue),
            },
            sink: Sink::Discard,
            ring_size: 1024,
        },
    )
    .unwrap()
}

/// Two unpinned workers (w0 owns p0:q0, w1 owns p0:q1) running udp-echo, backing off when
/// idle so that tests running side by side leave each other some CPU.
pub fn engine(per_queue: u64) -> Engine {
    let p0 = generator(2, per_queue);
    let cfg = EngineConfig {
        burst: 32,
        ring_size: 1024,
        idle: Idle::Backoff,
        backoff_max_us: 500,
        hugepages: false,
        ..EngineConfig::default()
    };
    let specs = vec![Spec::UdpEcho(UdpEchoSpec::default())];
    let mut e = Engine::from_parts(
        &cfg,
        vec![p0 as Arc<dyn Port>],
        vec![
            WorkerPlan {
                core: None,
                queues: vec![QueueId::new(0, 0)],
            },
            WorkerPlan {
                core: None,
                queues: vec![QueueId::new(0, 1)],
            },
        ],
        vec![Pipeline::default(), Pipeline::default()],
    )
    .unwrap();
    e.set_handlers(None, specs).unwrap();
    e
}

pub fn options(dir: &Path) -> Options {
    Options {
        socket: Some(dir.join("run/ctl.sock")),
        tcp: None,
        sysfs: PathBuf::from(dataplane::topology::SYSFS),
        ports: vec![PortInfo::default()],
    }
}

impl Appliance {
    /// Starts an engine generating `per_queue` packets per queue, served as `opts` (from
    /// [`options`], adjusted by `adjust`) says.
    pub fn start(per_queue: u64, adjust: impl FnOnce(&mut Options)) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        adjust(&mut opts);
        let socket = opts.socket.clone().unwrap_or_default();
        let engine: SharedEngine = Arc::new(Mutex::new(Some(engine(per_queue))));
        let stop = Arc::new(AtomicBool::new(false));
        let daemon = Daemon::start(engine.clone(), stop.clone(), opts).unwrap();
        let listeners = daemon.listeners().to_vec();
        engine.lock().unwrap().as_mut().unwrap().start().unwrap();
        let main = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || main_loop(daemon, engine, stop))
        };
        Appliance {
            dir,
            socket,
            listeners,
            engine,
            stop,
            main: Some(main),
        }
    }

    /// Runs `ctl --socket SOCKET ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--socket", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        ctl(&all)
    }

    /// Stops the appliance (as SIGTERM would) and returns the final counts.
    pub fn stop(mut self) -> pb::ShutdownResponse {
        self.stop.store(true, Ordering::Release);
        self.join()
    }

    /// Waits for the main loop to end (after a Shutdown call).
    pub fn join(&mut self) -> pb::ShutdownResponse {
        self.main.take().unwrap().join().unwrap()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(m) = self.main.take() {
            let _ = m.join();
        }
    }
}

/// What `slipstream run` does around the engine.
fn main_loop(daemon: Daemon, engine: SharedEngine, stop: Arc<AtomicBool>) -> pb::ShutdownResponse {
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = engine.lock().unwrap().take().unwrap();
    let out = outcome(&e.stop());
    daemon.finish(out.clone());
    out
}

pub fn ctl(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ctl"))
        .args(args)
        .env_remove("SLIPSTREAM_CTL_SOCKET")
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts the exit code and returns stdout.
#[track_caller]
pub fn expect(o: &Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A core this process may use (the last one, as `slipstream run` prefers).
pub fn some_core() -> u32 {
    *dataplane::topology::allowed_cores()
        .iter()
        .next_back()
        .unwrap()
}

/// True in CI, where skipping a test must fail it instead.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
