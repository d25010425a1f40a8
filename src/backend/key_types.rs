//! The start-up check of shard-key types: each sharded table's key column type (and collation)
//! is read from the shards' catalog and checked against the config and the shard map's strategy,
//! so a uuid or text key is hashed exactly as the shards hash it, and a map that cannot place it
//! (range, modulo) or a collation that does not hash bytes (nondeterministic) stops the proxy
//! with a clear message instead of placing rows wrongly.

use crate::backend::tls::ServerTls;
use crate::config::{Config, ShardedTableConfig};
use crate::router::{KeyType, ShardMap, Strategy};

/// What one shard's catalog says about a key column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogKey {
    /// The column's type (a domain's base type) as `format_type` writes it.
    pub type_name: String,
    /// False for a column with a nondeterministic collation.
    pub deterministic: bool,
}

/// The SQL that reads a key column's type, collation determinism and the server encoding;
/// no row when the table or column does not exist (yet).
const LOOKUP_SQL: &str =
    "SELECT format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, NULL), \
     coalesce(c.collisdeterministic, true), current_setting('server_encoding') \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     LEFT JOIN pg_collation c ON c.oid = a.attcollation \
     WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped";

/// What a shard's catalog says about a table's key column; `None` when the table or column does
/// not exist there. A text key in a database whose encoding is not UTF-8 is an error: the proxy
/// hashes the UTF-8 bytes.
pub async fn lookup(
    client: &tokio_postgres::Client,
    table: &ShardedTableConfig,
) -> Result<Option<CatalogKey>, String> {
    let rows = client
        .query(
            LOOKUP_SQL,
            &[
                &crate::router::names::quote_config_name(&table.name),
                &table.key.to_lowercase(),
            ],
        )
        .await
        .map_err(|e| format!("cannot read the key column of {}: {e}", table.name))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let key = CatalogKey {
        type_name: row.get(0),
        deterministic: row.get(1),
    };
    let encoding: String = row.get(2);
    if KeyType::from_pg_type(&key.type_name) == Some(KeyType::Text)
        && !encoding.eq_ignore_ascii_case("UTF8")
    {
        return Err(format!(
            "sharded table {} has a text key but the database encoding is {encoding}; pgshard hashes text keys as UTF-8",
            table.name
        ));
    }
    Ok(Some(key))
}

/// The key type of one table on a shard that answers: [`lookup`] then [`judge`].
pub async fn key_type_on(
    client: &tokio_postgres::Client,
    table: &ShardedTableConfig,
    strategy: &Strategy,
) -> Result<KeyType, String> {
    let key = lookup(client, table).await?;
    judge(table, key.as_ref(), strategy)
}

/// The key type of one table: the catalog's when the table exists, checked against the config's
/// when it names one, and against the map's strategy. Pure; the messages name the table.
pub fn judge(
    table: &ShardedTableConfig,
    catalog: Option<&CatalogKey>,
    strategy: &Strategy,
) -> Result<KeyType, String> {
    let name = format!("sharded table {} (key column {})", table.name, table.key);
    let from_catalog = match catalog {
        None => None,
        Some(c) => {
            let ty = KeyType::from_pg_type(&c.type_name).ok_or_else(|| {
                format!(
                    "{name}: key type {} is not supported; shard keys are bigint, integer, smallint, uuid, text or varchar",
                    c.type_name
                )
            })?;
            if ty == KeyType::Text && !c.deterministic {
                return Err(format!(
                    "{name}: the key column has a nondeterministic collation, which Postgres hashes by its sort key, not its bytes; pgshard cannot place such keys: give the column a deterministic collation (e.g. COLLATE \"C\")"
                ));
            }
            Some(ty)
        }
    };
    let ty = match (table.key_type, from_catalog) {
        (Some(want), Some(got)) if want != got => {
            return Err(format!(
                "{name}: the config says key_type = \"{}\" but the shards' column is {}",
                want.name(),
                catalog.map_or("unknown", |c| c.type_name.as_str())
            ))
        }
        (_, Some(got)) => got,
        (Some(want), None) => want,
        (None, None) => KeyType::Int,
    };
    if !ty.allows_strategy(strategy) {
        return Err(format!(
            "{name}: {} keys can be placed only by the hash strategy, but the shard map uses {}; range and modulo maps need integer keys",
            ty.name(),
            strategy.name()
        ));
    }
    Ok(ty)
}

/// The key types the shards' catalog gives the configured tables now, read on the first shard
/// that answers: after DDL through the proxy, so a table created after start-up (whose type
/// was then unknown and taken as integer) is keyed by its real type. The catalog's type wins
/// over the config's; a table that does not exist is left out, and so is one whose type cannot
/// be placed (with a warning, as start-up would have refused it).
pub async fn learn(
    config: &Config,
    strategy: &Strategy,
    tls: &ServerTls,
) -> Vec<(String, KeyType)> {
    let mut learnt = Vec::new();
    for shard in &config.shards {
        let Some(client) = crate::backend::shadows::control_client(config, shard, tls).await else {
            continue;
        };
        for table in &config.sharded_tables {
            let key = match lookup(&client, table).await {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(shard = shard.id, "{e}");
                    continue;
                }
            };
            let unconfigured = ShardedTableConfig {
                key_type: None,
                ..table.clone()
            };
            match judge(&unconfigured, Some(&key), strategy) {
                Ok(ty) => learnt.push((table.name.clone(), ty)),
                Err(e) => tracing::warn!("{e}; its statements keep routing as before"),
            }
        }
        break;
    }
    learnt
}

/// The sharded tables with their key types resolved on the shards that answer (a shard that
/// does not answer is skipped, as the other start-up checks do).
pub async fn resolve(
    config: &Config,
    map: &ShardMap,
    tls: &ServerTls,
) -> Result<Vec<ShardedTableConfig>, String> {
    let mut found: Vec<Option<CatalogKey>> = vec![None; config.sharded_tables.len()];
    for shard in &config.shards {
        let Some(client) = crate::backend::shadows::control_client(config, shard, tls).await else {
            continue;
        };
        for (i, table) in config.sharded_tables.iter().enumerate() {
            let key = lookup(&client, table)
                .await
                .map_err(|e| format!("shard {}: {e}", shard.id))?;
            let Some(key) = key else { continue };
            match &found[i] {
                Some(seen) if seen.type_name != key.type_name => {
                    return Err(format!(
                        "sharded table {}: the key column {} is {} on one shard and {} on shard {}",
                        table.name, table.key, seen.type_name, key.type_name, shard.id
                    ))
                }
                _ => found[i] = Some(key),
            }
        }
        drop(client);
    }
    config
        .sharded_tables
        .iter()
        .zip(&found)
        .map(|(table, catalog)| {
            judge(table, catalog.as_ref(), &map.strategy).map(|ty| ShardedTableConfig {
                key_type: Some(ty),
                ..table.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key_type: Option<KeyType>) -> ShardedTableConfig {
        ShardedTableConfig {
            name: "accounts".into(),
            key: "id".into(),
            key_type,
        }
    }

    fn col(type_name: &str, deterministic: bool) -> CatalogKey {
        CatalogKey {
            type_name: type_name.into(),
            deterministic,
        }
    }

    #[test]
    fn key_types_from_catalog_config_and_strategy() {
        let hash = Strategy::Hash;
        let range = Strategy::Range;
        let modulo = Strategy::Modulo { modulus: 4 };
        let ok = |t: Option<KeyType>, c: Option<CatalogKey>, s: &Strategy| {
            judge(&table(t), c.as_ref(), s)
        };
        assert_eq!(ok(None, Some(col("uuid", true)), &hash), Ok(KeyType::Uuid));
        assert_eq!(
            ok(None, Some(col("character varying(40)", true)), &hash),
            Ok(KeyType::Text)
        );
        assert_eq!(
            ok(None, Some(col("integer", true)), &range),
            Ok(KeyType::Int)
        );
        assert_eq!(ok(Some(KeyType::Uuid), None, &hash), Ok(KeyType::Uuid));
        assert_eq!(ok(None, None, &modulo), Ok(KeyType::Int));
        assert_eq!(
            ok(Some(KeyType::Int), Some(col("smallint", true)), &hash),
            Ok(KeyType::Int)
        );
        for (t, c, s, want) in [
            (
                None,
                Some(col("uuid", true)),
                &range,
                "only by the hash strategy, but the shard map uses range",
            ),
            (
                Some(KeyType::Text),
                None,
                &modulo,
                "only by the hash strategy, but the shard map uses modulo",
            ),
            (
                None,
                Some(col("text", false)),
                &hash,
                "nondeterministic collation",
            ),
            (
                Some(KeyType::Uuid),
                Some(col("bigint", true)),
                &hash,
                "config says key_type = \"uuid\" but the shards' column is bigint",
            ),
            (
                None,
                Some(col("numeric", true)),
                &hash,
                "key type numeric is not supported",
            ),
        ] {
            let e = ok(t, c, s).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(e.contains("sharded table accounts (key column id)"), "{e}");
        }
    }
}
