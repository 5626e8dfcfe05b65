//! The lane's initramfs: static busybox, `e2e/vm/init` as `/init`, `e2e/vm/modprobe` as
//! `/sbin/modprobe`, and the kernel's 9p and virtio modules (with their dependencies, in
//! load order, listed in `/modules.load`).
//!
//! Cached by content: the archive is assembled in memory (reading ~3 MB of inputs costs a
//! few milliseconds) and written to `<cache>/initramfs-<sha256 prefix>.cpio` only when no
//! file of that name exists, so a change to any input (the scripts, busybox, the kernel's
//! modules) gives a new file and qemu never boots a stale one. Older archives are removed.

use std::{
    fs,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{cpio::Archive, error::VmError, kernel::Kernel};

const INIT: &[u8] = include_bytes!("../../vm/init");
const MODPROBE: &[u8] = include_bytes!("../../vm/modprobe");

/// The modules init inserts before it can reach the host's root: the 9p filesystem and
/// its virtio transport (the rest of their dependencies come from `modules.dep`).
pub const BOOT_MODULES: [&str; 3] = ["9p", "9pnet_virtio", "virtio_pci"];

/// Busybox applets the init script calls by name.
const APPLETS: [&str; 9] = [
    "sh", "mount", "mkdir", "insmod", "chroot", "cat", "echo", "sync", "poweroff",
];

/// Where busybox comes from: Debian's `busybox-static` (a dynamic busybox would find no
/// libc in the initramfs).
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds (or finds in `cache_dir`) the initramfs for `kernel`; returns its path.
pub fn build(kernel: &Kernel, busybox: &Path, cache_dir: &Path) -> Result<PathBuf, VmError> {
    let bytes = archive(kernel, busybox)?;
    let digest = Sha256::digest(&bytes);
    let name = format!(
        "initramfs-{}.cpio",
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let path = cache_dir.join(&name);
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(cache_dir).map_err(|e| VmError::io(cache_dir, e))?;
    let tmp = cache_dir.join(format!("{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, &bytes).map_err(|e| VmError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| VmError::io(&path, e))?;
    remove_older(cache_dir, &name);
    Ok(path)
}

fn remove_older(cache_dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("initramfs-") && name.ends_with(".cpio") && name != keep {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The archive's bytes.
fn archive(kernel: &Kernel, busybox: &Path) -> Result<Vec<u8>, VmError> {
    let mut a = Archive::new();
    for dir in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "lib",
        "lib/modules",
        "modules",
    ] {
        a.dir(dir);
    }
    a.char_device("dev/console", 0o600, 5, 1);
    let busybox_bytes = fs::read(busybox).map_err(|e| VmError::io(busybox, e))?;
    a.file("bin/busybox", 0o755, &busybox_bytes);
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox");
    }
    a.file("init", 0o755, INIT);
    a.file("sbin/modprobe", 0o755, MODPROBE);

    let mut load = String::new();
    for rel in kernel.load_order(&BOOT_MODULES)? {
        let src = kernel.modules_dir.join(&rel);
        let data = fs::read(&src).map_err(|e| VmError::io(&src, e))?;
        let file = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !file.ends_with(".ko") {
            // busybox insmod hands the file to init_module() as it is.
            return Err(VmError::CompressedModule { path: src });
        }
        a.file(&format!("modules/{file}"), 0o644, &data);
        load.push_str(&file);
        load.push('\n');
    }
    a.file("modules.load", 0o644, load.as_bytes());
    Ok(a.finish())
}
