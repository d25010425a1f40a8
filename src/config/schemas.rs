//! `[[sharded_schemas]]`: schema-based sharding. Each listed schema (a tenant) lives whole on
//! one shard. The config's `shard` is only the initial placement: a proxy adds a tenant the
//! catalog's shard map does not list yet with it, and from then on the map (versioned like the
//! key ranges) is authoritative, so a `move-schema` job moves a tenant without a restart. Key
//! rebalancing never moves a tenant's tables.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// One tenant schema and the shard that holds all of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedSchemaConfig {
    /// The schema's name as the catalog spells it (unquoted names are lowercase).
    pub name: String,
    /// The `[[shards]]` id holding the schema at first (the catalog's map places it afterwards).
    pub shard: u32,
}

/// `[tenants]`: a schema created through pgshard whose name starts with `schema_prefix` is a new
/// tenant. Before its `CREATE SCHEMA` runs, pgshard publishes a map version placing it on the
/// shard with the fewest tenants (ties: the lowest id), and the statement runs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsConfig {
    /// Lowercase, as the catalog spells unquoted names; not `pg_`.
    pub schema_prefix: String,
}

impl TenantsConfig {
    /// Whether `schema` is a tenant's name by this rule.
    pub fn matches(&self, schema: &str) -> bool {
        schema.to_lowercase().starts_with(&self.schema_prefix)
    }
}

/// Checks `[[sharded_schemas]]`: names given once, not `public` nor a system schema, not the
/// schema of a sharded or reference table (those live on every shard), shards that exist.
pub fn validate(config: &Config, path: &std::path::Path) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let table_schemas: HashSet<String> = config
        .sharded_tables
        .iter()
        .map(|t| t.name.as_str())
        .chain(config.reference_tables.iter().map(String::as_str))
        .map(|n| crate::router::names::split_config_name(n).0)
        .collect();
    if let Some(t) = &config.tenants {
        let prefix = &t.schema_prefix;
        if prefix.is_empty() || prefix.starts_with("pg_") || *prefix != prefix.to_lowercase() {
            return Err(invalid(
                "tenants.schema_prefix",
                format!(
                    "`{prefix}` must be a non-empty lowercase prefix that does not start with pg_"
                ),
            ));
        }
        if let Some(s) = table_schemas.iter().find(|s| t.matches(s)) {
            return Err(invalid(
                "tenants.schema_prefix",
                format!("schema `{s}` of a sharded or reference table would be a tenant"),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (i, s) in config.sharded_schemas.iter().enumerate() {
        let key = format!("sharded_schemas[{i}]");
        let name = s.name.to_lowercase();
        if name.is_empty() {
            return Err(invalid(&format!("{key}.name"), "must not be empty".into()));
        }
        if name == crate::router::names::PUBLIC
            || name == "information_schema"
            || name.starts_with("pg_")
        {
            return Err(invalid(
                &format!("{key}.name"),
                format!("schema `{}` cannot be placed on one shard", s.name),
            ));
        }
        if table_schemas.contains(&name) {
            return Err(invalid(
                &format!("{key}.name"),
                format!(
                    "schema `{}` holds sharded or reference tables, which live on every shard",
                    s.name
                ),
            ));
        }
        if !seen.insert(name) {
            return Err(invalid(
                &format!("{key}.name"),
                format!("schema `{}` is listed twice", s.name),
            ));
        }
        if config.shard(s.shard).is_none() {
            return Err(invalid(
                &format!("{key}.shard"),
                format!("no [[shards]] entry has id {}", s.shard),
            ));
        }
    }
    Ok(())
}
