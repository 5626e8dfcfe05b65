//! `NftablesEngine`: the `ProxyEngine` for nftables. Each sync is one atomic
//! transaction: a full sync replaces every table (`nft -f -`), a partial one rewrites
//! only the changed service ports (one nf_tables netlink batch). Any failure makes the
//! next sync a full one.

use std::time::Instant;

use async_trait::async_trait;
use switchyard_model::{
    kernel_has_ipv6, ChangeSet, Drift, EngineError, Mode, NodeModel, Owner, ProxyEngine, SyncReport,
};

use crate::{
    apply,
    netlink::{NftSocket, MAX_BATCH_BYTES},
    record::Applied,
    render::{render_full_pieces, render_partial, Partial},
    ruleset::{Family, TableNames, TABLE},
    verify,
};

/// How the engine runs `nft`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftOptions {
    /// Run `nft` inside this network namespace (`ip netns exec NAME nft`).
    pub netns: Option<String>,
    /// The `nft` binary.
    pub nft_path: String,
    /// Whether partial syncs write nf_tables netlink batches themselves, and `verify`
    /// reads netlink dumps (else both run `nft`, like full syncs).
    pub netlink_partials: bool,
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
            netlink_partials: true,
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
    /// The nf_tables netlink socket partial syncs write through (opened on first use,
    /// dropped after an error).
    socket: Option<NftSocket>,
}

impl NftablesEngine {
    pub fn new(options: NftOptions) -> NftablesEngine {
        NftablesEngine {
            options,
            applied: None,
            verify_cursor: 0,
            socket: None,
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
    /// Applies a partial transaction: as one nf_tables netlink batch when it fits a
    /// datagram, else with `nft -f -`. Returns which way it went.
    async fn apply_partial(&mut self, partial: &Partial) -> Result<&'static str, EngineError> {
        if self.options.netlink_partials {
            let tables = self.options.tables.clone();
            let socket = self.socket()?;
            let mut batch = socket.batch();
            partial.encode(&mut batch, &tables);
            if batch.bytes() <= MAX_BATCH_BYTES {
                let result = socket.commit(batch);
                if result.is_err() {
                    self.socket = None;
                }
                return result.map(|()| "netlink").map_err(EngineError::from);
            }
        }
        apply::transaction(&self.options, &partial.text(&self.options.tables)).await?;
        Ok("nft")
    }

    /// The netlink socket, opened on first use.
    fn socket(&mut self) -> Result<&mut NftSocket, EngineError> {
        if self.socket.is_none() {
            self.socket = Some(NftSocket::open(self.options.netns.as_deref())?);
        }
        Ok(self.socket.as_mut().expect("opened above"))
    }

    async fn full_sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError> {
        let (pieces, applied) = render_full_pieces(model, &self.options.tables, self.options.ipv6);
        // Forget the record first: if applying fails, the next sync is full.
        self.applied = None;
        let start = Instant::now();
        let text: Vec<&str> = pieces.iter().map(String::as_str).collect();
        apply::transaction_pieces(&self.options, &text).await?;
        let apply_time = start.elapsed();
        let rules = applied.rule_count();
        self.applied = Some(applied);
        let bytes: usize = pieces.iter().map(String::len).sum();
        tracing::debug!(bytes, ?apply_time, "nftables full sync");
        Ok(SyncReport {
            full: true,
            service_ports_written: model.services.len(),
            service_ports_removed: changes.removed.len(),
            rules,
            apply_time,
            ..SyncReport::default()
        })
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
        if self.options.netlink_partials {
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
            return self.full_sync(model, changes).await;
        }
        let mut applied = self.applied.take().expect("checked above");
        let partial = render_partial(model, changes, &applied);
        let start = Instant::now();
        let mut via = "nothing to do";
        if !partial.is_empty() {
            // On error `self.applied` stays `None`: the next sync is full.
            via = self.apply_partial(&partial).await?;
        }
        let apply_time = start.elapsed();
        tracing::debug!(?apply_time, via, "nftables partial sync");
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
        match &self.applied {
            None => Ok(Drift::Found(
                "no successful sync since start, failure or cleanup".to_string(),
            )),
            Some(applied) if self.options.netlink_partials => {
                if self.socket.is_none() {
                    self.socket = Some(NftSocket::open(self.options.netns.as_deref())?);
                }
                let socket = self.socket.as_mut().expect("opened above");
                let tables = &self.options.tables;
                let result =
                    verify::verify_netlink(socket, tables, applied, &mut self.verify_cursor);
                if result.is_err() {
                    self.socket = None;
                }
                result
            }
            Some(applied) => {
                let tables = &self.options.tables;
                verify::verify(&self.options, tables, applied, &mut self.verify_cursor).await
            }
        }
    }

    async fn cleanup(&mut self) -> Result<(), EngineError> {
        self.applied = None;
        self.socket = None;
        let mut text = String::new();
        for &family in Family::programmed(self.options.ipv6) {
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
