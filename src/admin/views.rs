//! The SHOW commands: each builds one result set from the proxy's shared state.

use std::collections::BTreeMap;

use super::clients::format_utc;
use super::command::View;
use super::result_set::{Cell, ColumnType as T, ResultSet};
use crate::backend::topology::Role;
use crate::config::{mask_url, Config, MASK};
use crate::proxy::Proxy;

/// The result set of `SHOW <view>`.
pub fn show(proxy: &Proxy, view: View) -> ResultSet {
    match view {
        View::Shards => shards(proxy),
        View::Servers => servers(proxy),
        View::Pools => pools(proxy),
        View::Clients => clients(proxy),
        View::Stats => stats(proxy),
        View::ShardMap => shard_map(proxy),
        View::Schemas => schemas(proxy),
        View::Config => config(&proxy.config),
        View::Compat => compat(proxy),
        View::Version => {
            let mut rs = ResultSet::new(&[("version", T::Text)]);
            rs.row(vec![format!("pgshard {}", env!("CARGO_PKG_VERSION")).into()]);
            rs
        }
    }
}

/// `SHOW COMPAT`: one row per normalized statement, most frequent first.
fn compat(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("fingerprint", T::Text),
        ("statement", T::Text),
        ("route", T::Text),
        ("count", T::Int8),
        ("single", T::Int8),
        ("multi", T::Int8),
        ("refused", T::Int8),
        ("refusal", T::Text),
        ("suggestion", T::Text),
        ("last_seen", T::Timestamptz),
    ]);
    for e in proxy.compat.report() {
        let (refusal, suggestion) = match &e.verdict {
            crate::compat::Verdict::Refused {
                message,
                suggestion,
            } => (
                Cell::from(message.as_str()),
                suggestion.map_or(Cell::Null, Cell::from),
            ),
            _ => (Cell::Null, Cell::Null),
        };
        rs.row(vec![
            e.fingerprint.into(),
            e.statement.into(),
            e.verdict.label().into(),
            e.count.into(),
            e.single.into(),
            e.multi.into(),
            e.refused.into(),
            refusal,
            suggestion,
            format_utc(e.last_seen).into(),
        ]);
    }
    rs
}

fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Unknown => "unknown",
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Fenced { .. } => "fenced",
    }
}

fn shards(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("shard_id", T::Int8),
        ("database", T::Text),
        ("primary", T::Text),
        ("primary_healthy", T::Bool),
        ("servers", T::Int8),
        ("healthy_replicas", T::Int8),
        ("map_ranges", T::Int8),
        ("topology_version", T::Int8),
    ]);
    let map = proxy.map.current();
    let topology = proxy.shards.current();
    for shard in &topology.shards {
        let servers = proxy.topology.servers_of(shard.id);
        let primary = proxy
            .topology
            .primary(shard.id)
            .and_then(|id| proxy.topology.server(id));
        let healthy_replicas = servers
            .iter()
            .filter(|s| s.role == Role::Replica && s.healthy)
            .count();
        let ranges = map.ranges.iter().filter(|r| r.shard == shard.id).count();
        rs.row(vec![
            shard.id.into(),
            shard.database.as_str().into(),
            primary.as_ref().map(|p| p.address.clone()).into(),
            primary.as_ref().map(|p| p.healthy).into(),
            servers.len().into(),
            healthy_replicas.into(),
            ranges.into(),
            topology.version.into(),
        ]);
    }
    rs
}

fn servers(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("shard_id", T::Int8),
        ("server", T::Int8),
        ("address", T::Text),
        ("role", T::Text),
        ("healthy", T::Bool),
        ("fenced", T::Bool),
        ("fenced_reason", T::Text),
        ("timeline", T::Int8),
        ("lsn", T::Text),
        ("lag_bytes", T::Int8),
        ("lag_ms", T::Int8),
        ("reads", T::Int8),
    ]);
    let reads: BTreeMap<_, _> = proxy
        .replica_metrics
        .snapshot(&proxy.topology)
        .reads
        .into_iter()
        .collect();
    for s in proxy.topology.all() {
        let reason = match &s.role {
            Role::Fenced { reason } => Some(reason.clone()),
            _ => None,
        };
        rs.row(vec![
            s.id.shard.into(),
            u32::from(s.id.index).into(),
            s.address.clone().into(),
            role_name(&s.role).into(),
            s.healthy.into(),
            reason.is_some().into(),
            reason.into(),
            s.timeline.into(),
            s.lsn.map(|l| l.to_string()).into(),
            s.lag_bytes.into(),
            s.lag_ms.into(),
            reads.get(&s.id).copied().into(),
        ]);
    }
    rs
}

fn pools(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("shard_id", T::Int8),
        ("server", T::Int8),
        ("address", T::Text),
        ("pool_mode", T::Text),
        ("max_size", T::Int8),
        ("connections", T::Int8),
        ("idle", T::Int8),
        ("in_use", T::Int8),
        ("waiting", T::Int8),
        ("server_role", T::Text),
        ("control", T::Bool),
        ("prepared", T::Int8),
    ]);
    let mode = match proxy.config.pool.mode {
        crate::config::PoolMode::Transaction => "transaction",
        crate::config::PoolMode::Session => "session",
    };
    for p in proxy.pools.pool_status() {
        let (id, status) = (p.server, p.status);
        let address = proxy.topology.server(id).map(|s| s.address);
        rs.row(vec![
            id.shard.into(),
            u32::from(id.index).into(),
            address.into(),
            mode.into(),
            status.max_size.into(),
            status.size.into(),
            status.available.into(),
            status.size.saturating_sub(status.available).into(),
            status.waiting.into(),
            p.role.into(),
            p.control.into(),
            p.prepared.into(),
        ]);
    }
    rs
}

fn clients(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("pid", T::Int8),
        ("user", T::Text),
        ("database", T::Text),
        ("address", T::Text),
        ("connected_at", T::Timestamptz),
        ("pinned", T::Text),
    ]);
    for c in proxy.admin.clients.list() {
        rs.row(vec![
            i64::from(c.pid).into(),
            c.user.into(),
            c.database.into(),
            c.address.map(|a| a.to_string()).into(),
            format_utc(c.connected_at).into(),
            c.pinned.into(),
        ]);
    }
    rs
}

fn stats(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", T::Text),
        ("uptime_seconds", T::Int8),
        ("total_clients", T::Int8),
        ("connected_clients", T::Int8),
        ("total_requests", T::Int8),
        ("requests_in_flight", T::Int8),
        ("paused", T::Bool),
        ("requests_waiting", T::Int8),
        ("replica_reads", T::Int8),
        ("lsn_waits", T::Int8),
        ("primary_fallbacks", T::Int8),
        ("failovers", T::Int8),
        ("fenced_servers", T::Int8),
        ("map_version", T::Int8),
        ("failover_holds_resumed", T::Int8),
        ("failover_holds_expired", T::Int8),
    ]);
    let gate = proxy.admin.gate.status();
    let held = &proxy.pools.buffered;
    let metrics = proxy.replica_metrics.snapshot(&proxy.topology);
    let replica_reads: u64 = metrics
        .reads
        .iter()
        .filter(|(id, _)| {
            proxy
                .topology
                .server(*id)
                .is_some_and(|s| s.role == Role::Replica)
        })
        .map(|(_, n)| n)
        .sum();
    rs.row(vec![
        proxy.config.proxy.database.as_str().into(),
        proxy.admin.started.elapsed().as_secs().into(),
        proxy.admin.clients.total().into(),
        proxy.admin.clients.list().len().into(),
        gate.requests_total.into(),
        gate.in_flight.into(),
        gate.paused.into(),
        gate.waiting.into(),
        replica_reads.into(),
        metrics.lsn_waits_total.into(),
        metrics.primary_fallbacks_total.into(),
        metrics.failovers_total.into(),
        metrics.fenced_servers.into(),
        proxy.map.current().version.into(),
        held.resumed
            .load(std::sync::atomic::Ordering::Relaxed)
            .into(),
        held.expired
            .load(std::sync::atomic::Ordering::Relaxed)
            .into(),
    ]);
    rs
}

fn shard_map(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("version", T::Int8),
        ("strategy", T::Text),
        ("modulus", T::Int8),
        ("range_lower", T::Int8),
        ("range_upper", T::Int8),
        ("shard_id", T::Int8),
        ("pin", T::Bool),
    ]);
    let map = proxy.map.current();
    let modulus = match map.strategy {
        crate::router::Strategy::Modulo { modulus } => Some(modulus),
        _ => None,
    };
    for r in &map.ranges {
        rs.row(vec![
            map.version.into(),
            map.strategy.name().into(),
            modulus.into(),
            r.lower.into(),
            r.upper.into(),
            r.shard.into(),
            // A single point (`REBALANCE move-key`): one key placed by hand.
            Cell::Bool(modulus.is_none() && crate::rebalance::plan::is_pin(r)),
        ]);
    }
    rs
}

/// Tenant schemas (schema-based sharding) and the shard holding each, as the current map places
/// them.
fn schemas(proxy: &Proxy) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("version", T::Int8),
        ("schema", T::Text),
        ("shard_id", T::Int8),
    ]);
    let map = proxy.map.current();
    for (schema, shard) in &map.tenants {
        rs.row(vec![
            map.version.into(),
            schema.clone().into(),
            (*shard).into(),
        ]);
    }
    rs
}

/// Every config key as `key`/`value` rows, secrets masked.
fn config(config: &Config) -> ResultSet {
    let mut rs = ResultSet::new(&[("key", T::Text), ("value", T::Text)]);
    let mut rows = Vec::new();
    if let Ok(value) = toml::Value::try_from(config) {
        flatten("", &value, &mut rows);
    }
    for (key, value) in rows {
        rs.row(vec![key.into(), value.into()]);
    }
    rs
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    let last = prefix.rsplit('.').next().unwrap_or(prefix);
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items) if items.iter().any(|v| v.is_table()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        _ if last == "password" || last.ends_with("_password") => {
            out.push((prefix.to_string(), MASK.to_string()))
        }
        toml::Value::String(s) if last == "url" => out.push((prefix.to_string(), mask_url(s))),
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn config_rows_mask_every_secret() {
        let text = include_str!("../../config/pgshard.toml");
        let c = Config::from_toml(text, Path::new("config/pgshard.toml")).unwrap();
        let rs = config(&c);
        let rows: BTreeMap<String, String> = rs
            .rows()
            .iter()
            .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
            .collect();
        assert_eq!(rows["proxy.database"], c.proxy.database);
        assert_eq!(rows["users[0].name"], c.users[0].name);
        assert_eq!(rows["users[0].password"], MASK);
        assert!(
            rows["catalog.url"].contains(MASK),
            "{}",
            rows["catalog.url"]
        );
        assert!(!rows["catalog.url"].contains(":pgshard@"));
        for (key, value) in &rows {
            if key.ends_with("password") {
                assert_eq!(value, MASK, "{key}");
            }
        }
    }
}
