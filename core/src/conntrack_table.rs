//! The node's conntrack table, watched beside the sync runner: the ProxyConfig
//! `conntrack` block is applied when it changes (through `switchyard_conntrack::Sysctls`,
//! kube-proxy's rules), and every [`POLL_INTERVAL`] the table's fill is read into metrics
//! and a [`ConntrackStatus`], which the agent turns into the ProxyNode's
//! `ConntrackPressure` and `ConntrackSettingsRefused` conditions and Events. Standalone,
//! the same facts go to the log and `/metrics`.
//!
//! - **Pressure** starts above [`PRESSURE_ABOVE`] (90 %) of `nf_conntrack_max` and ends
//!   below [`PRESSURE_CLEARS_BELOW`] (85 %): a table hovering at 90 % would otherwise
//!   flip the condition, and send an Event, on every poll. A full table drops new flows
//!   (the kernel logs `nf_conntrack: table full, dropping packet`); upstream kube-proxy
//!   only sizes the table and never says when it fills.
//! - **Refusals** (a read-only `/proc/sys`, a global setting outside the node's initial
//!   network namespace) are logged once per change, kept in the status and counted per
//!   setting. A setting refused because `nf_conntrack` was not loaded yet (its files are
//!   absent until an engine's first rules load it) is retried on every poll.
//!
//! Apart from the sysctls its settings name, this module changes nothing in the kernel.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use switchyard_conntrack::{Refusal, Setting, Sysctls, TableUsage};
use switchyard_crd::ConntrackSettings;
use tokio::sync::watch;

use crate::{
    metrics::{Metrics, SettingLabel},
    runner::{effective_config, ConfigSource},
    state::ClusterState,
};

/// Fill above which the table is under pressure.
pub const PRESSURE_ABOVE: f64 = 0.90;
/// Fill below which pressure ends.
pub const PRESSURE_CLEARS_BELOW: f64 = 0.85;
/// How often the table's fill is read (two small `/proc` reads).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// What the node reports about its conntrack table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConntrackStatus {
    /// Entries and limit at the last poll (`None`: unreadable, see `unreadable`).
    pub usage: Option<TableUsage>,
    /// Above [`PRESSURE_ABOVE`] and not yet back below [`PRESSURE_CLEARS_BELOW`].
    pub pressure: bool,
    /// The settings of the `conntrack` block the kernel refused, each with why (its
    /// `Display`: `nf_conntrack_max = 131072 (spec.conntrack.maxPerCore): …`).
    pub refused: Vec<Refusal>,
    /// Why the table's fill could not be read (`nf_conntrack` not loaded).
    pub unreadable: Option<String>,
}

impl ConntrackStatus {
    /// Entries as a percentage of the limit.
    pub fn percent(&self) -> Option<f64> {
        self.usage.filter(|u| u.limit > 0).map(|u| u.fill() * 100.0)
    }
}

/// Whether the table is under pressure after a poll at `fill`, given whether it was.
pub fn pressure(was: bool, fill: f64) -> bool {
    if was {
        fill >= PRESSURE_CLEARS_BELOW
    } else {
        fill > PRESSURE_ABOVE
    }
}

/// Applies the node's conntrack settings and watches its table.
pub struct ConntrackMonitor {
    sysctls: Sysctls,
    cpus: u32,
    state: Arc<Mutex<ClusterState>>,
    node_name: String,
    source: ConfigSource,
    metrics: Metrics,
    status: watch::Sender<ConntrackStatus>,
    /// The settings last applied with nothing left to retry.
    applied: Option<ConntrackSettings>,
}

impl ConntrackMonitor {
    /// A monitor of the table `sysctls` names, for a node of `cpus` CPUs, following the
    /// config in force for `node_name` in `state`.
    pub fn new(
        sysctls: Sysctls,
        cpus: u32,
        state: Arc<Mutex<ClusterState>>,
        node_name: impl Into<String>,
        source: ConfigSource,
        metrics: Metrics,
    ) -> Self {
        ConntrackMonitor {
            sysctls,
            cpus,
            state,
            node_name: node_name.into(),
            source,
            metrics,
            status: watch::channel(ConntrackStatus::default()).0,
            applied: None,
        }
    }

    /// Follows the status as polls happen.
    pub fn status(&self) -> watch::Receiver<ConntrackStatus> {
        self.status.subscribe()
    }

    /// One poll: the settings, when they changed or a retry is due, then the fill.
    pub fn poll(&mut self) {
        let settings = {
            let state = self.state.lock().expect("state lock poisoned");
            effective_config(&state, &self.node_name, &self.source)
                .config
                .conntrack
        };
        if self.applied.as_ref() != Some(&settings) {
            self.apply(settings);
        }
        let read = self.sysctls.usage();
        let m = &self.metrics;
        self.status.send_if_modified(|s| {
            let old = s.clone();
            match read {
                Ok(usage) => {
                    m.conntrack_entries.set(gauge(usage.entries));
                    m.conntrack_limit.set(gauge(usage.limit));
                    s.pressure = pressure(s.pressure, usage.fill());
                    s.usage = Some(usage);
                    s.unreadable = None;
                }
                Err(e) => {
                    s.usage = None;
                    s.pressure = false;
                    s.unreadable = Some(e.to_string());
                }
            }
            m.conntrack_pressure.set(i64::from(s.pressure));
            log_transition(&old, s);
            *s != old
        });
    }

    fn apply(&mut self, settings: ConntrackSettings) {
        let refusals = self.sysctls.apply(&settings, self.cpus).refusals();
        let retry = refusals.iter().any(|r| r.retry);
        for label in Setting::ALL {
            let refused = refusals.iter().any(|r| r.setting == label);
            self.metrics
                .conntrack_refused
                .get_or_create(&SettingLabel {
                    setting: label.kernel_name().into(),
                })
                .set(i64::from(refused));
        }
        self.status.send_if_modified(|s| {
            if s.refused == refusals {
                return false;
            }
            for r in &refusals {
                if r.retry {
                    tracing::info!(setting = %r, "conntrack setting not applied yet: nf_conntrack is not loaded; retrying");
                } else {
                    tracing::warn!(setting = %r, "the kernel refused a conntrack setting of the ProxyConfig");
                }
            }
            s.refused = refusals;
            true
        });
        // Applied with nothing to retry: only a change of settings applies them again.
        self.applied = (!retry).then_some(settings);
    }

    /// Polls every [`POLL_INTERVAL`] until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.poll();
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn log_transition(old: &ConntrackStatus, new: &ConntrackStatus) {
    match (old.pressure, new.pressure, new.usage) {
        (false, true, Some(u)) => tracing::warn!(
            entries = u.entries,
            limit = u.limit,
            "ConntrackPressure: the conntrack table is more than 90% full; new flows are dropped once it is full (raise spec.conntrack.maxPerCore / min)"
        ),
        (true, false, Some(u)) => tracing::info!(
            entries = u.entries,
            limit = u.limit,
            "conntrack table back below 85% full"
        ),
        _ => {}
    }
    if old.unreadable != new.unreadable {
        if let Some(why) = &new.unreadable {
            tracing::info!(%why, "conntrack table fill unreadable (nf_conntrack not loaded?)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Object;
    use std::path::{Path, PathBuf};

    #[test]
    fn pressure_has_hysteresis() {
        assert!(!pressure(false, 0.90));
        assert!(pressure(false, 0.91));
        assert!(pressure(true, 0.86));
        assert!(pressure(true, 0.85));
        assert!(!pressure(true, 0.849));
    }

    struct Table(PathBuf);

    impl Table {
        fn new(tag: &str) -> Table {
            let d = std::env::temp_dir().join(format!("sy-ct-mon-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in [
                ("nf_conntrack_max", "1000"),
                ("nf_conntrack_count", "0"),
                ("nf_conntrack_tcp_timeout_established", "432000"),
                ("nf_conntrack_tcp_timeout_close_wait", "60"),
                ("hashsize", "65536"),
            ] {
                std::fs::write(d.join(f), v).unwrap();
            }
            Table(d)
        }
        fn set(&self, file: &str, v: u64) {
            std::fs::write(self.0.join(file), v.to_string()).unwrap();
        }
        fn get(&self, file: &str) -> String {
            std::fs::read_to_string(self.0.join(file)).unwrap()
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(spec: &str) -> Object {
        Object::ProxyConfig(Box::new(switchyard_crd::ProxyConfig::new(
            "default",
            serde_yaml::from_str(spec).unwrap(),
        )))
    }

    fn monitor(dir: &Path, spec: &str) -> (ConntrackMonitor, Arc<Mutex<ClusterState>>, Metrics) {
        let state = Arc::new(Mutex::new(ClusterState::default()));
        state.lock().unwrap().upsert(config(spec));
        let metrics = Metrics::new();
        let m = ConntrackMonitor::new(
            Sysctls::under(dir, dir.join("hashsize")),
            2,
            state.clone(),
            "node",
            ConfigSource::default(),
            metrics.clone(),
        );
        (m, state, metrics)
    }

    #[test]
    fn applies_on_change_and_reports_pressure() {
        let t = Table::new("pressure");
        let (mut m, state, metrics) = monitor(&t.0, "conntrack: {maxPerCore: 500, min: 1000}");
        let status = m.status();
        m.poll();
        assert_eq!(t.get("nf_conntrack_max"), "1000");
        assert_eq!(t.get("nf_conntrack_tcp_timeout_established"), "86400");
        assert!(!status.borrow().pressure);
        t.set("nf_conntrack_count", 950);
        m.poll();
        let s = status.borrow().clone();
        assert!(s.pressure, "{s:?}");
        assert_eq!(s.percent(), Some(95.0));
        let text = metrics.render();
        for line in [
            "switchyard_conntrack_entries 950",
            "switchyard_conntrack_entries_limit 1000",
            "switchyard_conntrack_pressure 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        t.set("nf_conntrack_count", 880);
        m.poll();
        assert!(status.borrow().pressure, "hysteresis");
        t.set("nf_conntrack_count", 100);
        m.poll();
        assert!(!status.borrow().pressure);

        // Settings are applied again only when they change.
        t.set("nf_conntrack_tcp_timeout_established", 5);
        m.poll();
        assert_eq!(t.get("nf_conntrack_tcp_timeout_established"), "5");
        state
            .lock()
            .unwrap()
            .upsert(config("conntrack: {maxPerCore: 1000, min: 1000}"));
        m.poll();
        assert_eq!(t.get("nf_conntrack_max"), "2000");
        assert_eq!(t.get("nf_conntrack_tcp_timeout_established"), "86400");
    }

    #[test]
    fn refusals_are_reported_and_absent_files_retried() {
        let t = Table::new("refused");
        // nf_conntrack not loaded yet: its files are absent.
        std::fs::remove_file(t.0.join("nf_conntrack_tcp_timeout_close_wait")).unwrap();
        let (mut m, _, metrics) = monitor(&t.0, "conntrack: {maxPerCore: 500, min: 1000}");
        let status = m.status();
        m.poll();
        let refused = status.borrow().refused.clone();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].retry);
        assert!(
            refused[0].to_string().starts_with(
                "nf_conntrack_tcp_timeout_close_wait = 3600 (spec.conntrack.tcpCloseWaitTimeout)"
            ),
            "{refused:?}"
        );
        assert!(metrics.render().contains(
            r#"switchyard_conntrack_setting_refused{setting="nf_conntrack_tcp_timeout_close_wait"} 1"#
        ));
        // The module appears (the file with it): the retry applies it.
        t.set("nf_conntrack_tcp_timeout_close_wait", 60);
        m.poll();
        assert_eq!(t.get("nf_conntrack_tcp_timeout_close_wait"), "3600");
        assert!(status.borrow().refused.is_empty());
        assert!(metrics.render().contains(
            r#"switchyard_conntrack_setting_refused{setting="nf_conntrack_tcp_timeout_close_wait"} 0"#
        ));
    }
}
