//! Applies `[[users]] allow_scatter = false` to a request whose routes are final (see
//! [`crate::router::scatter_guard`]).

use super::session::{refusal, Session};
use crate::router::{Route, StatementFacts};
use crate::wire::backend::ErrorFields;

impl Session {
    /// The refusal of a request that reaches more than one shard, for a user who may not scatter.
    pub fn scatter_policy(
        &self,
        routes: &[Route],
        facts: &[StatementFacts],
    ) -> Result<(), ErrorFields> {
        if self.allow_scatter() {
            return Ok(());
        }
        match crate::router::scatter_guard::refuse_scatter(routes, facts) {
            Some(message) => Err(refusal(message)),
            None => Ok(()),
        }
    }
}
