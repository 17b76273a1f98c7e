//! Builds the eBPF tracker (`bpf/tracker.bpf.c`) with clang for the `bpf`
//! target; `src/tracker.rs` embeds the object.
//!
//! clang and libbpf's headers (`bpf/bpf_helpers.h`) are Debian packages
//! that `scripts/ensure-tools` installs; `BPF_CLANG` names another clang.
//! `-fdebug-compilation-dir=.` keeps the checkout's path out of the
//! object's debug info, so the same clang gives the same bytes anywhere.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/tracker.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_owned());
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the
    // multiarch directory of the build machine.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-fdebug-compilation-dir=."])
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .args(["-c", source, "-o"])
        .arg(out.join("tracker.bpf.o"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`{clang}` failed ({s}) compiling {source}; is libbpf-dev installed (bpf/bpf_helpers.h)? \
             scripts/ensure-tools installs what is needed"
        ),
        Err(e) => panic!(
            "cannot run `{clang}` ({e}): building the eBPF tracker needs clang and libbpf-dev \
             (scripts/ensure-tools installs them), or BPF_CLANG naming a clang with the bpf target"
        ),
    }
}
