//! A locking read with a LIMIT and no ORDER BY (`SELECT … LIMIT n FOR UPDATE SKIP LOCKED`, a
//! job queue's claim): one Postgres locks exactly the rows it returns, at most n. Run on every
//! shard at once, each shard would apply the LIMIT and lock up to n rows of its own while the
//! merge returns n, so the block holds locks on rows nobody took and other workers skip them
//! until it ends. Asked of the shards one after another with what is still wanted (an
//! Execute's row limit), the shards lock n rows in all, each of them returned — any n rows
//! that can be locked are what one Postgres may answer without an ORDER BY.

use pg_query::protobuf as pb;

/// Whether `s` is read from its shards in turn, each asked for the rows still wanted: a
/// locking clause, a LIMIT (or FETCH FIRST) and no ORDER BY. With an ORDER BY the first rows
/// of the order may sit on any shard, so the shards run at once as for any ordered read.
pub fn fills_in_turn(s: &pb::SelectStmt) -> bool {
    !s.locking_clause.is_empty()
        && s.sort_clause.is_empty()
        && s.limit_count.is_some()
        && s.op == pb::SetOperation::SetopNone as i32
}

/// Whether `s` locks rows by shares: a locking clause, a LIMIT and an ORDER BY. Each shard
/// applies the LIMIT to its own rows and would lock that many; inside a block the proxy learns
/// how many of each shard's rows the ordered answer uses and locks only those
/// (`exec::lock_share`).
pub fn locks_shares(s: &pb::SelectStmt) -> bool {
    !s.locking_clause.is_empty()
        && !s.sort_clause.is_empty()
        && s.limit_count.is_some()
        && s.op == pb::SetOperation::SetopNone as i32
}

#[cfg(test)]
mod tests {
    use super::{fills_in_turn, locks_shares};
    use pg_query::NodeEnum;

    fn select(sql: &str, judge: fn(&pg_query::protobuf::SelectStmt) -> bool) -> bool {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().unwrap();
        match stmt.node.as_ref() {
            Some(NodeEnum::SelectStmt(s)) => judge(s),
            other => panic!("not a SELECT: {other:?}"),
        }
    }

    #[test]
    fn locking_reads_with_a_limit_and_no_order_fill_in_turn() {
        let cases = [
            (
                "SELECT id FROM jobs WHERE state = 'new' LIMIT 5 FOR UPDATE SKIP LOCKED",
                true,
            ),
            ("SELECT * FROM jobs LIMIT $1 FOR UPDATE", true),
            (
                "SELECT * FROM jobs LIMIT 3 OFFSET 2 FOR NO KEY UPDATE NOWAIT",
                true,
            ),
            (
                "SELECT * FROM jobs FETCH FIRST 2 ROWS ONLY FOR SHARE SKIP LOCKED",
                true,
            ),
            ("SELECT * FROM jobs FOR UPDATE SKIP LOCKED LIMIT 1", true),
            (
                "SELECT * FROM jobs ORDER BY id LIMIT 5 FOR UPDATE SKIP LOCKED",
                false,
            ),
            ("SELECT * FROM jobs FOR UPDATE SKIP LOCKED", false),
            ("SELECT * FROM jobs LIMIT 5", false),
            ("SELECT * FROM jobs OFFSET 5 FOR UPDATE", false),
        ];
        for (sql, want) in cases {
            assert_eq!(select(sql, fills_in_turn), want, "{sql}");
        }
    }

    #[test]
    fn ordered_locking_reads_with_a_limit_lock_by_shares() {
        let cases = [
            (
                "SELECT id FROM jobs ORDER BY priority, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                true,
            ),
            (
                "SELECT * FROM jobs ORDER BY id LIMIT $1 OFFSET 2 FOR SHARE",
                true,
            ),
            (
                "SELECT * FROM jobs ORDER BY id FETCH FIRST 2 ROWS ONLY FOR UPDATE",
                true,
            ),
            ("SELECT * FROM jobs LIMIT 5 FOR UPDATE", false),
            ("SELECT * FROM jobs ORDER BY id FOR UPDATE", false),
            ("SELECT * FROM jobs ORDER BY id LIMIT 5", false),
        ];
        for (sql, want) in cases {
            assert_eq!(select(sql, locks_shares), want, "{sql}");
        }
    }
}
