//! slipstream's control plane: the `slipstream.v1` gRPC API, its server (run inside
//! `slipstream run`), a client library and the `ctl` CLI.
//!
//! - [`pb`]: the generated messages, servers and clients (`proto/slipstream/v1`, compiled
//!   by protox at build time, so no `protoc` is needed);
//! - [`server`]: the services over a shared [`Engine`](dataplane::engine::Engine), gRPC
//!   health and reflection, on an owner-only Unix socket and optionally TCP with mutual
//!   TLS ([`listen`], [`tls`]);
//! - [`client`]: connecting over either;
//! - [`convert`]: engine types to wire types and back; [`lb`]: the same for the `lb`
//!   handler's live configuration (the `Lb` service).
//!
//! This crate depends on `dataplane` for its types and its engine command API only; it
//! never touches data-plane state except through engine methods.

pub mod client;
pub mod convert;
pub mod lb;
pub mod listen;
pub mod server;
pub mod tls;

/// Generated from `proto/slipstream/v1/control.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("slipstream.v1");

    /// The encoded descriptors of this package and its imports (for reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/slipstream_v1_descriptor.bin"));
}

pub use server::{Daemon, Options, SharedEngine};
