//! `INSERT INTO t (…) SELECT * FROM UNNEST($1::bigint[], $2::text[], …)` into a sharded table
//! (Django's `bulk_create`, and any driver's array-based batch insert): the rows are the arrays'
//! elements by position, so the key column's array says which shard each row belongs to. Each
//! shard gets the same statement with its own arrays, written in the format the client used.
//! Pure: recognising the statement shape, and splitting the array values by a plan.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::params::ParamSource;
use super::pg_array::{self, ArrayError};
use super::split_insert::ShardRows;

/// An INSERT whose rows come from `UNNEST` of array parameters, one per inserted column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnnestInsert {
    /// The `$n` of each UNNEST argument, in column order.
    pub params: Vec<usize>,
    /// The argument (0-based) holding the shard key's array.
    pub key_arg: usize,
}

impl UnnestInsert {
    /// The `$n` holding the shard keys.
    pub fn key_param(&self) -> Option<usize> {
        self.params.get(self.key_arg).copied()
    }
}

/// Why the arrays could not be split.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnnestError {
    #[error("UNNEST argument ${param}: {error}")]
    Array { param: usize, error: ArrayError },
    #[error("UNNEST argument ${0} is missing")]
    Missing(usize),
    #[error("UNNEST argument ${param} has {found} elements but the shard key's array has {keys}; rows past the last key cannot be given a shard")]
    LongerThanKeys {
        param: usize,
        found: usize,
        keys: usize,
    },
    #[error("the shard key's array has {found} elements but its routing named {expected}")]
    RowCount { found: usize, expected: usize },
}

/// The strings of a one-element-per-part name (`unnest`, `pg_catalog.unnest`).
fn func_name(f: &pb::FuncCall) -> Vec<String> {
    f.funcname
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.to_lowercase()),
            _ => None,
        })
        .collect()
}

/// `$n`, possibly inside casts (`$1::bigint[]`, `($1)::varchar(20)[]`).
fn param_number(n: &pb::Node) -> Option<usize> {
    match n.node.as_ref()? {
        NodeEnum::ParamRef(p) => usize::try_from(p.number).ok().filter(|n| *n > 0),
        NodeEnum::TypeCast(c) => param_number(c.arg.as_deref()?),
        _ => None,
    }
}

/// Recognises `INSERT INTO t (c1, …, cN) SELECT * FROM UNNEST($a, …, $z)` with N arguments,
/// `key_pos` being the position of the shard key in the column list. Anything else — other
/// select lists, WHERE, WITH, ORDER BY, a function other than UNNEST, arguments that are not
/// parameters — is `None`.
pub fn detect(i: &pb::InsertStmt, key_pos: usize) -> Option<UnnestInsert> {
    let params = unnest_args(i)?;
    if key_pos >= params.len() {
        return None;
    }
    Some(UnnestInsert {
        params,
        key_arg: key_pos,
    })
}

/// The `$n` of each UNNEST argument of `INSERT INTO t (c1, …, cN) SELECT * FROM UNNEST($a, …,
/// $z)` with N arguments, whichever columns are listed (see [`detect`]).
pub fn unnest_args(i: &pb::InsertStmt) -> Option<Vec<usize>> {
    unnest_call(i)?
        .args
        .iter()
        .map(param_number)
        .collect::<Option<_>>()
}

/// The UNNEST call of `INSERT INTO t (c1, …, cN) SELECT * FROM UNNEST(a1, …, aN)`, whatever its
/// arguments are; `None` for any other shape. The rows of an `INSERT … SELECT` that pgshard read
/// first come as that too, or, with columns carried as text and cast back (arrays of arrays),
/// as `SELECT * FROM (SELECT c1 AS a, c2::T AS b FROM UNNEST(a1, a2) AS r(c1, c2)) AS r`.
pub fn unnest_call(i: &pb::InsertStmt) -> Option<&pb::FuncCall> {
    if i.with_clause.is_some() {
        return None;
    }
    let Some(NodeEnum::SelectStmt(s)) = i.select_stmt.as_deref()?.node.as_ref() else {
        return None;
    };
    if !plain_select(s) || !selects_star(s) {
        return None;
    }
    let [from] = s.from_clause.as_slice() else {
        return None;
    };
    let f = match from.node.as_ref()? {
        NodeEnum::RangeFunction(rf) => unnest_of(rf, false)?,
        NodeEnum::RangeSubselect(sub) if !sub.lateral => {
            let Some(NodeEnum::SelectStmt(inner)) = sub.subquery.as_deref()?.node.as_ref() else {
                return None;
            };
            cast_back_unnest(inner)?
        }
        _ => return None,
    };
    (f.args.len() == i.cols.len()).then_some(f)
}

/// A SELECT with nothing but a select list and a FROM.
fn plain_select(s: &pb::SelectStmt) -> bool {
    s.op == pb::SetOperation::SetopNone as i32
        && s.values_lists.is_empty()
        && s.where_clause.is_none()
        && s.group_clause.is_empty()
        && s.having_clause.is_none()
        && s.sort_clause.is_empty()
        && s.limit_count.is_none()
        && s.limit_offset.is_none()
        && s.distinct_clause.is_empty()
        && s.with_clause.is_none()
        && s.into_clause.is_none()
        && s.locking_clause.is_empty()
        && s.window_clause.is_empty()
}

/// The select list is `*` alone.
fn selects_star(s: &pb::SelectStmt) -> bool {
    let [target] = s.target_list.as_slice() else {
        return false;
    };
    let Some(NodeEnum::ResTarget(rt)) = target.node.as_ref() else {
        return false;
    };
    matches!(
        rt.val.as_deref().and_then(|v| v.node.as_ref()),
        Some(NodeEnum::ColumnRef(cr)) if matches!(
            cr.fields.as_slice(),
            [f] if matches!(f.node, Some(NodeEnum::AStar(_)))
        )
    )
}

/// The UNNEST call of a FROM item `UNNEST(…)`; `named_columns`: only with a column alias list
/// naming every column (as the cast-back form names its columns `c1, …`).
fn unnest_of(rf: &pb::RangeFunction, named_columns: bool) -> Option<&pb::FuncCall> {
    if rf.ordinality || rf.lateral || rf.is_rowsfrom || !rf.coldeflist.is_empty() {
        return None;
    }
    let [function] = rf.functions.as_slice() else {
        return None;
    };
    let Some(NodeEnum::List(pair)) = function.node.as_ref() else {
        return None;
    };
    let Some(NodeEnum::FuncCall(f)) = pair.items.first()?.node.as_ref() else {
        return None;
    };
    let name = func_name(f);
    if !(name == ["unnest"] || name == ["pg_catalog", "unnest"])
        || f.agg_star
        || f.func_variadic
        || f.over.is_some()
    {
        return None;
    }
    let columns = rf.alias.as_ref().map_or(0, |a| a.colnames.len());
    (!named_columns || columns == f.args.len()).then_some(f)
}

/// The UNNEST call of `SELECT c1 AS a, c2::T AS b, … FROM UNNEST(…) AS r(c1, c2, …)`: each of its
/// columns in order, as it is or cast.
fn cast_back_unnest(inner: &pb::SelectStmt) -> Option<&pb::FuncCall> {
    if !plain_select(inner) {
        return None;
    }
    let [from] = inner.from_clause.as_slice() else {
        return None;
    };
    let Some(NodeEnum::RangeFunction(rf)) = from.node.as_ref() else {
        return None;
    };
    let f = unnest_of(rf, true)?;
    let in_order = inner.target_list.len() == f.args.len()
        && inner.target_list.iter().enumerate().all(|(k, t)| {
            let Some(NodeEnum::ResTarget(rt)) = t.node.as_ref() else {
                return false;
            };
            let value = rt.val.as_deref().and_then(|v| v.node.as_ref());
            let column = match value {
                Some(NodeEnum::TypeCast(c)) => c.arg.as_deref().and_then(|a| a.node.as_ref()),
                other => other,
            };
            matches!(
                column,
                Some(NodeEnum::ColumnRef(cr)) if matches!(
                    cr.fields.as_slice(),
                    [f] if matches!(&f.node, Some(NodeEnum::String(name)) if name.sval == format!("c{}", k + 1))
                )
            )
        });
    in_order.then_some(f)
}

/// One shard's arrays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardArrays {
    pub shard: u32,
    /// Positions of this shard's rows in the client's arrays, ascending.
    pub rows: Vec<usize>,
    /// The new value of each UNNEST parameter (`$n`, value; `None` is NULL), in the client's
    /// format for that parameter.
    pub values: Vec<(usize, Option<Vec<u8>>)>,
}

/// Splits the UNNEST arrays by `plan` (rows by shard, from the key array): each shard's arrays
/// hold the elements at its rows' positions. A shorter array is padded with NULLs, as UNNEST
/// does; a NULL array stays NULL.
pub fn split(
    u: &UnnestInsert,
    params: &dyn ParamSource,
    plan: &[ShardRows],
) -> Result<Vec<ShardArrays>, UnnestError> {
    let mut decoded = Vec::with_capacity(u.params.len());
    for &n in &u.params {
        let raw = params.raw(n).ok_or(UnnestError::Missing(n))?;
        let value = match raw.value {
            None => None,
            Some(bytes) => Some(
                pg_array::decode(&bytes, raw.binary)
                    .map_err(|error| UnnestError::Array { param: n, error })?,
            ),
        };
        decoded.push((n, value));
    }
    let keys = decoded
        .get(u.key_arg)
        .and_then(|(_, d)| d.as_ref())
        .map_or(0, |d| d.elements.len());
    let expected: usize = plan.iter().map(|p| p.rows.len()).sum();
    if keys != expected || plan.iter().flat_map(|p| &p.rows).any(|&r| r >= keys) {
        return Err(UnnestError::RowCount {
            found: keys,
            expected,
        });
    }
    for (n, d) in &decoded {
        if let Some(d) = d.as_ref().filter(|d| d.elements.len() > keys) {
            return Err(UnnestError::LongerThanKeys {
                param: *n,
                found: d.elements.len(),
                keys,
            });
        }
    }
    Ok(plan
        .iter()
        .map(|p| ShardArrays {
            shard: p.shard,
            rows: p.rows.clone(),
            values: decoded
                .iter()
                .map(|(n, d)| {
                    let value = d.as_ref().map(|d| {
                        let picked: Vec<Option<&[u8]>> = p
                            .rows
                            .iter()
                            .map(|&r| d.elements.get(r).and_then(|e| e.as_deref()))
                            .collect();
                        pg_array::encode(d.format, &picked)
                    });
                    (*n, value)
                })
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::literals::{normalize, LiteralParams};
    use crate::router::params::BindParams;
    use crate::router::split_insert::plan;
    use bytes::Bytes;

    fn insert(sql: &str) -> pb::InsertStmt {
        let parsed = pg_query::parse(sql, 0).expect(sql);
        match parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
        {
            Some(NodeEnum::InsertStmt(i)) => (**i).clone(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn recognises_unnest_inserts_only() {
        let django = "INSERT INTO \"users\" (\"user_id\", \"name\") SELECT * FROM UNNEST(($1)::bigint[], ($2)::varchar(100)[]) RETURNING \"users\".\"user_id\"";
        assert_eq!(
            detect(&insert(django), 0),
            Some(UnnestInsert {
                params: vec![1, 2],
                key_arg: 0
            })
        );
        assert_eq!(
            detect(
                &insert("insert into users (name, user_id) select * from pg_catalog.unnest($2::text[], $1)"),
                1
            ),
            Some(UnnestInsert {
                params: vec![2, 1],
                key_arg: 1
            })
        );
        // Rows read first with an array column carried as text and cast back.
        let cast_back = "insert into orders (user_id, tags, n) select * from (select c1 as user_id, \
                         c2::text[] as tags, c3 as n from unnest($1::int8[], $2::text[], $3::int4[]) \
                         as pgshard_rows(c1, c2, c3)) as pgshard_rows";
        assert_eq!(
            detect(&insert(cast_back), 0),
            Some(UnnestInsert {
                params: vec![1, 2, 3],
                key_arg: 0
            })
        );
        for sql in [
            // Columns out of order, missing, or not the unnest's own; no column names.
            "insert into t (a, b) select * from (select c2 as a, c1 as b from unnest($1::int8[], $2::text[]) as r(c1, c2)) as r",
            "insert into t (a, b) select * from (select c1 as a from unnest($1::int8[], $2::text[]) as r(c1, c2)) as r",
            "insert into t (a, b) select * from (select c1 as a, c2 || 'x' as b from unnest($1::int8[], $2::text[]) as r(c1, c2)) as r",
            "insert into t (a, b) select * from (select c1 as a, c2 as b from unnest($1::int8[], $2::text[]) as r) as r",
            "insert into t (a, b) select * from (select c1 as a, c2 as b from unnest($1::int8[], $2::text[]) as r(c1, c2) where c1 > 0) as r",
            "insert into t (a, b) select * from lateral (select c1 as a, c2 as b from unnest($1::int8[], $2::text[]) as r(c1, c2)) as r",
        ] {
            assert_eq!(detect(&insert(sql), 0), None, "{sql}");
        }
        for sql in [
            "insert into users (user_id, name) select * from unnest($1::int8[], $2::text[]) where true",
            "insert into users (user_id, name) select a, b from unnest($1::int8[], $2::text[]) t(a, b)",
            "insert into users (user_id, name) select * from unnest($1::int8[], $2::text[]) with ordinality",
            "insert into users (user_id, name) select * from unnest($1::int8[], array['a'])",
            "insert into users (user_id, name) select * from unnest($1::int8[])",
            "insert into users (user_id, name) select * from generate_series($1, $2)",
            "insert into users (user_id, name) select * from users",
            "insert into users (user_id, name) values ($1, $2)",
            "with x as (select 1) insert into users (user_id, name) select * from unnest($1::int8[], $2::text[])",
            "insert into users (user_id, name) select * from unnest($1::int8[], $2::text[]) order by 1",
        ] {
            assert_eq!(detect(&insert(sql), 0), None, "{sql}");
        }
    }

    fn text(values: &[(usize, Option<Vec<u8>>)]) -> Vec<(usize, Option<String>)> {
        values
            .iter()
            .map(|(n, v)| {
                (
                    *n,
                    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn splits_text_arrays_by_rows() {
        let u = UnnestInsert {
            params: vec![1, 2, 3],
            key_arg: 0,
        };
        let values = [
            Some(Bytes::from_static(b"{10,20,30}")),
            Some(Bytes::from("{\"a, b\",NULL,\"日本\"}")),
            Some(Bytes::from_static(b"{x}")),
        ];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        let got = split(&u, &p, &plan(&[(1, &[0, 2]), (2, &[1])])).unwrap();
        assert_eq!(got[0].rows, vec![0, 2]);
        assert_eq!(
            text(&got[0].values),
            vec![
                (1, Some("{10,30}".into())),
                (2, Some("{\"a, b\",日本}".into())),
                (3, Some("{x,NULL}".into()))
            ]
        );
        assert_eq!(
            text(&got[1].values),
            vec![
                (1, Some("{20}".into())),
                (2, Some("{NULL}".into())),
                (3, Some("{NULL}".into()))
            ]
        );
    }

    #[test]
    fn splits_literal_arrays_of_the_simple_protocol() {
        let norm = normalize(
            "insert into users (user_id, name) select * from unnest('{1,2}'::bigint[], '{\"it''s\",b}'::text[])",
        );
        assert_eq!(norm.literals.len(), 2);
        let u = UnnestInsert {
            params: vec![1, 2],
            key_arg: 0,
        };
        let got = split(
            &u,
            &LiteralParams(&norm.literals),
            &plan(&[(3, &[1]), (4, &[0])]),
        )
        .unwrap();
        assert_eq!(
            text(&got[0].values),
            vec![(1, Some("{2}".into())), (2, Some("{b}".into()))]
        );
        assert_eq!(
            text(&got[1].values),
            vec![(1, Some("{1}".into())), (2, Some("{it's}".into()))]
        );
    }

    #[test]
    fn splits_binary_arrays_keeping_their_format() {
        let int8 = |v: &[i64]| {
            let b: Vec<[u8; 8]> = v.iter().map(|x| x.to_be_bytes()).collect();
            let r: Vec<Option<&[u8]>> = b.iter().map(|x| Some(&x[..])).collect();
            Bytes::from(pg_array::encode(
                pg_array::ArrayFormat::Binary { element_type: 20 },
                &r,
            ))
        };
        let names = Bytes::from(pg_array::encode(
            pg_array::ArrayFormat::Binary { element_type: 25 },
            &[Some(b"a"), None, Some(b"c")],
        ));
        let values = [Some(int8(&[5, 6, 7])), Some(names)];
        let p = BindParams {
            values: &values,
            formats: &[1],
            types: &[],
        };
        let u = UnnestInsert {
            params: vec![1, 2],
            key_arg: 0,
        };
        let got = split(&u, &p, &plan(&[(1, &[1]), (2, &[0, 2])])).unwrap();
        assert_eq!(got[1].values[0].1.as_deref(), Some(&int8(&[5, 7])[..]));
        let d = pg_array::decode(got[0].values[1].1.as_deref().unwrap(), true).unwrap();
        assert_eq!(d.elements, vec![None]);
        let d = pg_array::decode(got[1].values[1].1.as_deref().unwrap(), true).unwrap();
        assert_eq!(d.elements, vec![Some(b"a".to_vec()), Some(b"c".to_vec())]);
    }

    #[test]
    fn bad_arrays_and_mismatched_plans_are_errors() {
        let u = UnnestInsert {
            params: vec![1, 2],
            key_arg: 0,
        };
        let run = |a: &'static [u8], b: Option<&'static [u8]>, p: &[ShardRows]| {
            let values = [Some(Bytes::from_static(a)), b.map(Bytes::from_static)];
            let params = BindParams {
                values: &values,
                formats: &[],
                types: &[],
            };
            split(&u, &params, p)
        };
        let two = plan(&[(1, &[0]), (2, &[1])]);
        assert!(matches!(
            run(b"{1,2}", Some(b"{a,\"b}"), &two),
            Err(UnnestError::Array { param: 2, .. })
        ));
        assert!(matches!(
            run(b"{1,2}", Some(b"{a,b,c}"), &two),
            Err(UnnestError::LongerThanKeys {
                param: 2,
                found: 3,
                keys: 2
            })
        ));
        assert!(matches!(
            run(b"{1,2,3}", Some(b"{a}"), &two),
            Err(UnnestError::RowCount {
                found: 3,
                expected: 2
            })
        ));
        // A NULL array stays NULL on every shard.
        let got = run(b"{1,2}", None, &two).unwrap();
        assert_eq!(got[0].values[1], (2, None));
        let u3 = UnnestInsert {
            params: vec![1, 9],
            key_arg: 0,
        };
        let values = [Some(Bytes::from_static(b"{1}"))];
        let params = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert_eq!(
            split(&u3, &params, &plan(&[(1, &[0])])),
            Err(UnnestError::Missing(9))
        );
    }
}
