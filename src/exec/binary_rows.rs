//! Rows a proxy-served cursor holds in text, FETCHed in binary (psycopg's `cursor(name,
//! binary=True)`, any client binding a FETCH with binary result formats). The proxy does not
//! encode binary values itself: one shard runs `SELECT $1, …, $n` with the cursor's column types
//! as parameter types, bound once per row with the held text values and the client's result
//! formats, so each value reaches the client exactly as its type's send function writes it.
//! Pure: builds the protocol steps and reads the answer.

use bytes::Bytes;

use crate::exec::exchange::{Expect, Step};
use crate::exec::merge::row::split_row;
use crate::exec::merged::{decode_row_description, encode_row_description};
use crate::wire::backend as be;
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Parse};

/// Why held rows could not be turned into a binary answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryRowsError {
    #[error("a held cursor's row description is malformed")]
    Description,
    #[error("a held cursor's row is malformed")]
    Row,
    #[error("a FETCH asked for {asked} result formats for {columns} columns")]
    FormatCount { asked: usize, columns: usize },
}

/// Each column's result format as a Bind's result format codes give them: none is all text, one
/// applies to every column, else one per column.
pub fn column_formats(requested: &[i16], columns: usize) -> Result<Vec<i16>, BinaryRowsError> {
    match requested {
        [] => Ok(vec![0; columns]),
        [one] => Ok(vec![*one; columns]),
        each if each.len() == columns => Ok(each.to_vec()),
        each => Err(BinaryRowsError::FormatCount {
            asked: each.len(),
            columns,
        }),
    }
}

/// True when any column is asked for in binary: the held text rows need converting.
pub fn wants_binary(requested: &[i16]) -> bool {
    requested.iter().any(|f| *f != 0)
}

/// float4, float8 and their arrays: types whose text form is rounded when the session's
/// `extra_float_digits` is below 1, so their held text no longer gives the exact binary value.
const FLOAT_TYPES: [u32; 4] = [700, 701, 1021, 1022];

/// True when converting the held rows would give inexact values: a float column asked for in
/// binary while the session's `extra_float_digits` (`None`: the default, 1) is below 1.
pub fn would_round_floats(
    description: &Frame,
    requested: &[i16],
    extra_float_digits: Option<&str>,
) -> bool {
    let digits = extra_float_digits
        .map(|v| v.trim().trim_matches('\'').trim())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(1);
    if digits >= 1 {
        return false;
    }
    let Some(fields) = decode_row_description(&description.body) else {
        return false;
    };
    let Ok(formats) = column_formats(requested, fields.len()) else {
        return false;
    };
    fields
        .iter()
        .zip(formats)
        .any(|(f, format)| format != 0 && FLOAT_TYPES.contains(&f.type_oid))
}

/// The cursor's RowDescription with each column's format set to `requested`'s.
pub fn described(description: &Frame, requested: &[i16]) -> Result<Frame, BinaryRowsError> {
    let mut fields =
        decode_row_description(&description.body).ok_or(BinaryRowsError::Description)?;
    let formats = column_formats(requested, fields.len())?;
    for (f, format) in fields.iter_mut().zip(formats) {
        f.format = format;
    }
    Ok(encode_row_description(&fields))
}

/// The steps that turn `rows` (DataRow frames in text, under `description`) into DataRows in
/// `requested` formats, in one pipeline ending with Sync; empty when there are no rows.
pub fn steps(
    description: &Frame,
    rows: &[Frame],
    requested: &[i16],
) -> Result<Vec<Step>, BinaryRowsError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let fields = decode_row_description(&description.body).ok_or(BinaryRowsError::Description)?;
    let result_formats = column_formats(requested, fields.len())?;
    let query = format!(
        "SELECT {}",
        (1..=fields.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = Vec::with_capacity(3 + 2 * rows.len());
    out.push(Step::forwarded(
        Parse {
            name: String::new(),
            query,
            param_types: fields.iter().map(|f| f.type_oid).collect(),
        }
        .encode(),
        Expect::Parse { register: None },
    ));
    for (i, row) in rows.iter().enumerate() {
        let params = split_row(&row.body).map_err(|_| BinaryRowsError::Row)?;
        if params.len() != fields.len() {
            return Err(BinaryRowsError::Row);
        }
        out.push(Step::forwarded(
            Bind {
                portal: String::new(),
                statement: String::new(),
                param_formats: Vec::new(),
                params,
                result_formats: result_formats.clone(),
            }
            .encode(),
            Expect::Bind,
        ));
        if i == 0 {
            // The kept answer needs a description; the client gets the cursor's own.
            out.push(Step::describe_unnamed_portal());
        }
        out.push(Step::execute_unnamed_portal());
    }
    out.push(Step::forwarded(fe::sync(), Expect::Sync));
    Ok(out)
}

/// The converted rows as DataRow frames, in the held rows' order.
pub fn data_rows(bodies: Vec<Bytes>) -> Vec<Frame> {
    bodies
        .into_iter()
        .map(|b| Frame::new(be::DATA_ROW, b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::merged::test_field;
    use crate::wire::frontend::Bind;

    fn data_row(values: &[Option<&str>]) -> Frame {
        let mut b = Vec::new();
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        Frame::new(be::DATA_ROW, Bytes::from(b))
    }

    fn description() -> Frame {
        encode_row_description(&[test_field("id", 20), test_field("at", 1184)])
    }

    #[test]
    fn formats_follow_the_bind_rules() {
        assert_eq!(column_formats(&[], 3), Ok(vec![0, 0, 0]));
        assert_eq!(column_formats(&[1], 3), Ok(vec![1, 1, 1]));
        assert_eq!(column_formats(&[1, 0, 1], 3), Ok(vec![1, 0, 1]));
        assert_eq!(
            column_formats(&[1, 0], 3),
            Err(BinaryRowsError::FormatCount {
                asked: 2,
                columns: 3
            })
        );
        assert!(wants_binary(&[0, 1]));
        assert!(!wants_binary(&[]) && !wants_binary(&[0, 0]));
    }

    #[test]
    fn floats_in_binary_need_exact_text() {
        let d = encode_row_description(&[test_field("id", 20), test_field("score", 701)]);
        assert!(!would_round_floats(&d, &[1], None));
        assert!(!would_round_floats(&d, &[1], Some("3")));
        assert!(!would_round_floats(&d, &[1], Some("'1'")));
        assert!(would_round_floats(&d, &[1], Some("0")));
        assert!(would_round_floats(&d, &[0, 1], Some("-15")));
        // The float column in text: its text goes out as held.
        assert!(!would_round_floats(&d, &[1, 0], Some("0")));
        assert!(!would_round_floats(&description(), &[1], Some("0")));
    }

    #[test]
    fn description_takes_the_requested_formats() {
        let d = described(&description(), &[1]).expect("described");
        let fields = decode_row_description(&d.body).expect("decodes");
        assert_eq!(
            fields
                .iter()
                .map(|f| (f.type_oid, f.format))
                .collect::<Vec<_>>(),
            vec![(20, 1), (1184, 1)]
        );
        assert!(described(&description(), &[1, 1, 1]).is_err());
    }

    #[test]
    fn each_row_is_bound_once_with_its_text_values() {
        let rows = [
            data_row(&[Some("7"), Some("2026-12-05 10:00:00+00")]),
            data_row(&[Some("8"), None]),
        ];
        let steps = steps(&description(), &rows, &[1]).expect("steps");
        let frames: Vec<&Frame> = steps
            .iter()
            .map(|s| match s {
                Step::Send { frame, .. } => frame,
                other => panic!("unexpected step {other:?}"),
            })
            .collect();
        let tags: Vec<u8> = frames.iter().map(|f| f.tag).collect();
        assert_eq!(
            tags,
            vec![
                fe::PARSE,
                fe::BIND,
                fe::DESCRIBE,
                fe::EXECUTE,
                fe::BIND,
                fe::EXECUTE,
                fe::SYNC
            ]
        );
        let parse = Parse::decode(&frames[0].body).expect("parse");
        assert_eq!(parse.query, "SELECT $1, $2");
        assert_eq!(parse.param_types, vec![20, 1184]);
        let second = Bind::decode(&frames[4].body).expect("bind");
        assert_eq!(
            second.params,
            vec![Some(Bytes::from_static(b"8")), None],
            "NULL stays NULL"
        );
        assert!(second.param_formats.is_empty(), "values go in text");
        assert_eq!(second.result_formats, vec![1, 1]);
        assert!(steps_of_nothing().is_empty());
        assert_eq!(
            self::steps(&description(), &[data_row(&[Some("1")])], &[1]).err(),
            Some(BinaryRowsError::Row)
        );
    }

    fn steps_of_nothing() -> Vec<Step> {
        steps(&description(), &[], &[1]).expect("no rows")
    }
}
