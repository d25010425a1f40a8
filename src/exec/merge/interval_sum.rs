//! `sum(interval)` and `avg(interval)` over several shards, as Postgres 15 computes them: a sum
//! adds the three fields separately (months to months, days to days, microseconds to
//! microseconds, nothing carried), and an average is that sum divided by the count with
//! `interval_div`'s float arithmetic, whose cascading of fractional months into days and of
//! fractional days into time is reproduced step for step. The result is written in binary or
//! in IntervalStyle `postgres`, the only style the merge reads.

use super::interval::IntervalParts;
use super::MergeError;

const DAYS_PER_MONTH: f64 = 30.0;
const SECS_PER_DAY: f64 = 86_400.0;
const USECS_PER_SEC: f64 = 1_000_000.0;
const USECS_PER_HOUR: i64 = 3_600_000_000;
const USECS_PER_MINUTE: i64 = 60_000_000;
const USECS_PER_SEC_INT: i64 = 1_000_000;

/// Field-wise running sum of intervals, wide enough that no partial overflows before the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntervalSum {
    months: i128,
    days: i128,
    micros: i128,
}

fn out_of_range() -> MergeError {
    MergeError::OutOfRange("interval")
}

impl IntervalSum {
    /// Adds one shard's partial sum.
    pub fn add(&mut self, v: IntervalParts) {
        self.months += i128::from(v.months);
        self.days += i128::from(v.days);
        self.micros += i128::from(v.micros);
    }

    /// The sum as an interval; Postgres's `interval out of range` when a field does not fit.
    pub fn total(&self) -> Result<IntervalParts, MergeError> {
        Ok(IntervalParts {
            months: i32::try_from(self.months).map_err(|_| out_of_range())?,
            days: i32::try_from(self.days).map_err(|_| out_of_range())?,
            micros: i64::try_from(self.micros).map_err(|_| out_of_range())?,
        })
    }
}

/// Rounds to microseconds as Postgres's `TSROUND` does (half to even, as C's `rint`).
fn tsround(x: f64) -> f64 {
    (x * USECS_PER_SEC).round_ties_even() / USECS_PER_SEC
}

/// C's conversion of a double to an int32, for values checked to fit (truncation toward zero).
fn to_i32(x: f64) -> Result<i32, MergeError> {
    if x.is_nan() || x < f64::from(i32::MIN) || x >= -f64::from(i32::MIN) {
        return Err(out_of_range());
    }
    Ok(x as i32)
}

/// `interval_div(span, factor)` of Postgres 15: `avg(interval)` is the sum divided by the count.
pub fn divide(span: IntervalParts, factor: f64) -> Result<IntervalParts, MergeError> {
    if factor == 0.0 {
        return Err(MergeError::InvalidPlan("interval divided by a zero count"));
    }
    let months = to_i32(f64::from(span.months) / factor)?;
    let mut days = to_i32(f64::from(span.days) / factor)?;
    let month_remainder_days =
        tsround((f64::from(span.months) / factor - f64::from(months)) * DAYS_PER_MONTH);
    let whole_remainder_days = month_remainder_days.trunc();
    let mut sec_remainder = tsround(
        (f64::from(span.days) / factor - f64::from(days) + month_remainder_days
            - whole_remainder_days)
            * SECS_PER_DAY,
    );
    if sec_remainder.abs() >= SECS_PER_DAY {
        let carried = (sec_remainder / SECS_PER_DAY).trunc();
        days = days
            .checked_add(to_i32(carried)?)
            .ok_or_else(out_of_range)?;
        sec_remainder -= carried * SECS_PER_DAY;
    }
    days = days
        .checked_add(to_i32(whole_remainder_days)?)
        .ok_or_else(out_of_range)?;
    let micros = (span.micros as f64 / factor + sec_remainder * USECS_PER_SEC).round_ties_even();
    // FLOAT8_FITS_IN_INT64: the range [-2^63, 2^63).
    if micros.is_nan() || micros < i64::MIN as f64 || micros >= -(i64::MIN as f64) {
        return Err(out_of_range());
    }
    Ok(IntervalParts {
        months,
        days,
        micros: micros as i64,
    })
}

/// The binary form: `int8` microseconds, `int4` days, `int4` months.
pub fn encode_binary(v: IntervalParts) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&v.micros.to_be_bytes());
    b.extend_from_slice(&v.days.to_be_bytes());
    b.extend_from_slice(&v.months.to_be_bytes());
    b
}

/// One nonzero `N unit[s]` field of the postgres style; each field's sign decides whether the
/// next one is written with an explicit `+`.
fn push_field(out: &mut String, value: i64, unit: &str, is_zero: &mut bool, is_before: &mut bool) {
    if value == 0 {
        return;
    }
    if !*is_zero {
        out.push(' ');
    }
    if *is_before && value > 0 {
        out.push('+');
    }
    out.push_str(&value.to_string());
    out.push(' ');
    out.push_str(unit);
    if value != 1 {
        out.push('s');
    }
    *is_before = value < 0;
    *is_zero = false;
}

/// The text of IntervalStyle `postgres` (`1 year 2 mons -3 days +04:05:06.5`), as Postgres
/// writes it.
pub fn encode_text(v: IntervalParts) -> String {
    let mut out = String::new();
    let (mut is_zero, mut is_before) = (true, false);
    let years = i64::from(v.months / 12);
    let months = i64::from(v.months % 12);
    push_field(&mut out, years, "year", &mut is_zero, &mut is_before);
    push_field(&mut out, months, "mon", &mut is_zero, &mut is_before);
    push_field(
        &mut out,
        i64::from(v.days),
        "day",
        &mut is_zero,
        &mut is_before,
    );
    let time = v.micros;
    if is_zero || time != 0 {
        let hours = time / USECS_PER_HOUR;
        let rest = time - hours * USECS_PER_HOUR;
        let minutes = rest / USECS_PER_MINUTE;
        let rest = rest - minutes * USECS_PER_MINUTE;
        let seconds = rest / USECS_PER_SEC_INT;
        let fraction = rest - seconds * USECS_PER_SEC_INT;
        if !is_zero {
            out.push(' ');
        }
        if time < 0 {
            out.push('-');
        } else if is_before {
            out.push('+');
        }
        out.push_str(&format!(
            "{:02}:{:02}:{:02}",
            hours.unsigned_abs(),
            minutes.unsigned_abs(),
            seconds.unsigned_abs()
        ));
        if fraction != 0 {
            let digits = format!("{:06}", fraction.unsigned_abs());
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::merge::interval::parts_text;

    fn parts(text: &str) -> IntervalParts {
        parts_text(text.as_bytes()).unwrap()
    }

    /// Texts as Postgres 15 writes them (`SELECT x::interval` in IntervalStyle postgres): the
    /// writer reproduces each byte for byte, and reads back what it wrote.
    #[test]
    fn text_as_postgres_writes_it() {
        for text in [
            "00:00:00",
            "1 day",
            "-1 days",
            "2 days",
            "1 year",
            "1 mon",
            "1 year 2 mons 3 days 04:05:06.789",
            "-1 years -2 mons +3 days -04:05:06",
            "-1 days +02:03:00",
            "1 mon -1 days",
            "-00:00:00.000001",
            "00:00:00.5",
            "100:00:00",
            "-100:00:00.25",
            "3 days 00:00:01",
            "-3 days -00:00:01",
            "1 year -00:00:01",
            "-1 years +00:00:01",
        ] {
            assert_eq!(encode_text(parts(text)), text);
        }
    }

    #[test]
    fn binary_round_trip() {
        let v = parts("-1 years +2 mons -3 days +04:05:06.000007");
        let b = encode_binary(v);
        assert_eq!(crate::exec::merge::interval::parts_binary(&b).unwrap(), v);
    }

    /// Fields add separately, with nothing carried: `23:00:00 + 02:00:00` is `25:00:00`, and
    /// `1 mon + 30 days` stays both; a field past its range is Postgres's error.
    #[test]
    fn sums_field_by_field() {
        let mut s = IntervalSum::default();
        for t in ["23:00:00", "02:00:00", "1 mon", "30 days", "-1 days"] {
            s.add(parts(t));
        }
        assert_eq!(encode_text(s.total().unwrap()), "1 mon 29 days 25:00:00");
        let mut big = IntervalSum::default();
        big.add(parts("178000000 years"));
        big.add(parts("1 year"));
        assert_eq!(encode_text(big.total().unwrap()), "178000001 years");
        big.add(parts("178000000 years"));
        assert_eq!(big.total(), Err(MergeError::OutOfRange("interval")));
    }

    /// `avg` as Postgres 15 answers it: the sum divided by the count, fractional months cascading
    /// into days and fractional days into time (each expected value is `SELECT sum / n` or
    /// `avg(…)` on Postgres 15).
    #[test]
    fn divides_as_interval_div() {
        let cases: [(&str, f64, &str); 12] = [
            ("1 mon", 2.0, "15 days"),
            ("1 mon", 3.0, "10 days"),
            ("1 mon", 7.0, "4 days 06:51:25.6896"),
            ("1 day", 3.0, "08:00:00"),
            ("-1 day", 3.0, "-08:00:00"),
            (
                "1 year 1 mon 1 day 01:00:01",
                2.0,
                "6 mons 15 days 12:30:00.5",
            ),
            (
                "-5 mons +3 days -00:00:10",
                4.0,
                "-1 mons -7 days +05:59:57.5",
            ),
            ("00:00:00.000001", 2.0, "00:00:00"),
            ("00:00:00.000003", 2.0, "00:00:00.000002"),
            (
                "7 mons 13 days 05:00:00.123457",
                11.0,
                "20 days 07:00:00.003369",
            ),
            ("-13 mons -1 days", 9.0, "-1 mons -13 days -10:39:59.9712"),
            ("1 mon 29 days 25:00:00", 6.0, "9 days 24:10:00"),
        ];
        for (sum, n, want) in cases {
            assert_eq!(
                encode_text(divide(parts(sum), n).unwrap()),
                want,
                "{sum} / {n}"
            );
        }
    }
}
