//! What a probe found: one [`ModeReport`] per engine, each made of [`Check`]s, with the
//! short names of what is missing. Serializable (camelCase) so `switchyard probe --output
//! json` and the `ProxyNode` status can carry it; [`ProbeReport::table`] renders it for
//! people.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchyard_crd::Mode;

/// The findings for every probed mode on this node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// `uname -r` of the probed kernel (from `/proc/sys/kernel/osrelease`).
    pub kernel_release: String,
    /// One entry per probed mode, in the order asked for.
    pub modes: Vec<ModeReport>,
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
    /// Facts worth knowing that are not failures (backend chosen, versions, mounts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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

/// True when `name` is a bare kernel-module name (`[a-z0-9_]+`).
fn is_module_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
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
            notes,
        }
    }

    /// One line naming what is missing, e.g. `missing kernel modules ip_vs, ip_vs_rr`;
    /// `available` when nothing is.
    pub fn reason(&self) -> String {
        if self.available {
            return "available".to_string();
        }
        let (modules, others): (Vec<&str>, Vec<&str>) = self
            .missing
            .iter()
            .map(String::as_str)
            .partition(|m| is_module_name(m));
        let mut parts = Vec::new();
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
            modes: vec![report(&["ip_vs"])],
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kernelRelease"], "6.1.0");
        assert_eq!(json["modes"][0]["mode"], "ipvs");
        assert_eq!(json["modes"][0]["missing"][0], "ip_vs");
        let back: ProbeReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert!(r.table().contains("missing kernel module ip_vs"));
    }
}
