//! Where the probe reads the kernel's view of itself: `/proc`, `/sys` and `/lib/modules`.
//! Injectable so tests can describe a kernel in a temporary directory.

use std::path::PathBuf;

/// The filesystem roots the read-only checks look under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRoots {
    /// Normally `/proc`.
    pub proc: PathBuf,
    /// Normally `/sys`.
    pub sys: PathBuf,
    /// Normally `/lib/modules` (holding one directory per kernel release).
    pub modules: PathBuf,
}

impl Default for ProbeRoots {
    fn default() -> Self {
        ProbeRoots {
            proc: "/proc".into(),
            sys: "/sys".into(),
            modules: "/lib/modules".into(),
        }
    }
}

impl ProbeRoots {
    /// All three roots under one directory: `DIR/proc`, `DIR/sys`, `DIR/lib/modules`.
    pub fn under(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        ProbeRoots {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
            modules: dir.join("lib/modules"),
        }
    }

    /// The running kernel's release (`uname -r`), from `proc/sys/kernel/osrelease`.
    pub fn kernel_release(&self) -> Option<String> {
        std::fs::read_to_string(self.proc.join("sys/kernel/osrelease"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// `/lib/modules/<release>`.
    pub fn modules_dir(&self, release: &str) -> PathBuf {
        self.modules.join(release)
    }
}
