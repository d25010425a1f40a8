//! The database collation of each shard, which decides how text sorts there. Read once per server
//! address with a query on a pooled connection and remembered for the proxy's lifetime.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::backend::{BackendError, ServerConn};
use crate::gather::merge::split_row;
use crate::wire::backend as be;
use crate::wire::frontend as fe;

fn cache() -> &'static Mutex<HashMap<String, String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The `datcollate` of the database `conn` is connected to; `None` when the server did not say.
/// Must be called on an idle connection (outside a transaction the client sees).
pub async fn of(conn: &mut ServerConn) -> Result<Option<String>, BackendError> {
    let key = format!(
        "{}/{}",
        conn.addr,
        conn.params.get("database").map_or("", String::as_str)
    );
    if let Ok(c) = cache().lock() {
        if let Some(v) = c.get(&key) {
            return Ok(Some(v.clone()));
        }
    }
    conn.queue(&fe::query(
        "SELECT datcollate FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()",
    ));
    conn.flush().await?;
    let mut found = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            be::DATA_ROW => {
                if let Ok(cols) = split_row(&frame.body) {
                    found = cols
                        .first()
                        .cloned()
                        .flatten()
                        .and_then(|b| String::from_utf8(b.to_vec()).ok());
                }
            }
            be::READY_FOR_QUERY => {
                if let Ok(status) = be::decode_ready_for_query(&frame.body) {
                    conn.status = status;
                }
                break;
            }
            _ => {}
        }
    }
    if let (Some(v), Ok(mut c)) = (&found, cache().lock()) {
        c.insert(key, v.clone());
    }
    Ok(found)
}
