//! peewee (Python ORM, over psycopg2) used as applications use it (`tests/python/peewee_probe.py`:
//! models with a co-located ForeignKey, `insert_many(...).returning(...)`, `on_conflict(...)`,
//! `get_or_create`, nested `atomic()` (savepoints), `prefetch`, joins, aggregates, window
//! functions through `fn.*`, `.iterator()` and server-side cursors, `bulk_update`, `chunked`,
//! `insert_from`, CTEs, `playhouse.migrate`),
//! through pgshard in front of four shards and against one plain Postgres database, step by step
//! (`tests/python/probe_diff.py`); every row must then sit on the shard that owns its key.

mod common;

use common::plain::run_probe;
use common::TestCluster;
use pgshard::router::{KeyType, Strategy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peewee_answers_as_one_postgres() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let sharded = [
        ("pw_author", "id", KeyType::Int),
        ("pw_book", "author_id", KeyType::Int),
        ("pw_tag", "code", KeyType::Text),
        ("pw_review", "id", KeyType::Uuid),
    ];
    let run = run_probe(
        &cluster,
        &sharded,
        &["pw_genre"],
        "plain_peewee",
        &["peewee_probe.py"],
    )
    .await;
    assert_eq!(
        run.out.lines(),
        [
            "same setup",
            "same insert_many_returning",
            // `fn.gen_random_uuid()` as the key of a uuid-keyed table (was 0A000).
            "same random_uuid_keys",
            "same on_conflict",
            "same get_or_create",
            "same atomic_nested",
            "same prefetch_books",
            "same joins",
            "same aggregates",
            "same window_functions",
            "same iterator_and_server_side",
            "same bulk_update",
            "same chunked_inserts",
            "same updates_and_deletes",
            // INSERT … SELECT (read first), UPDATE … FROM, a CTE, UNION, FOR UPDATE, …
            "same queries_read_first",
            // playhouse.migrate (add/rename/drop columns, an index, NOT NULL) and catalog reads.
            "same schema_migrations",
            "same errors",
        ],
        "{}",
        run.out.stderr
    );
    run.assert_placed(&cluster, &sharded).await;
}
