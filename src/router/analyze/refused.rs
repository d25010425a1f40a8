//! Why a statement is refused, as a typed reason: callers that can lift a refusal (running a
//! subquery first, placing a tenant's statement) match the variant, never the message text.

use crate::refusal::Refusal;

/// A statement pgshard cannot run exactly as one Postgres would (SQLSTATE 0A000); the message
/// names what is missing and, where there is one, the way around it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A sharded table read together with a table that lives only on the first shard.
    #[error("join of sharded table {sharded} with unsharded table {unsharded} (unsharded tables live only on the first shard); list {unsharded} in reference_tables to copy it to every shard")]
    JoinWithUnsharded { sharded: String, unsharded: String },
    /// A sharded table in a subquery, CTE or FROM item that does not run whole on each shard.
    #[error("subquery over sharded table {table} is not supported unless it is in WHERE and correlated with an outer sharded table by shard key (inner.key = outer.key)")]
    SubqueryOverSharded { table: String },
    /// Sharded tables joined on something other than their shard keys.
    #[error("join of sharded tables {a} and {b} that is not on their shard keys (not co-located)")]
    NotCoLocated { a: String, b: String },
    /// UNION, INTERSECT or EXCEPT with sharded tables in its arms.
    #[error("{op} over sharded tables is not supported yet")]
    SetOperation { op: &'static str },
    /// `INSERT … ON CONFLICT DO UPDATE SET key = …`: the row would have to move shards.
    #[error("ON CONFLICT DO UPDATE of shard key {table}.{key} is not supported")]
    OnConflictUpdatesKey { table: String, key: String },
    /// `INSERT … SELECT` (or a SELECT over sharded tables feeding any INSERT): its rows are
    /// known only once the SELECT has run; pgshard runs it first and inserts its rows.
    #[error("INSERT into {table} from a SELECT whose rows pgshard could not read first")]
    InsertSelect { table: String },
    /// An INSERT into a sharded table without a column list: pgshard cannot find the key.
    #[error("INSERT into sharded table {table} needs an explicit column list naming {key}")]
    InsertWithoutColumns { table: String, key: String },
    /// `UPDATE … SET key = …`: the row would have to move shards.
    #[error("UPDATE of shard key {table}.{key} is not supported")]
    UpdateOfKey { table: String, key: String },
    /// MERGE into or from a sharded table.
    #[error("MERGE on a sharded table is not supported")]
    MergeOnSharded,
    /// COPY FROM a server-side file or program into a sharded table: the rows never pass
    /// through pgshard.
    #[error("COPY FROM a file or program on the server cannot load a sharded table: pgshard splits rows by key as they pass through it")]
    CopyFromServer,
    /// COPY FROM into a reference table.
    #[error("COPY FROM into reference table {table} is not supported yet")]
    CopyIntoReference { table: String },
    /// `pgshard.next_id()` anywhere but alone in `SELECT pgshard.next_id()`.
    #[error("pgshard.next_id() is only supported as SELECT pgshard.next_id()")]
    NextIdElsewhere,
    /// DDL or maintenance naming tables on every shard and tables only on the first.
    #[error("a statement naming {everywhere}, which lives on every shard, and {local}, which lives only on the first shard, cannot run on one set of shards")]
    MixedPlacement { everywhere: String, local: String },
    /// CREATE VIEW, CREATE MATERIALIZED VIEW or CREATE TABLE … AS over a sharded table: the new
    /// relation would live on the first shard only, holding or showing that shard's rows alone.
    #[error("{what} {name} over sharded table {table}: it would live on the first shard only and see only that shard's rows of {table}")]
    DerivedFromSharded {
        what: &'static str,
        name: String,
        table: String,
    },
    /// A write to a reference table that would not write the same rows on every shard.
    #[error("write to reference table {table} must write the same rows on every shard, and {why}")]
    ReferenceWrite { table: String, why: String },
    /// `set_config('search_path', …, true)`: pgshard cannot follow a transaction-local path.
    #[error("{}", crate::router::set_config::LOCAL_SEARCH_PATH)]
    LocalSearchPath,
    /// `SET LOCAL search_path` sent with other statements in one query string.
    #[error("{}", crate::router::names::SET_LOCAL_NOT_ALONE)]
    SetLocalNotAlone,
    /// Table names after a change of search_path in the same query string.
    #[error("{}", crate::router::names::NAMES_AFTER_PATH_CHANGE)]
    NamesAfterPathChange,
    /// A statement whose tenant-schema tables are not all on one shard, or not known
    /// (see `router::schemas`).
    #[error("{0}")]
    TenantSchema(String),
    /// A LEFT, RIGHT or FULL JOIN that keeps every row of a side reading no sharded table while
    /// matching a sharded table: each shard would add its own NULL-extended rows.
    #[error("outer join ({join} JOIN) keeping every row of a side that reads no sharded table (a function, VALUES, a reference table) while matching sharded table {table} is not supported: each shard would answer every kept row, NULL-extended where its match lives on another shard")]
    OuterJoinKeepsUnsharded { join: &'static str, table: String },
    /// An INSERT row whose shard key is NULL: no shard can hold it. Told as Postgres tells a
    /// NOT NULL key column's violation (SQLSTATE 23502), which a sharded table's key nearly
    /// always is, so clients handle it as the integrity error it is.
    #[error("{}", null_key_message(table, key))]
    NullShardKey { table: String, key: String },
}

/// Starts every NULL shard key refusal's text, so a route's text maps back to SQLSTATE 23502.
pub const NULL_KEY_PREFIX: &str = "null value in column ";

/// Postgres's words for a NULL in a NOT NULL column: the relation without its schema.
fn null_key_message(table: &str, key: &str) -> String {
    let relation = table.rsplit('.').next().unwrap_or(table).trim_matches('"');
    format!("{NULL_KEY_PREFIX}\"{key}\" of relation \"{relation}\" violates not-null constraint")
}

impl Refused {
    /// What pgshard cannot do (the ErrorResponse's message).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// How to get there instead, when there is a known way (the ErrorResponse's hint).
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            Refused::JoinWithUnsharded { .. } => "a reference table is copied to every shard; otherwise read the unsharded table in a statement of its own",
            Refused::SubqueryOverSharded { .. } => "run the subquery first and pass its values as an array parameter (= ANY($1)), or correlate it with the outer sharded table by shard key",
            Refused::NotCoLocated { .. } => "join the tables on their shard keys (inner.key = outer.key), or read each table in a statement of its own",
            Refused::SetOperation { .. } => "give every branch an equality on its shard key that lands on one shard (the whole then runs there), or run each branch as a statement of its own",
            Refused::OnConflictUpdatesKey { .. } | Refused::UpdateOfKey { .. } => "delete the row and insert it with its new key",
            Refused::InsertWithoutColumns { .. } => "name the columns: INSERT INTO t (key, …) VALUES …",
            Refused::MergeOnSharded => "use INSERT … ON CONFLICT, or UPDATE and INSERT by key",
            Refused::CopyFromServer => "use COPY … FROM STDIN (psql's \\copy)",
            Refused::CopyIntoReference { .. } => "use INSERT, which writes every shard",
            Refused::NextIdElsewhere => "take the id with SELECT pgshard.next_id() first, then pass it as a parameter",
            Refused::MixedPlacement { .. } => "send one statement for each",
            Refused::OuterJoinKeepsUnsharded { .. } => "read the sharded table's matching rows in a statement of their own (WHERE key = ANY($1)) and match them in the application, or join it in a derived table (LEFT JOIN (SELECT … FROM t WHERE …) AS x), which pgshard reads first",
            Refused::NullShardKey { .. } => "pgshard places each row of a sharded table by its shard key, so the key of a row cannot be NULL",
            Refused::DerivedFromSharded { .. } => "query the sharded table itself (pgshard merges its shards' rows); to keep the rows in a table of their own, create that table (sharded, reference or unsharded) and fill it with INSERT … SELECT",
            _ => return None,
        })
    }

    /// The refusal as one text for a route (`message`, then `\nHINT:  hint` when there is one);
    /// `Refusal::of_route` splits it back into an ErrorResponse's message and hint.
    pub fn route_text(&self) -> String {
        match self.hint() {
            Some(h) => format!("{}{}{h}", self.message(), crate::refusal::HINT_SEPARATOR),
            None => self.message(),
        }
    }

    /// True when running the statement's uncorrelated subqueries and CTEs first (and writing
    /// their results into it) can lift the refusal.
    pub fn liftable_by_running_subqueries_first(&self) -> bool {
        matches!(
            self,
            Refused::SubqueryOverSharded { .. }
                | Refused::JoinWithUnsharded { .. }
                | Refused::InsertSelect { .. }
                | Refused::SetOperation { .. }
                | Refused::OuterJoinKeepsUnsharded { .. }
                | Refused::NotCoLocated { .. }
                | Refused::UpdateOfKey { .. }
        )
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Refusal {
        if let Refused::NullShardKey { .. } = r {
            return Refusal::NullShardKey {
                message: r.message(),
                hint: r.hint().map(str::to_string),
            };
        }
        Refusal::Unsupported {
            message: r.message(),
            hint: r.hint().map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_messages_and_say_what_can_lift_them() {
        let table = [
            (
                Refused::SubqueryOverSharded {
                    table: "orders".into(),
                },
                "subquery over sharded table orders is not supported",
                true,
            ),
            (
                Refused::JoinWithUnsharded {
                    sharded: "orders".into(),
                    unsharded: "plans".into(),
                },
                "join of sharded table orders with unsharded table plans",
                true,
            ),
            (
                Refused::NotCoLocated {
                    a: "users".into(),
                    b: "orders".into(),
                },
                "join of sharded tables users and orders that is not on their shard keys",
                true,
            ),
            (
                Refused::SetOperation { op: "UNION" },
                "UNION over sharded tables is not supported yet",
                true,
            ),
            (
                Refused::NamesAfterPathChange,
                "a statement naming tables after a change of search_path",
                false,
            ),
        ];
        for (refused, start, liftable) in table {
            assert!(refused.to_string().starts_with(start), "{refused}");
            assert_eq!(refused.liftable_by_running_subqueries_first(), liftable);
            let r: Refusal = refused.clone().into();
            assert_eq!(r.sqlstate(), "0A000");
            assert_eq!(r.to_string(), refused.to_string());
            assert_eq!(r.hint(), refused.hint());
            let routed = Refusal::of_route(refused.route_text());
            assert_eq!(routed, r);
        }
    }
}
