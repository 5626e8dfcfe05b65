//! Engines taken out of service that still drain: after a live switch (or, at start,
//! a previous mode's leftovers) the runner retires the old engine
//! ([`ProxyEngine::retire`]). Most engines are gone at once. One whose in-flight
//! connections are translated by its own state (IPVS) keeps that state until those
//! connections end; this list asks it again every [`RETIRE_CHECK`] and, once
//! [`RETIRE_BOUND`] has passed, removes it with `cleanup` (the connections still open
//! then end, as they would at once under upstream kube-proxy's mode change).
//!
//! A draining engine never takes new connections: the serving engine's rules run ahead
//! of it (netfilter DNAT at prerouting and output, eBPF at connect time and at tc
//! ingress, while IPVS sees packets only at local-in).

use std::time::Duration;

use switchyard_model::{EngineError, Owner, ProxyEngine, Retirement};
use tokio::time::Instant;

/// How long a retired engine may keep state for connections in flight.
pub const RETIRE_BOUND: Duration = Duration::from_secs(300);

/// How often a draining engine is asked whether its connections ended.
pub const RETIRE_CHECK: Duration = Duration::from_secs(1);

struct Draining {
    engine: Box<dyn ProxyEngine>,
    since: Instant,
}

/// The retired engines that still drain.
#[derive(Default)]
pub struct RetiringEngines {
    draining: Vec<Draining>,
}

impl RetiringEngines {
    /// Whether nothing drains.
    pub fn is_empty(&self) -> bool {
        self.draining.is_empty()
    }

    /// Retires `engine`: gone at once, or kept draining. On error nothing is kept (the
    /// caller reports it: the state may linger until `switchyard cleanup`).
    pub async fn retire(
        &mut self,
        mut engine: Box<dyn ProxyEngine>,
    ) -> Result<Retirement, EngineError> {
        let retirement = engine.retire().await?;
        match retirement {
            Retirement::Done => {}
            Retirement::Draining { connections } => {
                tracing::info!(
                    owner = %engine.owner(),
                    connections,
                    bound_s = RETIRE_BOUND.as_secs(),
                    "the previous engine keeps the state of connections in flight until they end"
                );
                self.adopt(&engine.owner());
                self.draining.push(Draining {
                    engine,
                    since: Instant::now(),
                });
            }
        }
        Ok(retirement)
    }

    /// Forgets a draining engine of `owner` without touching the kernel: an engine of
    /// the same owner now serves and has taken that state over.
    pub fn adopt(&mut self, owner: &Owner) {
        self.draining.retain(|d| d.engine.owner() != *owner);
    }

    /// Asks every draining engine again; removes those whose bound has passed.
    pub async fn check(&mut self) {
        let mut still = Vec::with_capacity(self.draining.len());
        for mut d in std::mem::take(&mut self.draining) {
            let owner = d.engine.owner();
            let over = d.since.elapsed() >= RETIRE_BOUND;
            match d.engine.retire().await {
                Ok(Retirement::Done) => {
                    tracing::info!(%owner, "the previous engine's last connections ended; its state is gone")
                }
                Ok(Retirement::Draining { .. }) | Err(_) if !over => still.push(d),
                Ok(Retirement::Draining { connections }) => {
                    tracing::warn!(%owner, connections, bound_s = RETIRE_BOUND.as_secs(), "the previous engine still carries connections after its drain bound; removing it ends them");
                    if let Err(e) = d.engine.cleanup().await {
                        tracing::warn!(%owner, error = %e, "removing the previous engine failed; its state may linger until `switchyard cleanup`");
                    }
                }
                Err(e) => {
                    tracing::warn!(%owner, error = %e, "retiring the previous engine failed until its drain bound; its state may linger until `switchyard cleanup`")
                }
            }
        }
        self.draining = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::{Arc, Mutex};
    use switchyard_model::{
        ChangeSet, Drift, Mode, NodeModel, PortInspection, ServicePortName, SyncReport,
    };

    /// Drains for `rounds` calls of `retire`, then is done; records cleanups.
    struct Slow {
        rounds: u32,
        cleanups: Arc<Mutex<u32>>,
    }

    #[async_trait]
    impl ProxyEngine for Slow {
        fn mode(&self) -> Mode {
            Mode::Ipvs
        }
        async fn sync(&mut self, _: &NodeModel, _: &ChangeSet) -> Result<SyncReport, EngineError> {
            unreachable!()
        }
        async fn verify(&mut self, _: &NodeModel) -> Result<Drift, EngineError> {
            unreachable!()
        }
        async fn cleanup(&mut self) -> Result<(), EngineError> {
            *self.cleanups.lock().unwrap() += 1;
            Ok(())
        }
        async fn retire(&mut self) -> Result<Retirement, EngineError> {
            if self.rounds == 0 {
                return Ok(Retirement::Done);
            }
            self.rounds -= 1;
            Ok(Retirement::Draining { connections: 1 })
        }
        async fn inspect(
            &mut self,
            _: &NodeModel,
            _: &ServicePortName,
        ) -> Result<PortInspection, EngineError> {
            unreachable!()
        }
    }

    fn slow(rounds: u32) -> (Box<dyn ProxyEngine>, Arc<Mutex<u32>>) {
        let cleanups = Arc::new(Mutex::new(0));
        let engine = Slow {
            rounds,
            cleanups: cleanups.clone(),
        };
        (Box::new(engine), cleanups)
    }

    #[tokio::test(start_paused = true)]
    async fn drains_until_done_without_cleanup() {
        let mut list = RetiringEngines::default();
        let (engine, cleanups) = slow(2);
        list.retire(engine).await.unwrap();
        assert!(!list.is_empty());
        list.check().await;
        assert!(!list.is_empty(), "still one connection");
        list.check().await;
        assert!(list.is_empty(), "done");
        assert_eq!(*cleanups.lock().unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_by_cleanup_once_the_bound_has_passed() {
        let mut list = RetiringEngines::default();
        let (engine, cleanups) = slow(u32::MAX);
        list.retire(engine).await.unwrap();
        tokio::time::advance(RETIRE_BOUND - Duration::from_secs(1)).await;
        list.check().await;
        assert!(!list.is_empty());
        assert_eq!(*cleanups.lock().unwrap(), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        list.check().await;
        assert!(list.is_empty());
        assert_eq!(*cleanups.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_of_the_same_owner_takes_the_state_over() {
        let mut list = RetiringEngines::default();
        let (engine, cleanups) = slow(u32::MAX);
        list.retire(engine).await.unwrap();
        list.adopt(&"ipvs".to_string());
        assert!(list.is_empty());
        tokio::time::advance(RETIRE_BOUND).await;
        list.check().await;
        assert_eq!(
            *cleanups.lock().unwrap(),
            0,
            "the new engine's state untouched"
        );
    }
}
