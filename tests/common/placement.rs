//! Where rows live, read on the shards directly: the check every placement test makes.

use pgshard::router::{KeyType, ShardMap};
use tokio_postgres::Client;

/// The rows of `table` on shard `id` (read through `direct`, a connection to that shard),
/// after asserting each is one `sql_owned_by` gives that shard.
pub async fn owned_rows(
    direct: &Client,
    map: &ShardMap,
    table: &str,
    (key, key_type): (&str, KeyType),
    id: u32,
) -> i64 {
    let owned = map.sql_owned_by_typed(key, key_type, id);
    let row = direct
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE NOT coalesce({owned}, false)) FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("counting {table} on shard {id}: {e}"));
    let (all, misplaced): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        misplaced, 0,
        "{table}: shard {id} holds rows it does not own"
    );
    all
}
