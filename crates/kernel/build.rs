//! Compiles the BPF program (`bpf/meshlimit.bpf.c`) with clang into `$OUT_DIR/meshlimit.bpf.o`,
//! which the crate embeds. Needs clang and the libbpf headers (`scripts/setup` installs both).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/meshlimit.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=MESHLIMIT_CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("meshlimit.bpf.o");
    let clang = env::var("MESHLIMIT_CLANG").unwrap_or_else(|_| "clang".to_owned());
    // The kernel UAPI headers include <asm/types.h>, which Debian keeps under the multiarch dir.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");

    let status = Command::new(&clang)
        .args([
            "-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-Werror",
        ])
        .arg(&multiarch)
        .arg("-c")
        .arg(SOURCE)
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{clang} failed to compile {SOURCE} ({status})"),
        Err(err) => panic!(
            "cannot run {clang} ({err}): building meshlimit-kernel needs clang and the libbpf \
             headers (Debian: apt-get install clang libbpf-dev; or run scripts/setup)"
        ),
    }
}
