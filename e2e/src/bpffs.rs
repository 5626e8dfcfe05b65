//! A private bpffs directory for the eBPF engine's pins, so a sandboxed agent never pins
//! into (or mounts) the host's `/sys/fs/bpf`: an empty directory the engine mounts its
//! own bpffs instance on (as it mounts `/sys/fs/bpf` in production). Unmounting an
//! instance releases every map and link pinned in it, so dropping a [`PrivateBpffs`]
//! detaches whatever an agent left attached. Leftovers of dead test processes are
//! unmounted and removed when the next one is made.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, Result};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// `sye-<pid>-bpffs-<n>` under the temp directory; unmounted and removed on drop.
#[derive(Debug)]
pub struct PrivateBpffs {
    path: PathBuf,
}

impl PrivateBpffs {
    pub fn create() -> Result<PrivateBpffs> {
        remove_stale();
        let path = std::env::temp_dir().join(format!(
            "sye-{}-bpffs-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(PrivateBpffs { path })
    }

    /// The mount point (pins go to `<path>/switchyard`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Mounts the bpffs instance here beforehand, as a node's systemd does at
    /// `/sys/fs/bpf` (for an agent without CAP_SYS_ADMIN, which cannot mount it).
    pub fn mount(&self) -> Result<()> {
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&self.path)
            .status()
            .context("running mount")?;
        anyhow::ensure!(
            status.success(),
            "mount -t bpf on {}: {status}",
            self.path.display()
        );
        Ok(())
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        release(&self.path);
    }
}

/// Unmounts every bpffs instance stacked on `path`, then removes the directory.
fn release(path: &Path) {
    for _ in 0..8 {
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            break;
        }
        let _ = Command::new("umount").arg(path).status();
    }
    let _ = std::fs::remove_dir(path);
}

fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("sye-") else {
            continue;
        };
        let dead = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            });
        if dead && rest.contains("-bpffs-") {
            release(&e.path());
        }
    }
}
