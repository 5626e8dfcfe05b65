//! The nftables dataplane engine: a main table and [`ruleset::SHARDS`] shard tables per
//! family (`switchyard`, `switchyard-0` ...; the prefix is the engine's ownership
//! parameter), laid out after upstream kube-proxy's nftables proxier (verdict maps for
//! service IPs and NodePorts, one chain per set of backends), with no per-endpoint
//! chains. Full syncs are one atomic `nft -f -` transaction (several pieces of text fed
//! to one process); partial syncs are one atomic nf_tables netlink batch written by this
//! crate (no `nft` process, no cache dump).
//!
//! This crate owns those tables and nothing else on the node; it never reads the
//! Kubernetes API and decides no Service semantics: it encodes the model's plans
//! (`switchyard_model::plan`).
//!
//! - [`ruleset`]: table, chain, map and set names; per-service-port chain names.
//! - [`element`]: map and set elements as data (keys, verdicts, the table of each).
//! - [`rule`]: per-service-port rules as data, written as nft text or netlink bytecode.
//! - [`port`]: one service port's plan encoded as chains, sets and elements.
//! - [`fixed`]: the fixed chains and sets of every table (node-wide settings only).
//! - [`render`]: transactions, full (nft text) and partial (a netlink batch, or text).
//! - [`record`]: what the engine applied, per family and service port.
//! - [`apply`]: running `nft` (optionally inside a network namespace).
//! - [`netlink`]: the nf_tables netlink batch encoding and socket.
//! - [`verify`]: comparing the kernel's tables with the record (drift); [`inspect`]:
//!   one service port read back and compared with its plan (`switchyard explain`).
//! - [`engine`]: `NftablesEngine`, the `ProxyEngine` implementation.
//!
//! # Layout (per family)
//!
//! The main table: base chains `filter-prerouting-pre-dnat` and `filter-output-pre-dnat`
//! (priority -110, before DNAT: the firewall must see the LB IP), `filter-input`,
//! `filter-forward`, `filter-output` (priority 0, after DNAT: the no-endpoint and
//! cluster-IP checks must not catch traffic a nat chain already sent to an endpoint —
//! upstream kubernetes#132456), `nat-prerouting|output` (-101, jump `services`),
//! `nat-postrouting` (100: hairpin check, then jump `masquerading`). Top-level chains:
//! `services` (one masquerade-marking rule for cluster IP traffic from outside the
//! cluster CIDRs, `ip daddr @cluster-ips ip saddr != @cluster-cidrs`), `masquerading`,
//! `mark-for-masquerade` (mark 0x4000), `reject-chain` (TCP reset, else ICMP),
//! `service-endpoints-check` and `nodeport-endpoints-check` (`no-endpoint-services` /
//! `no-endpoint-nodeports`), `firewall-check` (`firewall-ips`), `cluster-ips-check`
//! (`cluster-ips`). Sets `nodeport-ips` and `cluster-cidrs` (intervals), `hairpin`
//! (`endpoint . endpoint` address pairs: `ct status dnat ip saddr . ip daddr @hairpin
//! jump mark-for-masquerade` in `nat-postrouting`). Per service port with
//! LoadBalancerSourceRanges (rare): `fw-H`.
//!
//! Shard tables `switchyard-0` ... `switchyard-15`, each holding the service ports whose
//! name hashes to it: base chains `nat-prerouting|output` (-100, jump `services`: the
//! `service-ips` verdict map) and `nat-prerouting|output-nodeports` (-99, jump
//! `nodeports`: the `service-nodeports` map), so every shard's service IPs are looked up
//! before any shard's NodePorts (upstream's precedence); copies of
//! `mark-for-masquerade`, `nodeport-ips` and `cluster-cidrs`; backend maps
//! `backends-0` ... `backends-63` (`numgen key : addr . port`, those in use), and per
//! service port: `svc-H` / `local-H` (endpoint choice and DNAT in one rule: `meta
//! l4proto P dnat to numgen random mod N offset O map @backends-C`, the chain's
//! endpoints being keys `O .. O + N`; see `port`), `ext-H`; `H` is a hash of the
//! service port name, so names are stable and safe, and its first byte picks the shard. A key claimed by
//! several service ports lives in the shard of its first claimant (the one whose chain
//! it points to). The kernel's nat hook runs nat chains in priority order until one
//! maps the connection: the main table's masquerade mark first (it needs the original
//! destination), then the shards, of which at most one holds the key; after a DNAT no
//! further nat chain runs.
//!
//! Why shards: after a batch adding rules or verdict-map elements the kernel re-validates
//! the tables it touched from every base chain (about 200 ms for one 50k-service table);
//! a one-endpoint partial sync now touches one shard table, a sixteenth of that.
//!
//! ClientIP affinity keeps one dynamic set per endpoint (`aff-E-T`) for the service
//! ports that ask for it (rare): `ip saddr @aff-E update @aff-E { ip saddr } ... dnat to
//! EP` before the random choice, a cascade of rules (`numgen random mod (N-i) == 0 ...
//! dnat to EP-i`) that also `update` the chosen endpoint's set (a sliding timeout, as
//! upstream). The kernel finds sets by name in a list, so
//! per-endpoint sets exist only for service ports with affinity (rare). One global
//! dynamic map `port-id . client : endpoint` updated from the packet path would avoid
//! them; it was not tried.
//!
//! # Kernel and tool requirements
//!
//! nft >= 1.0 (hook priorities are written numerically, as 1.0.6 only names `dstnat`
//! for prerouting), a kernel with nf_tables, `fib`, `numgen`, NAT, concatenated set keys
//! and dynamic sets (>= 5.x). Removing a map element and deleting the chain it pointed
//! to in the same transaction needs kernel >= 6.2 (older kernels refuse it; the sync then
//! fails and the next one is full).
//!
//! # Cost
//!
//! nft 1.0.6 dumps every chain of the host before any `add rule` / `add element` (about
//! 240 ms at 60k chains), so partial syncs bypass it with netlink batches and cost time
//! in the size of the change. The kernel's chain and rule dumps restart their walk for
//! each message, so a full listing of a large table is slow; see `verify` for how drift
//! checks stay cheap.

pub mod adopt;
pub mod apply;
pub mod digest;
pub mod element;
pub mod engine;
pub mod fixed;
pub mod full;
pub mod inspect;
pub mod netlink;
pub mod partial;
pub mod port;
pub mod record;
pub mod rule;
pub mod ruleset;
pub mod verify;

pub use engine::{NftOptions, NftablesEngine};
pub use full::render_full;
pub use partial::{render_partial, Partial};
