//! PLACEHOLDER: the pcap port lands with the replay harness.
pub struct Pcap;
