//! ORDER BY across shards: each shard returns its rows already sorted, and a streaming k-way
//! merge interleaves them, holding at most what has been pushed but not yet emitted. LIMIT and
//! OFFSET are applied on the merged stream (the shards were sent `LIMIT n+m`).

use std::cmp::Ordering;
use std::collections::VecDeque;

use bytes::Bytes;

use super::collate::TextOrder;
use super::row::{column, split_row};
use super::value::{compare_in, ColumnType, Value};
use super::MergeError;

/// One ORDER BY item. Callers pass NULL placement explicitly; Postgres's default is NULLS LAST
/// for ASC and NULLS FIRST for DESC (see [`SortKey::asc`] and [`SortKey::desc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// Index of the column in the result rows.
    pub column: usize,
    /// DESC.
    pub descending: bool,
    /// NULLS FIRST; independent of `descending`, as in SQL.
    pub nulls_first: bool,
}

impl SortKey {
    /// `ORDER BY column ASC` with Postgres's default NULLS LAST.
    pub fn asc(column: usize) -> SortKey {
        SortKey {
            column,
            descending: false,
            nulls_first: false,
        }
    }

    /// `ORDER BY column DESC` with Postgres's default NULLS FIRST.
    pub fn desc(column: usize) -> SortKey {
        SortKey {
            column,
            descending: true,
            nulls_first: true,
        }
    }
}

static BYTEWISE: TextOrder = TextOrder::Bytewise;

/// Compares the decoded sort columns of two rows under `keys`, text of key `i` in `orders[i]`
/// (bytewise where `orders` is shorter).
fn cmp_keys(keys: &[SortKey], orders: &[TextOrder], a: &[Value], b: &[Value]) -> Ordering {
    for (i, (k, (x, y))) in keys.iter().zip(a.iter().zip(b)).enumerate() {
        let text = orders.get(i).unwrap_or(&BYTEWISE);
        let ord = match (x, y) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) if k.nulls_first => Ordering::Less,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) if k.nulls_first => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            _ if k.descending => compare_in(y, x, text),
            _ => compare_in(x, y, text),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

struct Pending {
    row: Bytes,
    key: Vec<Value>,
}

/// A streaming merge of N sorted row streams, one per shard.
///
/// A row is emitted only when every shard that has not finished has at least one row buffered,
/// because until then an unseen row could sort before it. Callers should therefore read from the
/// shard [`KWayMerge::waiting_on`] names (and from no shard that already has a row buffered) so
/// memory stays at one lookahead row per shard. Equal rows come out in shard order, so the
/// result is deterministic. Each shard's rows are checked to really be in order: a shard that
/// sorted differently (say, with another collation) is an error, not a silently wrong result.
pub struct KWayMerge {
    keys: Vec<SortKey>,
    key_types: Vec<ColumnType>,
    /// How each key's text compares (the column's collation).
    orders: Vec<TextOrder>,
    queues: Vec<VecDeque<Pending>>,
    /// The key of the last row pushed per shard, to check that input is sorted.
    last: Vec<Option<Vec<Value>>>,
    finished: Vec<bool>,
    to_skip: u64,
    to_take: Option<u64>,
    /// Rows of each shard the merged stream used up so far, those OFFSET skipped included.
    taken: Vec<u64>,
}

impl KWayMerge {
    /// A merge of `shards` inputs whose rows have the given columns (from RowDescription),
    /// sorted by `keys`. Fails if a key names a missing column or a type it cannot compare.
    pub fn new(
        shards: usize,
        columns: &[ColumnType],
        keys: Vec<SortKey>,
    ) -> Result<KWayMerge, MergeError> {
        let mut key_types = Vec::with_capacity(keys.len());
        for k in &keys {
            let t = *columns.get(k.column).ok_or(MergeError::MissingColumn {
                wanted: k.column,
                actual: columns.len(),
            })?;
            t.check()?;
            key_types.push(t);
        }
        Ok(KWayMerge {
            keys,
            key_types,
            orders: Vec::new(),
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            last: vec![None; shards],
            finished: vec![false; shards],
            to_skip: 0,
            to_take: None,
            taken: vec![0; shards],
        })
    }

    /// Compares the text of key `i` in `orders[i]` (by default every key compares bytewise, the
    /// C collation). Must be given before any row.
    pub fn with_text_orders(mut self, orders: Vec<TextOrder>) -> Result<KWayMerge, MergeError> {
        if orders.len() != self.keys.len() {
            return Err(MergeError::InvalidPlan("one text order per sort key"));
        }
        self.orders = orders;
        Ok(self)
    }

    /// Applies `OFFSET offset LIMIT limit` to the merged stream (`None`: no LIMIT).
    pub fn with_limit(mut self, offset: u64, limit: Option<u64>) -> KWayMerge {
        self.to_skip = offset;
        self.to_take = limit;
        self
    }

    fn check_shard(&self, shard: usize) -> Result<(), MergeError> {
        if shard >= self.queues.len() {
            return Err(MergeError::NoSuchShard {
                shard,
                shards: self.queues.len(),
            });
        }
        Ok(())
    }

    /// Buffers the next DataRow body of `shard`.
    pub fn push(&mut self, shard: usize, row: Bytes) -> Result<(), MergeError> {
        self.check_shard(shard)?;
        if self.finished[shard] {
            return Err(MergeError::RowAfterFinish { shard });
        }
        if self.to_take == Some(0) {
            // LIMIT reached: nothing more will be emitted, so don't hold the row.
            return Ok(());
        }
        let cols = split_row(&row)?;
        let mut key = Vec::with_capacity(self.keys.len());
        for (k, t) in self.keys.iter().zip(&self.key_types) {
            key.push(t.decode(column(&cols, k.column)?)?);
        }
        if let Some(prev) = &self.last[shard] {
            if cmp_keys(&self.keys, &self.orders, prev, &key) == Ordering::Greater {
                return Err(MergeError::UnsortedInput { shard });
            }
        }
        self.last[shard] = Some(key.clone());
        self.queues[shard].push_back(Pending { row, key });
        Ok(())
    }

    /// Records that `shard` has sent all its rows.
    pub fn finish(&mut self, shard: usize) -> Result<(), MergeError> {
        self.check_shard(shard)?;
        self.finished[shard] = true;
        Ok(())
    }

    /// A shard whose next row is needed before anything more can be emitted, if any.
    pub fn waiting_on(&self) -> Option<usize> {
        if self.to_take == Some(0) {
            return None;
        }
        (0..self.queues.len()).find(|s| !self.finished[*s] && self.queues[*s].is_empty())
    }

    /// How many rows of each shard the merged stream used up, OFFSET's skipped rows included:
    /// a prefix of each shard's sorted rows, the ones a single server would have read (and, for
    /// a locking read, locked) to give the same answer.
    pub fn taken(&self) -> &[u64] {
        &self.taken
    }

    /// Rows buffered for `shard` (0 for an unknown shard).
    pub fn buffered(&self, shard: usize) -> usize {
        self.queues.get(shard).map_or(0, VecDeque::len)
    }

    /// True once no further row will come out: the LIMIT is reached, or every shard finished
    /// and everything was emitted. Callers can then stop (or cancel) the shards still sending.
    pub fn is_done(&self) -> bool {
        self.to_take == Some(0)
            || (self.finished.iter().all(|f| *f) && self.queues.iter().all(VecDeque::is_empty))
    }

    /// The next row of the merged, offset and limited stream, or `None` if it is not known yet
    /// (see [`KWayMerge::waiting_on`]) or there is none (see [`KWayMerge::is_done`]).
    pub fn next_ready(&mut self) -> Option<Bytes> {
        loop {
            if self.to_take == Some(0) || self.waiting_on().is_some() {
                return None;
            }
            let mut best: Option<usize> = None;
            for (s, q) in self.queues.iter().enumerate() {
                let Some(head) = q.front() else { continue };
                let better = match best.and_then(|b| self.queues[b].front()) {
                    None => true,
                    // Strictly less: on ties the lower shard index wins.
                    Some(cur) => {
                        cmp_keys(&self.keys, &self.orders, &head.key, &cur.key) == Ordering::Less
                    }
                };
                if better {
                    best = Some(s);
                }
            }
            let best = best?;
            let pending = self.queues[best].pop_front()?;
            self.taken[best] += 1;
            if self.to_skip > 0 {
                self.to_skip -= 1;
                continue;
            }
            if let Some(n) = self.to_take.as_mut() {
                *n -= 1;
                if *n == 0 {
                    self.queues.iter_mut().for_each(VecDeque::clear);
                }
            }
            return Some(pending.row);
        }
    }
}

/// Sorts whole rows (the proxy's own, e.g. merged groups) by `keys`, text of key `i` in
/// `orders[i]` (bytewise where `orders` is shorter); stable, so rows that tie keep their order.
pub fn sort_rows(
    rows: Vec<Bytes>,
    columns: &[ColumnType],
    keys: &[SortKey],
    orders: &[TextOrder],
) -> Result<Vec<Bytes>, MergeError> {
    let mut keyed = Vec::with_capacity(rows.len());
    for row in rows {
        let cols = split_row(&row)?;
        let mut key = Vec::with_capacity(keys.len());
        for k in keys {
            let t = columns.get(k.column).ok_or(MergeError::MissingColumn {
                wanted: k.column,
                actual: columns.len(),
            })?;
            key.push(t.decode(column(&cols, k.column)?)?);
        }
        keyed.push((key, row));
    }
    keyed.sort_by(|a, b| cmp_keys(keys, orders, &a.0, &b.0));
    Ok(keyed.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::merge::row::build_row;
    use crate::exec::merge::value::{FORMAT_BINARY, FORMAT_TEXT, INT4_OID, TEXT_OID};

    fn row(a: Option<&str>, b: &str) -> Bytes {
        build_row(&[a.map(str::as_bytes), Some(b.as_bytes())]).unwrap()
    }
    fn cols() -> Vec<ColumnType> {
        vec![
            ColumnType::new(INT4_OID, FORMAT_TEXT),
            ColumnType::new(TEXT_OID, FORMAT_TEXT),
        ]
    }
    fn tag(r: &Bytes) -> String {
        let c = split_row(r).unwrap();
        String::from_utf8(c[1].as_ref().unwrap().to_vec()).unwrap()
    }

    /// Feeds whole shard inputs, reading only from the shard the merge waits on.
    fn run(m: &mut KWayMerge, shards: Vec<Vec<Bytes>>) -> Vec<String> {
        let mut iters: Vec<_> = shards.into_iter().map(|v| v.into_iter()).collect();
        let mut out = Vec::new();
        loop {
            while let Some(r) = m.next_ready() {
                out.push(tag(&r));
            }
            if m.is_done() {
                return out;
            }
            let s = m.waiting_on().expect("waiting on a shard");
            assert_eq!(m.buffered(s), 0);
            match iters[s].next() {
                Some(r) => m.push(s, r).unwrap(),
                None => m.finish(s).unwrap(),
            }
            for (i, _) in iters.iter().enumerate() {
                assert!(m.buffered(i) <= 1, "more than one lookahead row");
            }
        }
    }

    #[test]
    fn merges_in_order_with_ties_by_shard() {
        let mut m = KWayMerge::new(3, &cols(), vec![SortKey::asc(0)]).unwrap();
        let out = run(
            &mut m,
            vec![
                vec![
                    row(Some("1"), "a1"),
                    row(Some("3"), "a3"),
                    row(Some("3"), "a3b"),
                ],
                vec![row(Some("2"), "b2"), row(Some("3"), "b3")],
                vec![row(Some("-5"), "c-5"), row(Some("10"), "c10")],
            ],
        );
        assert_eq!(out, ["c-5", "a1", "b2", "a3", "a3b", "b3", "c10"]);
    }

    #[test]
    fn empty_shards_and_no_shards() {
        let mut m = KWayMerge::new(3, &cols(), vec![SortKey::asc(0)]).unwrap();
        let out = run(&mut m, vec![vec![], vec![row(Some("1"), "x")], vec![]]);
        assert_eq!(out, ["x"]);
        let mut m = KWayMerge::new(0, &cols(), vec![SortKey::asc(0)]).unwrap();
        assert!(m.is_done());
        assert_eq!(m.next_ready(), None);
    }

    #[test]
    fn nulls_first_and_last_and_descending() {
        let shards = || {
            vec![
                vec![row(None, "n0"), row(Some("5"), "a5")],
                vec![row(Some("1"), "b1"), row(None, "n1")],
            ]
        };
        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::asc(0)]).unwrap();
        // ASC NULLS LAST: shard 0 does not sort that way, which is detected.
        m.push(0, row(None, "n0")).unwrap();
        assert_eq!(
            m.push(0, row(Some("5"), "a5")),
            Err(MergeError::UnsortedInput { shard: 0 })
        );

        let key = SortKey {
            column: 0,
            descending: false,
            nulls_first: true,
        };
        let mut m = KWayMerge::new(2, &cols(), vec![key]).unwrap();
        let shards_first = vec![
            vec![row(None, "n0"), row(Some("5"), "a5")],
            vec![row(None, "n1"), row(Some("1"), "b1")],
        ];
        assert_eq!(run(&mut m, shards_first), ["n0", "n1", "b1", "a5"]);

        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::desc(0)]).unwrap();
        let desc = vec![
            vec![row(None, "n0"), row(Some("5"), "a5")],
            vec![row(Some("7"), "b7"), row(Some("1"), "b1")],
        ];
        assert_eq!(run(&mut m, desc), ["n0", "b7", "a5", "b1"]);

        let key = SortKey {
            column: 0,
            descending: true,
            nulls_first: false,
        };
        let mut m = KWayMerge::new(2, &cols(), vec![key]).unwrap();
        let mut s = shards();
        s[0].reverse();
        assert_eq!(run(&mut m, s), ["a5", "b1", "n0", "n1"]);
    }

    #[test]
    fn secondary_key_breaks_ties() {
        let keys = vec![SortKey::asc(0), SortKey::desc(1)];
        let mut m = KWayMerge::new(2, &cols(), keys).unwrap();
        let out = run(
            &mut m,
            vec![
                vec![row(Some("1"), "b"), row(Some("2"), "a")],
                vec![row(Some("1"), "c"), row(Some("1"), "a")],
            ],
        );
        assert_eq!(out, ["c", "b", "a", "a"]);
    }

    #[test]
    fn offset_and_limit() {
        let shards = || {
            vec![
                vec![
                    row(Some("1"), "1"),
                    row(Some("4"), "4"),
                    row(Some("5"), "5"),
                ],
                vec![
                    row(Some("2"), "2"),
                    row(Some("3"), "3"),
                    row(Some("6"), "6"),
                ],
            ]
        };
        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::asc(0)])
            .unwrap()
            .with_limit(2, Some(3));
        assert_eq!(run(&mut m, shards()), ["3", "4", "5"]);
        // Rows 1..5 were used up, skipped ones included: 1, 4, 5 of the first shard, 2, 3 of
        // the second.
        assert_eq!(m.taken(), [3, 2]);
        assert!(m.is_done());
        assert_eq!(m.waiting_on(), None);
        // Rows after the LIMIT are dropped, not buffered.
        m.push(0, row(Some("9"), "9")).unwrap();
        assert_eq!(m.buffered(0), 0);

        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::asc(0)])
            .unwrap()
            .with_limit(10, None);
        assert!(run(&mut m, shards()).is_empty());
        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::asc(0)])
            .unwrap()
            .with_limit(0, Some(0));
        assert!(run(&mut m, shards()).is_empty());
        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::asc(0)])
            .unwrap()
            .with_limit(4, Some(100));
        assert_eq!(run(&mut m, shards()), ["5", "6"]);
        assert_eq!(m.taken(), [3, 3]);
        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::asc(0)])
            .unwrap()
            .with_limit(0, Some(1));
        assert_eq!(run(&mut m, shards()), ["1"]);
        assert_eq!(m.taken(), [1, 0]);
    }

    #[test]
    fn waits_for_every_unfinished_shard() {
        let mut m = KWayMerge::new(2, &cols(), vec![SortKey::asc(0)]).unwrap();
        m.push(0, row(Some("1"), "a")).unwrap();
        assert_eq!(m.next_ready(), None);
        assert_eq!(m.waiting_on(), Some(1));
        m.finish(1).unwrap();
        assert_eq!(m.next_ready().map(|r| tag(&r)), Some("a".into()));
        assert_eq!(m.waiting_on(), Some(0));
        assert!(!m.is_done());
        m.finish(0).unwrap();
        assert!(m.is_done());
    }

    #[test]
    fn errors() {
        assert!(matches!(
            KWayMerge::new(1, &cols(), vec![SortKey::asc(2)]),
            Err(MergeError::MissingColumn { wanted: 2, .. })
        ));
        assert!(matches!(
            KWayMerge::new(1, &[ColumnType::new(114, 0)], vec![SortKey::asc(0)]),
            Err(MergeError::UnsupportedType { oid: 114 })
        ));
        let mut m = KWayMerge::new(1, &cols(), vec![SortKey::asc(0)]).unwrap();
        assert!(matches!(
            m.push(1, row(Some("1"), "a")),
            Err(MergeError::NoSuchShard { .. })
        ));
        assert!(matches!(
            m.push(0, Bytes::from_static(b"\x00\x02\x00")),
            Err(MergeError::MalformedRow(_))
        ));
        assert!(matches!(
            m.push(0, build_row(&[Some(b"x")]).unwrap()),
            Err(MergeError::InvalidValue { .. })
        ));
        assert!(matches!(
            m.push(0, build_row::<&[u8]>(&[]).unwrap()),
            Err(MergeError::MissingColumn { .. })
        ));
        m.finish(0).unwrap();
        assert_eq!(
            m.push(0, row(Some("1"), "a")),
            Err(MergeError::RowAfterFinish { shard: 0 })
        );
    }

    #[test]
    fn text_keys_in_a_locale() {
        let en = crate::exec::merge::collate::libc_collator("en_US.UTF-8", "en_US.UTF-8")
            .unwrap_or_else(|e| panic!("{e}: run scripts/install-deps.sh"));
        let cols = [ColumnType::new(TEXT_OID, FORMAT_TEXT)];
        let r = |t: &str| build_row(&[Some(t.as_bytes()), Some(t.as_bytes())]).unwrap();
        // Each shard sorted as an en_US Postgres sorts (case and accents are secondary).
        let shards = || {
            vec![
                vec![r("a"), r("\u{e9}"), r("Zebra")],
                vec![r("A"), r("b"), r("co-op")],
                vec![r("B"), r("e"), r("zebra")],
            ]
        };
        let mut m = KWayMerge::new(3, &cols, vec![SortKey::asc(0)])
            .unwrap()
            .with_text_orders(vec![TextOrder::Libc(en.clone())])
            .unwrap();
        assert_eq!(
            run(&mut m, shards()),
            ["a", "A", "b", "B", "co-op", "e", "\u{e9}", "zebra", "Zebra"]
        );
        // Compared bytewise the same input is out of order, which the merge detects.
        let mut m = KWayMerge::new(3, &cols, vec![SortKey::asc(0)]).unwrap();
        m.push(0, r("a")).unwrap();
        m.push(0, r("\u{e9}")).unwrap();
        assert_eq!(
            m.push(0, r("Zebra")),
            Err(MergeError::UnsortedInput { shard: 0 })
        );
        assert!(KWayMerge::new(1, &cols, vec![SortKey::asc(0)])
            .unwrap()
            .with_text_orders(vec![])
            .is_err());
        let sorted = sort_rows(
            vec![r("b"), r("B"), r("a")],
            &cols,
            &[SortKey::desc(0)],
            &[TextOrder::Libc(en)],
        )
        .unwrap();
        let tags: Vec<String> = sorted.iter().map(tag).collect();
        assert_eq!(tags, ["B", "b", "a"]);
    }

    #[test]
    fn binary_keys() {
        let cols = [ColumnType::new(INT4_OID, FORMAT_BINARY)];
        let r = |v: i32, t: &str| build_row(&[Some(&v.to_be_bytes()[..]), Some(t.as_bytes())]);
        let mut m = KWayMerge::new(2, &cols, vec![SortKey::asc(0)]).unwrap();
        let out = run(
            &mut m,
            vec![
                vec![r(-300, "a").unwrap(), r(256, "b").unwrap()],
                vec![r(-1, "c").unwrap()],
            ],
        );
        assert_eq!(out, ["a", "c", "b"]);
    }
}

#[cfg(test)]
mod randomized {
    use super::*;
    use crate::exec::merge::row::build_row;
    use crate::exec::merge::value::{FORMAT_TEXT, INT4_OID, TEXT_OID};

    /// A tiny deterministic generator, enough to vary the inputs.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn merge_equals_stable_sort_of_all_rows() {
        let cols = [
            ColumnType::new(INT4_OID, FORMAT_TEXT),
            ColumnType::new(TEXT_OID, FORMAT_TEXT),
        ];
        let mut rng = Lcg(7);
        for round in 0..200 {
            let shards = 1 + rng.next(5) as usize;
            let key = SortKey {
                column: 0,
                descending: rng.next(2) == 0,
                nulls_first: rng.next(2) == 0,
            };
            let offset = rng.next(4);
            let limit = if rng.next(2) == 0 {
                None
            } else {
                Some(rng.next(10))
            };
            // (value, shard, position) per row; the tag is "shard/position".
            let mut inputs: Vec<Vec<(Option<i64>, String)>> = Vec::new();
            for s in 0..shards {
                let mut rows: Vec<Option<i64>> = (0..rng.next(8))
                    .map(|_| {
                        if rng.next(5) == 0 {
                            None
                        } else {
                            Some(rng.next(6) as i64 - 3)
                        }
                    })
                    .collect();
                let order = |a: &Option<i64>, b: &Option<i64>| {
                    let va = a.map_or(Value::Null, Value::Int);
                    let vb = b.map_or(Value::Null, Value::Int);
                    cmp_keys(&[key], &[], &[va], &[vb])
                };
                rows.sort_by(order);
                inputs.push(
                    rows.into_iter()
                        .enumerate()
                        .map(|(i, v)| (v, format!("{s}/{i}")))
                        .collect(),
                );
            }
            // Expected: all rows ordered by key, ties by shard then position.
            let mut all: Vec<(usize, usize, Option<i64>, String)> = Vec::new();
            for (s, rows) in inputs.iter().enumerate() {
                for (i, (v, t)) in rows.iter().enumerate() {
                    all.push((s, i, *v, t.clone()));
                }
            }
            all.sort_by(|a, b| {
                let va = a.2.map_or(Value::Null, Value::Int);
                let vb = b.2.map_or(Value::Null, Value::Int);
                cmp_keys(&[key], &[], &[va], &[vb]).then((a.0, a.1).cmp(&(b.0, b.1)))
            });
            let expected: Vec<String> = all
                .into_iter()
                .map(|r| r.3)
                .skip(offset as usize)
                .take(limit.map_or(usize::MAX, |l| l as usize))
                .collect();

            let mut m = KWayMerge::new(shards, &cols, vec![key])
                .unwrap()
                .with_limit(offset, limit);
            let mut feeds: Vec<_> = inputs.into_iter().map(|v| v.into_iter()).collect();
            let mut got = Vec::new();
            loop {
                while let Some(r) = m.next_ready() {
                    let c = split_row(&r).unwrap();
                    got.push(String::from_utf8(c[1].as_ref().unwrap().to_vec()).unwrap());
                }
                if m.is_done() {
                    break;
                }
                let s = m.waiting_on().unwrap();
                match feeds[s].next() {
                    Some((v, t)) => {
                        let v = v.map(|v| v.to_string());
                        let body =
                            build_row(&[v.as_deref().map(str::as_bytes), Some(t.as_bytes())]);
                        m.push(s, body.unwrap()).unwrap();
                    }
                    None => m.finish(s).unwrap(),
                }
            }
            assert_eq!(got, expected, "round {round}");
        }
    }
}
