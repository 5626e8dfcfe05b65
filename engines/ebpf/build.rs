//! Compiles the BPF C in `bpf/` with clang (`-target bpf -O2 -g`: BTF on, which aya needs
//! for the BTF-defined, pinned-by-name maps) into `$OUT_DIR/<name>.o`, embedded by
//! `src/objects.rs`. Debian's clang and libbpf headers (`libbpf-dev`) come from
//! `scripts/install-deps.sh`.

use std::{env, path::PathBuf, process::Command};

const OBJECTS: [&str; 2] = ["sock", "tc"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("SWITCHYARD_CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=SWITCHYARD_CLANG");
    for name in OBJECTS {
        let src = format!("bpf/{name}.c");
        let obj = out.join(format!("{name}.o"));
        let status = Command::new(&clang)
            .args([
                "-target",
                "bpf",
                "-O2",
                "-g",
                "-Wall",
                "-Werror",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
                &src,
                "-o",
            ])
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {clang} to compile {src}: {e} (install clang and libbpf-dev: \
                     scripts/install-deps.sh)"
                )
            });
        if !status.success() {
            panic!("{clang} failed to compile {src} ({status})");
        }
    }
}
