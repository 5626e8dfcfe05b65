//! The kernel the lane boots: Debian's `linux-image-amd64` as installed on the host
//! (`/boot/vmlinuz-<release>` with `/lib/modules/<release>`), and the load order of the
//! modules the initramfs must insert itself before the host's root is reachable.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use super::error::VmError;

/// One installed kernel: its image and module tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub release: String,
    pub image: PathBuf,
    pub modules_dir: PathBuf,
}

/// Splits a release into its numbers and the text between them, so `6.1.0-57-amd64`
/// sorts after `6.1.0-9-amd64`.
fn release_key(release: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut digits = String::new();
    let mut text = String::new();
    for c in release.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() && digits.is_empty() {
                key.push((0, std::mem::take(&mut text)));
            }
            digits.push(c);
        } else {
            if !digits.is_empty() {
                key.push((digits.parse().unwrap_or(u64::MAX), String::new()));
                digits.clear();
            }
            text.push(c);
        }
    }
    if !digits.is_empty() {
        key.push((digits.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !text.is_empty() {
        key.push((0, text));
    }
    key
}

impl Kernel {
    /// The newest Debian amd64 kernel under `boot` whose module tree is under `modules`
    /// (normally `/boot` and `/lib/modules`).
    pub fn newest_debian(boot: &Path, modules: &Path) -> Result<Kernel, VmError> {
        let entries = fs::read_dir(boot).map_err(|e| VmError::io(boot, e))?;
        let mut found: Vec<Kernel> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let release = name.strip_prefix("vmlinuz-")?.to_string();
                release.ends_with("-amd64").then(|| Kernel {
                    image: e.path(),
                    modules_dir: modules.join(&release),
                    release,
                })
            })
            .filter(|k| k.modules_dir.join("modules.dep").is_file())
            .collect();
        found.sort_by_key(|k| release_key(&k.release));
        found.pop().ok_or_else(|| VmError::NoKernel {
            boot: boot.to_path_buf(),
            modules: modules.to_path_buf(),
        })
    }

    /// The module files to insert, in order, so that `wanted` are all loaded: each one
    /// after its dependencies (from `modules.dep`), skipping what `modules.builtin` says
    /// is compiled in. Paths are relative to [`Kernel::modules_dir`].
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<PathBuf>, VmError> {
        let dep_path = self.modules_dir.join("modules.dep");
        let dep_text = fs::read_to_string(&dep_path).map_err(|e| VmError::io(&dep_path, e))?;
        let builtin_path = self.modules_dir.join("modules.builtin");
        let builtin: HashSet<String> = fs::read_to_string(&builtin_path)
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        let deps: HashMap<String, (String, Vec<String>)> = dep_text
            .lines()
            .filter_map(|line| {
                let (file, rest) = line.split_once(':')?;
                let needs = rest.split_whitespace().map(str::to_string).collect();
                Some((module_name(file), (file.to_string(), needs)))
            })
            .collect();
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if builtin.contains(&name) {
                continue;
            }
            let Some((file, _)) = deps.get(&name) else {
                return Err(VmError::NoModule {
                    module: name,
                    release: self.release.clone(),
                });
            };
            visit(file, &deps, &mut seen, &mut order);
        }
        Ok(order)
    }
}

/// Depth-first: a module's dependencies, then the module.
fn visit(
    file: &str,
    deps: &HashMap<String, (String, Vec<String>)>,
    seen: &mut HashSet<String>,
    order: &mut Vec<PathBuf>,
) {
    if !seen.insert(file.to_string()) {
        return;
    }
    if let Some((_, needs)) = deps.get(&module_name(file)) {
        for need in needs {
            visit(need, deps, seen, order);
        }
    }
    order.push(PathBuf::from(file));
}

/// `kernel/net/9p/9pnet_virtio.ko` → `9pnet_virtio` (`-` and `_` are the same).
pub fn module_name(path: &str) -> String {
    let base = path.trim().rsplit('/').next().unwrap_or(path);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree(dir: &Path, release: &str) {
        let m = dir.join("lib/modules").join(release);
        fs::create_dir_all(&m).unwrap();
        fs::create_dir_all(dir.join("boot")).unwrap();
        fs::write(dir.join("boot").join(format!("vmlinuz-{release}")), b"").unwrap();
        fs::write(
            m.join("modules.dep"),
            "kernel/fs/netfs/netfs.ko:\n\
             kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n\
             kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko\n\
             kernel/net/9p/9pnet.ko:\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n",
        )
        .unwrap();
        fs::write(
            m.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
    }

    #[test]
    fn picks_the_newest_kernel_with_modules() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path(), "6.1.0-9-amd64");
        fake_tree(dir.path(), "6.1.0-57-amd64");
        // Newest image, but no module tree: not bootable by the lane.
        fs::write(dir.path().join("boot/vmlinuz-6.1.0-99-amd64"), b"").unwrap();
        let k = Kernel::newest_debian(&dir.path().join("boot"), &dir.path().join("lib/modules"))
            .unwrap();
        assert_eq!(k.release, "6.1.0-57-amd64");

        let empty = tempfile::tempdir().unwrap();
        let err = Kernel::newest_debian(empty.path(), empty.path()).unwrap_err();
        assert!(err.to_string().contains("linux-image-amd64"), "{err}");
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path(), "6.1.0-57-amd64");
        let k = Kernel::newest_debian(&dir.path().join("boot"), &dir.path().join("lib/modules"))
            .unwrap();
        let order = k.load_order(&["9p", "9pnet-virtio", "virtio_pci"]).unwrap();
        let names: Vec<String> = order
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert_eq!(names.len(), 7, "{names:?}");
        assert!(pos("netfs") < pos("fscache") && pos("fscache") < pos("9p"));
        assert!(pos("9pnet") < pos("9p") && pos("9pnet") < pos("9pnet_virtio"));
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("9pnet_virtio"));

        let err = k.load_order(&["ip_vs"]).unwrap_err();
        assert!(err.to_string().contains("ip_vs"), "{err}");
    }
}
