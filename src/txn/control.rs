//! What the proxy does with a transaction-control statement, given the state of the client's
//! block: answer it itself (a block no shard has seen yet, or one that spans shards and ends
//! through the coordinator), let the shard that holds the block answer it, or refuse what follows
//! an error exactly as Postgres would. Pure, so every combination has a table test.

/// A statement as transaction control sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlStatement {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT or RELEASE.
    Savepoint,
    /// ROLLBACK TO SAVEPOINT: the one statement that may rescue an aborted block.
    RollbackTo,
    /// A session SET/RESET or SET LOCAL: remembered while no shard has the block yet.
    Setting,
    /// Anything else.
    Other,
}

/// The client's block, as far as the decision goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockView {
    /// A block (explicit or implicit) is open.
    pub open: bool,
    /// At least one shard runs the block.
    pub bound: bool,
    /// More than one shard runs the block: it ends through the coordinator.
    pub distributed: bool,
    /// The proxy refused a statement inside the block.
    pub refused: bool,
    /// The block is aborted: refused by the proxy, or an error on one of its shards.
    pub failed: bool,
}

/// What to do with one statement sent on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// BEGIN outside a block: open one, bound to no shard until its first statement.
    OpenBlock,
    /// BEGIN inside a block no shard has seen: Postgres's warning, and nothing changes.
    WarnAlreadyInProgress,
    /// COMMIT/ROLLBACK outside any block: Postgres's warning, and the tag.
    WarnNoTransaction,
    /// End the block in the proxy: roll back (or commit, for COMMIT of a healthy block) every
    /// participant. Used when no single shard can end it alone.
    EndInProxy,
    /// Remember the statement for the shards that join later, and answer it.
    Remember,
    /// The block is aborted: 25P02, as Postgres says it.
    RefuseAborted,
    /// Several statements in one request start by ending an aborted block that the proxy must
    /// end itself: refused with a request to send the COMMIT/ROLLBACK on its own.
    SendOnItsOwn,
    /// Route it like any statement: the shard that holds the block answers it (a COMMIT or
    /// ROLLBACK of a block on one shard, ROLLBACK TO SAVEPOINT after an error, or ordinary work).
    Route,
}

/// The decision for `statement` sent on its own while the block is as `block` says.
pub fn decide(block: BlockView, statement: ControlStatement) -> ControlAction {
    use ControlAction as A;
    use ControlStatement as S;
    match statement {
        S::Begin if !block.open => A::OpenBlock,
        S::Begin if block.failed => A::RefuseAborted,
        S::Begin if !block.bound => A::WarnAlreadyInProgress,
        S::Commit | S::Rollback if !block.open => A::WarnNoTransaction,
        // No shard has the block, it spans shards, or the proxy refused a statement in it (its
        // shards' transactions are healthy, so only the proxy knows to roll them back).
        S::Commit | S::Rollback if !block.bound || block.distributed || block.refused => {
            A::EndInProxy
        }
        // One shard holds the block, healthy or aborted by its own error: that shard ends it and
        // reports COMMIT or ROLLBACK exactly as Postgres does.
        S::Commit | S::Rollback => A::Route,
        S::Savepoint | S::RollbackTo | S::Setting
            if block.open && !block.bound && !block.refused =>
        {
            A::Remember
        }
        // ROLLBACK TO SAVEPOINT may rescue an aborted block; the shards decide.
        S::RollbackTo => A::Route,
        _ if block.failed => A::RefuseAborted,
        _ => A::Route,
    }
}

/// The decision for a request of several statements, whose first is `first`: Postgres runs them
/// in order, so an aborted block refuses all of them unless the first ends the block or rolls back
/// to a savepoint. `None` means "route the request as usual".
pub fn decide_many(block: BlockView, first: ControlStatement) -> Option<ControlAction> {
    if !block.failed {
        return None;
    }
    match first {
        ControlStatement::Commit | ControlStatement::Rollback | ControlStatement::RollbackTo
            if block.bound && !block.distributed && !block.refused =>
        {
            None
        }
        ControlStatement::Commit | ControlStatement::Rollback | ControlStatement::RollbackTo => {
            Some(ControlAction::SendOnItsOwn)
        }
        _ => Some(ControlAction::RefuseAborted),
    }
}

#[cfg(test)]
mod tests {
    use super::ControlAction as A;
    use super::ControlStatement as S;
    use super::*;

    const IDLE: BlockView = BlockView {
        open: false,
        bound: false,
        distributed: false,
        refused: false,
        failed: false,
    };
    const PENDING: BlockView = BlockView { open: true, ..IDLE };
    const ONE_SHARD: BlockView = BlockView {
        bound: true,
        ..PENDING
    };
    const ONE_SHARD_FAILED: BlockView = BlockView {
        failed: true,
        ..ONE_SHARD
    };
    const PENDING_REFUSED: BlockView = BlockView {
        refused: true,
        failed: true,
        ..PENDING
    };
    const ONE_SHARD_REFUSED: BlockView = BlockView {
        refused: true,
        failed: true,
        ..ONE_SHARD
    };
    const TWO_SHARDS: BlockView = BlockView {
        distributed: true,
        ..ONE_SHARD
    };
    const TWO_SHARDS_FAILED: BlockView = BlockView {
        failed: true,
        ..TWO_SHARDS
    };

    #[test]
    fn every_block_state_and_statement() {
        let table = [
            // Outside a block.
            (IDLE, S::Begin, A::OpenBlock),
            (IDLE, S::Commit, A::WarnNoTransaction),
            (IDLE, S::Rollback, A::WarnNoTransaction),
            (IDLE, S::Savepoint, A::Route),
            (IDLE, S::Setting, A::Route),
            (IDLE, S::Other, A::Route),
            // BEGIN sent, no shard yet.
            (PENDING, S::Begin, A::WarnAlreadyInProgress),
            (PENDING, S::Commit, A::EndInProxy),
            (PENDING, S::Rollback, A::EndInProxy),
            (PENDING, S::Savepoint, A::Remember),
            (PENDING, S::RollbackTo, A::Remember),
            (PENDING, S::Setting, A::Remember),
            (PENDING, S::Other, A::Route),
            // The first statement was refused by the proxy: nothing reached a shard.
            (PENDING_REFUSED, S::Rollback, A::EndInProxy),
            (PENDING_REFUSED, S::Begin, A::RefuseAborted),
            (PENDING_REFUSED, S::Commit, A::EndInProxy),
            (PENDING_REFUSED, S::RollbackTo, A::Route),
            (PENDING_REFUSED, S::Savepoint, A::RefuseAborted),
            (PENDING_REFUSED, S::Setting, A::RefuseAborted),
            (PENDING_REFUSED, S::Other, A::RefuseAborted),
            // One shard, healthy.
            (ONE_SHARD, S::Begin, A::Route),
            (ONE_SHARD, S::Commit, A::Route),
            (ONE_SHARD, S::Rollback, A::Route),
            (ONE_SHARD, S::Savepoint, A::Route),
            (ONE_SHARD, S::Other, A::Route),
            // One shard whose statement failed there (the block's first statement, or a later
            // one): the shard ends the block, so ROLLBACK is answered ROLLBACK, not 25P02.
            (ONE_SHARD_FAILED, S::Rollback, A::Route),
            (ONE_SHARD_FAILED, S::Commit, A::Route),
            (ONE_SHARD_FAILED, S::RollbackTo, A::Route),
            (ONE_SHARD_FAILED, S::Savepoint, A::RefuseAborted),
            (ONE_SHARD_FAILED, S::Begin, A::RefuseAborted),
            (ONE_SHARD_FAILED, S::Setting, A::RefuseAborted),
            (ONE_SHARD_FAILED, S::Other, A::RefuseAborted),
            // One shard, then a statement the proxy refused: the shard's transaction is healthy,
            // so the proxy must roll it back itself.
            (ONE_SHARD_REFUSED, S::Rollback, A::EndInProxy),
            (ONE_SHARD_REFUSED, S::Commit, A::EndInProxy),
            (ONE_SHARD_REFUSED, S::RollbackTo, A::Route),
            (ONE_SHARD_REFUSED, S::Other, A::RefuseAborted),
            // Several shards: the coordinator ends the block.
            (TWO_SHARDS, S::Commit, A::EndInProxy),
            (TWO_SHARDS, S::Rollback, A::EndInProxy),
            (TWO_SHARDS, S::Savepoint, A::Route),
            (TWO_SHARDS_FAILED, S::Rollback, A::EndInProxy),
            (TWO_SHARDS_FAILED, S::Commit, A::EndInProxy),
            (TWO_SHARDS_FAILED, S::RollbackTo, A::Route),
            (TWO_SHARDS_FAILED, S::Savepoint, A::RefuseAborted),
            (TWO_SHARDS_FAILED, S::Other, A::RefuseAborted),
        ];
        for (block, statement, want) in table {
            assert_eq!(decide(block, statement), want, "{block:?} {statement:?}");
        }
    }

    #[test]
    fn several_statements_after_an_error() {
        let table = [
            (ONE_SHARD, S::Other, None),
            (ONE_SHARD_FAILED, S::Rollback, None),
            (ONE_SHARD_FAILED, S::RollbackTo, None),
            (ONE_SHARD_FAILED, S::Savepoint, Some(A::RefuseAborted)),
            (ONE_SHARD_FAILED, S::Other, Some(A::RefuseAborted)),
            (ONE_SHARD_REFUSED, S::Rollback, Some(A::SendOnItsOwn)),
            (TWO_SHARDS_FAILED, S::Rollback, Some(A::SendOnItsOwn)),
            (PENDING_REFUSED, S::Other, Some(A::RefuseAborted)),
        ];
        for (block, first, want) in table {
            assert_eq!(decide_many(block, first), want, "{block:?} {first:?}");
        }
    }
}
