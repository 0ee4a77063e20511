//! Compiles `src/bpf/netbench.bpf.c` into `$OUT_DIR/netbench.bpf.o` (embedded by
//! `src/bpf.rs`), the same way as the `xdp` crate; see the `bpf-build` crate.

fn main() {
    bpf_build::compile("netbench", "netbench's XDP programs");
}
