//! Compiles `src/bpf/steer.bpf.c` into `$OUT_DIR/steer.bpf.o` (embedded by `src/lib.rs`); see
//! the `bpf-build` crate for the compiler and header search.

fn main() {
    bpf_build::compile("steer", "the XDP steering program");
}
