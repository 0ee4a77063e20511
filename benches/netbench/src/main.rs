//! `netbench`: the end-to-end bench drivers of `scripts/bench-afxdp` (ARCHITECTURE.md,
//! "Benchmarks"): the traffic generator, the XDP_DROP ceiling, the reply sink, the kernel
//! recvmmsg/sendmmsg echo server (the baseline for udp-echo) and the latency client.
//!
//! Every subcommand is bounded in packets and/or time, ends early and cleanly on
//! SIGINT/SIGTERM (XDP programs are detached by a guard), and prints exactly one JSON line on
//! stdout at the end (diagnostics go to stderr). Exit codes: 0 ok, 1 runtime error, 2 usage.
//!
//! The tools run inside the lab's network namespaces (`ip netns exec NS netbench ...`);
//! interface names are looked up in the namespace the process runs in.

mod bpf;
mod count;
mod echo;
mod frame;
mod gen;
mod latency;
mod mmsg;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "netbench",
    version,
    about = "slipstream's end-to-end network bench drivers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// XDP live-frames UDP generator (BPF_PROG_RUN, XDP_TX out of --ifname).
    Gen(gen::Args),
    /// Count and drop every frame on --ifname with XDP (the ceiling).
    XdpDrop(count::DropArgs),
    /// Count and drop UDP frames on --ifname with XDP (the echo replies at the peer).
    Sink(count::SinkArgs),
    /// Kernel UDP echo server using recvmmsg/sendmmsg.
    EchoServer(echo::Args),
    /// Open-loop UDP round-trip latency at a fixed rate (hdrhistogram).
    Latency(latency::Args),
}

/// Pins the calling thread to `core`, if given.
pub(crate) fn pin(core: Option<usize>) -> anyhow::Result<()> {
    let Some(id) = core else { return Ok(()) };
    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
        bail!(
            "cannot pin to core {id}: it does not exist or is outside this process's cpuset \
             (see `taskset -p $$` and /sys/devices/system/cpu/online)"
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("netbench: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match &cli.cmd {
        Cmd::Gen(a) => gen::run(a, &stop),
        Cmd::XdpDrop(a) => count::run_drop(a, &stop),
        Cmd::Sink(a) => count::run_sink(a, &stop),
        Cmd::EchoServer(a) => echo::run(a, &stop),
        Cmd::Latency(a) => latency::run(a, &stop),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn gen_requires_a_count() {
        let base = [
            "netbench",
            "gen",
            "--ifname",
            "x",
            "--dst-mac",
            "02:00:c6:12:00:01",
            "--src-mac",
            "02:00:c6:12:00:02",
            "--dst-ip",
            "198.18.0.1",
            "--src-ip",
            "198.18.0.2",
        ];
        assert!(Cli::try_parse_from(base).is_err());
        let mut with = base.to_vec();
        with.extend(["--count", "10"]);
        let Cmd::Gen(g) = Cli::try_parse_from(with).unwrap().cmd else {
            panic!("not gen")
        };
        assert_eq!(
            (g.count, g.rate_pps, g.size, g.flows, g.dst_port),
            (10, 0, 64, 64, 7)
        );
    }
}
