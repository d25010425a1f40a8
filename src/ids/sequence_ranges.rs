//! Per-shard number ranges for the sequences of sharded tables.
//!
//! A `bigserial` or identity column that is not the shard key is numbered by each shard's own
//! sequence, so every shard would hand out 1, 2, 3, … and two rows on two shards would share an
//! id: a read by that id would find both. Each shard therefore numbers such a sequence in a range
//! of its own: shard `s` from `(s << width) + 1` up to `(s + 1) << width` (capped at the type's
//! largest value), where `width` is 48 bits for `bigint` sequences (32,768 shards of 2^48 ids),
//! 24 for `integer` (128 shards of 16.7 million) and 11 for `smallint` (16 shards of 2,048).
//! Shard 0 numbers as a single Postgres would (1, 2, …). A shard whose range is used up gets
//! Postgres's own "reached maximum value of sequence" error, never a duplicate.
//!
//! The ranges are set by [`align_sql`], run on each shard in the same transaction as the DDL
//! that creates the sequences, and on a new shard after its tables are copied there.

/// Bits of one shard's range for a sequence whose values are `type_len` bytes wide (`pg_type.typlen`).
pub fn width(type_len: i16) -> u32 {
    match type_len {
        8 => 48,
        4 => 24,
        _ => 11,
    }
}

/// The largest value of a sequence type `type_len` bytes wide.
pub fn type_max(type_len: i16) -> i64 {
    match type_len {
        8 => i64::MAX,
        4 => i32::MAX as i64,
        _ => i16::MAX as i64,
    }
}

/// The range (first and last value, inclusive) shard `shard` numbers a sequence of a sharded
/// table in; `None` when the type has no room left for that shard.
pub fn range(shard: u32, type_len: i16) -> Option<(i64, i64)> {
    let width = width(type_len);
    let max = type_max(type_len) as i128;
    let lo = ((shard as i128) << width) + 1;
    let hi = ((shard as i128 + 1) << width).min(max);
    (lo <= max).then_some((lo as i64, hi as i64))
}

/// One statement that puts every sequence owned by a column of `table` (serial defaults and
/// identity columns; `table` as SQL text a `regclass` reads, quoted as needed) into `shard`'s
/// range. A sequence already in it is left alone; a descending one is the user's choice and left
/// alone too. A sequence keeps its start and position when they lie in the range (shard 0's
/// usually do) and restarts at the range's start otherwise. A type with no room for the shard fails
/// with `0A000`, so the DDL that made the sequence rolls back.
pub fn align_sql(table: &str, shard: u32) -> String {
    let table = crate::sql_text::quote_literal(table);
    format!(
        "DO $pgshard_sequences$
DECLARE
  s record;
  width int;
  top bigint;
  lo numeric;
  hi bigint;
  first bigint;
  last bigint;
BEGIN
  FOR s IN
    SELECT q.seqrelid::regclass AS seq, t.typlen, q.seqmin, q.seqmax, q.seqstart, q.seqincrement
      FROM pg_depend d
      JOIN pg_sequence q ON q.seqrelid = d.objid
      JOIN pg_type t ON t.oid = q.seqtypid
     WHERE d.classid = 'pg_class'::regclass
       AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = to_regclass({table})
       AND d.deptype IN ('a', 'i')
  LOOP
    width := CASE s.typlen WHEN 8 THEN 48 WHEN 4 THEN 24 ELSE 11 END;
    top := CASE s.typlen WHEN 8 THEN 9223372036854775807 WHEN 4 THEN 2147483647 ELSE 32767 END;
    lo := {shard}::numeric * (1::bigint << width) + 1;
    IF lo > top THEN
      RAISE EXCEPTION 'sequence % of sharded table % has no room for shard {shard}', s.seq, {table}
        USING ERRCODE = '0A000',
              HINT = 'pgshard gives each shard its own range of a sharded table''s sequence; use a bigint column (bigserial) for more shards';
    END IF;
    hi := least(({shard} + 1)::numeric * (1::bigint << width), top);
    CONTINUE WHEN s.seqincrement < 0 OR (s.seqmin = lo AND s.seqmax = hi);
    first := CASE WHEN s.seqstart BETWEEN lo AND hi THEN s.seqstart ELSE lo END;
    EXECUTE format('SELECT last_value FROM %s', s.seq) INTO last;
    IF last >= lo AND last <= hi THEN
      EXECUTE format('ALTER SEQUENCE %s MINVALUE %s MAXVALUE %s START %s', s.seq, lo, hi, first);
    ELSE
      EXECUTE format('ALTER SEQUENCE %s MINVALUE %s MAXVALUE %s START %s RESTART %s', s.seq, lo, hi, first, first);
    END IF;
  END LOOP;
END
$pgshard_sequences$"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shard, type length, the range it numbers in.
    type Case = (u32, i16, Option<(i64, i64)>);

    #[test]
    fn ranges_by_type_and_shard() {
        let cases: &[Case] = &[
            (0, 8, Some((1, 1 << 48))),
            (1, 8, Some(((1 << 48) + 1, 2 << 48))),
            (10, 8, Some(((10 << 48) + 1, 11 << 48))),
            (32_767, 8, Some(((32_767 << 48) + 1, i64::MAX))),
            (32_768, 8, None),
            (0, 4, Some((1, 1 << 24))),
            (3, 4, Some(((3 << 24) + 1, 4 << 24))),
            (127, 4, Some(((127 << 24) + 1, i32::MAX as i64))),
            (128, 4, None),
            (0, 2, Some((1, 2048))),
            (15, 2, Some((15 * 2048 + 1, i16::MAX as i64))),
            (16, 2, None),
        ];
        for &(shard, len, want) in cases {
            assert_eq!(range(shard, len), want, "shard {shard}, typlen {len}");
        }
    }

    #[test]
    fn ranges_of_neighbouring_shards_never_overlap() {
        for len in [2, 4, 8] {
            let mut shard = 0;
            while let (Some(a), Some(b)) = (range(shard, len), range(shard + 1, len)) {
                assert!(
                    a.0 <= a.1 && a.1 < b.0,
                    "typlen {len}, shards {shard}, {}",
                    shard + 1
                );
                shard += 1;
            }
        }
    }

    #[test]
    fn the_statement_names_the_table_as_a_literal() {
        let sql = align_sql("public.\"Odd'name\"", 3);
        assert!(sql.contains("to_regclass('public.\"Odd''name\"')"), "{sql}");
        assert!(
            sql.contains("lo := 3::numeric * (1::bigint << width) + 1"),
            "{sql}"
        );
        assert!(sql.contains("hi := least((3 + 1)::numeric"), "{sql}");
    }
}
