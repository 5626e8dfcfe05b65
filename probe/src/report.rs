//! What a probe found: one [`ModeReport`] per engine, each made of [`Check`]s, with the
//! short names of what is missing. Serializable (camelCase) so `switchyard probe --output
//! json` and the `ProxyNode` status can carry it; [`ProbeReport::table`] renders it for
//! people.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchyard_crd::Mode;

use crate::{
    fix::{fix_for, Fix},
    kernel_module::is_module_name,
};

/// The findings for every probed mode on this node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// `uname -r` of the probed kernel (from `/proc/sys/kernel/osrelease`).
    pub kernel_release: String,
    /// One entry per probed mode, in the order asked for.
    pub modes: Vec<ModeReport>,
    /// Node problems that no single mode owns, e.g. a pod bridge without `br_netfilter`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Whether one engine can run here, and why not.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModeReport {
    pub mode: Mode,
    /// True when every check passed (`missing` is empty).
    pub available: bool,
    /// Every check made, passed or not.
    pub checks: Vec<Check>,
    /// Short names of what is missing. A bare kernel-module name (`ip_vs`, `xt_statistic`)
    /// is a kernel module; anything else is written with a space or punctuation
    /// (`nft >= 1.0.1`, `kernel >= 5.13`, `ipset command`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The kernel modules in `missing` whose cause is "not loaded" rather than "absent":
    /// loadable but not loaded, or a load that failed (with modprobe's error). Also in
    /// `missing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_loaded: Vec<NotLoaded>,
    /// Facts worth knowing that are not failures (backend chosen, versions, mounts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What to do about each of `missing`, in its order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixes: Vec<Fix>,
}

/// A kernel module that is not loaded although this kernel has it (loadable), or that a
/// load was tried for and failed (`load_error` says why).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NotLoaded {
    pub module: String,
    /// `modprobe`'s error, when loading it was tried and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

/// One thing tested, with what was seen.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Stable short name, e.g. `modules`, `nft version`, `netns ruleset`.
    pub name: String,
    pub ok: bool,
    /// What was found, in one line.
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

impl ModeReport {
    /// Builds a report; `available` follows from `missing` (deduplicated, order kept).
    pub fn new(mode: Mode, checks: Vec<Check>, missing: Vec<String>, notes: Vec<String>) -> Self {
        let mut unique: Vec<String> = Vec::with_capacity(missing.len());
        for item in missing {
            if !unique.contains(&item) {
                unique.push(item);
            }
        }
        ModeReport {
            mode,
            available: unique.is_empty() && checks.iter().all(|c| c.ok),
            checks,
            missing: unique,
            not_loaded: Vec::new(),
            notes,
            fixes: Vec::new(),
        }
    }

    /// Fills `fixes`: one per missing feature, for kernel `release`.
    pub fn with_fixes(mut self, release: &str) -> Self {
        self.fixes = self
            .missing
            .iter()
            .map(|m| Fix {
                missing: m.clone(),
                fix: fix_for(m, self.not_loaded.iter().find(|n| n.module == *m), release),
            })
            .collect();
        self
    }

    /// Marks modules of `missing` as present but not loaded (adding any not listed yet).
    pub fn with_not_loaded(mut self, not_loaded: Vec<NotLoaded>) -> Self {
        for n in &not_loaded {
            if !self.missing.contains(&n.module) {
                self.missing.push(n.module.clone());
            }
        }
        self.available = self.available && not_loaded.is_empty();
        self.not_loaded = not_loaded;
        self
    }

    /// One line naming what is missing, e.g. `missing kernel modules ip_vs, ip_vs_rr`,
    /// `kernel module nf_tables not loaded but loadable (modprobe nf_tables)` or `kernel
    /// module ip_vs could not be loaded: …`; `available` when nothing is.
    pub fn reason(&self) -> String {
        if self.available {
            return "available".to_string();
        }
        let mut parts = Vec::new();
        let (failed, idle): (Vec<&NotLoaded>, Vec<&NotLoaded>) =
            self.not_loaded.iter().partition(|n| n.load_error.is_some());
        for n in failed {
            parts.push(format!(
                "kernel module {} could not be loaded: {}",
                n.module,
                n.load_error.as_deref().unwrap_or_default()
            ));
        }
        let idle: Vec<&str> = idle.iter().map(|n| n.module.as_str()).collect();
        match idle.len() {
            0 => {}
            1 => parts.push(format!(
                "kernel module {m} not loaded but loadable (modprobe {m})",
                m = idle[0]
            )),
            _ => parts.push(format!(
                "kernel modules {} not loaded but loadable (modprobe them)",
                idle.join(", ")
            )),
        }
        let (modules, others): (Vec<&str>, Vec<&str>) = self
            .missing
            .iter()
            .map(String::as_str)
            .filter(|m| !self.not_loaded.iter().any(|n| n.module == *m))
            .partition(|m| is_module_name(m));
        match modules.len() {
            0 => {}
            1 => parts.push(format!("missing kernel module {}", modules[0])),
            _ => parts.push(format!("missing kernel modules {}", modules.join(", "))),
        }
        if !others.is_empty() {
            parts.push(format!("missing {}", others.join(", ")));
        }
        if parts.is_empty() {
            let failed: Vec<&str> = self
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            return format!("failed checks: {}", failed.join(", "));
        }
        parts.join("; ")
    }
}

impl ProbeReport {
    /// The report for `mode`, when it was probed.
    pub fn get(&self, mode: Mode) -> Option<&ModeReport> {
        self.modes.iter().find(|m| m.mode == mode)
    }

    /// The modes that can run here, in report order.
    pub fn available_modes(&self) -> Vec<Mode> {
        self.modes
            .iter()
            .filter(|m| m.available)
            .map(|m| m.mode)
            .collect()
    }

    /// A human table: one summary line per mode, then its checks and notes.
    pub fn table(&self) -> String {
        let mut out = format!("kernel {}\n\n", self.kernel_release);
        out.push_str(&format!(
            "{:<10} {:<10} {}\n",
            "MODE", "AVAILABLE", "REASON"
        ));
        for m in &self.modes {
            let reason = if m.available { "-".into() } else { m.reason() };
            out.push_str(&format!(
                "{:<10} {:<10} {}\n",
                m.mode.as_str(),
                if m.available { "yes" } else { "no" },
                reason
            ));
        }
        for m in self.modes.iter().filter(|m| !m.fixes.is_empty()) {
            out.push_str(&format!("\nto fix {}:\n", m.mode.as_str()));
            for f in &m.fixes {
                out.push_str(&format!("  {}: {}\n", f.missing, f.fix));
            }
        }
        for m in &self.modes {
            out.push_str(&format!("\n{}:\n", m.mode.as_str()));
            let width = m.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in &m.checks {
                out.push_str(&format!(
                    "  [{}] {:<width$}  {}\n",
                    if c.ok { "ok" } else { "--" },
                    c.name,
                    c.detail,
                ));
            }
            for n in &m.notes {
                out.push_str(&format!("  note: {n}\n"));
            }
        }
        for w in &self.warnings {
            out.push_str(&format!("\nwarning: {w}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(missing: &[&str]) -> ModeReport {
        let checks = vec![Check::new("x", missing.is_empty(), "d")];
        ModeReport::new(
            Mode::Ipvs,
            checks,
            missing.iter().map(|s| s.to_string()).collect(),
            vec![],
        )
    }

    #[test]
    fn reason_names_modules_then_other_things() {
        assert_eq!(
            report(&["ip_vs", "ip_vs_rr"]).reason(),
            "missing kernel modules ip_vs, ip_vs_rr"
        );
        assert_eq!(report(&["ip_vs"]).reason(), "missing kernel module ip_vs");
        assert_eq!(
            report(&["ip_vs", "ipset command", "ip_vs"]).reason(),
            "missing kernel module ip_vs; missing ipset command"
        );
        assert_eq!(
            report(&["nft >= 1.0.1", "kernel >= 5.13"]).reason(),
            "missing nft >= 1.0.1, kernel >= 5.13"
        );
        assert_eq!(report(&[]).reason(), "available");
        assert!(report(&[]).available);
    }

    #[test]
    fn serializes_camel_case_and_round_trips() {
        let r = ProbeReport {
            kernel_release: "6.1.0".into(),
            modes: vec![report(&["ip_vs"]).with_fixes("6.1.0")],
            warnings: vec!["bridge cbr0 without br_netfilter".into()],
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kernelRelease"], "6.1.0");
        assert_eq!(json["modes"][0]["mode"], "ipvs");
        assert_eq!(json["modes"][0]["missing"][0], "ip_vs");
        let back: ProbeReport = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, r);
        assert!(r.table().contains("missing kernel module ip_vs"));
        assert!(
            r.table()
                .contains("to fix ipvs:\n  ip_vs: not built for kernel 6.1.0"),
            "{}",
            r.table()
        );
        assert_eq!(json["modes"][0]["fixes"][0]["missing"], "ip_vs");
        assert!(r.table().contains("warning: bridge cbr0"));
    }

    #[test]
    fn reason_says_not_loaded_apart_from_absent() {
        let not_loaded = |module: &str, load_error: Option<&str>| NotLoaded {
            module: module.into(),
            load_error: load_error.map(str::to_string),
        };
        let r = report(&["nf_tables"]).with_not_loaded(vec![not_loaded("nf_tables", None)]);
        assert!(!r.available);
        assert_eq!(
            r.reason(),
            "kernel module nf_tables not loaded but loadable (modprobe nf_tables)"
        );
        let r = report(&["ip_vs_sh", "ipset command"]).with_not_loaded(vec![
            not_loaded("ip_vs", Some("modprobe: FATAL: Module ip_vs not found")),
            not_loaded("ip_vs_rr", None),
            not_loaded("ip_vs_wrr", None),
        ]);
        assert_eq!(
            r.reason(),
            "kernel module ip_vs could not be loaded: modprobe: FATAL: Module ip_vs not \
             found; kernel modules ip_vs_rr, ip_vs_wrr not loaded but loadable (modprobe \
             them); missing kernel module ip_vs_sh; missing ipset command"
        );
        assert_eq!(
            r.missing,
            [
                "ip_vs_sh",
                "ipset command",
                "ip_vs",
                "ip_vs_rr",
                "ip_vs_wrr"
            ]
        );
    }
}
