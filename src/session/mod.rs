//! The client session as plain data: its settings, its transaction block, its prepared
//! statements and portals, its cursors and its read-your-writes position. No socket, no server
//! connection.

pub mod causal_token;
pub mod cursors;
pub mod sql_prepare;
