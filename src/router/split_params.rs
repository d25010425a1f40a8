//! The parameters of one shard's part of a split prepared INSERT (`VALUES ($1, $2), ($3, $4)`):
//! its text keeps only its rows, so its `$n` are renumbered from `$1` in order of first use, and
//! its Bind carries only the values those placeholders name, each with its own format code.

use bytes::Bytes;

use crate::router::rewrite::scan_tokens;

/// Why a part's parameters could not be worked out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamSplitError {
    #[error("cannot scan the INSERT statement: {0}")]
    Scan(String),
    #[error("the statement uses ${used} but the Bind supplies {supplied} parameters")]
    Missing { used: usize, supplied: usize },
    #[error("the Bind gives {formats} parameter format codes for {values} parameters")]
    Formats { formats: usize, values: usize },
}

/// A statement text whose placeholders were renumbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renumbered {
    pub sql: String,
    /// `origin[i]` is the 0-based index, in the original numbering, of the new `$(i+1)`.
    pub origin: Vec<usize>,
}

/// Renumbers the `$n` of `sql` (found by the real scanner, so strings and comments are left
/// alone) from `$1`, in order of first use; a placeholder used twice keeps one new number.
pub fn renumber(sql: &str) -> Result<Renumbered, ParamSplitError> {
    let tokens = scan_tokens(sql).map_err(ParamSplitError::Scan)?;
    let mut out = String::with_capacity(sql.len());
    let mut origin: Vec<usize> = Vec::new();
    let mut copied = 0;
    for (start, end, text) in &tokens {
        let Some(n) = text
            .strip_prefix('$')
            .and_then(|d| d.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
        else {
            continue;
        };
        let new = match origin.iter().position(|&o| o == n) {
            Some(i) => i + 1,
            None => {
                origin.push(n);
                origin.len()
            }
        };
        out.push_str(&sql[copied..*start]);
        out.push('$');
        out.push_str(&new.to_string());
        copied = *end;
    }
    out.push_str(&sql[copied..]);
    Ok(Renumbered { sql: out, origin })
}

/// One part's Bind parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartParams {
    pub values: Vec<Option<Bytes>>,
    /// Format codes as Bind takes them (none, one for all, or one per value).
    pub formats: Vec<i16>,
    /// Parse's parameter types for the part (0 = unspecified; empty when the client gave none).
    pub types: Vec<u32>,
}

/// Picks the values (with their format codes and types) that `origin` names, in its order.
pub fn pick(
    origin: &[usize],
    values: &[Option<Bytes>],
    formats: &[i16],
    types: &[u32],
) -> Result<PartParams, ParamSplitError> {
    if formats.len() > 1 && formats.len() != values.len() {
        return Err(ParamSplitError::Formats {
            formats: formats.len(),
            values: values.len(),
        });
    }
    let mut picked = Vec::with_capacity(origin.len());
    for &o in origin {
        let value = values.get(o).ok_or(ParamSplitError::Missing {
            used: o + 1,
            supplied: values.len(),
        })?;
        picked.push(value.clone());
    }
    let formats = match formats {
        [] | [_] => formats.to_vec(),
        many => origin.iter().map(|&o| many[o]).collect(),
    };
    let types = if types.is_empty() {
        Vec::new()
    } else {
        origin
            .iter()
            .map(|&o| types.get(o).copied().unwrap_or(0))
            .collect()
    };
    Ok(PartParams {
        values: picked,
        formats,
        types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn renumbers_in_order_of_first_use() {
        let cases: &[(&str, &str, &[usize])] = &[
            (
                "INSERT INTO t (a, b) VALUES ($3, $4) RETURNING a",
                "INSERT INTO t (a, b) VALUES ($1, $2) RETURNING a",
                &[2, 3],
            ),
            (
                "insert into t values ($5, $6), ($1, $2)",
                "insert into t values ($1, $2), ($3, $4)",
                &[4, 5, 0, 1],
            ),
            // Reused placeholders keep one number; strings and comments stay as they are.
            (
                "insert into t values ($7, '$2', $7) /* $9 */ on conflict (a) do update set b = $10",
                "insert into t values ($1, '$2', $1) /* $9 */ on conflict (a) do update set b = $2",
                &[6, 9],
            ),
            ("insert into t values (1, 'x')", "insert into t values (1, 'x')", &[]),
            (
                "insert into t values ($12::int8, $3)",
                "insert into t values ($1::int8, $2)",
                &[11, 2],
            ),
        ];
        for (sql, want, origin) in cases {
            let got = renumber(sql).unwrap();
            assert_eq!(got.sql, *want, "{sql}");
            assert_eq!(got.origin, origin.to_vec(), "{sql}");
        }
    }

    #[test]
    fn picks_values_formats_and_types() {
        let values = [
            b("1"),
            None,
            Some(Bytes::from_static(&[0, 0, 0, 7])),
            b("d"),
        ];
        // Per-value formats follow their values.
        let got = pick(&[2, 0], &values, &[0, 0, 1, 0], &[20, 25, 23, 25]).unwrap();
        assert_eq!(
            got,
            PartParams {
                values: vec![values[2].clone(), values[0].clone()],
                formats: vec![1, 0],
                types: vec![23, 20],
            }
        );
        // One format for all (or none) stays so; missing types are unspecified.
        let got = pick(&[1, 3], &values, &[1], &[20]).unwrap();
        assert_eq!(got.formats, vec![1]);
        assert_eq!(got.types, vec![0, 0]);
        assert_eq!(got.values, vec![None, b("d")]);
        let got = pick(&[3], &values, &[], &[]).unwrap();
        assert!(got.formats.is_empty() && got.types.is_empty());
        assert_eq!(
            pick(&[4], &values, &[], &[]),
            Err(ParamSplitError::Missing {
                used: 5,
                supplied: 4
            })
        );
        assert_eq!(
            pick(&[0], &values, &[0, 1], &[]),
            Err(ParamSplitError::Formats {
                formats: 2,
                values: 4
            })
        );
    }
}
