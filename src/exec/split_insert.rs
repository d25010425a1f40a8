//! Running a multi-row INSERT whose rows belong to several shards: one INSERT per shard with its
//! rows (see `router::split_insert`), all in parallel inside one block, then one answer as a single
//! Postgres gives it: RowDescription once, RETURNING rows in VALUES order, `INSERT 0 <total>`.

use crate::exec::collect::Collected;
use crate::refusal::refusal;
use crate::router::split_insert::ShardInsert;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;

/// The client's answer, put together from every shard's.
#[derive(Debug, PartialEq, Eq)]
pub struct Assembled {
    /// Notices, then RowDescription and the rows in VALUES order (when there is RETURNING).
    pub frames: Vec<Frame>,
    /// Rows inserted over all shards.
    pub inserted: u64,
}

/// Merges the shards' answers: `parts[i]` ran on the shard whose answer has the same `shard`.
/// Errors: a shard's error ([`first_error`]), or RETURNING rows that cannot be matched to their
/// VALUES rows.
pub fn assemble(parts: &[ShardInsert], answers: &[Collected]) -> Result<Assembled, ErrorFields> {
    if let Some(e) = first_error(parts, answers) {
        return Err(e);
    }
    let total_rows = parts.iter().map(|p| p.rows.len()).sum::<usize>();
    let mut notices = Vec::new();
    let mut description = None;
    let mut ordered: Vec<Option<Frame>> = vec![None; total_rows];
    let mut inserted = 0u64;
    for part in parts {
        let Some(answer) = answers.iter().find(|a| a.shard == part.shard) else {
            return Err(ErrorFields::error(
                "XX000",
                format!("shard {} did not answer its part of the INSERT", part.shard),
            ));
        };
        let mut rows = Vec::new();
        let mut completed = false;
        // One INSERT per row (`per_row`): the statement each row came from.
        let mut statement = 0usize;
        let mut from_statement = Vec::new();
        for frame in &answer.frames {
            match frame.tag {
                be::NOTICE_RESPONSE => notices.push(frame.clone()),
                be::ROW_DESCRIPTION => {
                    description.get_or_insert_with(|| frame.clone());
                }
                be::DATA_ROW => {
                    rows.push(frame.clone());
                    from_statement.push(statement);
                }
                be::COMMAND_COMPLETE if part.per_row() => {
                    let tag = be::decode_command_complete(&frame.body).unwrap_or("");
                    inserted += insert_count(tag, part.shard)?;
                    statement += 1;
                    completed = statement == part.rows.len();
                }
                be::COMMAND_COMPLETE => {
                    let tag = be::decode_command_complete(&frame.body).unwrap_or("");
                    inserted += insert_count(tag, part.shard)?;
                    completed = true;
                }
                _ => {}
            }
        }
        if !completed {
            return Err(ErrorFields::error(
                "XX000",
                format!(
                    "shard {} did not complete its part of the INSERT",
                    part.shard
                ),
            ));
        }
        if part.per_row() {
            // Each statement inserted its one row or skipped it.
            let mut seen = std::collections::BTreeSet::new();
            for (row, k) in rows.into_iter().zip(from_statement) {
                let pos = part.rows.get(k).copied().filter(|_| seen.insert(k));
                let Some(slot) = pos.and_then(|p| ordered.get_mut(p)) else {
                    return Err(ErrorFields::error(
                        "XX000",
                        format!(
                            "shard {} returned more than one row for one row's INSERT",
                            part.shard
                        ),
                    ));
                };
                *slot = Some(row);
            }
        } else if description.is_some() || !rows.is_empty() {
            if rows.len() != part.rows.len() {
                return Err(refusal(format!(
                    "RETURNING gave {} rows for the {} rows inserted on shard {}, so they cannot be put back in VALUES order; insert the rows of each shard separately",
                    rows.len(),
                    part.rows.len(),
                    part.shard
                )));
            }
            for (row, &pos) in rows.into_iter().zip(&part.rows) {
                if let Some(slot) = ordered.get_mut(pos) {
                    *slot = Some(row);
                }
            }
        }
    }
    let mut frames = notices;
    // Without Describe (extended protocol) the rows come without a RowDescription.
    frames.extend(description);
    frames.extend(ordered.into_iter().flatten());
    Ok(Assembled { frames, inserted })
}

/// The row count of an INSERT's CommandComplete tag (`INSERT 0 <n>`).
fn insert_count(tag: &str, shard: u32) -> Result<u64, ErrorFields> {
    tag.strip_prefix("INSERT 0 ")
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            ErrorFields::error(
                "XX000",
                format!("shard {shard} answered the INSERT with `{tag}`"),
            )
        })
}

/// What the client sent for a split INSERT, so its answer has the same shape.
pub struct SplitReply {
    /// Answers the proxy gives before the rows (ParseComplete, BindComplete).
    pub head: Vec<Frame>,
    /// The client described the portal: RowDescription, or NoData without RETURNING.
    pub describe: bool,
}

/// The error one Postgres would report for the whole INSERT, which stops at its first failing
/// row in VALUES order: of the shards that failed, the one whose failing row comes first. With
/// one INSERT per row that row is known (the statements completed before the error); else the
/// part's first row stands for it.
fn first_error(parts: &[ShardInsert], answers: &[Collected]) -> Option<ErrorFields> {
    let failed_row = |answer: &Collected| {
        let part = parts.iter().find(|p| p.shard == answer.shard)?;
        let completed = if part.per_row() {
            answer
                .frames
                .iter()
                .filter(|f| f.tag == be::COMMAND_COMPLETE)
                .count()
        } else {
            0
        };
        part.rows.get(completed).or(part.rows.last()).copied()
    };
    answers
        .iter()
        .filter_map(|a| Some((failed_row(a).unwrap_or(usize::MAX), a.error()?)))
        .min_by_key(|(row, _)| *row)
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::exchange::Outcome;

    fn part(shard: u32, rows: &[usize]) -> ShardInsert {
        ShardInsert {
            shard,
            sql: String::new(),
            rows: rows.to_vec(),
            row_statements: Vec::new(),
        }
    }

    fn answer(shard: u32, returning: Option<&[&str]>, count: usize) -> Collected {
        let mut frames = Vec::new();
        if let Some(rows) = returning {
            frames.push(be::row_description(&[("user_id", be::INT8_OID)]));
            for r in rows {
                frames.push(be::data_row(&[Some(r)]));
            }
        }
        frames.push(be::command_complete(&format!("INSERT 0 {count}")));
        frames.push(be::ready_for_query(be::TxStatus::InTransaction));
        Collected {
            shard,
            frames,
            outcome: Ok(Outcome::default()),
        }
    }

    #[test]
    fn returning_rows_come_back_in_values_order() {
        let parts = [part(1, &[0, 3]), part(2, &[1]), part(5, &[2, 4])];
        let answers = [
            answer(5, Some(&["c", "e"]), 2),
            answer(1, Some(&["a", "d"]), 2),
            answer(2, Some(&["b"]), 1),
        ];
        let got = assemble(&parts, &answers).unwrap();
        assert_eq!(got.inserted, 5);
        let mut want = vec![be::row_description(&[("user_id", be::INT8_OID)])];
        want.extend(["a", "b", "c", "d", "e"].map(|v| be::data_row(&[Some(v)])));
        assert_eq!(got.frames, want);
    }

    /// One INSERT per row: a shard's skipped rows leave their places empty, the others keep
    /// VALUES order.
    #[test]
    fn one_insert_per_row_puts_the_rows_inserted_in_values_order() {
        let per_row = |shard, rows: &[usize]| ShardInsert {
            row_statements: rows.iter().map(|r| format!("INSERT row {r}")).collect(),
            ..part(shard, rows)
        };
        let parts = [per_row(1, &[0, 2, 3]), per_row(2, &[1, 4])];
        let statement = |rows: &[&str]| {
            let mut frames = vec![be::row_description(&[("slug", be::TEXT_OID)])];
            frames.extend(rows.iter().map(|r| be::data_row(&[Some(r)])));
            frames.push(be::command_complete(&format!("INSERT 0 {}", rows.len())));
            frames
        };
        let collected = |shard, statements: Vec<Vec<Frame>>| {
            let mut frames: Vec<Frame> = statements.into_iter().flatten().collect();
            frames.push(be::ready_for_query(be::TxStatus::InTransaction));
            Collected {
                shard,
                frames,
                outcome: Ok(Outcome::default()),
            }
        };
        let answers = [
            collected(
                1,
                vec![statement(&["a"]), statement(&[]), statement(&["d"])],
            ),
            collected(2, vec![statement(&[]), statement(&["e"])]),
        ];
        let got = assemble(&parts, &answers).unwrap();
        assert_eq!(got.inserted, 3);
        let mut want = vec![be::row_description(&[("slug", be::TEXT_OID)])];
        want.extend(["a", "d", "e"].map(|v| be::data_row(&[Some(v)])));
        assert_eq!(got.frames, want);
        // A statement missing: not completed.
        let short = [
            collected(1, vec![statement(&["a"]), statement(&[])]),
            collected(2, vec![statement(&[]), statement(&["e"])]),
        ];
        assert_eq!(assemble(&parts, &short).unwrap_err().code, "XX000");
    }

    #[test]
    fn without_returning_only_the_count() {
        let parts = [part(1, &[0]), part(2, &[1, 2])];
        let answers = [answer(1, None, 1), answer(2, None, 2)];
        let got = assemble(&parts, &answers).unwrap();
        assert_eq!(got.inserted, 3);
        assert!(got.frames.is_empty());
        // ON CONFLICT DO NOTHING without RETURNING: fewer rows inserted is fine.
        let answers = [answer(1, None, 0), answer(2, None, 2)];
        assert_eq!(assemble(&parts, &answers).unwrap().inserted, 2);
    }

    #[test]
    fn errors_and_unmatched_rows_fail() {
        let parts = [part(1, &[0]), part(2, &[1, 2])];
        let mut bad = answer(2, None, 0);
        bad.outcome = Ok(Outcome {
            error: Some(ErrorFields::error("23505", "duplicate key")),
            ..Outcome::default()
        });
        let err = assemble(&parts, &[answer(1, None, 1), bad]).unwrap_err();
        assert_eq!(err.code, "23505");
        // Two shards fail: the error of the row that comes first in VALUES order, whatever the
        // order of the shards' answers.
        let failing = |shard, message: &str| {
            let mut a = answer(shard, None, 0);
            a.outcome = Ok(Outcome {
                error: Some(ErrorFields::error("23505", message)),
                ..Outcome::default()
            });
            a
        };
        let later_first = [part(1, &[1]), part(2, &[0, 2])];
        for answers in [
            [failing(1, "row 1"), failing(2, "row 0")],
            [failing(2, "row 0"), failing(1, "row 1")],
        ] {
            assert_eq!(
                assemble(&later_first, &answers).unwrap_err().message,
                "row 0"
            );
        }
        // One INSERT per row: the statements completed before the error say which row failed.
        let per_row = |shard, rows: &[usize]| ShardInsert {
            row_statements: rows.iter().map(|r| format!("INSERT row {r}")).collect(),
            ..part(shard, rows)
        };
        let rows_apart = [per_row(1, &[0, 3]), per_row(2, &[1])];
        let mut after_one = failing(1, "row 3");
        after_one.frames = vec![be::command_complete("INSERT 0 1")];
        let answers = [after_one, failing(2, "row 1")];
        assert_eq!(
            assemble(&rows_apart, &answers).unwrap_err().message,
            "row 1"
        );
        let err = assemble(
            &parts,
            &[answer(1, Some(&["a"]), 1), answer(2, Some(&["b"]), 1)],
        )
        .unwrap_err();
        assert_eq!(err.code, "0A000");
        assert!(err.message.contains("VALUES order"), "{}", err.message);
        let err = assemble(&parts, &[answer(1, None, 1)]).unwrap_err();
        assert_eq!(err.code, "XX000");
    }
}
