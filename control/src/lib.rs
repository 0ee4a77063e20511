//! placeholder
pub mod pb {
    tonic::include_proto!("slipstream.v1");
}
