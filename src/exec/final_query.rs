//! The final query of a merge plan with a final projection (see
//! `router::final_projection`): the merged values of each group go to one shard as typed
//! parameters of `SELECT <expressions> FROM (VALUES …) AS pgshard_m(c0, …)`, so Postgres itself
//! evaluates every expression over the merged aggregates. Pure: builds the protocol steps and
//! reads the answer.

use bytes::Bytes;

use crate::exec::exchange::{Expect, Step};
use crate::router::final_projection::{FinalProjection, INPUTS_ALIAS};
use crate::wire::backend as be;
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Parse};

/// Most parameters one Bind carries (the protocol's count is 16 bits; kept within the signed
/// range every decoder accepts).
const MAX_PARAMS: usize = 32_767;

/// A client `$n` the final expressions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientValue {
    /// A simple-protocol literal, spliced into the text as written.
    Sql(String),
    /// A bound value, bound again with the client's declared type (0: inferred as in the
    /// client's statement) and format.
    Bound {
        value: Option<Bytes>,
        binary: bool,
        type_oid: u32,
    },
}

/// The type and format of one input column of the final query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputType {
    pub oid: u32,
    pub format: i16,
}

/// Why the final query could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinalError {
    #[error("the expressions over aggregates read {0} merged values per group, more than one statement can bind")]
    TooManyInputs(usize),
    #[error("the final projection's answer is malformed: {0}")]
    Malformed(&'static str),
}

/// The steps computing the final expressions over `rows` (each row: the input columns'
/// values), in one pipeline ending with Sync. With no rows and `describe`, one all-NULL row
/// under `LIMIT 0` still yields the result's description.
pub fn steps(
    fp: &FinalProjection,
    client: &[(usize, ClientValue)],
    rows: &[Vec<Option<Bytes>>],
    types: &[InputType],
    result_formats: &[i16],
    describe: bool,
) -> Result<Vec<Step>, FinalError> {
    let width = types.len().max(1);
    let bound: Vec<&(usize, ClientValue)> = client
        .iter()
        .filter(|(_, v)| matches!(v, ClientValue::Bound { .. }))
        .collect();
    let room = MAX_PARAMS.saturating_sub(bound.len()) / width;
    if room == 0 {
        return Err(FinalError::TooManyInputs(types.len()));
    }
    let select =
        fp.select.render(
            &mut |n| match client.iter().find(|(k, _)| *k == n).map(|(_, v)| v) {
                Some(ClientValue::Sql(s)) => s.clone(),
                _ => match bound.iter().position(|(k, _)| *k == n) {
                    Some(i) => format!("${}", i + 1),
                    None => "NULL".into(),
                },
            },
        );
    let null_row = vec![None; types.len()];
    let (chunks, limit_zero): (Vec<&[Vec<Option<Bytes>>]>, bool) = if rows.is_empty() {
        (vec![std::slice::from_ref(&null_row)], true)
    } else {
        (rows.chunks(room).collect(), false)
    };
    let mut out = Vec::new();
    for (ci, chunk) in chunks.into_iter().enumerate() {
        let mut sql = select.clone();
        sql.push_str(" FROM (VALUES ");
        let mut param_types = Vec::new();
        let mut param_formats = Vec::new();
        let mut params = Vec::new();
        for (_, v) in &bound {
            if let ClientValue::Bound {
                value,
                binary,
                type_oid,
            } = v
            {
                param_types.push(*type_oid);
                param_formats.push(i16::from(*binary));
                params.push(value.clone());
            }
        }
        for (r, row) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (j, t) in types.iter().enumerate() {
                params.push(row.get(j).cloned().flatten());
                param_types.push(t.oid);
                param_formats.push(t.format);
                sql.push_str(&format!("${}, ", params.len()));
            }
            sql.push_str(&format!("{})", r + 1));
        }
        // No merged column at all when the final query computes only column-free expressions.
        let mut cols: Vec<String> = (0..types.len()).map(|j| format!("c{j}")).collect();
        cols.push("pgshard_ord".into());
        sql.push_str(&format!(
            ") AS {INPUTS_ALIAS}({}) ORDER BY {INPUTS_ALIAS}.pgshard_ord",
            cols.join(", ")
        ));
        if limit_zero {
            sql.push_str(" LIMIT 0");
        }
        out.push(Step::forwarded(
            Parse {
                name: String::new(),
                query: sql,
                param_types,
            }
            .encode(),
            Expect::Parse { register: None },
        ));
        out.push(Step::forwarded(
            Bind {
                portal: String::new(),
                statement: String::new(),
                param_formats,
                params,
                result_formats: result_formats.to_vec(),
            }
            .encode(),
            Expect::Bind,
        ));
        if describe && ci == 0 {
            out.push(Step::describe_unnamed_portal());
        }
        out.push(Step::execute_unnamed_portal());
    }
    out.push(Step::forwarded(fe::sync(), Expect::Sync));
    Ok(out)
}

/// The final query's answer: its RowDescription body (when described) and its rows.
pub struct Answer {
    pub description: Option<Bytes>,
    pub rows: Vec<Bytes>,
}

/// Reads the frames the final query's steps returned (no error among them).
pub fn answer(frames: Vec<Frame>) -> Answer {
    let mut description = None;
    let mut rows = Vec::new();
    for f in frames {
        match f.tag {
            be::ROW_DESCRIPTION if description.is_none() => description = Some(f.body),
            be::DATA_ROW => rows.push(f.body),
            _ => {}
        }
    }
    Answer { description, rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::merge_plan::{ColRef, SqlTemplate};
    use crate::wire::frontend::Parse;

    fn fp(select: &str) -> FinalProjection {
        FinalProjection {
            outputs: vec![1],
            inputs: vec![ColRef::Hidden(0), ColRef::Hidden(1)],
            select: SqlTemplate::from_sql(select).unwrap(),
        }
    }

    fn parses(steps: &[Step]) -> Vec<Parse> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Send { frame, .. } if frame.tag == fe::PARSE => {
                    Some(Parse::decode(&frame.body).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn values_are_typed_parameters_and_literals_stay_literals() {
        let types = [
            InputType { oid: 20, format: 1 },
            InputType {
                oid: 1700,
                format: 1,
            },
        ];
        let rows = vec![
            vec![Some(Bytes::from_static(b"a")), None],
            vec![None, Some(Bytes::from_static(b"b"))],
        ];
        let client = [
            (1, ClientValue::Sql("0.5".into())),
            (
                3,
                ClientValue::Bound {
                    value: Some(Bytes::from_static(b"7")),
                    binary: false,
                    type_oid: 23,
                },
            ),
        ];
        let s = steps(
            &fp("SELECT coalesce(pgshard_m.c0, $1) + pgshard_m.c1 * $3 AS x"),
            &client,
            &rows,
            &types,
            &[1],
            true,
        )
        .unwrap();
        let p = parses(&s);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].query,
            "SELECT coalesce(pgshard_m.c0, 0.5) + pgshard_m.c1 * $1 AS x FROM (VALUES ($2, $3, 1), ($4, $5, 2)) AS pgshard_m(c0, c1, pgshard_ord) ORDER BY pgshard_m.pgshard_ord"
        );
        assert_eq!(p[0].param_types, vec![23, 20, 1700, 20, 1700]);
        assert!(matches!(s.last(), Some(Step::Send { frame, .. }) if frame.tag == fe::SYNC));
        assert_eq!(s.len(), 5, "parse, bind, describe, execute, sync");
    }

    #[test]
    fn no_rows_still_describe_and_many_rows_split() {
        let types = [InputType { oid: 20, format: 0 }];
        let s = steps(&fp("SELECT pgshard_m.c0 AS x"), &[], &[], &types, &[], true).unwrap();
        let p = parses(&s);
        assert!(p[0].query.ends_with(" LIMIT 0"), "{}", p[0].query);
        let rows = vec![vec![None]; MAX_PARAMS + 1];
        let s = steps(
            &fp("SELECT pgshard_m.c0 AS x"),
            &[],
            &rows,
            &types,
            &[],
            false,
        )
        .unwrap();
        assert_eq!(parses(&s).len(), 2);
    }
}
