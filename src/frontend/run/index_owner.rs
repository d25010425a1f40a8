//! The session's side of the index-owner lookup (see `exec::index_owner`): asks the shards the
//! session connects to which table an index belongs to, then routes to where that table lives.

use crate::exec::exchange::{Expect, Step};
use crate::exec::index_owner::owner_of;
use crate::frontend::session::{refusal, Session};
use crate::router::index_owner::owner_query;
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
        if self.state.open_batch_shard.is_some() {
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
