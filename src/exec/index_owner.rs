//! Looking up, on the shards' catalogs, the tables of the indexes a utility statement names
//! (see `router::index_owner`), so the statement runs where those tables live.

use crate::exec::exchange::{Expect, Step};
use crate::exec::merge::row::split_row;
use crate::frontend::session::{refusal, Session};
use crate::router::index_owner::{owner_query, OwnerTable};
use crate::router::{Route, StatementFacts};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frontend as fe;

impl Session {
    /// [`Session::index_owner_route`] of a statement that may have no facts.
    pub async fn index_owner_route_of(
        &mut self,
        facts: Option<&StatementFacts>,
    ) -> Result<Option<Route>, ErrorFields> {
        match facts {
            Some(f) => self.index_owner_route(f).await,
            None => Ok(None),
        }
    }

    /// The route of a statement naming indexes, from their tables as the shards' catalogs name
    /// them; `None` for any other statement. The catalogs are read inside the client's block on
    /// the shards it holds (an index created earlier in the block counts) and outside any block
    /// elsewhere, so the lookup joins no shard to the block.
    pub async fn index_owner_route(
        &mut self,
        facts: &StatementFacts,
    ) -> Result<Option<Route>, ErrorFields> {
        if facts.indexes.is_empty() {
            return Ok(None);
        }
        if self.open_batch_shard.is_some() {
            return Err(refusal(
                "a statement naming an index cannot join an implicit transaction that a Flush left open: send Sync first",
            ));
        }
        let proxy = self.proxy.clone();
        let map = proxy.map.current();
        let shards = proxy.router.index_lookup_shards(&map);
        if shards.is_empty() {
            return Ok(None);
        }
        for &shard in &shards {
            self.ensure_conn(shard, false).await?;
        }
        let query = fe::query(&owner_query(&facts.indexes));
        let answers = self
            .run_collected(&shards, |_| {
                vec![Step::Send {
                    frame: query.clone(),
                    expect: Expect::Query,
                    forward: true,
                }]
            })
            .await;
        self.release_idle();
        let mut owners = Vec::new();
        for answer in &answers {
            if let Some(e) = answer.error() {
                return Err(e);
            }
            for frame in answer.frames.iter().filter(|f| f.tag == be::DATA_ROW) {
                owners.push(owner_of(&frame.body).ok_or_else(|| {
                    ErrorFields::error(
                        "XX000",
                        format!(
                            "shard {} answered the index lookup with a malformed row",
                            answer.shard
                        ),
                    )
                })?);
            }
        }
        Ok(Some(proxy.router.index_route(
            &owners,
            &map,
            proxy.first_shard,
        )))
    }
}

/// (table schema, table name) of one lookup row.
fn owner_of(body: &bytes::Bytes) -> Option<OwnerTable> {
    let cols = split_row(body).ok()?;
    let text = |i: usize| {
        cols.get(i)?
            .as_ref()
            .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
    };
    Some(OwnerTable {
        schema: text(0)?,
        table: text(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_rows_decode_or_fail() {
        let row = be::data_row(&[Some("public"), Some("users")]);
        assert_eq!(
            owner_of(&row.body),
            Some(OwnerTable {
                schema: "public".into(),
                table: "users".into()
            })
        );
        assert_eq!(owner_of(&be::data_row(&[Some("public"), None]).body), None);
        assert_eq!(owner_of(&be::data_row(&[Some("public")]).body), None);
        assert_eq!(owner_of(&bytes::Bytes::from_static(b"\x00")), None);
    }
}
