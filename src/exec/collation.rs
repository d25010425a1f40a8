//! What decides how text sorts on each shard: the database's collation and the table columns
//! declared with another one. Read with one query per server address and database, remembered
//! for [`REFRESH_AFTER`], so a merge costs no extra round trip in the common case.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{BackendError, ServerConn};
use crate::exec::merge::split_row;
use crate::wire::backend as be;
use crate::wire::frontend as fe;

/// How long what was read stays in use. Collations change only with DDL (a column's `COLLATE`,
/// a new table), which the proxy does not see when it is run on the shards directly: after this
/// long the next merge reads them again.
pub const REFRESH_AFTER: Duration = Duration::from_secs(60);

/// The collation of a shard's database (`pg_database`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseCollation {
    /// `datcollate`: LC_COLLATE of the database.
    pub collate: String,
    /// `datctype`: LC_CTYPE of the database.
    pub ctype: String,
    /// `datlocprovider`: `c` libc, `i` ICU (Postgres 15 and later; `c` before).
    pub provider: String,
    /// The database encoding (`UTF8`, …).
    pub encoding: String,
    /// The collation provider's version as the server sees it now (glibc's version for libc);
    /// `None` for C/POSIX or before Postgres 15.
    pub version: Option<String>,
}

/// A collation other than the database default (`pg_collation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collation {
    /// `collname`.
    pub name: String,
    /// `collprovider`: `c` libc, `i` ICU, `d` default.
    pub provider: String,
    /// `collcollate` (NULL for ICU collations from Postgres 15 on).
    pub collate: Option<String>,
    /// `collctype`.
    pub ctype: Option<String>,
    /// `collisdeterministic`: only then is equality byte equality.
    pub deterministic: bool,
}

/// A table or view column whose collation is not the database default (`attcollation` other
/// than 0 and 100): text read from it may sort differently from the database's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollatedColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub collation: Collation,
}

/// A domain declared with a collation (`CREATE DOMAIN d AS text COLLATE …`): a cast to it gives
/// text that collation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollatedDomain {
    pub schema: String,
    pub name: String,
    pub collation: Collation,
}

/// Everything read from one shard's database about collations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCollation {
    pub database: DatabaseCollation,
    pub columns: Vec<CollatedColumn>,
    pub domains: Vec<CollatedDomain>,
    /// Names of the database's nondeterministic collations (any schema), against which an
    /// explicit `COLLATE` in a merged `count(DISTINCT …)` is checked.
    pub nondeterministic: Vec<String>,
}

/// What a merge knows about one shard's text: its collations (`None` when they could not be
/// read) and the encoding the connection sends text in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardText {
    /// The shard's id, for messages.
    pub shard: u32,
    pub collation: Option<Arc<ShardCollation>>,
    /// The connection's `client_encoding`.
    pub client_encoding: Option<String>,
}

type Cache = Mutex<HashMap<String, (Arc<ShardCollation>, Instant)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Forgets everything read, so the next merge on each shard reads its collations again (after
/// DDL the proxy ran, or a shard map change).
pub fn forget() {
    if let Ok(mut c) = cache().lock() {
        c.clear();
    }
}

/// The major version in a `server_version` parameter ("15.8 (Debian …)" → 15).
fn major_version(v: &str) -> Option<u32> {
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The four statements that read a database's collations (one round trip).
fn query_text(major: u32) -> String {
    let (provider, version) = if major >= 15 {
        (
            "d.datlocprovider::text",
            "pg_catalog.pg_database_collation_actual_version(d.oid)",
        )
    } else {
        ("'c'::text", "NULL::text")
    };
    format!(
        "SELECT d.datcollate::text, d.datctype::text, {provider}, \
         pg_catalog.pg_encoding_to_char(d.encoding)::text, {version} \
         FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database(); \
         SELECT n.nspname::text, c.relname::text, a.attname::text, co.collname::text, \
         co.collprovider::text, co.collcollate::text, co.collctype::text, \
         pg_catalog.to_jsonb(co) ->> 'collisdeterministic' \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attcollation NOT IN (0, 100) \
         AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast'); \
         SELECT n.nspname::text, t.typname::text, co.collname::text, co.collprovider::text, \
         co.collcollate::text, co.collctype::text, \
         pg_catalog.to_jsonb(co) ->> 'collisdeterministic' \
         FROM pg_catalog.pg_type t \
         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         JOIN pg_catalog.pg_collation co ON co.oid = t.typcollation \
         WHERE t.typtype = 'd' AND t.typcollation NOT IN (0, 100) \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema'); \
         SELECT co.collname::text FROM pg_catalog.pg_collation co \
         WHERE pg_catalog.to_jsonb(co) ->> 'collisdeterministic' = 'false'"
    )
}

fn text(cols: &[Option<Bytes>], i: usize) -> Option<String> {
    cols.get(i)?
        .as_ref()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// The collation in columns `at..at + 5` of a row.
fn collation_at(r: &[Option<Bytes>], at: usize) -> Option<Collation> {
    Some(Collation {
        name: text(r, at)?,
        provider: text(r, at + 1)?,
        collate: text(r, at + 2),
        ctype: text(r, at + 3),
        // NULL before Postgres 12, where every collation was deterministic.
        deterministic: text(r, at + 4).is_none_or(|v| v != "false"),
    })
}

/// Builds the result from the DataRows of the four statements; `None` if the database row is
/// missing or a row is malformed.
fn parse(
    database: &[Vec<Option<Bytes>>],
    columns: &[Vec<Option<Bytes>>],
    domains: &[Vec<Option<Bytes>>],
    nondeterministic: &[Vec<Option<Bytes>>],
) -> Option<ShardCollation> {
    let d = database.first()?;
    let database = DatabaseCollation {
        collate: text(d, 0)?,
        ctype: text(d, 1)?,
        provider: text(d, 2)?,
        encoding: text(d, 3)?,
        version: text(d, 4),
    };
    let columns = columns
        .iter()
        .map(|r| {
            Some(CollatedColumn {
                schema: text(r, 0)?,
                table: text(r, 1)?,
                column: text(r, 2)?,
                collation: collation_at(r, 3)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let domains = domains
        .iter()
        .map(|r| {
            Some(CollatedDomain {
                schema: text(r, 0)?,
                name: text(r, 1)?,
                collation: collation_at(r, 2)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let nondeterministic = nondeterministic
        .iter()
        .map(|r| text(r, 0))
        .collect::<Option<Vec<_>>>()?;
    Some(ShardCollation {
        database,
        columns,
        domains,
        nondeterministic,
    })
}

/// The collations of the database `conn` is connected to, from the cache when fresh. A query
/// that fails (say, in an aborted transaction) yields `collation: None` and is not remembered.
pub async fn of(conn: &mut ServerConn) -> Result<ShardText, BackendError> {
    let key = format!(
        "{}/{}",
        conn.addr,
        conn.params.get("database").map_or("", String::as_str)
    );
    let mut out = ShardText {
        shard: conn.shard,
        collation: None,
        client_encoding: conn.params.get("client_encoding").cloned(),
    };
    if let Ok(c) = cache().lock() {
        if let Some((v, at)) = c.get(&key) {
            if at.elapsed() < REFRESH_AFTER {
                out.collation = Some(v.clone());
                return Ok(out);
            }
        }
    }
    let major = conn
        .params
        .get("server_version")
        .and_then(|v| major_version(v))
        .unwrap_or(0);
    conn.queue(&fe::query(&query_text(major)));
    conn.flush().await?;
    let mut results: Vec<Vec<Vec<Option<Bytes>>>> = vec![Vec::new()];
    let mut failed = false;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            be::DATA_ROW => match split_row(&frame.body) {
                Ok(cols) => {
                    if let Some(r) = results.last_mut() {
                        r.push(cols);
                    }
                }
                Err(_) => failed = true,
            },
            be::COMMAND_COMPLETE => results.push(Vec::new()),
            be::ERROR_RESPONSE => failed = true,
            be::READY_FOR_QUERY => {
                if let Ok(status) = be::decode_ready_for_query(&frame.body) {
                    conn.status = status;
                }
                break;
            }
            _ => {}
        }
    }
    if failed || results.len() < 5 {
        return Ok(out);
    }
    let Some(found) = parse(&results[0], &results[1], &results[2], &results[3]) else {
        return Ok(out);
    };
    let found = Arc::new(found);
    if let Ok(mut c) = cache().lock() {
        c.insert(key, (found.clone(), Instant::now()));
    }
    out.collation = Some(found);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(vals: &[Option<&str>]) -> Vec<Option<Bytes>> {
        vals.iter()
            .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
            .collect()
    }

    #[test]
    fn versions_and_query() {
        assert_eq!(major_version("15.8 (Debian 15.8-0+deb12u1)"), Some(15));
        assert_eq!(major_version("9.6.24"), Some(9));
        assert_eq!(major_version("devel"), None);
        assert!(query_text(15).contains("datlocprovider"));
        assert!(!query_text(14).contains("datlocprovider"));
    }

    #[test]
    fn parses_database_and_columns() {
        let db = [row(&[
            Some("en_US.UTF-8"),
            Some("en_US.UTF-8"),
            Some("c"),
            Some("UTF8"),
            Some("2.36"),
        ])];
        let cols = [
            row(&[
                Some("public"),
                Some("t"),
                Some("code"),
                Some("C"),
                Some("c"),
                Some("C"),
                Some("C"),
                Some("true"),
            ]),
            row(&[
                Some("public"),
                Some("t"),
                Some("ci"),
                Some("ci"),
                Some("i"),
                None,
                None,
                Some("false"),
            ]),
        ];
        let doms = [row(&[
            Some("app"),
            Some("code_t"),
            Some("C"),
            Some("c"),
            Some("C"),
            Some("C"),
            None,
        ])];
        let p = parse(&db, &cols, &doms, &[row(&[Some("ci")])]).unwrap();
        assert_eq!(p.nondeterministic, ["ci"]);
        assert_eq!(p.database.collate, "en_US.UTF-8");
        assert_eq!(p.database.version.as_deref(), Some("2.36"));
        assert!(p.columns[0].collation.deterministic);
        assert!(!p.columns[1].collation.deterministic);
        assert_eq!(p.columns[1].collation.collate, None);
        assert_eq!(p.domains[0].name, "code_t");
        assert!(p.domains[0].collation.deterministic);
        assert_eq!(parse(&[], &cols, &[], &[]), None);
        assert_eq!(parse(&[row(&[Some("C")])], &[], &[], &[]), None);
        assert_eq!(parse(&db, &[row(&[Some("x")])], &[], &[]), None);
        assert_eq!(parse(&db, &[], &[], &[row(&[None])]), None);
    }
}
