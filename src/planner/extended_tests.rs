use super::*;
use crate::planner::batch::tests::{batch, facts, FALLBACK};
use crate::planner::tests::{block_of, flush_open_on, in_block};
use crate::planner::{Ending, Target};
use crate::refusal::Refusal;
use crate::router::Route;

fn plan(g: Gathered, b: &Batch, state: &SessionState) -> Outcome {
    plan_extended(&g, b, state, block_of(state), || FALLBACK)
}

fn refused(outcome: &Outcome) -> Option<(Refusal, Option<u32>)> {
    match outcome {
        Outcome::Batch(BatchPlan::Refuse { refusal, raise_on }) => {
            Some((refusal.clone(), *raise_on))
        }
        _ => None,
    }
}

#[test]
fn each_gathered_path_wins_in_its_order() {
    let select = [facts("SELECT * FROM users WHERE user_id = $1")];
    let one = [Route::Single(2)];
    let idle = SessionState::default();
    let b = batch(&one, &select);
    let all = Gathered {
        claims: true,
        held_portal: true,
        served_cursor: true,
        copy_in: true,
        empty: true,
        unnest: true,
    };
    // (what was gathered, the path taken)
    let cases = [
        (all, Outcome::Claims),
        (
            Gathered {
                claims: false,
                ..all
            },
            Outcome::HeldPortal,
        ),
        (
            Gathered {
                claims: false,
                held_portal: false,
                ..all
            },
            Outcome::ServedCursor,
        ),
        (
            Gathered {
                copy_in: true,
                empty: true,
                unnest: true,
                ..Gathered::default()
            },
            Outcome::CopyIn,
        ),
        (
            Gathered {
                empty: true,
                unnest: true,
                ..Gathered::default()
            },
            Outcome::Nothing,
        ),
        (
            Gathered {
                unnest: true,
                ..Gathered::default()
            },
            Outcome::UnnestInsert,
        ),
        (
            Gathered::default(),
            Outcome::Batch(BatchPlan::Run(Target::Single(2))),
        ),
    ];
    for (gathered, want) in cases {
        assert_eq!(plan(gathered, &b, &idle), want, "{gathered:?}");
    }
}

#[test]
fn a_message_refused_while_resolving_runs_nothing() {
    let select = [facts("SELECT * FROM users WHERE user_id = $1")];
    let one = [Route::Single(2)];
    let idle = SessionState::default();
    let failed = Batch {
        failed_before: true,
        ..batch(&one, &select)
    };
    // Claims, held portals, served cursors and UNNEST splits run statements: not taken.
    let runs = Gathered {
        claims: true,
        held_portal: true,
        served_cursor: true,
        unnest: true,
        ..Gathered::default()
    };
    assert_eq!(
        plan(runs, &failed, &idle),
        Outcome::Batch(BatchPlan::Run(Target::Single(2)))
    );
    // A COPY answers the error itself; an empty batch answers it alone.
    let copy = Gathered {
        copy_in: true,
        ..Gathered::default()
    };
    assert_eq!(plan(copy, &failed, &idle), Outcome::CopyIn);
    let empty = Gathered {
        empty: true,
        ..Gathered::default()
    };
    assert_eq!(plan(empty, &failed, &idle), Outcome::Nothing);
}

#[test]
fn an_unnest_insert_splits_only_at_a_sync_outside_an_open_flush() {
    let insert = [facts(
        "INSERT INTO users (user_id, name) SELECT * FROM UNNEST($1::bigint[], $2::text[])",
    )];
    let none: [Route; 0] = [];
    let unnest = Gathered {
        unnest: true,
        ..Gathered::default()
    };
    let at_sync = batch(&none, &insert);
    assert_eq!(
        plan(unnest, &at_sync, &SessionState::default()),
        Outcome::UnnestInsert
    );
    assert_eq!(
        plan(unnest, &at_sync, &in_block(&[1, 2])),
        Outcome::UnnestInsert
    );
    // A Flush left an implicit transaction open, or the batch ends at a Flush, or it carries
    // pgshard's own command: the usual planning decides.
    assert!(!matches!(
        plan(unnest, &at_sync, &flush_open_on(3)),
        Outcome::UnnestInsert
    ));
    let at_flush = Batch {
        ending: Ending::Flush,
        ..batch(&none, &insert)
    };
    assert!(!matches!(
        plan(unnest, &at_flush, &SessionState::default()),
        Outcome::UnnestInsert
    ));
    let local = Batch {
        local: true,
        ..batch(&none, &insert)
    };
    assert_eq!(
        plan(unnest, &local, &SessionState::default()),
        Outcome::Batch(BatchPlan::Local)
    );
}

#[test]
fn the_batch_plan_decides_the_rest() {
    let select = [facts("SELECT * FROM users WHERE user_id = $1")];
    let two = [select[0].clone(), select[0].clone()];
    let (a, b) = (Route::Single(4), Route::Single(5));
    let keyed = [a.clone()];
    let apart = [a, b];
    // A keyed read on another shard than the one a Flush left open: unit by unit.
    assert_eq!(
        plan(
            Gathered::default(),
            &batch(&keyed, &select),
            &flush_open_on(3)
        ),
        Outcome::Batch(BatchPlan::Units)
    );
    // A keyless UPDATE by a user who may not scatter: refused before anything ran.
    let update = [facts("UPDATE users SET name = 'x' WHERE user_id > $1")];
    let scatter = [Route::Scatter(vec![1, 2, 3])];
    let guarded = Batch {
        allow_scatter: false,
        ..batch(&scatter, &update)
    };
    let got = plan(Gathered::default(), &guarded, &SessionState::default());
    assert_eq!(refused(&got).map(|(_, on)| on), Some(None), "{got:?}");
    // Two shards in one Sync, outside a block: unit by unit (an implicit transaction that
    // commits at the Sync).
    assert_eq!(
        plan(
            Gathered::default(),
            &batch(&apart, &two),
            &SessionState::default()
        ),
        Outcome::Batch(BatchPlan::Units)
    );
}

/// The executed statements of a batch: text and facts.
type Executed<'a> = Vec<(&'a str, Option<&'a StatementFacts>)>;

#[test]
fn a_failed_block_takes_only_its_ending() {
    let commit = facts("COMMIT");
    let rollback = facts("ROLLBACK");
    let rollback_to = facts("ROLLBACK TO SAVEPOINT s");
    let select = facts("SELECT 1");
    // (block failed, executed statements, rejected)
    let cases: [(bool, Executed, bool); 7] = [
        (false, vec![("SELECT 1", Some(&select))], false),
        (true, vec![("SELECT 1", Some(&select))], true),
        (true, vec![("COMMIT", Some(&commit))], false),
        (true, vec![("ROLLBACK", Some(&rollback))], false),
        (
            true,
            vec![("ROLLBACK TO SAVEPOINT s", Some(&rollback_to))],
            false,
        ),
        (true, vec![("", None)], true),
        // Parse/Describe alone (nothing executed) may still be answered.
        (true, vec![], false),
    ];
    for (failed, executed, want) in cases {
        let label = format!(
            "{failed} {:?}",
            executed.iter().map(|e| e.0).collect::<Vec<_>>()
        );
        assert_eq!(rejected_by_failed_block(failed, executed), want, "{label}");
    }
}
