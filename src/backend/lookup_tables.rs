//! The start-up check of `[[lookups]]`: on every shard that answers, the looked-up column must
//! exist with a type pgshard can hash (like a shard key), and the lookup table is created when
//! missing, with the control-plane login. A shard where it cannot be created stops the proxy
//! with the statement the operator can run instead.

use crate::backend::key_types::{lookup as column_type, CatalogKey};
use crate::backend::tls::ServerTls;
use crate::config::lookups::{LookupConfig, KEY_COLUMN, VALUE_COLUMN};
use crate::config::{Config, ShardedTableConfig};
use crate::router::KeyType;

/// The `CREATE TABLE` of one lookup table: the value (primary key, so a value maps to one key)
/// with the looked-up column's type, the base table's key with its key type.
pub fn create_sql(lookup: &LookupConfig, value_type: &str, key_type: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({VALUE_COLUMN} {value_type} PRIMARY KEY, {KEY_COLUMN} {key_type} NOT NULL)",
        lookup.lookup_table_sql()
    )
}

/// Why a looked-up column's type cannot be hashed; `None` when it can.
pub fn unhashable(lookup: &LookupConfig, column: &CatalogKey) -> Option<String> {
    let name = format!("lookup {}.{}", lookup.table, lookup.column);
    match KeyType::from_pg_type(&column.type_name) {
        None => Some(format!(
            "{name}: the column is {}; looked-up columns are bigint, integer, smallint, uuid, text or varchar",
            column.type_name
        )),
        Some(KeyType::Text) if !column.deterministic => Some(format!(
            "{name}: the column has a nondeterministic collation, whose equal values pgshard cannot hash alike"
        )),
        Some(_) => None,
    }
}

/// Checks every lookup on every shard that answers and creates the missing lookup tables.
pub async fn ensure(config: &Config, tls: &ServerTls) -> Result<(), String> {
    if config.lookups.is_empty() {
        return Ok(());
    }
    for shard in &config.shards {
        let Some(client) = crate::backend::shadows::control_client(config, shard, tls).await else {
            continue;
        };
        for l in &config.lookups {
            let Some(base) = config.sharded_tables.iter().find(|t| t.name == l.table) else {
                continue;
            };
            let name = format!("lookup {}.{}", l.table, l.column);
            let column = ShardedTableConfig {
                name: l.table.clone(),
                key: l.column_name(),
                key_type: None,
            };
            let found = column_type(&client, &column)
                .await
                .map_err(|e| format!("shard {}: {e}", shard.id))?;
            let Some(found) = found else {
                return Err(format!(
                    "{name}: shard {} has no column {} in table {}; create the table before starting pgshard",
                    shard.id, l.column, l.table
                ));
            };
            if let Some(why) = unhashable(l, &found) {
                return Err(why);
            }
            let key = column_type(&client, base)
                .await
                .map_err(|e| format!("shard {}: {e}", shard.id))?
                .map(|k| k.type_name)
                .unwrap_or_else(|| "bigint".into());
            let sql = create_sql(l, &found.type_name, &key);
            if let Err(e) = client.batch_execute(&sql).await {
                return Err(format!(
                    "{name}: shard {} cannot create the lookup table: {e}; grant CREATE on the table's schema to pgshard's control-plane login, or run on every shard as its owner: {sql}; GRANT SELECT, INSERT, UPDATE ON {} TO <the application roles>",
                    shard.id,
                    l.lookup_table_sql()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_types() {
        let l = LookupConfig {
            table: "users".into(),
            column: "email".into(),
        };
        assert_eq!(
            create_sql(&l, "text", "bigint"),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (value text PRIMARY KEY, key bigint NOT NULL)",
                l.lookup_table_sql()
            )
        );
        let col = |t: &str, d: bool| CatalogKey {
            type_name: t.into(),
            deterministic: d,
        };
        assert_eq!(unhashable(&l, &col("character varying(80)", true)), None);
        assert!(unhashable(&l, &col("text", false)).is_some());
        assert!(unhashable(&l, &col("jsonb", true)).is_some());
    }
}
