//! Keys for INSERTs into sharded tables that omit the shard key, sized to the key column: the
//! 64-bit generator for bigint and numeric keys, catalog blocks for smallint and integer keys (a
//! `serial` column), so no value is ever sent that the column cannot hold. The key column's type
//! is looked up on a shard once per table; a request's keys are reserved before it is planned,
//! because planning itself does no I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

use super::session::{backend_error_fields, Session};
use crate::catalog::KeyBlocks;
use crate::ids::blocks::BlockStock;
use crate::ids::key_column::{self, KeyColumn, KeyWidth};
use crate::ids::sequence_values::SequenceColumn;
use crate::router::{StatementFacts, StatementKind};
use crate::wire::backend::ErrorFields;
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Parse};

/// What the proxy knows of key columns and sequence columns, and its stock of narrow ids; shared
/// by all sessions.
pub struct KeySources {
    columns: RwLock<HashMap<String, KeyColumn>>,
    /// Each table's sequence columns (see `sequence_values`), by the INSERT's name for it.
    sequences: RwLock<HashMap<String, std::sync::Arc<[SequenceColumn]>>>,
    stock: BlockStock,
    blocks: KeyBlocks,
}

impl KeySources {
    /// Key sources that allocate narrow ids through `blocks`.
    pub fn new(blocks: KeyBlocks) -> KeySources {
        KeySources {
            columns: RwLock::new(HashMap::new()),
            sequences: RwLock::new(HashMap::new()),
            stock: BlockStock::default(),
            blocks,
        }
    }

    fn column(&self, table: &str) -> Option<KeyColumn> {
        self.columns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .copied()
    }

    fn remember(&self, table: &str, column: KeyColumn) {
        self.columns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.to_string(), column);
    }

    pub(super) fn sequence_columns(&self, table: &str) -> Option<std::sync::Arc<[SequenceColumn]>> {
        self.sequences
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            .cloned()
    }

    pub(super) fn remember_sequence_columns(
        &self,
        table: &str,
        columns: std::sync::Arc<[SequenceColumn]>,
    ) {
        self.sequences
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.to_string(), columns);
    }

    /// Forgets what DDL may have changed: key column types and sequence columns (a table
    /// dropped and made again, a column added).
    fn forget_columns(&self) {
        self.columns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.sequences
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The keys one request may hand out, per table, reserved before it is planned.
#[derive(Debug, Default)]
pub struct ReservedKeys {
    tables: HashMap<String, Reserved>,
}

#[derive(Debug)]
enum Reserved {
    /// 64-bit ids from the generator, taken as needed.
    Wide { always_identity: bool },
    /// UUIDv7s from the generator, taken as needed.
    Uuid,
    /// Narrow ids taken from the stock for this request, in order.
    Narrow {
        ids: VecDeque<i64>,
        always_identity: bool,
    },
    /// The reservation failed: the INSERT gets this error.
    Failed(ErrorFields),
}

/// Generated keys for one INSERT.
pub struct NewKeys {
    pub ids: Vec<i64>,
    /// The column is `GENERATED ALWAYS AS IDENTITY`: the INSERT needs `OVERRIDING SYSTEM VALUE`.
    pub overriding: bool,
}

/// Generated keys of any key type for one INSERT.
pub struct NewKeyValues {
    pub keys: Vec<crate::router::ShardKey>,
    /// The column is `GENERATED ALWAYS AS IDENTITY`: the INSERT needs `OVERRIDING SYSTEM VALUE`.
    pub overriding: bool,
}

/// Tables (with their key column) and row counts that statements need generated keys for.
fn keys_needed<'a>(
    facts: impl IntoIterator<Item = &'a StatementFacts>,
) -> Vec<(String, String, usize)> {
    let mut needed: Vec<(String, String, usize)> = Vec::new();
    for f in facts {
        let (Some(rows), Some((table, key))) = (f.missing_key_rows, &f.shard_key) else {
            continue;
        };
        match needed.iter_mut().find(|(t, _, _)| t == table) {
            Some(entry) => entry.2 += rows,
            None => needed.push((table.clone(), key.clone(), rows)),
        }
    }
    needed
}

impl Session {
    /// Before a simple query is planned: reserves the keys its INSERTs need, and forgets key
    /// column types when it runs DDL.
    pub async fn reserve_keys_for(&mut self, facts: &[StatementFacts]) {
        if facts.iter().any(|f| f.kind == StatementKind::Ddl) {
            self.proxy.keys.forget_columns();
        }
        let needed = keys_needed(facts);
        self.reserve_keys(needed).await;
    }

    /// Before an extended-protocol batch is planned: the same for every Bind of the batch (its
    /// statements parsed in the batch itself or earlier).
    pub async fn reserve_keys_for_batch(&mut self, frames: &[Frame]) {
        let mut parsed: HashMap<String, std::sync::Arc<[StatementFacts]>> = HashMap::new();
        let mut bound: Vec<std::sync::Arc<[StatementFacts]>> = Vec::new();
        let mut unnest = Vec::new();
        for frame in frames {
            match frame.tag {
                fe::PARSE => {
                    if let Ok(parse) = Parse::decode(&frame.body) {
                        let facts = self.analyze_parsed(&parse.query);
                        parsed.insert(parse.name.clone(), facts);
                    }
                }
                fe::BIND => {
                    let Ok(bind) = Bind::decode(&frame.body) else {
                        continue;
                    };
                    let facts = parsed.get(&bind.statement).cloned().or_else(|| {
                        self.state
                            .statements
                            .get(&bind.statement)
                            .map(|p| p.facts.clone())
                    });
                    if let Some(facts) = facts {
                        let params = crate::router::params::BindParams {
                            values: &bind.params,
                            formats: &bind.param_formats,
                            types: &[],
                        };
                        unnest.extend(super::unnest_keys::keys_needed(&facts, &params));
                        bound.push(facts);
                    }
                }
                _ => {}
            }
        }
        let all = parsed.values().chain(bound.iter()).flat_map(|f| f.iter());
        if all.clone().any(|f| f.kind == StatementKind::Ddl) {
            self.proxy.keys.forget_columns();
        }
        self.note_names_changed(all);
        let mut needed = keys_needed(bound.iter().flat_map(|f| f.iter()));
        for more in unnest {
            super::unnest_keys::add_needed(&mut needed, more);
        }
        self.reserve_keys(needed).await;
    }

    pub(super) async fn reserve_keys(&mut self, needed: Vec<(String, String, usize)>) {
        self.reserved_keys.tables.clear();
        for (table, key, rows) in needed {
            let reserved = match self.reserve_table_keys(&table, &key, rows).await {
                Ok(r) => r,
                Err(fields) => Reserved::Failed(fields),
            };
            self.reserved_keys.tables.insert(table, reserved);
        }
    }

    async fn reserve_table_keys(
        &mut self,
        table: &str,
        key: &str,
        rows: usize,
    ) -> Result<Reserved, ErrorFields> {
        let Some(column) = self.key_column(table, key).await? else {
            // No such table or column: the INSERT fails on the shard with Postgres's own error,
            // so no generated value is ever stored.
            return Ok(Reserved::Wide {
                always_identity: false,
            });
        };
        if column.width == KeyWidth::Uuid {
            return Ok(Reserved::Uuid);
        }
        if column.width == KeyWidth::Wide {
            return Ok(Reserved::Wide {
                always_identity: column.always_identity,
            });
        }
        let sources = &self.proxy.keys;
        let ids = loop {
            if let Some(ids) = sources.stock.take(table, rows) {
                break ids;
            }
            let len = column.width.block_len(rows);
            let start = sources.blocks.allocate(table, len).await.map_err(|e| {
                ErrorFields::error(
                    "08006",
                    format!("cannot allocate generated keys for {table} from the catalog: {e}"),
                )
            })?;
            let usable = (column.width.max() - start + 1).clamp(0, len);
            if usable < len && usable < i64::try_from(rows).unwrap_or(i64::MAX) {
                return Err(ErrorFields::error(
                    "22003",
                    format!(
                        "the generated keys of {table} have run out: column {key} holds at most {} and the catalog's next key is {start}",
                        column.width.max()
                    ),
                )
                .with_hint(format!(
                    "widen the key column (ALTER TABLE {table} ALTER COLUMN {key} TYPE bigint) or give the key in the INSERT"
                )));
            }
            sources.stock.add(table, start, usable);
        };
        Ok(Reserved::Narrow {
            ids: ids.into(),
            always_identity: column.always_identity,
        })
    }

    /// The key column's type, looked up on a shard the first time; `None` when the table or
    /// column does not exist there.
    async fn key_column(
        &mut self,
        table: &str,
        key: &str,
    ) -> Result<Option<KeyColumn>, ErrorFields> {
        if let Some(column) = self.proxy.keys.column(table) {
            return Ok(Some(column));
        }
        let mut conn = self
            .proxy
            .pools
            .get_as(&self.server_login, self.any_shard)
            .await
            .map_err(|e| ErrorFields::error("08006", e.to_string()))?;
        let answer = conn
            .query_text(&key_column::lookup_sql(table, key))
            .await
            .map_err(|e| backend_error_fields(&e))?;
        let Some(answer) = answer else {
            return Ok(None);
        };
        let column = key_column::parse_lookup(table, key, &answer)
            .map_err(|e| ErrorFields::error("0A000", e.to_string()))?;
        self.proxy.keys.remember(table, column);
        Ok(Some(column))
    }

    /// Takes the keys for one INSERT of `rows` rows into `table` from what was reserved for the
    /// request.
    pub fn take_new_keys(&mut self, table: &str, rows: usize) -> Result<NewKeys, ErrorFields> {
        match self.reserved_keys.tables.get_mut(table) {
            None => Ok(NewKeys {
                ids: (0..rows).map(|_| self.proxy.ids.next_id()).collect(),
                overriding: false,
            }),
            Some(Reserved::Wide { always_identity }) => Ok(NewKeys {
                ids: (0..rows).map(|_| self.proxy.ids.next_id()).collect(),
                overriding: *always_identity,
            }),
            Some(Reserved::Narrow {
                ids,
                always_identity,
            }) => {
                if ids.len() < rows {
                    return Err(ErrorFields::error(
                        "XX000",
                        format!("pgshard reserved too few generated keys for {table}"),
                    ));
                }
                Ok(NewKeys {
                    ids: ids.drain(..rows).collect(),
                    overriding: *always_identity,
                })
            }
            Some(Reserved::Uuid) => Err(ErrorFields::error(
                "0A000",
                format!("pgshard generates uuid keys for {table} only in INSERT … VALUES: give the key in this INSERT"),
            )),
            Some(Reserved::Failed(fields)) => Err(fields.clone()),
        }
    }

    /// [`Session::take_new_keys`] for key columns of any type pgshard generates for: integer
    /// keys as there, UUIDv7s for a uuid key column.
    pub fn take_new_key_values(
        &mut self,
        table: &str,
        rows: usize,
    ) -> Result<NewKeyValues, ErrorFields> {
        use crate::router::ShardKey;
        if let Some(Reserved::Uuid) = self.reserved_keys.tables.get(table) {
            return Ok(NewKeyValues {
                keys: (0..rows)
                    .map(|_| ShardKey::Uuid(self.proxy.ids.next_uuid_v7()))
                    .collect(),
                overriding: false,
            });
        }
        let keys = self.take_new_keys(table, rows)?;
        Ok(NewKeyValues {
            keys: keys.ids.into_iter().map(ShardKey::Int).collect(),
            overriding: keys.overriding,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(table: &str, rows: usize) -> StatementFacts {
        let mut f = StatementFacts::plain(StatementKind::Insert);
        f.missing_key_rows = Some(rows);
        f.shard_key = Some((table.into(), "id".into()));
        f
    }

    #[test]
    fn needs_add_up_per_table() {
        let facts = [
            insert("a", 2),
            StatementFacts::plain(StatementKind::Select),
            insert("b", 1),
            insert("a", 3),
        ];
        assert_eq!(
            keys_needed(&facts),
            vec![("a".into(), "id".into(), 5), ("b".into(), "id".into(), 1)]
        );
        assert!(keys_needed(&[StatementFacts::plain(StatementKind::Insert)]).is_empty());
    }
}
