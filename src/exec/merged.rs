//! Running a merge plan over the shards' answers: one RowDescription (hidden columns removed, avg
//! types fixed), rows merged in order (streaming, one lookahead row per shard) or combined as
//! groups (in memory, capped), one CommandComplete.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::exec::exchange::FrameSink;
use crate::router::merge_plan::{
    AggFunc, Bound, CmpOp, ColRef, Having, MergePlan, Operand, PlanKind,
};
use crate::router::params::{ParamSource, RawParam};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;

use super::collation::ShardText;
use super::distinct_collation;
use super::final_query::{self, ClientValue, InputType};
use super::merge::value::{
    BPCHAR_OID, FLOAT4_OID, FLOAT8_OID, FORMAT_BINARY, FORMAT_TEXT, INT2_OID, INT4_OID, INT8_OID,
    INTERVAL_OID, JSONB_OID, NAME_OID, NUMERIC_OID, TEXT_OID, VARCHAR_OID,
};
use super::merge::{
    build_row, compare_in, sort_rows, split_row, AggKind, AggSpec, ColumnType, GroupedAggregate,
    KWayMerge, MergeError, Numeric, OutputColumn, SortKey, TextOrder, Value,
};
use super::text_order;

/// Most groups (or distinct rows) a GROUP BY / DISTINCT merge holds in memory.
pub const GROUP_CAP: usize = 200_000;

/// A merge plan with this execution's LIMIT/OFFSET and HAVING values.
#[derive(Debug, Clone)]
pub struct BoundMerge {
    pub plan: Arc<MergePlan>,
    limit: Option<u64>,
    offset: u64,
    /// HAVING's `$n` that are simple-protocol literals, as text.
    literals: HashMap<usize, RawParam>,
    /// The client's `$n` the final projection uses.
    finals: Vec<(usize, ClientValue)>,
    /// True when the client asked for the result's RowDescription (simple protocol, or a
    /// Describe of the portal); otherwise the shards' description is only for the merge.
    pub client_describes: bool,
}

fn bound_value(
    b: Option<Bound>,
    params: &dyn ParamSource,
    what: &str,
) -> Result<Option<i64>, ErrorFields> {
    match b {
        None | Some(Bound::Null) => Ok(None),
        Some(Bound::Const(v)) => Ok(Some(v)),
        Some(Bound::Param(n)) => match params.raw(n) {
            Some(RawParam { value: None, .. }) => Ok(None),
            _ => params.int(n).map(Some).ok_or_else(|| {
                ErrorFields::error("22P02", format!("invalid {what} value in parameter ${n}"))
            }),
        },
    }
}

fn having_params(h: &Having, out: &mut Vec<usize>) {
    match h {
        Having::And(v) | Having::Or(v) => v.iter().for_each(|x| having_params(x, out)),
        Having::Not(x) => having_params(x, out),
        Having::Cmp {
            value: Operand::Param { number, .. },
            ..
        } => out.push(*number),
        _ => {}
    }
}

impl BoundMerge {
    /// The most rows the shards together need to give: LIMIT plus OFFSET (`None`: no limit).
    pub fn rows_wanted(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_add(self.offset))
    }

    /// Resolves the plan's `$n` (LIMIT, OFFSET, HAVING constants) for one execution.
    pub fn new(
        plan: Arc<MergePlan>,
        params: &dyn ParamSource,
        client_describes: bool,
    ) -> Result<BoundMerge, ErrorFields> {
        let limit = bound_value(plan.limit, params, "LIMIT")?;
        let offset = bound_value(plan.offset, params, "OFFSET")?;
        if limit.is_some_and(|l| l < 0) {
            return Err(ErrorFields::error("2201W", "LIMIT must not be negative"));
        }
        if offset.is_some_and(|o| o < 0) {
            return Err(ErrorFields::error("2201X", "OFFSET must not be negative"));
        }
        let mut wanted = Vec::new();
        if let PlanKind::Groups {
            having: Some(h), ..
        } = &plan.kind
        {
            having_params(h, &mut wanted);
        }
        let mut literals = HashMap::new();
        for n in wanted {
            if params.sql_literal(n).is_none() {
                continue;
            }
            let raw = params.raw(n).ok_or_else(|| {
                ErrorFields::error("08P01", format!("no value for parameter ${n}"))
            })?;
            literals.insert(n, raw);
        }
        let mut finals = Vec::new();
        for n in plan.finish.iter().flat_map(|f| f.select.params()) {
            let value = match params.sql_literal(n) {
                Some(sql) => ClientValue::Sql(sql),
                None => {
                    let raw = params.raw(n).ok_or_else(|| {
                        ErrorFields::error("08P01", format!("no value for parameter ${n}"))
                    })?;
                    ClientValue::Bound {
                        value: raw.value,
                        binary: raw.binary,
                        type_oid: params.declared_type(n),
                    }
                }
            };
            finals.push((n, value));
        }
        Ok(BoundMerge {
            plan,
            limit: limit.map(|l| l as u64),
            offset: offset.unwrap_or(0) as u64,
            literals,
            finals,
            client_describes,
        })
    }
}

/// How a merged execution ended.
pub struct MergedOutcome {
    pub failure: Option<ErrorFields>,
    pub client_gone: bool,
    pub complete: Option<Frame>,
    pub ready: Option<Frame>,
    /// Merged groups still waiting for their final projection (see [`finish_pending`]).
    pub pending: Option<Box<Pending>>,
    /// For an ordered merge of rows: how many rows of each shard the answer used up (see
    /// [`KWayMerge::taken`]); empty for other merges.
    pub taken: Vec<u64>,
}

/// Merged groups whose expressions over aggregates one shard still has to compute, with
/// everything needed to answer the client afterwards.
pub struct Pending {
    lead: Lead,
    fields: Vec<Field>,
    types: Vec<ColumnType>,
    rows: Vec<Bytes>,
    sort_keys: Vec<SortKey>,
    key_orders: Vec<TextOrder>,
    /// Whether ORDER BY, OFFSET and LIMIT are still to apply (they read a computed column).
    sort_after: bool,
    total: usize,
    hidden: usize,
    merge: BoundMerge,
}

/// What the merge produced.
enum Merged {
    /// The answer went to the client; the row count, `None` after a shard's error.
    Done(Option<u64>),
    Pending(Box<Pending>),
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    name: Bytes,
    table: u32,
    attnum: i16,
    pub(crate) type_oid: u32,
    typlen: i16,
    typmod: i32,
    pub(crate) format: i16,
}

/// A text-format field named `name` of type `type_oid`, for table tests elsewhere in exec.
#[cfg(test)]
pub(crate) fn test_field(name: &str, type_oid: u32) -> Field {
    Field {
        name: Bytes::copy_from_slice(name.as_bytes()),
        table: 0,
        attnum: 0,
        type_oid,
        typlen: -1,
        typmod: -1,
        format: 0,
    }
}

pub(crate) fn decode_row_description(body: &[u8]) -> Option<Vec<Field>> {
    // A negative field count is malformed, not an empty description.
    let count = u16::try_from(i16::from_be_bytes(body.get(0..2)?.try_into().ok()?)).ok()?;
    let mut pos = 2;
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let end = pos + body.get(pos..)?.iter().position(|b| *b == 0)?;
        let name = Bytes::copy_from_slice(&body[pos..end]);
        pos = end + 1;
        let f = body.get(pos..pos + 18)?;
        out.push(Field {
            name,
            table: u32::from_be_bytes(f[0..4].try_into().ok()?),
            attnum: i16::from_be_bytes(f[4..6].try_into().ok()?),
            type_oid: u32::from_be_bytes(f[6..10].try_into().ok()?),
            typlen: i16::from_be_bytes(f[10..12].try_into().ok()?),
            typmod: i32::from_be_bytes(f[12..16].try_into().ok()?),
            format: i16::from_be_bytes(f[16..18].try_into().ok()?),
        });
        pos += 18;
    }
    (pos == body.len()).then_some(out)
}

pub(crate) fn encode_row_description(fields: &[Field]) -> Frame {
    let mut b = Vec::new();
    b.extend_from_slice(&(fields.len() as i16).to_be_bytes());
    for f in fields {
        b.extend_from_slice(&f.name);
        b.push(0);
        b.extend_from_slice(&f.table.to_be_bytes());
        b.extend_from_slice(&f.attnum.to_be_bytes());
        b.extend_from_slice(&f.type_oid.to_be_bytes());
        b.extend_from_slice(&f.typlen.to_be_bytes());
        b.extend_from_slice(&f.typmod.to_be_bytes());
        b.extend_from_slice(&f.format.to_be_bytes());
    }
    Frame::new(be::ROW_DESCRIPTION, Bytes::from(b))
}

fn merge_error(e: MergeError) -> ErrorFields {
    let code = match &e {
        MergeError::TooManyGroups { .. } => "54000",
        // Postgres's "interval out of range" is a datetime field overflow.
        MergeError::OutOfRange("interval") => "22008",
        MergeError::OutOfRange(_) => "22003",
        MergeError::UnsupportedType { .. }
        | MergeError::UnsortedInput { .. }
        | MergeError::BadPartial { .. }
        | MergeError::UnsupportedStyle { .. } => "0A000",
        _ => "XX000",
    };
    let message = match &e {
        MergeError::TooManyGroups { cap } => format!(
            "GROUP BY or DISTINCT over several shards yields more than {cap} groups, more than pgshard merges in memory; add a condition on the shard key"
        ),
        MergeError::UnsortedInput { shard } => format!(
            "shard {shard} returned rows in an order pgshard cannot reproduce (a collation or type it compares differently); merging them would give a wrong order"
        ),
        MergeError::UnsupportedType { oid } => format!(
            "merging values of type OID {oid} across shards is not supported (pgshard cannot compare or combine them exactly)"
        ),
        MergeError::UnsupportedStyle { .. } => format!("merging across shards: {e}"),
        other => format!("merging the shards' rows: {other}"),
    };
    ErrorFields::error(code, message)
}

/// True for the types whose order depends on the database collation.
fn collatable(oid: u32) -> bool {
    matches!(oid, TEXT_OID | VARCHAR_OID | BPCHAR_OID) || super::merge::array::collatable(oid)
}

/// How each result column's text compares (by column index), checked against every shard's
/// collations: the database's for text, varchar and bpchar, bytewise for `name`. Refuses when
/// the shards' order cannot be reproduced or a compared value comes from a column with a
/// collation of its own.
fn column_orders(
    plan: &MergePlan,
    types: &[ColumnType],
    shards: &[ShardText],
    total: usize,
    hidden: usize,
) -> Result<Vec<TextOrder>, Stop> {
    let refuse = |m: String| Stop::Failed(ErrorFields::error("0A000", m));
    let mut orders = vec![TextOrder::Bytewise; types.len()];
    let mut database: Option<Result<TextOrder, String>> = None;
    let uses = &plan.collation;
    for (c, reads) in &uses.ordered {
        let Some(i) = c.index(total, hidden) else {
            continue;
        };
        let oid = types.get(i).map_or(0, |t| t.oid);
        if oid == JSONB_OID {
            // jsonb's strings always compare in the database collation (it takes no other).
            let db = database.get_or_insert_with(|| text_order::database_order(shards));
            orders[i] = db.clone().map_err(refuse)?;
            continue;
        }
        if !collatable(oid) && oid != NAME_OID {
            continue;
        }
        let db = database.get_or_insert_with(|| text_order::database_order(shards));
        let (order, default_is_order) = if oid == NAME_OID {
            let db_is_c = matches!(db, Ok(TextOrder::Bytewise));
            (TextOrder::Bytewise, db_is_c)
        } else {
            (db.clone().map_err(refuse)?, true)
        };
        text_order::check_ordered(uses, reads.as_deref(), shards, &order, default_is_order)
            .map_err(refuse)?;
        orders[i] = order;
    }
    let group_cols: Vec<usize> = match &plan.kind {
        PlanKind::Groups {
            keys: Some(keys), ..
        } => keys.iter().filter_map(|k| k.index(total, hidden)).collect(),
        PlanKind::Groups { keys: None, .. } => (0..total.saturating_sub(hidden)).collect(),
        PlanKind::Rows => Vec::new(),
    };
    if group_cols.iter().any(|&i| {
        let oid = types.get(i).map_or(0, |t| t.oid);
        collatable(oid) || oid == NAME_OID
    }) {
        text_order::check_grouped(uses, shards).map_err(refuse)?;
    }
    let oids: Vec<u32> = types.iter().map(|t| t.oid).collect();
    distinct_collation::check(uses, &oids, shards, total, hidden).map_err(refuse)?;
    Ok(orders)
}

/// What the merge needs from each shard's answer before its rows.
struct Lead {
    /// Shard 0's frames for the client, with the index of its portal RowDescription.
    frames: Vec<Frame>,
    row_description_at: Option<usize>,
}

/// State of reading the shards' channels.
struct Inputs {
    rx: Vec<mpsc::Receiver<Frame>>,
    stash: Vec<Option<Frame>>,
    ready: Option<Frame>,
    error_sent: bool,
}

impl Inputs {
    async fn next(&mut self, shard: usize) -> Option<Frame> {
        if let Some(f) = self.stash.get_mut(shard).and_then(Option::take) {
            return Some(f);
        }
        let f = self.rx.get_mut(shard)?.recv().await;
        if let Some(frame) = &f {
            if frame.tag == be::READY_FOR_QUERY && shard == 0 {
                self.ready = Some(frame.clone());
            }
        }
        f
    }

    /// Reads every channel to its end (the shard readers finish only then), keeping shard 0's
    /// ReadyForQuery and forwarding the first error not yet reported.
    async fn drain(&mut self, client: &mut impl FrameSink) -> bool {
        let mut gone = false;
        for s in 0..self.rx.len() {
            while let Some(f) = self.next(s).await {
                if f.tag == be::ERROR_RESPONSE && !self.error_sent {
                    self.error_sent = true;
                    gone |= client.send(f).await.is_err();
                }
            }
        }
        gone
    }
}

/// Runs the merge over the shards' answer channels (shard 0 first) and writes the merged answer
/// to `client`, except the closing CommandComplete and ReadyForQuery, which are returned.
/// `collations` holds what each shard said about its collations.
pub async fn run(
    rx: Vec<mpsc::Receiver<Frame>>,
    merge: &BoundMerge,
    collations: &[ShardText],
    client: &mut impl FrameSink,
) -> MergedOutcome {
    let shards = rx.len();
    let mut inputs = Inputs {
        stash: vec![None; shards],
        rx,
        ready: None,
        error_sent: false,
    };
    let mut out = MergedOutcome {
        failure: None,
        client_gone: false,
        complete: None,
        ready: None,
        pending: None,
        taken: Vec::new(),
    };
    let result = merge_all(
        &mut inputs,
        merge,
        collations,
        client,
        shards,
        &mut out.taken,
    )
    .await;
    match result {
        Ok(Merged::Done(Some(rows))) => {
            if !inputs.error_sent {
                out.complete = Some(be::command_complete(&format!("SELECT {rows}")));
            }
        }
        Ok(Merged::Done(None)) => {}
        Ok(Merged::Pending(p)) => {
            if !inputs.error_sent {
                out.pending = Some(p);
            }
        }
        Err(Stop::ClientGone) => out.client_gone = true,
        Err(Stop::Failed(f)) => out.failure = Some(f),
    }
    if inputs.drain(client).await {
        out.client_gone = true;
    }
    if out.failure.is_some() {
        out.complete = None;
        out.pending = None;
    }
    if inputs.error_sent {
        out.complete = None;
    }
    out.ready = inputs.ready.take();
    if out.failure.is_none() && !out.client_gone && out.ready.is_none() {
        out.failure = Some(ErrorFields::error(
            "08006",
            "a shard's connection ended before its answer was complete",
        ));
    }
    out
}

enum Stop {
    ClientGone,
    Failed(ErrorFields),
}

impl From<MergeError> for Stop {
    fn from(e: MergeError) -> Stop {
        Stop::Failed(merge_error(e))
    }
}

async fn send(client: &mut impl FrameSink, f: Frame) -> Result<(), Stop> {
    client.send(f).await.map_err(|_| Stop::ClientGone)
}

/// Reads each shard's descriptions up to its first row (or end). Returns shard 0's frames for
/// the client and every shard's result columns; `None` when a shard already reported an error.
async fn descriptions(
    inputs: &mut Inputs,
    shards: usize,
) -> Result<Option<(Lead, Vec<Vec<Field>>)>, Stop> {
    let mut lead = Lead {
        frames: Vec::new(),
        row_description_at: None,
    };
    let mut columns = Vec::with_capacity(shards);
    for s in 0..shards {
        let mut after_param = false;
        let mut desc = None;
        loop {
            let Some(f) = inputs.next(s).await else { break };
            match f.tag {
                be::PARSE_COMPLETE
                | be::BIND_COMPLETE
                | be::CLOSE_COMPLETE
                | be::NO_DATA
                | be::PARAMETER_STATUS
                | be::NOTICE_RESPONSE => {
                    if s == 0 {
                        lead.frames.push(f);
                    }
                }
                be::PARAMETER_DESCRIPTION => {
                    after_param = true;
                    if s == 0 {
                        lead.frames.push(f);
                    }
                }
                be::ROW_DESCRIPTION if after_param => {
                    // A Describe of the client's statement: its own columns, passed on as is.
                    after_param = false;
                    if s == 0 {
                        lead.frames.push(f);
                    }
                }
                be::ROW_DESCRIPTION => {
                    let fields = decode_row_description(&f.body).ok_or_else(|| {
                        Stop::Failed(ErrorFields::error(
                            "08P01",
                            format!("shard {s} sent a malformed RowDescription"),
                        ))
                    })?;
                    if s == 0 {
                        lead.row_description_at = Some(lead.frames.len());
                        lead.frames.push(f);
                    }
                    desc = Some(fields);
                    break;
                }
                _ => {
                    inputs.stash[s] = Some(f);
                    break;
                }
            }
        }
        match desc {
            Some(d) => columns.push(d),
            None => return Ok(None),
        }
    }
    Ok(Some((lead, columns)))
}

/// The column types of the merged rows: the shards' columns, with avg outputs as numeric or
/// float8 (from their partial sums' type).
fn fix_avg(fields: &mut [Field], plan: &MergePlan) -> Result<(), Stop> {
    for &i in &plan.avg_outputs {
        let Some(f) = fields.get_mut(i) else { continue };
        match f.type_oid {
            INT8_OID | NUMERIC_OID => {
                f.type_oid = NUMERIC_OID;
                f.typlen = -1;
                f.typmod = -1;
            }
            FLOAT8_OID | INTERVAL_OID => {}
            other => {
                return Err(Stop::Failed(ErrorFields::error(
                    "0A000",
                    format!(
                        "avg() over several shards of values whose sum has type OID {other} is not supported (only integer, numeric, double precision and interval)"
                    ),
                )))
            }
        }
    }
    Ok(())
}

fn agg_kind(func: AggFunc, partial: u32) -> Result<AggKind, Stop> {
    let unsupported = |what: &str| {
        Stop::Failed(ErrorFields::error(
            "0A000",
            format!("{what} over several shards of values of type OID {partial} is not supported"),
        ))
    };
    Ok(match func {
        AggFunc::Count => AggKind::Count,
        AggFunc::Concat => AggKind::ArrayConcat,
        AggFunc::Min => AggKind::Min,
        AggFunc::Max => AggKind::Max,
        AggFunc::Sum => match partial {
            INT8_OID => AggKind::SumInt,
            NUMERIC_OID => AggKind::SumNumeric,
            FLOAT4_OID => AggKind::SumFloat4,
            FLOAT8_OID => AggKind::SumFloat8,
            INTERVAL_OID => AggKind::SumInterval,
            _ => return Err(unsupported("sum()")),
        },
        AggFunc::Avg { .. } => match partial {
            INT8_OID | NUMERIC_OID => AggKind::AvgNumeric,
            FLOAT8_OID => AggKind::AvgFloat,
            INTERVAL_OID => AggKind::AvgInterval,
            _ => return Err(unsupported("avg()")),
        },
    })
}

/// Strips hidden columns off a row.
fn visible_row(body: Bytes, visible: usize, hidden: usize) -> Result<Bytes, Stop> {
    if hidden == 0 {
        return Ok(body);
    }
    let cols = split_row(&body)?;
    Ok(build_row(cols.get(..visible).unwrap_or(&cols))?)
}

async fn merge_all(
    inputs: &mut Inputs,
    merge: &BoundMerge,
    collations: &[ShardText],
    client: &mut impl FrameSink,
    shards: usize,
    taken: &mut Vec<u64>,
) -> Result<Merged, Stop> {
    let plan = &merge.plan;
    let Some((lead, columns)) = descriptions(inputs, shards).await? else {
        // A shard answered with an error (or nothing) instead of rows: pass shard 0's frames
        // on, then the error.
        return Ok(Merged::Done(None));
    };
    let first = &columns[0];
    for (s, other) in columns.iter().enumerate().skip(1) {
        let same = other.len() == first.len()
            && other
                .iter()
                .zip(first)
                .all(|(a, b)| a.name == b.name && a.type_oid == b.type_oid && a.format == b.format);
        if !same {
            return Err(Stop::Failed(ErrorFields::error(
                "XX000",
                format!(
                    "shards disagree on the result columns (names or types differ between shard 0 and shard {s}); check that the table has the same definition on every shard"
                ),
            )));
        }
    }
    let total = first.len();
    let hidden = plan.hidden;
    let visible = total.checked_sub(hidden).ok_or_else(|| {
        Stop::Failed(ErrorFields::error(
            "XX000",
            "the shards returned fewer columns than the merge plan expects",
        ))
    })?;
    let at = |c: ColRef| {
        c.index(total, hidden).ok_or_else(|| {
            Stop::Failed(ErrorFields::error(
                "42P10",
                "ORDER BY or GROUP BY position is not in select list",
            ))
        })
    };
    let shard_types: Vec<ColumnType> = first
        .iter()
        .map(|f| ColumnType::new(f.type_oid, f.format))
        .collect();
    let mut merged_fields = first.clone();
    fix_avg(&mut merged_fields, plan)?;
    // Avg columns hidden for HAVING/ORDER BY get their merged type too.
    if let PlanKind::Groups { aggs, .. } = &plan.kind {
        for a in aggs {
            if let AggFunc::Avg { .. } = a.func {
                let i = at(a.column)?;
                let oid = match first[i].type_oid {
                    FLOAT8_OID => FLOAT8_OID,
                    INTERVAL_OID => INTERVAL_OID,
                    _ => NUMERIC_OID,
                };
                merged_fields[i].type_oid = oid;
            }
        }
    }
    let merged_types: Vec<ColumnType> = merged_fields
        .iter()
        .map(|f| ColumnType::new(f.type_oid, f.format))
        .collect();
    let sort_keys: Vec<SortKey> = plan
        .sort
        .iter()
        .map(|k| {
            Ok(SortKey {
                column: at(k.column)?,
                descending: k.descending,
                nulls_first: k.nulls_first,
            })
        })
        .collect::<Result<_, Stop>>()?;
    // Text compares as on the shards: in their database collation (text, varchar, bpchar;
    // `name` is always C), and never where a column has a collation of its own.
    let orders = column_orders(plan, &merged_types, collations, total, hidden)?;
    let key_orders: Vec<TextOrder> = sort_keys
        .iter()
        .map(|k| orders.get(k.column).cloned().unwrap_or_default())
        .collect();
    // Shard 0's descriptions go out first, with the client's view of the result columns;
    // after the final projection when there is one.
    let mut lead = Some(lead);
    if plan.finish.is_none() {
        if let Some(lead) = lead.take() {
            send_lead(
                client,
                lead,
                &merged_fields,
                visible,
                merge.client_describes,
            )
            .await?;
        }
    }
    match &plan.kind {
        PlanKind::Rows => {
            let mut m = KWayMerge::new(shards, &shard_types, sort_keys)?
                .with_text_orders(key_orders)?
                .with_limit(merge.offset, merge.limit);
            let mut rows = 0u64;
            loop {
                while let Some(row) = m.next_ready() {
                    let body = visible_row(row, visible, hidden)?;
                    send(client, Frame::new(be::DATA_ROW, body)).await?;
                    rows += 1;
                }
                if m.is_done() {
                    taken.extend_from_slice(m.taken());
                    return Ok(Merged::Done(Some(rows)));
                }
                let Some(s) = m.waiting_on() else {
                    taken.extend_from_slice(m.taken());
                    return Ok(Merged::Done(Some(rows)));
                };
                match inputs.next(s).await {
                    Some(f) => match f.tag {
                        be::DATA_ROW => m.push(s, f.body)?,
                        be::COMMAND_COMPLETE | be::READY_FOR_QUERY => m.finish(s)?,
                        be::ERROR_RESPONSE => {
                            inputs.error_sent = true;
                            send(client, f).await?;
                            return Ok(Merged::Done(None));
                        }
                        be::NOTICE_RESPONSE => send(client, f).await?,
                        _ => {}
                    },
                    None => m.finish(s)?,
                }
            }
        }
        PlanKind::Groups { keys, aggs, having } => {
            let key_cols: Vec<usize> = match keys {
                Some(k) => k.iter().map(|c| at(*c)).collect::<Result<_, _>>()?,
                None => (0..visible).collect(),
            };
            let mut specs = Vec::with_capacity(aggs.len());
            let mut output: Vec<OutputColumn> = (0..total).map(OutputColumn::Key).collect();
            for (ai, a) in aggs.iter().enumerate() {
                let col = at(a.column)?;
                let t = shard_types[col];
                let kind = agg_kind(a.func, t.oid)?;
                let mut spec = match a.func {
                    AggFunc::Avg { count } => AggSpec::avg(kind, col, at(count)?),
                    _ => AggSpec::new(kind, col),
                };
                spec.output_format = t.format;
                specs.push(spec);
                output[col] = OutputColumn::Agg(ai);
            }
            let agg_orders = specs
                .iter()
                .map(|s| orders.get(s.column).cloned().unwrap_or_default())
                .collect();
            let mut g =
                GroupedAggregate::new(shard_types.clone(), key_cols, specs, output, GROUP_CAP)?
                    .with_text_orders(agg_orders)?;
            for s in 0..shards {
                while let Some(f) = inputs.next(s).await {
                    match f.tag {
                        be::DATA_ROW => g.push(&f.body)?,
                        be::COMMAND_COMPLETE => break,
                        be::ERROR_RESPONSE => {
                            inputs.error_sent = true;
                            if let Some(lead) = lead.take() {
                                send_lead(client, lead, &merged_fields, visible, false).await?;
                            }
                            send(client, f).await?;
                            return Ok(Merged::Done(None));
                        }
                        be::NOTICE_RESPONSE => send(client, f).await?,
                        _ => {}
                    }
                }
            }
            let mut rows = g.finish()?;
            if let Some(h) = having {
                let mut kept = Vec::with_capacity(rows.len());
                for r in rows {
                    let cols = split_row(&r)?;
                    let types = Typed {
                        types: &merged_types,
                        orders: &orders,
                    };
                    if eval(h, &cols, &types, total, hidden, &merge.literals)? == Some(true) {
                        kept.push(r);
                    }
                }
                rows = kept;
            }
            if let (Some(fp), Some(lead)) = (&plan.finish, lead.take()) {
                let sort_after = sort_keys.iter().any(|k| {
                    fp.outputs
                        .iter()
                        .any(|o| ColRef::Output(*o).index(total, hidden) == Some(k.column))
                });
                if !sort_after {
                    // Rows OFFSET skips are projected too, as Postgres computes them before
                    // skipping (an error in them is raised); rows past the LIMIT are not.
                    let upto = BoundMerge {
                        offset: 0,
                        limit: merge.limit.map(|l| l.saturating_add(merge.offset)),
                        ..merge.clone()
                    };
                    rows = sort_and_limit(rows, &merged_types, &sort_keys, &key_orders, &upto)?;
                }
                return Ok(Merged::Pending(Box::new(Pending {
                    lead,
                    fields: merged_fields,
                    types: merged_types,
                    rows,
                    sort_keys,
                    key_orders,
                    sort_after,
                    total,
                    hidden,
                    merge: merge.clone(),
                })));
            }
            let rows = sort_and_limit(rows, &merged_types, &sort_keys, &key_orders, merge)?;
            Ok(Merged::Done(Some(
                send_rows(client, rows, visible, hidden).await?,
            )))
        }
    }
}

/// Sends shard 0's description frames, its RowDescription replaced by the merged columns
/// (only when the client asked for it).
async fn send_lead(
    client: &mut impl FrameSink,
    lead: Lead,
    fields: &[Field],
    visible: usize,
    describes: bool,
) -> Result<(), Stop> {
    for (i, f) in lead.frames.into_iter().enumerate() {
        if Some(i) == lead.row_description_at {
            if describes {
                let fields: Vec<Field> = fields.iter().take(visible).cloned().collect();
                send(client, encode_row_description(&fields)).await?;
            }
        } else {
            send(client, f).await?;
        }
    }
    Ok(())
}

/// ORDER BY, then OFFSET and LIMIT, over merged groups.
fn sort_and_limit(
    mut rows: Vec<Bytes>,
    types: &[ColumnType],
    sort_keys: &[SortKey],
    key_orders: &[TextOrder],
    merge: &BoundMerge,
) -> Result<Vec<Bytes>, Stop> {
    if !sort_keys.is_empty() {
        rows = sort_rows(rows, types, sort_keys, key_orders)?;
    }
    let take = merge
        .limit
        .map_or(usize::MAX, |l| l.min(usize::MAX as u64) as usize);
    let skip = merge.offset.min(usize::MAX as u64) as usize;
    Ok(rows.into_iter().skip(skip).take(take).collect())
}

/// Sends the rows without their hidden columns; returns how many.
async fn send_rows(
    client: &mut impl FrameSink,
    rows: Vec<Bytes>,
    visible: usize,
    hidden: usize,
) -> Result<u64, Stop> {
    let mut sent = 0u64;
    for r in rows {
        send(
            client,
            Frame::new(be::DATA_ROW, visible_row(r, visible, hidden)?),
        )
        .await?;
        sent += 1;
    }
    Ok(sent)
}

/// How the final projection ended.
pub struct Finished {
    /// The CommandComplete to send once the caller has settled the transaction.
    pub complete: Option<Frame>,
    pub failure: Option<ErrorFields>,
    pub client_gone: bool,
}

/// Runs the final projection of `p` on `conn` (a shard connection that took part in the
/// statement, so it sees the same transaction), puts the computed columns into the merged
/// rows, then answers the client as the merge would have.
pub async fn finish_pending(
    p: Pending,
    conn: &mut crate::backend::ServerConn,
    client: &mut impl FrameSink,
) -> Finished {
    let mut done = Finished {
        complete: None,
        failure: None,
        client_gone: false,
    };
    match finish_inner(p, conn, client).await {
        Ok(rows) => done.complete = Some(be::command_complete(&format!("SELECT {rows}"))),
        Err(Stop::ClientGone) => done.client_gone = true,
        Err(Stop::Failed(f)) => done.failure = Some(f),
    }
    done
}

async fn finish_inner(
    mut p: Pending,
    conn: &mut crate::backend::ServerConn,
    client: &mut impl FrameSink,
) -> Result<u64, Stop> {
    let Some(fp) = p.merge.plan.finish.clone() else {
        return Err(Stop::Failed(ErrorFields::error(
            "XX000",
            "a pending merge without a final projection",
        )));
    };
    let (total, hidden) = (p.total, p.hidden);
    let visible = total.saturating_sub(hidden);
    let at = |c: ColRef| {
        c.index(total, hidden)
            .ok_or(Stop::Failed(ErrorFields::error(
                "XX000",
                "final projection column out of range",
            )))
    };
    let inputs: Vec<usize> = fp.inputs.iter().map(|c| at(*c)).collect::<Result<_, _>>()?;
    let outputs: Vec<usize> = fp
        .outputs
        .iter()
        .map(|o| at(ColRef::Output(*o)))
        .collect::<Result<_, _>>()?;
    let types: Vec<InputType> = inputs
        .iter()
        .map(|&i| {
            let f = &p.fields[i];
            InputType {
                oid: f.type_oid,
                format: f.format,
            }
        })
        .collect();
    let mut split = Vec::with_capacity(p.rows.len());
    for r in &p.rows {
        split.push(split_row(r)?);
    }
    let values: Vec<Vec<Option<Bytes>>> = split
        .iter()
        .map(|cols| {
            inputs
                .iter()
                .map(|&i| cols.get(i).cloned().flatten())
                .collect()
        })
        .collect();
    if values.is_empty() && !p.merge.client_describes {
        // Nothing to compute and nothing to describe.
        send_lead(client, p.lead, &p.fields, visible, false).await?;
        return Ok(0);
    }
    let formats: Vec<i16> = outputs.iter().map(|&i| p.fields[i].format).collect();
    let steps = final_query::steps(&fp, &p.merge.finals, &values, &types, &formats, true)
        .map_err(|e| Stop::Failed(ErrorFields::error("54000", e.to_string())))?;
    let mut sink = Collect(Vec::new());
    let outcome = crate::exec::exchange::run(conn, steps, &mut sink)
        .await
        .map_err(|e| {
            Stop::Failed(match e {
                crate::exec::exchange::SinkError::Backend(b) => {
                    crate::refusal::backend_error_fields(&b)
                }
                other => ErrorFields::error("XX000", format!("final projection: {other}")),
            })
        })?;
    if let Some(e) = outcome.error {
        return Err(Stop::Failed(e));
    }
    let answer = final_query::answer(sink.0);
    let malformed = |what: &'static str| {
        Stop::Failed(ErrorFields::error(
            "XX000",
            final_query::FinalError::Malformed(what).to_string(),
        ))
    };
    if answer.rows.len() != values.len() {
        return Err(malformed("row count differs"));
    }
    if let Some(d) = &answer.description {
        let computed = decode_row_description(d).ok_or_else(|| malformed("RowDescription"))?;
        if computed.len() != outputs.len() {
            return Err(malformed("column count differs"));
        }
        for (f, &i) in computed.into_iter().zip(&outputs) {
            p.types[i] = ColumnType::new(f.type_oid, f.format);
            p.fields[i] = f;
        }
    }
    let mut rows = Vec::with_capacity(split.len());
    for (mut cols, r) in split.into_iter().zip(&answer.rows) {
        let computed = split_row(r)?;
        if computed.len() != outputs.len() {
            return Err(malformed("column count differs"));
        }
        for (v, &i) in computed.into_iter().zip(&outputs) {
            if let Some(slot) = cols.get_mut(i) {
                *slot = v;
            }
        }
        rows.push(build_row(&cols)?);
    }
    if p.sort_after {
        rows = sort_and_limit(rows, &p.types, &p.sort_keys, &p.key_orders, &p.merge)?;
    } else {
        // Sorted and cut at OFFSET + LIMIT before the projection; now skip the OFFSET.
        let skip = p.merge.offset.min(rows.len() as u64) as usize;
        rows.drain(..skip);
    }
    send_lead(client, p.lead, &p.fields, visible, p.merge.client_describes).await?;
    send_rows(client, rows, visible, hidden).await
}

/// Keeps the final query's answer.
struct Collect(Vec<Frame>);

impl FrameSink for Collect {
    async fn send(&mut self, frame: Frame) -> Result<(), crate::exec::exchange::SinkError> {
        self.0.push(frame);
        Ok(())
    }

    async fn copy_in(
        &mut self,
        _conn: &mut crate::backend::ServerConn,
    ) -> Result<(), crate::exec::exchange::SinkError> {
        Err(crate::exec::exchange::SinkError::Refused(
            "COPY in a final projection".into(),
        ))
    }
}

/// A HAVING constant as a value of the compared column's type.
fn constant(t: ColumnType, raw: &[u8], binary: bool) -> Result<Value, Stop> {
    let format = if binary { FORMAT_BINARY } else { FORMAT_TEXT };
    let bytes = Bytes::copy_from_slice(raw);
    match ColumnType::new(t.oid, format).decode(Some(&bytes)) {
        Ok(v) => Ok(v),
        Err(_) if !binary && matches!(t.oid, INT2_OID | INT4_OID | INT8_OID) => Ok(Value::Numeric(
            Numeric::parse_text(raw).map_err(|_| bad_constant(t.oid))?,
        )),
        Err(_) => Err(bad_constant(t.oid)),
    }
}

fn bad_constant(oid: u32) -> Stop {
    Stop::Failed(ErrorFields::error(
        "0A000",
        format!("HAVING compares a value of type OID {oid} with a constant pgshard cannot read as that type"),
    ))
}

/// The two sides of a HAVING comparison as one kind of value, converted as Postgres's
/// cross-type operators convert them: integer with numeric compares as numeric, a float with
/// an integer or numeric as float8. Other mixes (a date with a timestamp) are refused.
fn comparable(v: Value, k: Value, oid: u32) -> Result<(Value, Value), Stop> {
    use Value::{Float, Int, Numeric as Num};
    Ok(match (v, k) {
        (Int(i), k @ Num(_)) => (Num(Numeric::from_i64(i)), k),
        (v @ Num(_), Int(i)) => (v, Num(Numeric::from_i64(i))),
        (Int(i), k @ Float(_)) => (Float(i as f64), k),
        (v @ Float(_), Int(i)) => (v, Float(i as f64)),
        (Num(n), k @ Float(_)) => (Float(numeric_as_float(&n, oid)?), k),
        (v @ Float(_), Num(n)) => (v, Float(numeric_as_float(&n, oid)?)),
        (v, k) if std::mem::discriminant(&v) == std::mem::discriminant(&k) => (v, k),
        _ => {
            return Err(Stop::Failed(ErrorFields::error(
                "0A000",
                format!(
                    "HAVING compares a value of type OID {oid} with a value of another kind over several shards"
                ),
            )))
        }
    })
}

fn numeric_as_float(n: &Numeric, oid: u32) -> Result<f64, Stop> {
    n.to_text().parse().map_err(|_| bad_constant(oid))
}

/// Result column types with how their text compares.
struct Typed<'a> {
    types: &'a [ColumnType],
    orders: &'a [TextOrder],
}

fn eval(
    h: &Having,
    cols: &[Option<Bytes>],
    typed: &Typed,
    total: usize,
    hidden: usize,
    literals: &HashMap<usize, RawParam>,
) -> Result<Option<bool>, Stop> {
    let column = |c: ColRef| -> Result<(ColumnType, Value, usize), Stop> {
        let i = c.index(total, hidden).ok_or_else(|| {
            Stop::Failed(ErrorFields::error("XX000", "HAVING column out of range"))
        })?;
        let t = *typed.types.get(i).ok_or(MergeError::MissingColumn {
            wanted: i,
            actual: typed.types.len(),
        })?;
        let raw = cols.get(i).ok_or(MergeError::MissingColumn {
            wanted: i,
            actual: cols.len(),
        })?;
        Ok((t, t.decode(raw.as_ref())?, i))
    };
    Ok(match h {
        Having::And(v) => {
            let mut acc = Some(true);
            for x in v {
                match eval(x, cols, typed, total, hidden, literals)? {
                    Some(false) => return Ok(Some(false)),
                    None => acc = None,
                    Some(true) => {}
                }
            }
            acc
        }
        Having::Or(v) => {
            let mut acc = Some(false);
            for x in v {
                match eval(x, cols, typed, total, hidden, literals)? {
                    Some(true) => return Ok(Some(true)),
                    None => acc = None,
                    Some(false) => {}
                }
            }
            acc
        }
        Having::Not(x) => eval(x, cols, typed, total, hidden, literals)?.map(|b| !b),
        Having::IsNull { column: c, negated } => {
            let (_, v, _) = column(*c)?;
            Some((v == Value::Null) != *negated)
        }
        Having::Cmp {
            column: c,
            op,
            value,
        } => {
            let (t, v, i) = column(*c)?;
            if v == Value::Null {
                return Ok(None);
            }
            let k = match value {
                Operand::Null => return Ok(None),
                Operand::Text(s) => constant(t, s.as_bytes(), false)?,
                Operand::Param { number, typed } => match literals.get(number) {
                    Some(RawParam {
                        value: Some(raw),
                        binary,
                    }) => constant(t, raw, *binary)?,
                    Some(_) => return Ok(None),
                    None => match column(*typed)? {
                        (_, Value::Null, _) => return Ok(None),
                        (_, k, _) => k,
                    },
                },
            };
            let (v, k) = comparable(v, k, t.oid)?;
            let ord = compare_in(&v, &k, typed.orders.get(i).unwrap_or(&TextOrder::Bytewise));
            Some(match op {
                CmpOp::Eq => ord.is_eq(),
                CmpOp::Ne => ord.is_ne(),
                CmpOp::Lt => ord.is_lt(),
                CmpOp::Le => ord.is_le(),
                CmpOp::Gt => ord.is_gt(),
                CmpOp::Ge => ord.is_ge(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_description_round_trip() {
        let fields = vec![
            Field {
                name: Bytes::from_static(b"a"),
                table: 5,
                attnum: 2,
                type_oid: 23,
                typlen: 4,
                typmod: -1,
                format: 1,
            },
            Field {
                name: Bytes::from_static(b"avg"),
                table: 0,
                attnum: 0,
                type_oid: 1700,
                typlen: -1,
                typmod: -1,
                format: 0,
            },
        ];
        let f = encode_row_description(&fields);
        assert_eq!(decode_row_description(&f.body), Some(fields));
        assert_eq!(decode_row_description(&f.body[..f.body.len() - 1]), None);
        assert_eq!(decode_row_description(b"\x00\x01abc"), None);
    }

    /// Found by fuzz/fuzz_targets/backend_messages.rs: a field count of -1 was read as no
    /// fields, so a malformed RowDescription passed for an empty one.
    #[test]
    fn row_description_with_a_negative_count_is_malformed() {
        assert_eq!(decode_row_description(b"\xff\xff"), None);
        assert_eq!(decode_row_description(b"\x00\x00"), Some(Vec::new()));
    }

    #[test]
    fn having_sides_convert_as_postgres_cross_type_operators() {
        let num = |t: &str| Value::Numeric(Numeric::parse_text(t.as_bytes()).unwrap());
        for (v, k, want) in [
            (
                Value::Int(10),
                Value::Float(1.5),
                Some((Value::Float(10.0), Value::Float(1.5))),
            ),
            (num("2.5"), Value::Int(3), Some((num("2.5"), num("3")))),
            (
                num("2.5"),
                Value::Float(2.5),
                Some((Value::Float(2.5), Value::Float(2.5))),
            ),
            (
                Value::Int(1),
                Value::Int(2),
                Some((Value::Int(1), Value::Int(2))),
            ),
            (Value::Date(1), Value::Timestamp(1), None),
            (Value::Int(1), Value::Text(Bytes::from_static(b"1")), None),
        ] {
            let got = comparable(v.clone(), k.clone(), INT8_OID).ok();
            assert_eq!(got, want, "{v:?} {k:?}");
        }
    }

    #[test]
    fn having_three_valued_logic_and_mixed_numbers() {
        let types = [ColumnType::new(INT8_OID, FORMAT_TEXT)];
        let cols = vec![Some(Bytes::from_static(b"7"))];
        let none = HashMap::new();
        let cmp = |op, v: &str| Having::Cmp {
            column: ColRef::Output(0),
            op,
            value: Operand::Text(v.into()),
        };
        let typed = Typed {
            types: &types,
            orders: &[],
        };
        let run = |h: &Having| eval(h, &cols, &typed, 1, 0, &none).ok().flatten();
        assert_eq!(run(&cmp(CmpOp::Gt, "6.5")), Some(true));
        assert_eq!(run(&cmp(CmpOp::Le, "6")), Some(false));
        let null = Having::Cmp {
            column: ColRef::Output(0),
            op: CmpOp::Eq,
            value: Operand::Null,
        };
        assert_eq!(run(&null), None);
        assert_eq!(
            run(&Having::Or(vec![null.clone(), cmp(CmpOp::Eq, "7")])),
            Some(true)
        );
        assert_eq!(
            run(&Having::And(vec![null.clone(), cmp(CmpOp::Eq, "7")])),
            None
        );
        assert_eq!(run(&Having::Not(Box::new(cmp(CmpOp::Ne, "7")))), Some(true));
    }
}
