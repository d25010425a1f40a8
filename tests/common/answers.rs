//! Column values as raw bytes, to compare answers of pgshard and of one Postgres exactly
//! (binary format in the extended protocol, text in the simple protocol).

use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::GenericClient;

/// Any column as its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Raw(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The columns (name, type oid) and raw rows of a statement prepared and run with `params`: the
/// extended protocol's answer, as exact bytes.
pub async fn extended_answer<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Vec<(String, u32)>, Vec<Vec<Raw>>), tokio_postgres::Error> {
    let st = c.prepare(sql).await?;
    let rows = c.query(&st, params).await?;
    let columns = st
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().oid()))
        .collect();
    let rows = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| row.get::<_, Raw>(i)).collect())
        .collect();
    Ok((columns, rows))
}

/// Every row of a simple query, as text cells (`None` for NULL); panics naming the query on error.
pub async fn simple_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}
