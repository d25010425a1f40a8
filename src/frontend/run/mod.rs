//! The session's side of running statements: opening and closing the implicit block, checking
//! out and releasing the connections this session holds, answering the client. The work on the
//! server connections themselves is `exec`'s, which never sees the session.

pub mod atomic;
pub mod before_batch;
pub mod broadcast;
pub mod collect;
pub mod copy_in;
pub mod copy_out;
pub mod cursor;
pub mod group_names;
pub mod in_turn;
pub mod index_owner;
pub mod insert_columns;
pub mod lookup;
pub mod split_insert;
pub mod subquery_first;
pub mod subquery_first_bind;
pub mod table_columns;
pub mod unnest_insert;
