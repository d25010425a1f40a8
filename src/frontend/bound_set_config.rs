//! `SELECT set_config('TimeZone', $1, false)` (psycopg 3 with server-side binding, at connect):
//! the setting it makes is read from the Bind's values, text or binary, so the session tracks it
//! like `SET` (see `router::set_config`) instead of refusing it as a setting it cannot replay.

use std::sync::Arc;

use super::session::refusal;
use crate::router::params::BindParams;
use crate::router::set_config::resolve;
use crate::session::Prepared;
use crate::wire::backend::ErrorFields;
use crate::wire::frontend::Bind;

/// The statement as bound by `bind`: for a `set_config` call with parameters, a copy whose facts
/// carry the setting it makes; `None` for any other statement (it runs as prepared).
pub fn bind_set_config(
    statement: &Prepared,
    bind: &Bind,
) -> Result<Option<Arc<Prepared>>, ErrorFields> {
    let Some(call) = statement
        .facts
        .first()
        .and_then(|f| f.set_config_bound.as_ref())
    else {
        return Ok(None);
    };
    let params = BindParams {
        values: &bind.params,
        formats: &bind.param_formats,
        types: &statement.param_types,
    };
    let setting = resolve(call, &params).map_err(|what| {
        refusal(format!(
            "{what} (a setting pgshard cannot replay on the session's next server connection)"
        ))
    })?;
    let mut facts = statement.facts.to_vec();
    if let Some(f) = facts.first_mut() {
        f.set_config = setting.map(Ok);
        f.set_config_bound = None;
    }
    Ok(Some(Arc::new(Prepared {
        sql: statement.sql.clone(),
        param_types: statement.param_types.clone(),
        facts: facts.into(),
        server_name: statement.server_name.clone(),
    })))
}
