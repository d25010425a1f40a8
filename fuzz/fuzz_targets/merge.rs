//! The merge engine on DataRows a server could send: ORDER BY (per-shard sort, then the k-way
//! merge with LIMIT/OFFSET), GROUP BY with aggregates, and the value decoders underneath
//! (int, float, numeric, bool, text, date, timestamp, uuid in text and binary format).
//!
//! Input layout (written by fuzz/capture/seeds.py from real traffic): four header bytes that
//! choose the plan (`mode`, `keys`, `aggs`, `limit`), then backend messages as a server sends
//! them: the first RowDescription declares the columns (types the merge cannot handle are
//! mapped onto ones it can), each DataRow goes to the current shard, each CommandComplete moves
//! on to the next shard.
#![no_main]

use std::cmp::Ordering;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgshard::exec::merge::{
    compare, sort_rows, split_row, AggKind, AggSpec, ColumnType, GroupedAggregate, KWayMerge,
    Numeric, OutputColumn, SortKey, Value,
};
use pgshard::fuzzing;
use pgshard::wire::backend as be;
use pgshard::wire::frame::split_frame;

/// bool, int8, int2, int4, text, float4, float8, bpchar, varchar, date, timestamp,
/// timestamptz, numeric, uuid, name.
const SUPPORTED: [u32; 15] = [
    16, 20, 21, 23, 25, 700, 701, 1042, 1043, 1082, 1114, 1184, 1700, 2950, 19,
];
const KINDS: [AggKind; 9] = [
    AggKind::Count,
    AggKind::SumInt,
    AggKind::SumNumeric,
    AggKind::SumFloat4,
    AggKind::SumFloat8,
    AggKind::Min,
    AggKind::Max,
    AggKind::AvgNumeric,
    AggKind::AvgFloat,
];
const MAX_COLUMNS: usize = 8;

fn column_type(oid: u32, format: i16) -> ColumnType {
    let t = ColumnType::new(oid, format & 1);
    if t.check().is_ok() {
        t
    } else {
        ColumnType::new(SUPPORTED[oid as usize % SUPPORTED.len()], format & 1)
    }
}

/// Checks the value decoders' own promises on one decoded value.
fn check_value(v: &Value) {
    assert_eq!(
        compare(v, v),
        Ordering::Equal,
        "{v:?} is not equal to itself"
    );
    let _ = v.canonical_key();
    if let Value::Numeric(n) = v {
        let text = n.to_text();
        let back = Numeric::parse_text(text.as_bytes()).expect("numeric text does not read back");
        assert_eq!(
            back.cmp_total(n),
            Ordering::Equal,
            "{text} read back differently"
        );
        assert_eq!(back.canonical_key(), n.canonical_key());
        if let Ok(bin) = n.encode_binary() {
            let again = Numeric::decode_binary(&bin).expect("numeric binary does not read back");
            assert_eq!(again.cmp_total(n), Ordering::Equal);
        }
        let _ = n.add(n).div_count(3);
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, keys_byte, aggs_byte, limit_byte, rest @ ..] = data else {
        return;
    };
    let shards = 1 + usize::from(mode >> 1) % 3;
    let mut columns: Option<Vec<ColumnType>> = None;
    let mut rows: Vec<Vec<Bytes>> = vec![Vec::new(); shards];
    let mut shard = 0;
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(frame)) = split_frame(&mut buf, 1 << 20) {
        match frame.tag {
            be::ROW_DESCRIPTION if columns.is_none() => {
                let types = fuzzing::row_description_types(&frame.body);
                columns = types.map(|t| {
                    t.into_iter()
                        .take(MAX_COLUMNS)
                        .map(|(oid, format)| column_type(oid, format))
                        .collect()
                });
            }
            be::DATA_ROW => rows[shard].push(frame.body),
            be::COMMAND_COMPLETE => shard = (shard + 1) % shards,
            _ => {}
        }
    }
    let Some(columns) = columns.filter(|c| !c.is_empty()) else {
        return;
    };
    let n = columns.len();
    // Every value of every row through its column's decoder.
    for row in rows.iter().flatten() {
        let Ok(cols) = split_row(row) else { continue };
        for (t, raw) in columns.iter().zip(&cols) {
            if let Ok(v) = t.decode(raw.as_ref()) {
                check_value(&v);
            }
        }
    }
    if mode & 1 == 0 {
        order_by(
            &columns,
            rows,
            *keys_byte,
            *aggs_byte,
            *mode,
            *limit_byte,
            n,
        );
    } else {
        group_by(&columns, rows, *keys_byte, *aggs_byte, *limit_byte, n);
    }
});

fn order_by(
    columns: &[ColumnType],
    rows: Vec<Vec<Bytes>>,
    keys_byte: u8,
    nulls_byte: u8,
    mode: u8,
    limit_byte: u8,
    n: usize,
) {
    let count = (1 + usize::from(keys_byte & 3)).min(n);
    let keys: Vec<SortKey> = (0..count)
        .map(|i| SortKey {
            column: (usize::from(keys_byte >> 2) + i) % n,
            descending: keys_byte >> (4 + i) & 1 == 1,
            nulls_first: nulls_byte >> i & 1 == 1,
        })
        .collect();
    // Each shard sorts its own rows, as the shard's ORDER BY would.
    let mut sorted = Vec::with_capacity(rows.len());
    for shard_rows in rows {
        match sort_rows(shard_rows, columns, &keys, &[]) {
            Ok(r) => sorted.push(r),
            Err(_) => return,
        }
    }
    let total: usize = sorted.iter().map(Vec::len).sum();
    let (offset, limit) = if mode & 8 != 0 {
        (u64::from(limit_byte & 15), Some(u64::from(limit_byte >> 4)))
    } else {
        (0, None)
    };
    let Ok(merge) = KWayMerge::new(sorted.len(), columns, keys.clone()) else {
        return;
    };
    let mut merge = merge.with_limit(offset, limit);
    let mut next: Vec<usize> = vec![0; sorted.len()];
    let mut out = Vec::new();
    loop {
        while let Some(row) = merge.next_ready() {
            out.push(row);
        }
        if merge.is_done() {
            break;
        }
        let Some(s) = merge.waiting_on() else { break };
        match sorted[s].get(next[s]) {
            Some(row) => {
                next[s] += 1;
                merge
                    .push(s, row.clone())
                    .expect("a shard's rows sorted by sort_rows were refused by the merge");
            }
            None => merge.finish(s).expect("finish of a known shard"),
        }
    }
    let expected = (total as u64).saturating_sub(offset);
    let expected = limit.map_or(expected, |l| expected.min(l));
    assert_eq!(out.len() as u64, expected, "merged row count");
    // The merged stream is in order: sorting it again (stably) changes nothing.
    let again = sort_rows(out.clone(), columns, &keys, &[]).expect("merged rows decode");
    assert_eq!(again, out, "merged rows are out of order");
}

fn group_by(
    columns: &[ColumnType],
    rows: Vec<Vec<Bytes>>,
    keys_byte: u8,
    aggs_byte: u8,
    formats_byte: u8,
    n: usize,
) {
    let mut keys = Vec::new();
    let mut aggs = Vec::new();
    let mut output = Vec::new();
    for (c, t) in columns.iter().enumerate() {
        if keys_byte >> c & 1 == 1 {
            keys.push(c);
            output.push(OutputColumn::Key(c));
            continue;
        }
        let kind = KINDS[(usize::from(aggs_byte) + 3 * c) % KINDS.len()];
        let mut spec = if matches!(kind, AggKind::AvgNumeric | AggKind::AvgFloat) {
            AggSpec::avg(kind, c, (c + 1) % n)
        } else {
            AggSpec::new(kind, c)
        };
        spec.output_format = if matches!(kind, AggKind::Min | AggKind::Max) {
            t.format
        } else {
            i16::from(formats_byte >> c & 1)
        };
        output.push(OutputColumn::Agg(aggs.len()));
        aggs.push(spec);
    }
    let Ok(mut g) = GroupedAggregate::new(columns.to_vec(), keys.clone(), aggs, output, 1000)
    else {
        return;
    };
    let mut pushed = 0;
    for row in rows.iter().flatten() {
        if g.push(row).is_err() {
            return;
        }
        pushed += 1;
        assert!(g.groups() <= pushed, "more groups than rows");
    }
    if let Ok(out) = g.finish() {
        if !keys.is_empty() {
            assert!(out.len() <= pushed, "more merged groups than rows");
        }
        for row in &out {
            split_row(row).expect("a merged row is a valid DataRow");
        }
    }
}
