//! Whether a kernel module is there: loaded (`/proc/modules`, `/sys/module/NAME`), built
//! in (`/lib/modules/$(uname -r)/modules.builtin`) or loadable (listed in `modules.dep`).
//! [`KernelModules`] only reads. [`load`] is the one function here that changes the
//! kernel (it runs `modprobe`), and runs only when a caller asks for it: the probe itself
//! never loads anything unless [`Probe::load_ipvs_modules`](crate::Probe::load_ipvs_modules)
//! says so.

use std::{collections::HashSet, fmt, path::Path, time::Duration};

use crate::{command, error::ModuleLoadError, roots::ProbeRoots};

/// How a module is available, or that it is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleState {
    /// Listed in `/proc/modules`, or present under `/sys/module` (loaded, or built in
    /// with parameters).
    Loaded,
    /// Compiled into the kernel (`modules.builtin`).
    Builtin,
    /// Not loaded, but `modprobe` can load it (`modules.dep`).
    Loadable,
    Missing,
}

impl ModuleState {
    pub fn is_present(self) -> bool {
        self != ModuleState::Missing
    }
}

impl fmt::Display for ModuleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleState::Loaded => "loaded",
            ModuleState::Builtin => "built in",
            ModuleState::Loadable => "loadable",
            ModuleState::Missing => "missing",
        })
    }
}

/// A snapshot of what modules the kernel has, loaded, built in or on disk.
#[derive(Clone, Debug, Default)]
pub struct KernelModules {
    loaded: HashSet<String>,
    builtin: HashSet<String>,
    loadable: HashSet<String>,
    sys_module: Option<std::path::PathBuf>,
    /// What could not be read (e.g. no `/lib/modules/<release>`), for notes.
    pub gaps: Vec<String>,
}

/// `kernel/net/netfilter/ipvs/ip_vs-rr.ko.zst` → `ip_vs_rr`.
pub fn module_name_from_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

fn read_names(path: &Path, first_field: impl Fn(&str) -> Option<&str>) -> Option<HashSet<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(&first_field)
            .map(module_name_from_path)
            .filter(|n| !n.is_empty())
            .collect(),
    )
}

impl KernelModules {
    /// Reads `/proc/modules` and `/lib/modules/<release>/modules.{builtin,dep}`.
    pub fn read(roots: &ProbeRoots, release: &str) -> Self {
        let mut gaps = Vec::new();
        let loaded = read_names(&roots.proc.join("modules"), |l| l.split_whitespace().next())
            .unwrap_or_default();
        let dir = roots.modules_dir(release);
        let builtin = read_names(&dir.join("modules.builtin"), |l| {
            Some(l.trim()).filter(|l| !l.is_empty())
        });
        let loadable = read_names(&dir.join("modules.dep"), |l| l.split(':').next());
        if builtin.is_none() && loadable.is_none() {
            gaps.push(format!(
                "{} is absent: no loadable or built-in module list",
                dir.display()
            ));
        } else {
            if builtin.is_none() {
                gaps.push(format!(
                    "{} is absent",
                    dir.join("modules.builtin").display()
                ));
            }
            if loadable.is_none() {
                gaps.push(format!("{} is absent", dir.join("modules.dep").display()));
            }
        }
        let sys_module = roots.sys.join("module");
        KernelModules {
            loaded,
            builtin: builtin.unwrap_or_default(),
            loadable: loadable.unwrap_or_default(),
            sys_module: sys_module.is_dir().then_some(sys_module),
            gaps,
        }
    }

    /// Whether the module lists (`modules.dep`, `modules.builtin`) could be read, i.e.
    /// whether [`ModuleState::Missing`] means missing rather than unknown.
    pub fn has_module_lists(&self) -> bool {
        self.gaps.is_empty()
    }

    /// Why `name` is in `state`, in a few words for a check's detail (e.g. `not loaded,
    /// loadable (modprobe ip_vs)`).
    pub fn describe(&self, name: &str, state: ModuleState) -> String {
        match state {
            ModuleState::Loaded | ModuleState::Builtin => state.to_string(),
            ModuleState::Loadable => format!("not loaded, loadable (modprobe {name})"),
            ModuleState::Missing if self.has_module_lists() => {
                "not loaded, not built in, not in modules.dep".to_string()
            }
            ModuleState::Missing => format!("not loaded; {}", self.gaps.join("; ")),
        }
    }

    /// The state of module `name` (`-` and `_` are the same).
    pub fn state(&self, name: &str) -> ModuleState {
        let name = name.replace('-', "_");
        if self.loaded.contains(&name) {
            ModuleState::Loaded
        } else if self.builtin.contains(&name) {
            ModuleState::Builtin
        } else if self
            .sys_module
            .as_ref()
            .is_some_and(|dir| dir.join(&name).exists())
        {
            ModuleState::Loaded
        } else if self.loadable.contains(&name) {
            ModuleState::Loadable
        } else {
            ModuleState::Missing
        }
    }
}

/// True for a bare module name (`[a-z0-9_-]+`, not starting with `-`): nothing
/// `modprobe` could take for an option.
pub fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Loads module `name` (and what it depends on) with `modprobe`, waiting at most
/// `timeout`. Changes the kernel: for callers that decided to (the agent, the VM lane).
pub fn load(name: &str, timeout: Duration) -> Result<(), ModuleLoadError> {
    if !is_module_name(name) {
        return Err(ModuleLoadError::BadName {
            module: name.to_string(),
        });
    }
    let modprobe = command::find("modprobe").ok_or_else(|| ModuleLoadError::NoModprobe {
        module: name.to_string(),
    })?;
    command::run(&modprobe, &[name], None, timeout)
        .map(|_| ())
        .map_err(|source| ModuleLoadError::Modprobe {
            module: name.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name_from_path("kernel/net/netfilter/ipvs/ip_vs_rr.ko"),
            "ip_vs_rr"
        );
        assert_eq!(
            module_name_from_path("kernel/x/nf-conntrack.ko.zst"),
            "nf_conntrack"
        );
        assert_eq!(module_name_from_path("ip_vs.ko.xz"), "ip_vs");
    }

    #[test]
    fn refuses_what_is_not_a_module_name() {
        for bad in ["", "-r", "ip_vs rr", "../x", "IP_VS"] {
            let err = load(bad, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(err, ModuleLoadError::BadName { .. }), "{err}");
        }
    }
}
