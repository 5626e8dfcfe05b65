//! Where the file systems the engine needs are mounted, read from `/proc/self/mountinfo`:
//! the cgroup v2 hierarchy (cgroup programs attach to a directory in it) and bpffs (maps
//! and links are pinned in it). cgroup v2 is not always at `/sys/fs/cgroup`: a hybrid
//! hierarchy (older distributions, this build machine) mounts it at
//! `/sys/fs/cgroup/unified`, so the mount table is the only reliable answer.
//!
//! bpffs is often not mounted at all; [`ensure_bpffs`] mounts it, as Cilium does.

use std::path::{Path, PathBuf};

use crate::error::EbpfError;

/// One mountinfo line's mount point and file system type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses `/proc/<pid>/mountinfo` text (proc(5): fields up to a lone `-`, then the file
/// system type). Octal escapes in mount points (`\040` for a space) are decoded.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let mount_point = fields.get(4)?;
            let fs_type = fields.get(sep + 1)?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup v2 mount point in `mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

/// The cgroup v2 mount of this process's mount namespace.
pub fn find_cgroup2() -> Result<PathBuf, EbpfError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| EbpfError::Io {
        what: "reading",
        path: path.into(),
        source,
    })?;
    cgroup2_mount(&text).ok_or_else(|| EbpfError::NoCgroup2(path.into()))
}

/// Whether `path` is inside a bpffs mount, per `mountinfo` (the deepest mount covering the
/// path decides).
pub fn on_bpffs(mountinfo: &str, path: &Path) -> bool {
    parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .is_some_and(|m| m.fs_type == "bpf")
}

/// Makes sure `pin_root` lives on bpffs: when it does not, mounts a bpffs instance at
/// `mount_point` (creating the directory) first. `pin_root` must be inside `mount_point`.
pub fn ensure_bpffs(mount_point: &Path, pin_root: &Path) -> Result<(), EbpfError> {
    let info = Path::new("/proc/self/mountinfo");
    let read = || {
        std::fs::read_to_string(info).map_err(|source| EbpfError::Io {
            what: "reading",
            path: info.into(),
            source,
        })
    };
    if on_bpffs(&read()?, pin_root) {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point).map_err(|source| EbpfError::Io {
        what: "creating the bpffs mount point",
        path: mount_point.into(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|source| EbpfError::Mount {
        path: mount_point.into(),
        source,
    })?;
    if !on_bpffs(&read()?, pin_root) {
        return Err(EbpfError::Io {
            what: "pin directory is outside the bpffs just mounted",
            path: pin_root.into(),
            source: std::io::Error::other(format!("bpffs mounted at {}", mount_point.display())),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /sys/fs/bpf rw,relatime shared:7 - bpf bpf rw
51 22 0:41 / /tmp/with\\040space rw - bpf bpf rw";

    #[test]
    fn finds_the_hybrid_cgroup2_mount() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw"),
            None
        );
    }

    #[test]
    fn optional_fields_and_escapes() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m[3].fs_type, "bpf");
        assert_eq!(m[4].mount_point, PathBuf::from("/tmp/with space"));
    }

    #[test]
    fn bpffs_coverage_uses_the_deepest_mount() {
        assert!(on_bpffs(HYBRID, Path::new("/sys/fs/bpf/switchyard/v1")));
        assert!(!on_bpffs(HYBRID, Path::new("/sys/fs/cgroup/bpf")));
        assert!(on_bpffs(HYBRID, Path::new("/tmp/with space/x")));
    }
}
