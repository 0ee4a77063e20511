//! Finds DPDK with pkg-config, generates bindings with bindgen and compiles the C shim.
//!
//! - Flags come from `pkg-config libdpdk` (`--static` with the `static` feature), so the
//!   bindings, the shim and the link line all see the same headers and `-march`.
//! - Dynamic linking (default) links the core libraries only; the EAL loads PMDs as plugins
//!   from its driver directory at `rte_eal_init`. A static build links every driver library
//!   in whole-archive (their constructors register the drivers).
//! - bindgen runs over `src/wrapper.h` with an allowlist (the EAL, ethdev, mbuf, mempool,
//!   ring, lcore, errno and version APIs and the shim) and its layout tests on; three items
//!   of DPDK 22.11's headers need special handling (see `builder`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Oldest DPDK the bindings and the shim are written for.
const MIN_VERSION: &str = "22.11";

const INSTALL_HINT: &str = "install DPDK's development files: \
    `apt-get install libdpdk-dev dpdk` (Debian 12 ships DPDK 22.11), and libclang for \
    bindgen: `apt-get install libclang-dev`; or set PKG_CONFIG_PATH to a DPDK >= 22.11 \
    install's lib/pkgconfig";

fn main() {
    println!("cargo:rerun-if-changed=src/wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let statik = env::var_os("CARGO_FEATURE_STATIC").is_some();

    // Probe first without emitting link flags: headers and version.
    let lib = match pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .statik(statik)
        .cargo_metadata(false)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => panic!(
            "\n\ndpdk-sys: DPDK (pkg-config module `libdpdk` >= {MIN_VERSION}) was not found: \
             {e}\n\n  To build slipstream with the `dpdk` feature, {INSTALL_HINT}.\n\n"
        ),
    };
    let cflags = pkg_config_output(&["--cflags", "libdpdk"], statik);
    let cflags: Vec<String> = cflags.split_whitespace().map(str::to_string).collect();
    println!("cargo:version={}", lib.version);
    for p in &lib.include_paths {
        println!("cargo:include={}", p.display());
    }

    // The shim first on the link line: it needs symbols from the DPDK libraries after it.
    let mut shim = cc::Build::new();
    shim.file("src/shim.c")
        .include("src")
        .opt_level(3)
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter");
    for f in &cflags {
        shim.flag(f);
    }
    shim.compile("slipstream_dpdk_shim");

    link(statik);

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bindings = match builder(&cflags).generate() {
        Ok(b) => b,
        Err(e) => panic!(
            "\n\ndpdk-sys: bindgen could not generate the DPDK bindings: {e}\n\n  It needs \
             libclang (`apt-get install libclang-dev`) and DPDK's headers; {INSTALL_HINT}.\n\n"
        ),
    };
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}

/// The bindgen configuration: allowlist, layout tests, and the 22.11 traps.
fn builder(cflags: &[String]) -> bindgen::Builder {
    bindgen::Builder::default()
        .header("src/wrapper.h")
        .clang_args(cflags)
        .clang_arg("-Isrc")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .layout_tests(true)
        .derive_default(true)
        .derive_debug(true)
        .prepend_enum_name(false)
        .generate_comments(false)
        // Functions: the APIs the port uses (and their neighbours), and the shim.
        .allowlist_function("_rte_.*")
        .allowlist_function("rte_eal_.*")
        .allowlist_function("rte_eth_.*")
        .allowlist_function("rte_dev_(probe|remove|name|bus_info|driver_name)")
        .allowlist_function("rte_pktmbuf_.*")
        .allowlist_function("rte_mempool_.*")
        .allowlist_function("rte_ring_(create|free|lookup|dump)")
        .allowlist_function("rte_lcore_.*")
        .allowlist_function("rte_get_main_lcore")
        .allowlist_function("rte_socket_.*")
        .allowlist_function("rte_thread_(register|unregister)")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_version")
        .allowlist_function("rte_log_set_global_level")
        // Types those functions use come along; these are used by value or by the port.
        .allowlist_type("rte_mbuf")
        .allowlist_type("rte_mempool")
        .allowlist_type("rte_ring")
        .allowlist_type("rte_eth_(conf|dev_info|stats|rxconf|txconf|link)")
        .allowlist_var("RTE_PKTMBUF_HEADROOM")
        .allowlist_var("RTE_MAX_LCORE")
        .allowlist_var("RTE_MAX_ETHPORTS")
        .allowlist_var("RTE_MBUF_F_.*")
        .allowlist_var("RTE_MBUF_DEFAULT_.*")
        .allowlist_var("RTE_MEMPOOL_CACHE_MAX_SIZE")
        .allowlist_var("RTE_ETH_(NAME_MAX_LEN|RX_OFFLOAD_.*|TX_OFFLOAD_.*|MQ_.*)")
        .allowlist_var("RTE_VER_.*")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("LCORE_ID_ANY")
        .allowlist_var("RING_F_.*")
        // 22.11 traps. A packed struct with bitfields whose derived Debug takes references
        // to unaligned fields:
        .no_debug("rte_gtp_psc_generic_hdr")
        // Packed structs containing aligned members, which Rust cannot express:
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_arp_hdr")
        // AMX tile types from <immintrin.h> (reached through rte_memcpy.h) that bindgen
        // cannot lay out:
        .blocklist_type("__tile1024i")
        .blocklist_type("__tile1024i_str")
        .blocklist_function("_tile_.*")
        .blocklist_function("__tile_.*")
}

/// Runs pkg-config with the given arguments (plus `--static` when linking statically).
fn pkg_config_output(args: &[&str], statik: bool) -> String {
    let pc = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let mut cmd = Command::new(&pc);
    if statik {
        cmd.arg("--static");
    }
    cmd.args(args);
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("\n\ndpdk-sys: cannot run `{pc}` ({e}): apt-get install pkg-config; {INSTALL_HINT}.\n\n")
    });
    if !out.status.success() {
        panic!(
            "\n\ndpdk-sys: `{pc} {}` failed: {}\n  {INSTALL_HINT}.\n\n",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Emits the link instructions from `pkg-config --libs libdpdk`, keeping DPDK's
/// `--whole-archive` groups (static drivers register themselves in constructors, so every
/// object must be linked even though nothing references it).
fn link(statik: bool) {
    let libs = pkg_config_output(&["--libs", "libdpdk"], statik);
    // pkg-config leaves out -L for the system library directory; rustc needs it to find
    // static archives.
    let libdir = pkg_config_output(&["--variable=libdir", "libdpdk"], false);
    if !libdir.trim().is_empty() {
        println!("cargo:rustc-link-search=native={}", libdir.trim());
    }
    let mut whole = false;
    // Libraries already linked from a file name (`-l:librte_eal.a`); pkg-config's static
    // output names them again as `-lrte_eal`, which would link them twice.
    let mut seen = std::collections::HashSet::new();
    for tok in libs.split_whitespace() {
        if let Some(dir) = tok.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if tok == "-Wl,--whole-archive" {
            whole = true;
        } else if tok == "-Wl,--no-whole-archive" {
            whole = false;
        } else if let Some(file) = tok.strip_prefix("-l:") {
            if let Some(name) = file.strip_prefix("lib").and_then(|f| f.strip_suffix(".a")) {
                seen.insert(name.to_string());
            }
            // A file name (`librte_net_null.a`); static archives in whole-archive groups.
            let kind = if file.ends_with(".a") {
                "static"
            } else {
                "dylib"
            };
            let mods = if whole && kind == "static" {
                ":+whole-archive,+verbatim"
            } else {
                ":+verbatim"
            };
            println!("cargo:rustc-link-lib={kind}{mods}={file}");
        } else if let Some(name) = tok.strip_prefix("-l") {
            if seen.contains(name) {
                continue;
            }
            if statik && name.starts_with("rte_") {
                let mods = if whole { ":+whole-archive" } else { "" };
                println!("cargo:rustc-link-lib=static{mods}={name}");
            } else {
                println!("cargo:rustc-link-lib=dylib={name}");
            }
        } else if tok == "-pthread" {
            println!("cargo:rustc-link-lib=dylib=pthread");
        }
        // Other flags (-Wl,--as-needed, -Wl,-rpath...) are the linker's defaults for rustc
        // or irrelevant to a Rust link.
    }
}
