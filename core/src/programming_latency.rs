//! Network programming latency: from when an endpoint change happened to when this
//! node's kernel holds it (`kubeproxy_network_programming_duration_seconds`), and a
//! recent summary of it (p50, p99) for the ProxyNode status.
//!
//! When the change happened, as upstream measures it (`pkg/proxy/endpointschangetracker.go`):
//! the EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` annotation,
//! which the EndpointSlice controller sets to when the Pod or Service change that
//! caused the update happened. So the figure includes the control plane's share (the
//! controller, the API server, the watch), not just this node's. Like upstream, a trigger
//! time from before this process started is ignored (that change was programmed by a
//! predecessor), and a removed slice's pending times are dropped (its annotation dates
//! the slice's last update, not its removal). Unlike upstream, a slice without the
//! annotation (standalone manifests, other controllers) is timed from when this node saw
//! it, rather than not at all. The times are recorded by `ClusterState` as slices
//! arrive and handed over with its changes.
//!
//! A change counts as programmed at the end of the first successful pass after it
//! (a sync, or a pass that found nothing to write); a failed or degraded pass keeps it
//! pending, so the retry's latency includes the failure.
//!
//! The summary covers the samples of the last [`WINDOW`], at most [`MAX_SAMPLES`] of
//! them (the newest), with nearest-rank percentiles.

use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::metrics::histogram::Histogram;

/// How far back the summary looks.
pub const WINDOW: Duration = Duration::from_secs(600);
/// The most samples the summary keeps.
pub const MAX_SAMPLES: usize = 1024;

/// A recent summary of network programming latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    pub p50: Duration,
    pub p99: Duration,
    /// Samples summarized.
    pub samples: usize,
    /// How far back they go at most.
    pub window: Duration,
}

/// Pending trigger times and the recent samples.
#[derive(Debug, Default)]
pub struct ProgrammingLatency {
    pending: Vec<SystemTime>,
    /// (when programmed, latency), oldest first.
    recent: VecDeque<(Instant, Duration)>,
}

impl ProgrammingLatency {
    /// Changes that happened at `times` are waiting to be programmed.
    pub fn changed(&mut self, times: impl IntoIterator<Item = SystemTime>) {
        self.pending.extend(times);
    }

    /// Everything pending is in the kernel now: observes each latency into
    /// `histogram` and the recent samples. Returns the summary when anything was
    /// observed.
    pub fn programmed(&mut self, histogram: &Histogram) -> Option<LatencySummary> {
        if self.pending.is_empty() {
            return None;
        }
        let now = SystemTime::now();
        let at = Instant::now();
        // Taken, not drained: a first sync at 50k leaves 50k pending times, whose
        // capacity would stay for the agent's life; so would the samples' if they were
        // all pushed before trimming.
        for t in std::mem::take(&mut self.pending) {
            // A trigger time in the future (clock skew with the control plane) is 0.
            let latency = now.duration_since(t).unwrap_or_default();
            histogram.observe(latency.as_secs_f64());
            if self.recent.len() == MAX_SAMPLES {
                self.recent.pop_front();
            }
            self.recent.push_back((at, latency));
        }
        self.summary()
    }

    /// The summary of the samples of the last [`WINDOW`] (`None` without any).
    pub fn summary(&mut self) -> Option<LatencySummary> {
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| at.elapsed() > WINDOW)
        {
            self.recent.pop_front();
        }
        let mut sorted: Vec<Duration> = self.recent.iter().map(|(_, d)| *d).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        Some(LatencySummary {
            p50: nearest_rank(&sorted, 0.50),
            p99: nearest_rank(&sorted, 0.99),
            samples: sorted.len(),
            window: WINDOW,
        })
    }
}

/// The nearest-rank percentile `p` (0..=1) of `sorted` (not empty).
fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(nearest_rank(&sorted, 0.5), Duration::from_millis(50));
        assert_eq!(nearest_rank(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(nearest_rank(&ms(&[7]), 0.99), Duration::from_millis(7));
        assert_eq!(nearest_rank(&ms(&[1, 2]), 0.5), Duration::from_millis(1));
    }

    #[test]
    fn pending_changes_are_observed_once_programmed() {
        let h = Histogram::new([0.1, 1.0, 10.0]);
        let mut l = ProgrammingLatency::default();
        assert_eq!(l.programmed(&h), None, "nothing pending");
        let now = SystemTime::now();
        l.changed([
            now - Duration::from_secs(2),
            now - Duration::from_millis(50),
        ]);
        let s = l.programmed(&h).unwrap();
        assert_eq!(s.samples, 2);
        assert!(s.p50 >= Duration::from_millis(50) && s.p50 < Duration::from_secs(1));
        assert!(s.p99 >= Duration::from_secs(2));
        // A future trigger time (skewed clocks) counts as 0.
        l.changed([now + Duration::from_secs(60)]);
        let s = l.programmed(&h).unwrap();
        assert_eq!(s.samples, 3);
        assert!(s.p50 < Duration::from_secs(1), "0, 50 ms, 2 s: {s:?}");
        assert_eq!(l.programmed(&h), None, "observed once");
        for _ in 0..2 * MAX_SAMPLES {
            l.changed([SystemTime::now()]);
            l.programmed(&h);
        }
        assert_eq!(l.summary().unwrap().samples, MAX_SAMPLES);
    }
}
