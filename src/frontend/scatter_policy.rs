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
        let allowed = self
            .proxy
            .config
            .users
            .iter()
            .find(|u| u.name == self.user)
            .is_none_or(|u| u.allow_scatter);
        match crate::router::scatter_guard::refuse_scatter(routes, facts) {
            Some(message) if !allowed => Err(refusal(message)),
            _ => Ok(()),
        }
    }
}
