//! `NftablesEngine`: the `ProxyEngine` for nftables. Each sync is one atomic nf_tables
//! netlink batch: a full sync deletes and re-creates every table, a partial one
//! rewrites only the changed service ports. Any failure makes the next sync a full one.
//! A new process whose kernel already holds the engine's tables adopts them instead of
//! rewriting them (`adopt`: it compares digests and repairs what differs). With
//! `netlink: false` every transaction goes through `nft -f` and `verify` lists with
//! `nft` (a debugging option: the text is what `nft list` shows).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchyard_model::{
    kernel_has_ipv6, ChangeSet, Drift, EngineError, Mode, NodeModel, Owner, PortInspection,
    ProxyEngine, ServicePortName, SyncReport,
};

use crate::{
    adopt, apply,
    full::{render_full_batch, render_full_pieces},
    netlink::NftSocket,
    partial::{render_partial, Partial},
    record::Applied,
    ruleset::{Family, TableNames, TABLE},
    verify,
};

/// How long a commit may keep the kernel busy: a full sync at 50k services takes
/// seconds; more than this means something is wrong.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Reliability tests only, never set in production: while the file this variable names
/// exists, the engine refuses every transaction as a kernel refusing it would (`EPERM`,
/// nothing sent), so a test can check that refused syncs keep the rules in place.
pub const REFUSE_ENV: &str = "SWITCHYARD_FAULT_NFT_REFUSE";

/// How the engine talks to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftOptions {
    /// Program the kernel in this network namespace (a name under `/run/netns`; `nft`
    /// runs as `ip netns exec NAME nft`).
    pub netns: Option<String>,
    /// The `nft` binary (used only with `netlink: false`).
    pub nft_path: String,
    /// Whether transactions are nf_tables netlink batches written by the engine and
    /// `verify` reads netlink dumps (the default); else both run `nft`.
    pub netlink: bool,
    /// Whether a new process adopts the tables a previous one left (netlink only).
    pub adopt: bool,
    /// Whether to program the `ip6` tables: false on a kernel without IPv6 (booted with
    /// `ipv6.disable=1`), where the IPv6 nat hooks cannot be created and would fail the
    /// whole transaction. Default: what [`kernel_has_ipv6`] finds.
    pub ipv6: bool,
    /// What the engine owns: its tables, `PREFIX` and `PREFIX-0` ... (default
    /// `switchyard`). Engines with different prefixes never touch each other's tables.
    pub tables: TableNames,
}

impl Default for NftOptions {
    fn default() -> Self {
        NftOptions {
            netns: None,
            nft_path: "nft".to_string(),
            netlink: true,
            adopt: true,
            ipv6: kernel_has_ipv6(),
            tables: TableNames::default(),
        }
    }
}

/// The nftables dataplane engine.
#[derive(Debug)]
pub struct NftablesEngine {
    options: NftOptions,
    /// What the kernel holds, as far as the engine knows; `None` before the first
    /// successful sync and after a failure or cleanup (so the next sync is full).
    applied: Option<Applied>,
    /// Rotates the chains `verify` samples on large tables.
    verify_cursor: usize,
    /// The nf_tables netlink socket transactions go through (opened on first use,
    /// dropped after an error).
    socket: Option<NftSocket>,
    /// No sync was attempted yet by this engine: the first one may adopt.
    fresh: bool,
    /// See [`REFUSE_ENV`].
    refuse_flag: Option<std::path::PathBuf>,
}

impl NftablesEngine {
    pub fn new(options: NftOptions) -> NftablesEngine {
        NftablesEngine {
            options,
            applied: None,
            verify_cursor: 0,
            socket: None,
            fresh: true,
            refuse_flag: std::env::var_os(REFUSE_ENV).map(Into::into),
        }
    }

    pub fn options(&self) -> &NftOptions {
        &self.options
    }

    /// Whether the next sync will rewrite everything whatever it is asked.
    pub fn next_sync_is_full(&self) -> bool {
        self.applied.is_none()
    }
}

impl NftablesEngine {
    /// Applies a partial transaction: one nf_tables netlink batch (or `nft -f`).
    async fn apply_partial(&mut self, partial: &Partial) -> Result<(), EngineError> {
        if !self.options.netlink {
            return apply::transaction(&self.options, &partial.text(&self.options.tables)).await;
        }
        let tables = self.options.tables.clone();
        let socket = self.socket()?;
        let mut batch = socket.batch();
        partial.encode(&mut batch, &tables);
        self.commit(batch)
    }

    /// Commits a batch; drops the socket after an error.
    fn commit(&mut self, batch: crate::netlink::Batch) -> Result<(), EngineError> {
        if let Some(flag) = &self.refuse_flag {
            if flag.exists() {
                return Err(EngineError::errno(
                    format!(
                        "nf_tables netlink batch refused ({REFUSE_ENV} = {})",
                        flag.display()
                    ),
                    1,
                ));
            }
        }
        let result = self.socket()?.commit(batch);
        if result.is_err() {
            self.socket = None;
        }
        result.map_err(EngineError::from)
    }

    /// The netlink socket, opened on first use.
    fn socket(&mut self) -> Result<&mut NftSocket, EngineError> {
        if self.socket.is_none() {
            let mut socket = NftSocket::open(self.options.netns.as_deref())?;
            socket.set_timeout(COMMIT_TIMEOUT)?;
            self.socket = Some(socket);
        }
        Ok(self.socket.as_mut().expect("opened above"))
    }

    async fn full_sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        // Forget the record first: if applying fails, the next sync is full.
        self.applied = None;
        let start = Instant::now();
        let (applied, render_time) = if self.options.netlink {
            let tables = self.options.tables.clone();
            let empty = self.socket()?.batch();
            let (batch, applied) = render_full_batch(model, &tables, self.options.ipv6, empty);
            let render_time = start.elapsed();
            let (bytes, messages) = (batch.bytes(), batch.len());
            self.commit(batch)?;
            tracing::debug!(bytes, messages, ?render_time, "nftables full sync encoded");
            (applied, render_time)
        } else {
            let (pieces, applied) =
                render_full_pieces(model, &self.options.tables, self.options.ipv6);
            let render_time = start.elapsed();
            let text: Vec<&str> = pieces.iter().map(String::as_str).collect();
            apply::transaction_pieces(&self.options, &text).await?;
            (applied, render_time)
        };
        let apply_time = start.elapsed();
        tracing::debug!(?render_time, ?apply_time, "nftables full sync");
        let rules = applied.rule_count();
        self.applied = Some(applied);
        Ok(SyncReport {
            full: true,
            service_ports_written: model.services.len(),
            service_ports_removed: changes.removed.len(),
            rules,
            apply_time,
            ..SyncReport::default()
        })
    }

    /// Adopts the tables a previous process left when their digests say they hold what
    /// this model needs, repairing what differs; `None` when there is nothing to adopt
    /// (no tables, another layout, other node-wide settings).
    fn adopt(&mut self, model: &NodeModel) -> Result<Option<SyncReport>, EngineError> {
        let start = Instant::now();
        let tables = self.options.tables.clone();
        let ipv6 = self.options.ipv6;
        let socket = self.socket()?;
        let Some(adoption) = adopt::plan(socket, &tables, model, ipv6)? else {
            return Ok(None);
        };
        let read_time = start.elapsed();
        let rewritten = adoption.dirty_ports;
        if !adoption.repair.is_empty() {
            let mut batch = self.socket()?.batch();
            adoption.repair.encode(&mut batch, &tables);
            self.commit(batch)?;
        }
        let applied = adoption.applied;
        let apply_time = start.elapsed();
        tracing::info!(
            ?read_time,
            ?apply_time,
            rewritten,
            "nftables: adopted the tables of a previous process"
        );
        let rules = applied.rule_count();
        self.applied = Some(applied);
        Ok(Some(SyncReport {
            full: true,
            service_ports_written: rewritten,
            rules,
            apply_time,
            ..SyncReport::default()
        }))
    }
}

#[async_trait]
impl ProxyEngine for NftablesEngine {
    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    fn owner(&self) -> Owner {
        match self.options.tables.name(0) {
            TABLE => "nftables".to_string(),
            other => format!("nftables ({other})"),
        }
    }

    async fn prepare(&mut self) -> Result<(), EngineError> {
        if self.options.netlink {
            self.socket()?;
        }
        Ok(())
    }

    async fn sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        if changes.full || self.applied.is_none() {
            let fresh = std::mem::replace(&mut self.fresh, false);
            if fresh && self.options.netlink && self.options.adopt {
                match self.adopt(model) {
                    Ok(Some(report)) => return Ok(report),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "nftables: adoption failed, writing every table")
                    }
                }
            }
            return self.full_sync(model, changes).await;
        }
        self.fresh = false;
        let mut applied = self.applied.take().expect("checked above");
        let partial = render_partial(model, changes, &applied);
        let start = Instant::now();
        if !partial.is_empty() {
            // On error `self.applied` stays `None`: the next sync is full.
            self.apply_partial(&partial).await?;
        }
        let apply_time = start.elapsed();
        tracing::debug!(?apply_time, "nftables partial sync");
        partial.commit(&mut applied);
        let rules = applied.rule_count();
        self.applied = Some(applied);
        Ok(SyncReport {
            full: false,
            service_ports_written: changes.added.len() + changes.changed.len(),
            service_ports_removed: changes.removed.len(),
            rules,
            apply_time,
            ..SyncReport::default()
        })
    }

    async fn verify(&mut self, _model: &NodeModel) -> Result<Drift, EngineError> {
        if self.applied.is_none() {
            return Ok(Drift::Found(
                "no successful sync since start, failure or cleanup".to_string(),
            ));
        }
        let applied = self.applied.as_ref().expect("checked above");
        if !self.options.netlink {
            let tables = &self.options.tables;
            return verify::verify(&self.options, tables, applied, &mut self.verify_cursor).await;
        }
        if self.socket.is_none() {
            let mut socket = NftSocket::open(self.options.netns.as_deref())?;
            socket.set_timeout(COMMIT_TIMEOUT)?;
            self.socket = Some(socket);
        }
        let socket = self.socket.as_mut().expect("opened above");
        let tables = &self.options.tables;
        let result = verify::verify_netlink(socket, tables, applied, &mut self.verify_cursor);
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    async fn inspect(
        &mut self,
        model: &NodeModel,
        port: &ServicePortName,
    ) -> Result<PortInspection, EngineError> {
        // Read through netlink whatever `netlink` says: lookups by key, no listing.
        let mut socket = NftSocket::open(self.options.netns.as_deref())?;
        let mut out = PortInspection::new(self.owner());
        let families = Family::programmed(self.options.ipv6);
        crate::inspect::inspect(
            &mut socket,
            &self.options.tables,
            families,
            model,
            self.applied.as_ref(),
            port,
            &mut out,
        )?;
        Ok(out)
    }

    async fn cleanup(&mut self) -> Result<(), EngineError> {
        self.applied = None;
        self.fresh = false;
        let families = Family::programmed(self.options.ipv6);
        if self.options.netlink {
            let tables = self.options.tables.clone();
            let mut batch = self.socket()?.batch();
            for &family in families {
                for table in tables.iter() {
                    // Created if missing, so the delete never fails.
                    batch.add_table(family, table);
                    batch.delete_table(family, table);
                }
            }
            let result = self.commit(batch);
            self.socket = None;
            return result;
        }
        self.socket = None;
        let mut text = String::new();
        for &family in families {
            let fam = family.nft();
            for table in self.options.tables.iter() {
                text.push_str(&format!(
                    "add table {fam} {table}\ndelete table {fam} {table}\n"
                ));
            }
        }
        apply::transaction(&self.options, &text).await
    }
}
