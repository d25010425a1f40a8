//! `[[lookups]]`: a unique secondary column of a sharded table (`users.email`) whose values
//! pgshard maps to shard keys in a table of its own, so `WHERE email = …` reaches one shard
//! instead of all. The lookup table is itself a sharded table, keyed by the looked-up value, so
//! it is placed, rebalanced and verified like any other.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, ShardedTableConfig};
use crate::router::names::{quote_qualified, split_config_name, PUBLIC};

/// The lookup table's column holding the looked-up value (its shard key).
pub const VALUE_COLUMN: &str = "value";
/// The lookup table's column holding the base table's shard key.
pub const KEY_COLUMN: &str = "key";

/// One looked-up column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// A `[[sharded_tables]]` name, spelled as there.
    pub table: String,
    /// The column whose values are unique across the table (unquoted names are lowercased).
    pub column: String,
}

impl LookupConfig {
    /// The lookup table's configured name: `pgshard_lookup_<table>_<column>` in the table's
    /// schema (`billing.pgshard_lookup_invoices_email`).
    pub fn lookup_table(&self) -> String {
        let (schema, table) = split_config_name(&self.table);
        let name = format!("pgshard_lookup_{table}_{}", self.column.to_lowercase());
        if schema == PUBLIC {
            name
        } else {
            format!("{schema}.{name}")
        }
    }

    /// The lookup table quoted for SQL, whatever the search_path.
    pub fn lookup_table_sql(&self) -> String {
        crate::router::names::quote_config_name(&self.lookup_table())
    }

    /// How statement facts name the base table (see `ShardedTables::display_name`).
    pub fn display_table(&self) -> String {
        let (schema, table) = split_config_name(&self.table);
        if schema == PUBLIC {
            table
        } else {
            quote_qualified(&schema, &table)
        }
    }

    /// The looked-up column, lowercased as the catalog spells it.
    pub fn column_name(&self) -> String {
        self.column.to_lowercase()
    }
}

/// Checks `[[lookups]]`: each names a sharded table and a column other than its key, once.
pub fn validate(config: &Config, path: &std::path::Path) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    let mut seen = HashSet::new();
    for (i, l) in config.lookups.iter().enumerate() {
        let key = format!("lookups[{i}]");
        let Some(table) = config
            .sharded_tables
            .iter()
            .find(|t| split_config_name(&t.name) == split_config_name(&l.table))
        else {
            return Err(invalid(
                format!("{key}.table"),
                format!("`{}` is not a [[sharded_tables]] name", l.table),
            ));
        };
        if l.column.is_empty() {
            return Err(invalid(format!("{key}.column"), "must not be empty".into()));
        }
        if l.column_name() == table.key.to_lowercase() {
            return Err(invalid(
                format!("{key}.column"),
                format!(
                    "`{}` is the shard key of {}; statements naming it reach one shard already",
                    l.column, l.table
                ),
            ));
        }
        if !seen.insert(l.lookup_table()) {
            return Err(invalid(
                format!("{key}.column"),
                format!("{}.{} is listed twice", l.table, l.column),
            ));
        }
    }
    Ok(())
}

/// Adds each lookup table to the sharded tables (keyed by `value`), unless already there (a
/// config written back by `to_toml`).
pub fn expand(config: &mut Config) {
    for l in config.lookups.clone() {
        let name = l.lookup_table();
        let known = config
            .sharded_tables
            .iter()
            .any(|t| split_config_name(&t.name) == split_config_name(&name));
        if !known {
            config.sharded_tables.push(ShardedTableConfig {
                name,
                key: VALUE_COLUMN.into(),
                key_type: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_table_names() {
        let l = LookupConfig {
            table: "users".into(),
            column: "Email".into(),
        };
        assert_eq!(l.lookup_table(), "pgshard_lookup_users_email");
        assert_eq!(l.display_table(), "users");
        let b = LookupConfig {
            table: "Billing.Invoices".into(),
            column: "number".into(),
        };
        assert_eq!(b.lookup_table(), "billing.pgshard_lookup_invoices_number");
        assert_eq!(
            b.lookup_table_sql(),
            crate::router::names::quote_config_name("billing.pgshard_lookup_invoices_number")
        );
    }
}
