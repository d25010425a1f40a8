//! Combining per-shard partial aggregates (and GROUP BY groups) into the values one Postgres
//! would have computed over all rows.
//!
//! The caller rewrites the query so each shard returns partials: `count` and `sum` as they are,
//! `min`/`max` as they are, and `avg(x)` as `sum(x), count(x)` (for float inputs
//! `sum(x::float8)`). This module only combines; it never sees the original rows.

use std::collections::HashMap;

use bytes::Bytes;

use super::collate::TextOrder;
use super::interval::IntervalParts;
use super::interval_sum::{self, IntervalSum};
use super::numeric::Numeric;
use super::row::{build_row, column, split_row};
use super::value::{
    compare_in, format_float4, format_float8, ColumnType, Value, FLOAT4_OID, FLOAT8_OID,
    FORMAT_BINARY, FORMAT_TEXT, INT2_OID, INT4_OID, INT8_OID, INTERVAL_OID, NUMERIC_OID,
};
use super::MergeError;

/// Which aggregate a column holds, named by the combine it needs (the result type follows
/// Postgres: `sum(int4)` is int8 but `sum(int8)` is numeric, `avg` of integers is numeric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// `count(*)` / `count(x)`: int8 partials, summed into int8.
    Count,
    /// `sum` of int2/int4: int8 partials, int8 result; overflow is an error as in Postgres.
    SumInt,
    /// `sum` of int8 or numeric: numeric partials (int partials accepted), numeric result.
    SumNumeric,
    /// `sum(float4)`: float4 partials and result.
    SumFloat4,
    /// `sum(float8)`: float8 partials and result.
    SumFloat8,
    /// `min(x)`: the smallest partial, passed through byte for byte.
    Min,
    /// `max(x)`: the largest partial, passed through byte for byte.
    Max,
    /// `avg` of int2/int4/int8/numeric from partial `sum` (int8 or numeric) and `count` (int8):
    /// numeric result with the display scale of Postgres's numeric division.
    AvgNumeric,
    /// `avg` of float4/float8 from partial `sum(x::float8)` and `count`: float8 result.
    AvgFloat,
    /// `sum(interval)`: interval partials added field by field, interval result.
    SumInterval,
    /// `avg(interval)` from partial `sum` (interval) and `count`: Postgres's `interval_div`.
    AvgInterval,
    /// Arrays (each shard's `array_agg(DISTINCT x)`), concatenated without decoding their
    /// elements; NULL when every shard's is.
    ArrayConcat,
}

impl AggKind {
    fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::SumInt
            | AggKind::SumNumeric
            | AggKind::SumFloat4
            | AggKind::SumFloat8
            | AggKind::SumInterval => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::AvgNumeric | AggKind::AvgFloat | AggKind::AvgInterval => "avg",
            AggKind::ArrayConcat => "array_agg",
        }
    }

    /// The partial types this aggregate accepts in its (first) column.
    fn accepts(self, oid: u32) -> bool {
        match self {
            AggKind::Count | AggKind::SumInt => oid == INT8_OID,
            AggKind::SumNumeric | AggKind::AvgNumeric => {
                matches!(oid, NUMERIC_OID | INT8_OID | INT4_OID | INT2_OID)
            }
            AggKind::SumFloat4 => oid == FLOAT4_OID,
            AggKind::SumFloat8 | AggKind::AvgFloat => oid == FLOAT8_OID,
            AggKind::SumInterval | AggKind::AvgInterval => oid == INTERVAL_OID,
            AggKind::Min | AggKind::Max | AggKind::ArrayConcat => true,
        }
    }
}

/// One aggregate of the merged result and where its partials are in the shard rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggSpec {
    /// How partials are combined (and so the result type).
    pub kind: AggKind,
    /// Column of the partial value (for avg: of the partial sum).
    pub column: usize,
    /// For avg only: column of the partial count.
    pub count_column: Option<usize>,
    /// Format to send the result in (0 text, 1 binary). min/max keep the shards' format.
    pub output_format: i16,
}

impl AggSpec {
    /// An aggregate over one partial column, result in text format.
    pub fn new(kind: AggKind, column: usize) -> AggSpec {
        AggSpec {
            kind,
            column,
            count_column: None,
            output_format: FORMAT_TEXT,
        }
    }

    /// An avg from partial sum and count columns, result in text format.
    pub fn avg(kind: AggKind, sum_column: usize, count_column: usize) -> AggSpec {
        AggSpec {
            count_column: Some(count_column),
            ..AggSpec::new(kind, sum_column)
        }
    }
}

/// One column of the merged output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputColumn {
    /// A shard column passed through from the first row of the group (a GROUP BY key).
    Key(usize),
    /// The result of `aggs[i]`.
    Agg(usize),
}

#[derive(Debug, Clone)]
enum State {
    Count(i64),
    SumInt(Option<i64>),
    SumNumeric(Option<Numeric>),
    SumFloat4(Option<f32>),
    SumFloat8(Option<f64>),
    /// The best value so far and its bytes as the shard sent them.
    MinMax(Option<(Value, Bytes)>),
    AvgNumeric(Numeric, i64),
    AvgFloat(f64, i64),
    /// Field-wise sum so far, and whether any non-NULL partial came.
    SumInterval(IntervalSum, bool),
    AvgInterval(IntervalSum, i64),
    /// The non-NULL arrays so far.
    Parts(Vec<Bytes>),
}

impl State {
    fn new(kind: AggKind) -> State {
        match kind {
            AggKind::Count => State::Count(0),
            AggKind::SumInt => State::SumInt(None),
            AggKind::SumNumeric => State::SumNumeric(None),
            AggKind::SumFloat4 => State::SumFloat4(None),
            AggKind::SumFloat8 => State::SumFloat8(None),
            AggKind::Min | AggKind::Max => State::MinMax(None),
            AggKind::AvgNumeric => State::AvgNumeric(Numeric::zero(), 0),
            AggKind::AvgFloat => State::AvgFloat(0.0, 0),
            AggKind::SumInterval => State::SumInterval(IntervalSum::default(), false),
            AggKind::AvgInterval => State::AvgInterval(IntervalSum::default(), 0),
            AggKind::ArrayConcat => State::Parts(Vec::new()),
        }
    }
}

fn as_numeric(v: Value, agg: &'static str, oid: u32) -> Result<Option<Numeric>, MergeError> {
    match v {
        Value::Null => Ok(None),
        Value::Int(i) => Ok(Some(Numeric::from_i64(i))),
        Value::Numeric(n) => Ok(Some(n)),
        _ => Err(MergeError::BadPartial { agg, oid }),
    }
}

fn as_count(v: Value, oid: u32) -> Result<i64, MergeError> {
    match v {
        Value::Null => Ok(0),
        Value::Int(i) if i >= 0 => Ok(i),
        _ => Err(MergeError::BadPartial { agg: "count", oid }),
    }
}

fn add_count(a: i64, b: i64) -> Result<i64, MergeError> {
    a.checked_add(b).ok_or(MergeError::OutOfRange("bigint"))
}

/// Postgres's float addition refuses to overflow finite inputs to infinity.
fn add_f64(a: f64, b: f64) -> Result<f64, MergeError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(MergeError::OutOfRange("value"));
    }
    Ok(r)
}

fn add_f32(a: f32, b: f32) -> Result<f32, MergeError> {
    let r = a + b;
    if r.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(MergeError::OutOfRange("value"));
    }
    Ok(r)
}

struct Group {
    /// The first row of the group, for its key columns.
    first: Vec<Option<Bytes>>,
    states: Vec<State>,
}

/// Combines partial aggregate rows from all shards, grouped by key columns (none for a plain
/// aggregate, which yields exactly one row even if no shard sent one, as Postgres does).
///
/// Groups are kept in a hash map keyed by the values' canonical form, so `1.0` and `1.00`, or
/// `'a '` and `'a'` as bpchar, land in one group as they would in Postgres. The number of groups
/// is capped because every group is held in memory until all shards are done.
pub struct GroupedAggregate {
    columns: Vec<ColumnType>,
    keys: Vec<usize>,
    aggs: Vec<AggSpec>,
    /// How the text of each aggregate compares (min/max; the column's collation).
    orders: Vec<TextOrder>,
    output: Vec<OutputColumn>,
    cap: usize,
    index: HashMap<Vec<u8>, usize>,
    groups: Vec<Group>,
}

impl GroupedAggregate {
    /// `columns` describe the shard rows (from RowDescription); `keys` are the GROUP BY
    /// columns; `output` lays out the merged row. Everything is checked here, so an
    /// unsupported type or format is refused before any row is read.
    pub fn new(
        columns: Vec<ColumnType>,
        keys: Vec<usize>,
        aggs: Vec<AggSpec>,
        output: Vec<OutputColumn>,
        cap: usize,
    ) -> Result<GroupedAggregate, MergeError> {
        let col = |i: usize| {
            columns.get(i).copied().ok_or(MergeError::MissingColumn {
                wanted: i,
                actual: columns.len(),
            })
        };
        for k in &keys {
            col(*k)?.check()?;
        }
        for a in &aggs {
            let t = col(a.column)?;
            if a.kind == AggKind::ArrayConcat {
                if a.output_format != t.format {
                    return Err(MergeError::InvalidPlan(
                        "arrays are passed through, so their output format must be the shards' format",
                    ));
                }
                continue;
            }
            t.check()?;
            if !a.kind.accepts(t.oid) {
                return Err(MergeError::BadPartial {
                    agg: a.kind.name(),
                    oid: t.oid,
                });
            }
            let is_avg = matches!(
                a.kind,
                AggKind::AvgNumeric | AggKind::AvgFloat | AggKind::AvgInterval
            );
            match (is_avg, a.count_column) {
                (true, Some(c)) => {
                    let ct = col(c)?;
                    ct.check()?;
                    if ct.oid != INT8_OID {
                        return Err(MergeError::BadPartial {
                            agg: "count",
                            oid: ct.oid,
                        });
                    }
                }
                (true, None) => return Err(MergeError::InvalidPlan("avg needs a count column")),
                (false, _) => {}
            }
            if a.output_format != FORMAT_TEXT && a.output_format != FORMAT_BINARY {
                return Err(MergeError::InvalidPlan(
                    "output format code is neither 0 nor 1",
                ));
            }
            if matches!(a.kind, AggKind::Min | AggKind::Max) && a.output_format != t.format {
                return Err(MergeError::InvalidPlan(
                    "min/max are passed through, so their output format must be the shards' format",
                ));
            }
        }
        for o in &output {
            match *o {
                OutputColumn::Key(c) => {
                    col(c)?;
                }
                OutputColumn::Agg(i) if i >= aggs.len() => {
                    return Err(MergeError::MissingColumn {
                        wanted: i,
                        actual: aggs.len(),
                    })
                }
                OutputColumn::Agg(_) => {}
            }
        }
        Ok(GroupedAggregate {
            columns,
            keys,
            orders: vec![TextOrder::Bytewise; aggs.len()],
            aggs,
            output,
            cap,
            index: HashMap::new(),
            groups: Vec::new(),
        })
    }

    /// Compares the text of aggregate `i` (min/max) in `orders[i]`; by default text compares
    /// bytewise (the C collation). Group keys need no order: a deterministic collation's
    /// equality is byte equality. Must be given before any row.
    pub fn with_text_orders(
        mut self,
        orders: Vec<TextOrder>,
    ) -> Result<GroupedAggregate, MergeError> {
        if orders.len() != self.aggs.len() {
            return Err(MergeError::InvalidPlan("one text order per aggregate"));
        }
        self.orders = orders;
        Ok(self)
    }

    /// Number of groups so far.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Adds one partial row (a DataRow body) from any shard.
    pub fn push(&mut self, row: &Bytes) -> Result<(), MergeError> {
        let cols = split_row(row)?;
        if cols.len() != self.columns.len() {
            return Err(MergeError::MissingColumn {
                wanted: self.columns.len(),
                actual: cols.len(),
            });
        }
        let mut hash_key = Vec::new();
        for k in &self.keys {
            let v = self.columns[*k].decode(column(&cols, *k)?)?;
            let canon = v.canonical_key();
            hash_key.extend_from_slice(&(canon.len() as u64).to_be_bytes());
            hash_key.extend_from_slice(&canon);
        }
        let gi = match self.index.get(&hash_key) {
            Some(i) => *i,
            None => {
                if self.groups.len() >= self.cap {
                    return Err(MergeError::TooManyGroups { cap: self.cap });
                }
                self.groups.push(Group {
                    first: cols.clone(),
                    states: self.aggs.iter().map(|a| State::new(a.kind)).collect(),
                });
                self.index.insert(hash_key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        for (ai, spec) in self.aggs.iter().enumerate() {
            let t = self.columns[spec.column];
            let raw = column(&cols, spec.column)?;
            if let State::Parts(parts) = &mut self.groups[gi].states[ai] {
                parts.extend(raw.cloned());
                continue;
            }
            if let State::SumInterval(..) | State::AvgInterval(..) = self.groups[gi].states[ai] {
                let count = match spec.count_column {
                    Some(cc) => {
                        let ct = self.columns[cc];
                        Some(as_count(ct.decode(column(&cols, cc)?)?, ct.oid)?)
                    }
                    None => None,
                };
                let fields = raw.map(|b| interval_fields(t, b)).transpose()?;
                match &mut self.groups[gi].states[ai] {
                    State::SumInterval(sum, seen) => {
                        if let Some(f) = fields {
                            sum.add(f);
                            *seen = true;
                        }
                    }
                    State::AvgInterval(sum, n) => {
                        if let Some(f) = fields {
                            sum.add(f);
                        }
                        *n = add_count(*n, count.unwrap_or(0))?;
                    }
                    _ => {}
                }
                continue;
            }
            let v = t.decode(raw)?;
            let bad = MergeError::BadPartial {
                agg: spec.kind.name(),
                oid: t.oid,
            };
            let state = &mut self.groups[gi].states[ai];
            match state {
                State::Count(n) => *n = add_count(*n, as_count(v, t.oid)?)?,
                State::SumInt(s) => match v {
                    Value::Null => {}
                    Value::Int(i) => *s = Some(add_count(s.unwrap_or(0), i)?),
                    _ => return Err(bad),
                },
                State::SumNumeric(s) => {
                    if let Some(n) = as_numeric(v, "sum", t.oid)? {
                        *s = Some(match s {
                            Some(acc) => acc.add(&n),
                            None => n,
                        });
                    }
                }
                State::SumFloat4(s) => match v {
                    Value::Null => {}
                    // Exact: the value was widened from an f32.
                    Value::Float(f) => *s = Some(add_f32(s.unwrap_or(0.0), f as f32)?),
                    _ => return Err(bad),
                },
                State::SumFloat8(s) => match v {
                    Value::Null => {}
                    Value::Float(f) => *s = Some(add_f64(s.unwrap_or(0.0), f)?),
                    _ => return Err(bad),
                },
                State::MinMax(best) => {
                    let Some(raw) = raw else { continue };
                    let better = match best {
                        None => true,
                        Some((b, _)) => {
                            let ord = compare_in(&v, b, &self.orders[ai]);
                            if spec.kind == AggKind::Min {
                                ord.is_lt()
                            } else {
                                ord.is_gt()
                            }
                        }
                    };
                    if better {
                        *best = Some((v, raw.clone()));
                    }
                }
                State::AvgNumeric(sum, count) => {
                    let Some(cc) = spec.count_column else {
                        return Err(bad);
                    };
                    let ct = self.columns[cc];
                    let c = as_count(ct.decode(column(&cols, cc)?)?, ct.oid)?;
                    if let Some(n) = as_numeric(v, "avg", t.oid)? {
                        *sum = sum.add(&n);
                    }
                    *count = add_count(*count, c)?;
                }
                State::AvgFloat(sum, count) => {
                    let Some(cc) = spec.count_column else {
                        return Err(bad);
                    };
                    let ct = self.columns[cc];
                    let c = as_count(ct.decode(column(&cols, cc)?)?, ct.oid)?;
                    match v {
                        Value::Null => {}
                        Value::Float(f) => *sum = add_f64(*sum, f)?,
                        _ => return Err(bad),
                    }
                    *count = add_count(*count, c)?;
                }
                State::Parts(_) | State::SumInterval(..) | State::AvgInterval(..) => {}
            }
        }
        Ok(())
    }

    /// The merged rows (DataRow bodies), groups in the order they were first seen.
    pub fn finish(mut self) -> Result<Vec<Bytes>, MergeError> {
        if self.keys.is_empty() && self.groups.is_empty() {
            // An aggregate without GROUP BY always has one row.
            self.groups.push(Group {
                first: vec![None; self.columns.len()],
                states: self.aggs.iter().map(|a| State::new(a.kind)).collect(),
            });
        }
        let mut rows = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let mut values: Vec<Option<Bytes>> = Vec::with_capacity(self.output.len());
            for o in &self.output {
                values.push(match *o {
                    OutputColumn::Key(c) => column(&g.first, c)?.cloned(),
                    OutputColumn::Agg(i) => {
                        let spec = &self.aggs[i];
                        let state = g.states.get(i).ok_or(MergeError::MissingColumn {
                            wanted: i,
                            actual: g.states.len(),
                        })?;
                        render(state, spec.output_format == FORMAT_BINARY)?
                    }
                });
            }
            rows.push(build_row(&values)?);
        }
        Ok(rows)
    }
}

fn render(state: &State, binary: bool) -> Result<Option<Bytes>, MergeError> {
    let int8 = |i: i64| {
        Bytes::from(if binary {
            i.to_be_bytes().to_vec()
        } else {
            i.to_string().into_bytes()
        })
    };
    let numeric = |n: &Numeric| -> Result<Bytes, MergeError> {
        Ok(Bytes::from(if binary {
            n.encode_binary()?
        } else {
            n.to_text().into_bytes()
        }))
    };
    let float8 = |f: f64| {
        Bytes::from(if binary {
            f.to_be_bytes().to_vec()
        } else {
            format_float8(f).into_bytes()
        })
    };
    Ok(match state {
        State::Count(n) => Some(int8(*n)),
        State::SumInt(s) => s.map(int8),
        State::SumNumeric(s) => s.as_ref().map(numeric).transpose()?,
        State::SumFloat4(s) => s.map(|f| {
            Bytes::from(if binary {
                f.to_be_bytes().to_vec()
            } else {
                format_float4(f).into_bytes()
            })
        }),
        State::SumFloat8(s) => s.map(float8),
        State::MinMax(best) => best.as_ref().map(|(_, raw)| raw.clone()),
        State::AvgNumeric(_, 0) | State::AvgFloat(_, 0) => None,
        State::AvgNumeric(sum, count) => Some(numeric(&sum.div_count(*count as u64))?),
        State::AvgFloat(sum, count) => Some(float8(sum / *count as f64)),
        State::Parts(parts) => super::array_concat::concat(parts, binary)?,
        State::SumInterval(_, false) | State::AvgInterval(_, 0) => None,
        State::SumInterval(sum, true) => Some(interval(sum.total()?, binary)),
        State::AvgInterval(sum, count) => Some(interval(
            interval_sum::divide(sum.total()?, *count as f64)?,
            binary,
        )),
    })
}

/// An interval result in the client's format.
fn interval(v: IntervalParts, binary: bool) -> Bytes {
    Bytes::from(if binary {
        interval_sum::encode_binary(v)
    } else {
        interval_sum::encode_text(v).into_bytes()
    })
}

/// The fields of one interval partial, in its column's format.
fn interval_fields(t: ColumnType, raw: &[u8]) -> Result<IntervalParts, MergeError> {
    if t.format == FORMAT_BINARY {
        super::interval::parts_binary(raw)
    } else {
        super::interval::parts_text(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::merge::value::TEXT_OID;

    fn t(oid: u32) -> ColumnType {
        ColumnType::new(oid, FORMAT_TEXT)
    }
    fn row(vals: &[Option<&str>]) -> Bytes {
        build_row(
            &vals
                .iter()
                .map(|v| v.map(str::as_bytes))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }
    fn texts(rows: &[Bytes]) -> Vec<Vec<Option<String>>> {
        rows.iter()
            .map(|r| {
                split_row(r)
                    .unwrap()
                    .into_iter()
                    .map(|c| c.map(|b| String::from_utf8(b.to_vec()).unwrap()))
                    .collect()
            })
            .collect()
    }
    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    /// One plain aggregate over shard rows; returns the single result row as text.
    fn plain(cols: Vec<ColumnType>, aggs: Vec<AggSpec>, rows: &[Bytes]) -> Vec<Option<String>> {
        let output = (0..aggs.len()).map(OutputColumn::Agg).collect();
        let mut g = GroupedAggregate::new(cols, vec![], aggs, output, 10).unwrap();
        for r in rows {
            g.push(r).unwrap();
        }
        let out = g.finish().unwrap();
        assert_eq!(out.len(), 1);
        texts(&out).remove(0)
    }

    #[test]
    fn min_max_of_text_in_a_locale() {
        let en = crate::exec::merge::collate::libc_collator("en_US.UTF-8", "en_US.UTF-8")
            .unwrap_or_else(|e| panic!("{e}: run scripts/install-deps.sh"));
        let rows = [
            row(&[Some("b"), Some("b")]),
            row(&[Some("B"), Some("B")]),
            row(&[Some("a b"), Some("a b")]),
            row(&[Some("ab"), Some("ab")]),
        ];
        let cols = || vec![t(TEXT_OID), t(TEXT_OID)];
        let aggs = || vec![AggSpec::new(AggKind::Min, 0), AggSpec::new(AggKind::Max, 1)];
        // Bytewise: "B" < "a b" < "ab" < "b".
        assert_eq!(plain(cols(), aggs(), &rows), vec![s("B"), s("b")]);
        let output = vec![OutputColumn::Agg(0), OutputColumn::Agg(1)];
        let mut g = GroupedAggregate::new(cols(), vec![], aggs(), output, 10)
            .unwrap()
            .with_text_orders(vec![TextOrder::Libc(en.clone()), TextOrder::Libc(en)])
            .unwrap();
        for r in &rows {
            g.push(r).unwrap();
        }
        // en_US (as Postgres 15 with that locale): "a b" < "ab" < "b" < "B".
        assert_eq!(texts(&g.finish().unwrap()), vec![vec![s("a b"), s("B")]]);
    }

    #[test]
    fn avg_of_integers_matches_postgres_15() {
        // select avg(x) from (values (1),(2),(2)) t(x) → 1.6666666666666667, split over shards
        // as partial (sum, count): (1, 1), (4, 2), and an empty shard (NULL, 0).
        let cols = vec![t(INT8_OID), t(INT8_OID)];
        let rows = [
            row(&[Some("1"), Some("1")]),
            row(&[Some("4"), Some("2")]),
            row(&[None, Some("0")]),
        ];
        let out = plain(cols, vec![AggSpec::avg(AggKind::AvgNumeric, 0, 1)], &rows);
        assert_eq!(out, [s("1.6666666666666667")]);
        // avg(x) over (1),(2) → 1.5000000000000000; over (10) → 10.0000000000000000;
        // over (-1),(-2) → -1.5000000000000000.
        for (parts, want) in [
            (vec![("1", "1"), ("2", "1")], "1.5000000000000000"),
            (vec![("10", "1")], "10.0000000000000000"),
            (vec![("-1", "1"), ("-2", "1")], "-1.5000000000000000"),
        ] {
            let rows: Vec<_> = parts
                .iter()
                .map(|(a, b)| row(&[Some(a), Some(b)]))
                .collect();
            let out = plain(
                vec![t(INT8_OID), t(INT8_OID)],
                vec![AggSpec::avg(AggKind::AvgNumeric, 0, 1)],
                &rows,
            );
            assert_eq!(out, [s(want)]);
        }
    }

    #[test]
    fn avg_of_numerics_matches_postgres_15() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            // avg(x::numeric(10,2)) over 1,2,2
            (&[("1.00", "1"), ("4.00", "2")], "1.6666666666666667"),
            // avg(x::numeric(10,3)) over 1.5, 2
            (&[("1.500", "1"), ("2.000", "1")], "1.7500000000000000"),
            // avg over 1.123456789012345678901, 2
            (
                &[("1.123456789012345678901", "1"), ("2", "1")],
                "1.561728394506172839451",
            ),
            // avg over 100000000, 2
            (&[("100000000", "1"), ("2", "1")], "50000001.000000000000"),
            // avg over 0.00001, 0.00002
            (
                &[("0.00001", "1"), ("0.00002", "1")],
                "0.000015000000000000000000",
            ),
            // avg over NaN, 2
            (&[("NaN", "1"), ("2", "1")], "NaN"),
        ];
        for (parts, want) in cases {
            let rows: Vec<_> = parts
                .iter()
                .map(|(a, b)| row(&[Some(a), Some(b)]))
                .collect();
            let out = plain(
                vec![t(NUMERIC_OID), t(INT8_OID)],
                vec![AggSpec::avg(AggKind::AvgNumeric, 0, 1)],
                &rows,
            );
            assert_eq!(out, [s(want)], "{parts:?}");
        }
    }

    #[test]
    fn sums_match_postgres_15() {
        // sum(x::int8) over 9223372036854775807, 2 → numeric 9223372036854775809.
        let out = plain(
            vec![t(NUMERIC_OID)],
            vec![AggSpec::new(AggKind::SumNumeric, 0)],
            &[
                row(&[Some("9223372036854775807")]),
                row(&[Some("2")]),
                row(&[None]),
            ],
        );
        assert_eq!(out, [s("9223372036854775809")]);
        // sum(x::numeric(10,2)) over 1, 2.5 → 3.50.
        let out = plain(
            vec![t(NUMERIC_OID)],
            vec![AggSpec::new(AggKind::SumNumeric, 0)],
            &[row(&[Some("1.00")]), row(&[Some("2.50")])],
        );
        assert_eq!(out, [s("3.50")]);
        // sum(x::int4) over 2147483647 twice → 4294967294 (int8).
        let out = plain(
            vec![t(INT8_OID)],
            vec![AggSpec::new(AggKind::SumInt, 0)],
            &[row(&[Some("2147483647")]), row(&[Some("2147483647")])],
        );
        assert_eq!(out, [s("4294967294")]);
        // sum(x::float8) over 0.1, 0.2 → 0.30000000000000004.
        let out = plain(
            vec![t(FLOAT8_OID)],
            vec![AggSpec::new(AggKind::SumFloat8, 0)],
            &[row(&[Some("0.1")]), row(&[Some("0.2")])],
        );
        assert_eq!(out, [s("0.30000000000000004")]);
        // sum(x::float4) over 0.1, 0.2 → 0.3 (float4 arithmetic).
        let out = plain(
            vec![t(FLOAT4_OID)],
            vec![AggSpec::new(AggKind::SumFloat4, 0)],
            &[row(&[Some("0.1")]), row(&[Some("0.2")])],
        );
        assert_eq!(out, [s("0.3")]);
        // avg(x::float8) over 1,2,2 → 1.6666666666666667.
        let out = plain(
            vec![t(FLOAT8_OID), t(INT8_OID)],
            vec![AggSpec::avg(AggKind::AvgFloat, 0, 1)],
            &[row(&[Some("1"), Some("1")]), row(&[Some("4"), Some("2")])],
        );
        assert_eq!(out, [s("1.6666666666666667")]);
    }

    #[test]
    fn empty_input_gives_one_row_with_count_zero_and_null_sums() {
        let cols = vec![
            t(INT8_OID),
            t(INT8_OID),
            t(NUMERIC_OID),
            t(INT8_OID),
            t(TEXT_OID),
        ];
        let aggs = vec![
            AggSpec::new(AggKind::Count, 0),
            AggSpec::new(AggKind::SumInt, 1),
            AggSpec::avg(AggKind::AvgNumeric, 2, 3),
            AggSpec::new(AggKind::Max, 4),
        ];
        assert_eq!(
            plain(cols.clone(), aggs.clone(), &[]),
            [s("0"), None, None, None]
        );
        let nothing = row(&[Some("0"), None, None, Some("0"), None]);
        assert_eq!(
            plain(cols, aggs, &[nothing.clone(), nothing]),
            [s("0"), None, None, None]
        );
    }

    #[test]
    fn overflow_is_an_error() {
        let mut g = GroupedAggregate::new(
            vec![t(INT8_OID)],
            vec![],
            vec![AggSpec::new(AggKind::SumInt, 0)],
            vec![OutputColumn::Agg(0)],
            1,
        )
        .unwrap();
        g.push(&row(&[Some("9223372036854775807")])).unwrap();
        assert_eq!(
            g.push(&row(&[Some("1")])),
            Err(MergeError::OutOfRange("bigint"))
        );
        let mut g = GroupedAggregate::new(
            vec![t(FLOAT8_OID)],
            vec![],
            vec![AggSpec::new(AggKind::SumFloat8, 0)],
            vec![OutputColumn::Agg(0)],
            1,
        )
        .unwrap();
        g.push(&row(&[Some("1e+308")])).unwrap();
        assert!(g.push(&row(&[Some("1e+308")])).is_err());
    }

    #[test]
    fn min_max_pass_bytes_through_and_skip_nulls() {
        let cols = vec![t(NUMERIC_OID), t(TEXT_OID)];
        let aggs = vec![
            AggSpec::new(AggKind::Min, 0),
            AggSpec::new(AggKind::Max, 0),
            AggSpec::new(AggKind::Min, 1),
            AggSpec::new(AggKind::Max, 1),
        ];
        let rows = [
            row(&[Some("2.50"), Some("b")]),
            row(&[None, None]),
            row(&[Some("-10"), Some("B")]),
            row(&[Some("2.5000"), Some("ab")]),
        ];
        // Equal maxima keep the first one seen.
        assert_eq!(
            plain(cols, aggs, &rows),
            [s("-10"), s("2.50"), s("B"), s("b")]
        );
    }

    #[test]
    fn group_by_combines_equal_keys() {
        // Shard rows: (key numeric, count, sum int8 → numeric).
        let cols = vec![t(NUMERIC_OID), t(INT8_OID), t(NUMERIC_OID)];
        let aggs = vec![
            AggSpec::new(AggKind::Count, 1),
            AggSpec::new(AggKind::SumNumeric, 2),
        ];
        let output = vec![
            OutputColumn::Agg(1),
            OutputColumn::Key(0),
            OutputColumn::Agg(0),
        ];
        let mut g = GroupedAggregate::new(cols, vec![0], aggs, output, 3).unwrap();
        for r in [
            row(&[Some("1.0"), Some("2"), Some("10")]),
            row(&[None, Some("1"), Some("5")]),
            row(&[Some("2"), Some("1"), None]),
            row(&[Some("1.00"), Some("3"), Some("-4")]),
            row(&[None, Some("1"), Some("1")]),
        ] {
            g.push(&r).unwrap();
        }
        assert_eq!(g.groups(), 3);
        assert_eq!(
            texts(&g.finish().unwrap()),
            [
                vec![s("6"), s("1.0"), s("5")],
                vec![s("6"), None, s("2")],
                vec![None, s("2"), s("1")],
            ]
        );
    }

    #[test]
    fn group_cap() {
        let mut g = GroupedAggregate::new(
            vec![t(TEXT_OID), t(INT8_OID)],
            vec![0],
            vec![AggSpec::new(AggKind::Count, 1)],
            vec![OutputColumn::Key(0), OutputColumn::Agg(0)],
            2,
        )
        .unwrap();
        g.push(&row(&[Some("a"), Some("1")])).unwrap();
        g.push(&row(&[Some("b"), Some("1")])).unwrap();
        g.push(&row(&[Some("a"), Some("1")])).unwrap();
        assert_eq!(
            g.push(&row(&[Some("c"), Some("1")])),
            Err(MergeError::TooManyGroups { cap: 2 })
        );
    }

    #[test]
    fn binary_output() {
        let cols = vec![t(INT8_OID), t(INT8_OID), t(FLOAT8_OID)];
        let mut aggs = vec![
            AggSpec::new(AggKind::Count, 1),
            AggSpec::avg(AggKind::AvgNumeric, 0, 1),
            AggSpec::new(AggKind::SumFloat8, 2),
        ];
        for a in &mut aggs {
            a.output_format = FORMAT_BINARY;
        }
        let output = (0..3).map(OutputColumn::Agg).collect();
        let mut g = GroupedAggregate::new(cols, vec![], aggs, output, 1).unwrap();
        g.push(&row(&[Some("5"), Some("3"), Some("1.5")])).unwrap();
        let out = split_row(&g.finish().unwrap()[0]).unwrap();
        assert_eq!(out[0].as_deref(), Some(&3i64.to_be_bytes()[..]));
        let avg = Numeric::decode_binary(out[1].as_ref().unwrap()).unwrap();
        assert_eq!(avg.to_text(), "1.6666666666666667");
        assert_eq!(out[2].as_deref(), Some(&1.5f64.to_be_bytes()[..]));
    }

    #[test]
    fn bad_plans_and_rows() {
        let new = |cols: Vec<ColumnType>, aggs: Vec<AggSpec>| {
            let output = (0..aggs.len()).map(OutputColumn::Agg).collect();
            GroupedAggregate::new(cols, vec![], aggs, output, 1)
        };
        assert!(matches!(
            new(vec![t(NUMERIC_OID)], vec![AggSpec::new(AggKind::Count, 0)]),
            Err(MergeError::BadPartial {
                agg: "count",
                oid: NUMERIC_OID
            })
        ));
        assert!(matches!(
            new(
                vec![t(INT8_OID)],
                vec![AggSpec::new(AggKind::AvgNumeric, 0)]
            ),
            Err(MergeError::InvalidPlan(_))
        ));
        assert!(matches!(
            new(vec![t(INT8_OID)], vec![AggSpec::new(AggKind::Count, 1)]),
            Err(MergeError::MissingColumn { .. })
        ));
        assert!(matches!(
            new(
                vec![ColumnType::new(114, 0)],
                vec![AggSpec::new(AggKind::Max, 0)]
            ),
            Err(MergeError::UnsupportedType { oid: 114 })
        ));
        let mut bin_max = AggSpec::new(AggKind::Max, 0);
        bin_max.output_format = FORMAT_BINARY;
        assert!(matches!(
            new(vec![t(INT8_OID)], vec![bin_max]),
            Err(MergeError::InvalidPlan(_))
        ));
        let mut g = new(vec![t(INT8_OID)], vec![AggSpec::new(AggKind::Count, 0)]).unwrap();
        assert!(matches!(
            g.push(&Bytes::from_static(b"\x00\x01\x00")),
            Err(MergeError::MalformedRow(_))
        ));
        assert!(matches!(
            g.push(&row(&[Some("1"), Some("2")])),
            Err(MergeError::MissingColumn { .. })
        ));
        assert!(matches!(
            g.push(&row(&[Some("-1")])),
            Err(MergeError::BadPartial { .. })
        ));
        assert!(matches!(
            g.push(&row(&[Some("x")])),
            Err(MergeError::InvalidValue { .. })
        ));
    }
}
