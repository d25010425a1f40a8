//! Transaction-control statements read with the real grammar: what a savepoint statement does (so
//! a block can keep the savepoints late-joining shards must replay) and whether a COMMIT or
//! ROLLBACK chains a new block.

/// SAVEPOINT, RELEASE [SAVEPOINT], ROLLBACK TO [SAVEPOINT], with the savepoint's name as Postgres
/// stores it (case-folded unless quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointOp {
    Define(String),
    Release(String),
    RollbackTo(String),
}

fn transaction_stmt(sql: &str) -> Option<pg_query::protobuf::TransactionStmt> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    match raw.stmt.as_ref()?.node.as_ref()? {
        pg_query::NodeEnum::TransactionStmt(stmt) => Some(stmt.clone()),
        _ => None,
    }
}

/// True for `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN`: a new block with the same
/// characteristics starts right away.
pub fn chains(sql: &str) -> bool {
    transaction_stmt(sql).is_some_and(|s| s.chain)
}

/// True for `BEGIN READ ONLY` / `START TRANSACTION … READ ONLY`: such a block may read from
/// replicas.
pub fn begins_read_only(sql: &str) -> bool {
    let Some(stmt) = transaction_stmt(sql) else {
        return false;
    };
    stmt.options.iter().any(|opt| {
        let Some(pg_query::NodeEnum::DefElem(d)) = opt.node.as_ref() else {
            return false;
        };
        if d.defname != "transaction_read_only" {
            return false;
        }
        match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
            Some(pg_query::NodeEnum::AConst(c)) => matches!(
                c.val,
                Some(pg_query::protobuf::a_const::Val::Ival(
                    pg_query::protobuf::Integer { ival: 1 }
                ))
            ),
            _ => false,
        }
    })
}

/// How a shard joining a block begins it: a plain BEGIN, then the client's BEGIN options as one
/// `SET TRANSACTION …`. Sent in front of the block's next statement, an option the shard rejects
/// (SERIALIZABLE on a hot standby) then aborts the block there, instead of leaving the statement
/// behind it to run outside any block. Text the grammar does not read as a BEGIN is kept as is.
pub fn joining_begin(begin_sql: &str) -> String {
    use pg_query::protobuf::TransactionStmtKind as K;
    if begin_sql.eq_ignore_ascii_case("begin") {
        return "BEGIN".into();
    }
    let Some(stmt) = transaction_stmt(begin_sql) else {
        return begin_sql.to_string();
    };
    if !matches!(
        K::try_from(stmt.kind),
        Ok(K::TransStmtBegin | K::TransStmtStart)
    ) {
        return begin_sql.to_string();
    }
    if stmt.options.is_empty() {
        return "BEGIN".into();
    }
    match set_transaction(stmt.options) {
        Some(set) => format!("BEGIN;{set}"),
        None => begin_sql.to_string(),
    }
}

/// `SET TRANSACTION` with the given transaction options, deparsed from the grammar's own tree.
fn set_transaction(options: Vec<pg_query::protobuf::Node>) -> Option<String> {
    let mut template = pg_query::parse("SET TRANSACTION READ ONLY", 0)
        .ok()?
        .protobuf;
    let node = template.stmts.first_mut()?.stmt.as_mut()?.node.as_mut()?;
    let pg_query::NodeEnum::VariableSetStmt(set) = node else {
        return None;
    };
    set.args = options;
    crate::sql_text::deparse(template)
}

/// The savepoint operation of `sql`, when it is exactly one savepoint statement.
pub fn savepoint_op(sql: &str) -> Option<SavepointOp> {
    use pg_query::protobuf::TransactionStmtKind as K;
    let stmt = transaction_stmt(sql)?;
    let name = stmt.savepoint_name.clone();
    match K::try_from(stmt.kind).ok()? {
        K::TransStmtSavepoint => Some(SavepointOp::Define(name)),
        K::TransStmtRelease => Some(SavepointOp::Release(name)),
        K::TransStmtRollbackTo => Some(SavepointOp::RollbackTo(name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_savepoint_statements() {
        assert_eq!(
            savepoint_op("SAVEPOINT Sp1"),
            Some(SavepointOp::Define("sp1".into()))
        );
        assert_eq!(
            savepoint_op("release savepoint \"Sp1\";"),
            Some(SavepointOp::Release("Sp1".into()))
        );
        assert_eq!(
            savepoint_op("RELEASE a"),
            Some(SavepointOp::Release("a".into()))
        );
        assert_eq!(
            savepoint_op("ROLLBACK TO SAVEPOINT a"),
            Some(SavepointOp::RollbackTo("a".into()))
        );
        assert_eq!(
            savepoint_op("rollback work to b"),
            Some(SavepointOp::RollbackTo("b".into()))
        );
    }

    #[test]
    fn read_only_blocks_are_recognised() {
        assert!(begins_read_only("BEGIN READ ONLY"));
        assert!(begins_read_only(
            "start transaction isolation level repeatable read, read only"
        ));
        assert!(!begins_read_only("BEGIN READ WRITE"));
        assert!(!begins_read_only("BEGIN"));
        assert!(!begins_read_only("BEGIN ISOLATION LEVEL SERIALIZABLE"));
    }

    #[test]
    fn a_joining_shard_begins_plainly_then_sets_the_options() {
        let table = [
            ("BEGIN", "BEGIN"),
            ("start transaction", "BEGIN"),
            ("begin work", "BEGIN"),
            (
                "BEGIN ISOLATION LEVEL REPEATABLE READ",
                "BEGIN;SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            ),
            (
                "start transaction isolation level serializable, read only, deferrable",
                "BEGIN;SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            ),
            ("BEGIN READ WRITE", "BEGIN;SET TRANSACTION READ WRITE"),
            ("not a begin", "not a begin"),
        ];
        for (begin, want) in table {
            assert_eq!(joining_begin(begin), want, "{begin}");
        }
    }

    #[test]
    fn chained_commits_are_recognised() {
        assert!(chains("COMMIT AND CHAIN"));
        assert!(chains("rollback and chain;"));
        assert!(!chains("COMMIT AND NO CHAIN"));
        assert!(!chains("END"));
        assert!(!chains("SELECT 1"));
    }

    #[test]
    fn other_statements_are_not_savepoints() {
        assert_eq!(savepoint_op("ROLLBACK"), None);
        assert_eq!(savepoint_op("SELECT 1"), None);
        assert_eq!(savepoint_op("SAVEPOINT a; SAVEPOINT b"), None);
        assert_eq!(savepoint_op("not sql at all"), None);
    }
}
