//! Build-script helper shared by the crates that carry BPF programs (`xdp`, `netbench`):
//! [`compile`] builds `src/bpf/<stem>.bpf.c` with `clang -O2 -g -target bpf` into
//! `$OUT_DIR/<stem>.bpf.o`, which the crate embeds with `include_bytes!`.
//!
//! Headers: the libbpf headers (`bpf/bpf_helpers.h`) come from the libbpf that libbpf-sys
//! builds (`DEP_BPF_INCLUDE`), so they match the linked loader, else from libbpf-dev; the
//! kernel UAPI headers (`linux/bpf.h`, `asm/types.h`) from linux-libc-dev. `BPF_CLANG`
//! overrides the compiler, `BPF_CFLAGS` adds flags.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

const PACKAGES: &str = "clang llvm libbpf-dev linux-libc-dev";

fn fail(what: &str, msg: &str) -> ! {
    eprintln!("error: building {what} failed: {msg}");
    eprintln!("hint: on Debian/Ubuntu: apt-get install {PACKAGES} (scripts/setup does this)");
    process::exit(1);
}

/// The multiarch include directory that holds `asm/types.h` (Debian puts it there).
fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let triple = match arch.as_str() {
        "x86" => "i386-linux-gnu".to_string(),
        "arm" => "arm-linux-gnueabihf".to_string(),
        "powerpc64" => "powerpc64le-linux-gnu".to_string(),
        other => format!("{other}-linux-gnu"),
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.join("asm/types.h").exists().then_some(dir)
}

fn has_header(dirs: &[PathBuf], header: &str) -> bool {
    dirs.iter()
        .chain(std::iter::once(&PathBuf::from("/usr/include")))
        .any(|d| d.join(header).exists())
}

/// Compiles `src/bpf/<stem>.bpf.c` (with `src/bpf/<stem>.h` beside it) of the crate whose
/// build script calls this into `$OUT_DIR/<stem>.bpf.o`. `what` names the program in error
/// messages. Exits the build script with a message naming the Debian packages to install
/// when clang or a header is missing.
pub fn compile(stem: &str, what: &str) {
    let fail = |msg: &str| -> ! { fail(what, msg) };
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    let bpf_dir = manifest.join("src/bpf");
    let src = bpf_dir.join(format!("{stem}.bpf.c"));
    let obj = out.join(format!("{stem}.bpf.o"));

    println!("cargo:rerun-if-changed=src/bpf/{stem}.bpf.c");
    println!("cargo:rerun-if-changed=src/bpf/{stem}.h");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    println!("cargo:rerun-if-env-changed=BPF_CFLAGS");

    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => fail(&format!(
            "`{clang} --version` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => fail(&format!(
            "cannot run `{clang}` ({e}): clang is not installed"
        )),
    }

    let mut includes = vec![bpf_dir.clone()];
    if let Some(dir) = env::var_os("DEP_BPF_INCLUDE") {
        includes.push(PathBuf::from(dir));
    }
    if let Some(dir) = multiarch_include() {
        includes.push(dir);
    }
    let missing: Vec<&str> = ["linux/bpf.h", "asm/types.h", "bpf/bpf_helpers.h"]
        .into_iter()
        .filter(|h| !has_header(&includes, h))
        .collect();
    if !missing.is_empty() {
        fail(&format!(
            "headers not found: {} (searched {:?} and /usr/include)",
            missing.join(", "),
            includes
        ));
    }

    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall"]);
    for dir in &includes {
        cmd.arg("-I").arg(dir);
    }
    if let Ok(flags) = env::var("BPF_CFLAGS") {
        cmd.args(flags.split_whitespace());
    }
    cmd.arg("-c").arg(&src).arg("-o").arg(&obj);
    match cmd.output() {
        Ok(o) if o.status.success() => {
            for line in String::from_utf8_lossy(&o.stderr).lines() {
                println!("cargo:warning={stem}.bpf.c: {line}");
            }
        }
        Ok(o) => fail(&format!(
            "{cmd:?} exited with {}:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("cannot run {cmd:?}: {e}")),
    }
}
