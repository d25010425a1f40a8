//! The session side of `SET [LOCAL] pgshard.shard` / `pgshard.key`: answers the SET, RESET and
//! SHOW (the state and its rules live in [`crate::session::route_hints`]), and tells the paths
//! that place rows by key themselves (generated keys, COPY) when a hint applies, so they refuse
//! it instead of ignoring it.

use super::session::Session;
use crate::refusal::Refusal;
use crate::router::{LocalCommand, StatementFacts};
use crate::session::route_hints::{is_route_setting, SetOutcome};
use crate::wire::backend::{self as be, ErrorFields};

impl Session {
    /// True when a routing hint (the statement's comment, or the session's `SET pgshard.…`)
    /// applies to `facts`.
    pub fn route_hint_applies(&self, facts: &StatementFacts) -> bool {
        crate::planner::rules::hint_applies(&self.state, facts)
    }

    /// Answers `SET [LOCAL] pgshard.shard|key`, `RESET` and `SHOW` of them; false for every other
    /// local command (no ReadyForQuery either way).
    pub fn route_hint_command(&mut self, local: &LocalCommand, describe: bool) -> bool {
        let (name, value, is_local) = match local {
            LocalCommand::SetProxy { name, value } if is_route_setting(name) => {
                (name, value, false)
            }
            LocalCommand::SetProxyLocal { name, value } => (name, value, true),
            LocalCommand::ShowProxy { name } if is_route_setting(name) => {
                let text = self.state.route_hints.show(name);
                if describe {
                    self.io
                        .push(&be::row_description(&[(name.as_str(), be::TEXT_OID)]));
                }
                self.io.push(&be::data_row(&[Some(text.as_str())]));
                self.io.push(&be::command_complete("SHOW"));
                return true;
            }
            _ => return false,
        };
        if !is_route_setting(name) {
            self.io.push_error(&ErrorFields::from(Refusal::unsupported(format!(
                "SET LOCAL applies only to pgshard.shard and pgshard.key, not to pgshard.{name}: use SET"
            ))));
            return true;
        }
        let known = self.proxy.map.current().shards();
        let in_block = self.state.txn.as_ref().is_some_and(|t| !t.implicit);
        match self
            .state
            .route_hints
            .set(name, value.as_deref(), is_local, in_block, &known)
        {
            Ok(outcome) => {
                if outcome == SetOutcome::OutsideBlock {
                    let mut warning = ErrorFields::error(
                        "25P01",
                        "SET LOCAL can only be used in transaction blocks",
                    );
                    warning.severity = "WARNING".into();
                    self.io.push(&warning.to_notice());
                }
                self.io.push(&be::command_complete(if value.is_some() {
                    "SET"
                } else {
                    "RESET"
                }));
            }
            Err(message) => self
                .io
                .push_error(&ErrorFields::from(Refusal::InvalidHint(message))),
        }
        true
    }
}
