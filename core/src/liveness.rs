//! Liveness: whether the process and its long-running loops are still turning, which is
//! what `/livez` (the DaemonSet's livenessProbe) answers — not whether the node is synced
//! (that is `/healthz`, readiness).
//!
//! Each loop (the sync runner, the manifests scan thread, the API watchers) registers a
//! [`Heartbeat`] with the longest silence it may keep, and ticks it every time round.
//! A loop that stops ticking — stuck in a call that never returns, or gone — makes
//! `/livez` fail, so the kubelet restarts the process. Dropping a heartbeat does *not*
//! unregister it: a loop that ended keeps counting as silent, on purpose.
//!
//! Why liveness must not follow sync health: a node whose syncs fail (the dataplane tool
//! refuses a rule, the xtables lock is held) keeps the rules it had; restarting it fixes
//! nothing and makes it start from scratch. Only a process whose loops stopped is helped
//! by a restart. A panicking loop never gets here: the binary's panic hook ends the
//! process at once.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy)]
struct Beat {
    last: Instant,
    within: Duration,
}

/// The loops `/livez` watches. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    loops: Arc<Mutex<BTreeMap<&'static str, Beat>>>,
}

/// One loop's heartbeat: [`Heartbeat::tick`] at least every `within`.
#[derive(Debug)]
pub struct Heartbeat {
    liveness: Liveness,
    name: &'static str,
}

/// How long one loop has been silent, and how long it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopState {
    pub name: &'static str,
    pub silent_for: Duration,
    pub within: Duration,
}

impl LoopState {
    pub fn alive(&self) -> bool {
        self.silent_for <= self.within
    }
}

/// One answer of `/livez`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveVerdict {
    pub alive: bool,
    /// Every registered loop, by name.
    pub loops: Vec<LoopState>,
}

impl LiveVerdict {
    /// `ok`, or which loops stopped ticking.
    pub fn reason(&self) -> String {
        let stale: Vec<String> = self
            .loops
            .iter()
            .filter(|l| !l.alive())
            .map(|l| {
                format!(
                    "{} silent for {:.0}s (limit {:.0}s)",
                    l.name,
                    l.silent_for.as_secs_f64(),
                    l.within.as_secs_f64()
                )
            })
            .collect();
        if stale.is_empty() {
            "ok".to_string()
        } else {
            stale.join("; ")
        }
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers loop `name` (ticked now), which must tick at least every `within`.
    /// Registering a name again replaces the previous registration.
    pub fn register(&self, name: &'static str, within: Duration) -> Heartbeat {
        self.lock().insert(
            name,
            Beat {
                last: Instant::now(),
                within,
            },
        );
        Heartbeat {
            liveness: self.clone(),
            name,
        }
    }

    pub fn verdict(&self) -> LiveVerdict {
        let now = Instant::now();
        let loops: Vec<LoopState> = self
            .lock()
            .iter()
            .map(|(name, beat)| LoopState {
                name,
                silent_for: now.saturating_duration_since(beat.last),
                within: beat.within,
            })
            .collect();
        LiveVerdict {
            alive: loops.iter().all(LoopState::alive),
            loops,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Beat>> {
        // A panic anywhere ends the process (the binary's hook), so a poisoned lock is
        // only seen by tests: the map is still consistent (every write is one insert).
        self.loops.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Heartbeat {
    /// The loop went round once.
    pub fn tick(&self) {
        if let Some(beat) = self.liveness.lock().get_mut(self.name) {
            beat.last = Instant::now();
        }
    }

    /// Changes the allowed silence (e.g. the sync period changed) and ticks.
    pub fn tick_within(&self, within: Duration) {
        if let Some(beat) = self.liveness.lock().get_mut(self.name) {
            beat.last = Instant::now();
            beat.within = within;
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_while_every_loop_ticks() {
        let live = Liveness::new();
        assert!(live.verdict().alive, "no loop registered yet");
        let fast = live.register("fast", Duration::from_millis(30));
        let slow = live.register("slow", Duration::from_secs(60));
        assert!(live.verdict().alive);
        std::thread::sleep(Duration::from_millis(50));
        let v = live.verdict();
        assert!(!v.alive);
        assert!(v.reason().starts_with("fast silent for"), "{}", v.reason());
        fast.tick();
        assert!(live.verdict().alive);
        slow.tick_within(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!live.verdict().alive, "new limit applies");
    }

    #[test]
    fn a_dropped_heartbeat_keeps_counting() {
        let live = Liveness::new();
        drop(live.register("gone", Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(20));
        let v = live.verdict();
        assert!(!v.alive);
        assert_eq!(v.loops[0].name, "gone");
    }
}
