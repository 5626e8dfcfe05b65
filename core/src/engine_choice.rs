//! Which engine runs on this node: the requested mode when the kernel supports it and
//! an engine for it is built; otherwise the first available mode of `fallback` —
//! reported, never silent; otherwise the node is degraded (previous rules stay).
//! `auto` picks the best available engine.

use switchyard_crd::{Mode, ModeCapability};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// Run `mode`. `fallback_reason` is set when it is not the requested mode.
    Run {
        requested: Mode,
        mode: Mode,
        fallback_reason: Option<String>,
    },
    /// Nothing usable: keep whatever rules are in place and report.
    Degraded { requested: Mode, reason: String },
}

impl EngineChoice {
    pub fn mode(&self) -> Option<Mode> {
        match self {
            EngineChoice::Run { mode, .. } => Some(*mode),
            EngineChoice::Degraded { .. } => None,
        }
    }

    pub fn requested(&self) -> Mode {
        match self {
            EngineChoice::Run { requested, .. } | EngineChoice::Degraded { requested, .. } => {
                *requested
            }
        }
    }

    pub fn is_fallback(&self) -> bool {
        matches!(
            self,
            EngineChoice::Run {
                fallback_reason: Some(_),
                ..
            }
        )
    }
}

fn capability(caps: &[ModeCapability], mode: Mode) -> Option<&ModeCapability> {
    caps.iter().find(|c| c.mode == mode)
}

/// Why `mode` cannot run, in one line ("ipvs unavailable: missing kernel modules ip_vs").
pub fn unavailable_reason(caps: &[ModeCapability], mode: Mode) -> String {
    match capability(caps, mode) {
        Some(c) if !c.detail.is_empty() => format!("{mode} unavailable: {}", c.detail),
        Some(c) if !c.missing.is_empty() => {
            format!("{mode} unavailable: missing {}", c.missing.join(", "))
        }
        Some(_) => format!("{mode} unavailable"),
        None => format!("{mode} unavailable: not probed"),
    }
}

fn available(caps: &[ModeCapability], mode: Mode) -> bool {
    capability(caps, mode).is_some_and(|c| c.available)
}

/// Decides the engine for `requested` with `fallback`, given what the probe found.
/// `auto` takes the first available mode of `auto_preference` (the engine registry's
/// order).
pub fn choose(
    requested: Mode,
    fallback: &[Mode],
    caps: &[ModeCapability],
    auto_preference: &[Mode],
) -> EngineChoice {
    if requested == Mode::Auto {
        return match auto_preference.iter().find(|m| available(caps, **m)) {
            Some(m) => EngineChoice::Run {
                requested,
                mode: *m,
                fallback_reason: None,
            },
            None => EngineChoice::Degraded {
                requested,
                reason: "auto: no engine is available on this node".into(),
            },
        };
    }
    if available(caps, requested) {
        return EngineChoice::Run {
            requested,
            mode: requested,
            fallback_reason: None,
        };
    }
    let why = unavailable_reason(caps, requested);
    for m in fallback {
        if available(caps, *m) {
            return EngineChoice::Run {
                requested,
                mode: *m,
                fallback_reason: Some(why),
            };
        }
    }
    let tried: Vec<String> = fallback
        .iter()
        .map(|m| unavailable_reason(caps, *m))
        .collect();
    EngineChoice::Degraded {
        requested,
        reason: if tried.is_empty() {
            format!("{why}; no fallback configured")
        } else {
            format!("{why}; {}", tried.join("; "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTO: [Mode; 4] = [Mode::Ebpf, Mode::Nftables, Mode::Ipvs, Mode::Iptables];

    fn caps() -> Vec<ModeCapability> {
        vec![
            ModeCapability {
                mode: Mode::Iptables,
                available: true,
                ..Default::default()
            },
            ModeCapability {
                mode: Mode::Nftables,
                available: true,
                ..Default::default()
            },
            ModeCapability {
                mode: Mode::Ipvs,
                available: false,
                missing: vec!["ip_vs".into(), "ip_vs_rr".into()],
                detail: "missing kernel modules ip_vs, ip_vs_rr".into(),
            },
            ModeCapability {
                mode: Mode::Ebpf,
                available: false,
                detail: "engine not built".into(),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn requested_mode_runs_when_available() {
        assert_eq!(
            choose(Mode::Nftables, &[], &caps(), &AUTO).mode(),
            Some(Mode::Nftables)
        );
    }

    #[test]
    fn fallback_is_explicit() {
        let c = choose(Mode::Ipvs, &[Mode::Nftables], &caps(), &AUTO);
        assert_eq!(
            c,
            EngineChoice::Run {
                requested: Mode::Ipvs,
                mode: Mode::Nftables,
                fallback_reason: Some(
                    "ipvs unavailable: missing kernel modules ip_vs, ip_vs_rr".into()
                ),
            }
        );
        assert!(c.is_fallback());
    }

    #[test]
    fn no_usable_fallback_is_degraded() {
        let c = choose(Mode::Ipvs, &[Mode::Ebpf], &caps(), &AUTO);
        match c {
            EngineChoice::Degraded { reason, .. } => {
                assert!(
                    reason.contains("ip_vs")
                        && reason.contains("ebpf unavailable: engine not built"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            choose(Mode::Ipvs, &[], &caps(), &AUTO),
            EngineChoice::Degraded { .. }
        ));
    }

    #[test]
    fn auto_picks_best_available() {
        assert_eq!(
            choose(Mode::Auto, &[], &caps(), &AUTO).mode(),
            Some(Mode::Nftables)
        );
    }
}
