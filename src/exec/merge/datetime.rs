//! Dates and timestamps as the numbers Postgres stores (days / microseconds since 2000-01-01),
//! decoded from either wire format, so rows from different shards compare exactly.

use super::MergeError;

/// Microseconds per day.
const USECS_PER_DAY: i64 = 86_400_000_000;

/// Days from 1970-01-01 to the given proleptic Gregorian date (year 0 = 1 BC).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Shift the year to start in March so the leap day is the last day of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days from 1970-01-01 to 2000-01-01.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

fn invalid(type_name: &'static str, text: &[u8], why: &str) -> MergeError {
    MergeError::InvalidValue {
        type_name,
        detail: format!("{:?}: {why}", String::from_utf8_lossy(text)),
    }
}

/// A cursor over ASCII text with just the parsing the ISO formats need.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn digits(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.pos;
        while self.pos < self.s.len() && self.pos - start < max && self.s[self.pos].is_ascii_digit()
        {
            self.pos += 1;
        }
        if self.pos - start < min {
            return None;
        }
        let mut v: i64 = 0;
        for b in &self.s[start..self.pos] {
            v = v * 10 + (b - b'0') as i64;
        }
        Some(v)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.s[self.pos..]
    }
}

/// `HH:MM:SS[.ffffff]` at the cursor, as microseconds since midnight (`24:00:00` included).
fn time_of_day(c: &mut Cursor) -> Option<i64> {
    let h = c.digits(2, 2)?;
    if !c.eat(b':') {
        return None;
    }
    let mi = c.digits(2, 2)?;
    if !c.eat(b':') {
        return None;
    }
    let se = c.digits(2, 2)?;
    let mut frac = 0i64;
    if c.eat(b'.') {
        let start = c.pos;
        let f = c.digits(1, 6)?;
        frac = f * 10i64.pow(6 - (c.pos - start) as u32);
    }
    if mi > 59 || se > 60 || h > 24 {
        return None;
    }
    Some(((h * 60 + mi) * 60 + se) * 1_000_000 + frac)
}

/// `+HH[:MM[:SS]]` or `-…` at the cursor, as seconds east of UTC.
fn utc_offset(c: &mut Cursor) -> Option<i64> {
    let sign = match c.rest().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return None,
    };
    c.pos += 1;
    let h = c.digits(2, 2)?;
    let mut secs = h * 3600;
    if c.eat(b':') {
        secs += c.digits(2, 2)? * 60;
        if c.eat(b':') {
            secs += c.digits(2, 2)?;
        }
    }
    Some(sign * secs)
}

/// Postgres's text for a `time` (`13:05:00`, `23:59:59.5`, `24:00:00`) as microseconds since
/// midnight, as its binary form carries it.
pub fn parse_time_text(s: &[u8]) -> Result<i64, MergeError> {
    let mut c = Cursor { s, pos: 0 };
    match time_of_day(&mut c) {
        Some(t) if t <= USECS_PER_DAY && c.rest().is_empty() => Ok(t),
        _ => Err(invalid("time", s, "not HH:MM:SS[.ffffff]")),
    }
}

/// Postgres's text for a `timetz` (`13:05:00+02`, `08:00:00-03:30`) as its binary form
/// carries it: microseconds since midnight and the zone in seconds WEST of UTC.
pub fn parse_timetz_text(s: &[u8]) -> Result<(i64, i32), MergeError> {
    let bad = |why: &str| invalid("timetz", s, why);
    let mut c = Cursor { s, pos: 0 };
    let time = time_of_day(&mut c)
        .filter(|t| *t <= USECS_PER_DAY)
        .ok_or_else(|| bad("not HH:MM:SS[.ffffff]"))?;
    let east = utc_offset(&mut c).ok_or_else(|| bad("without a valid UTC offset"))?;
    if !c.rest().is_empty() {
        return Err(bad("unexpected text after the time"));
    }
    let west = i32::try_from(-east).map_err(|_| bad("offset out of range"))?;
    Ok((time, west))
}

/// `YYYY-MM-DD` at the cursor, as days since 1970-01-01 before any BC adjustment.
fn parse_ymd(c: &mut Cursor) -> Option<(i64, u32, u32)> {
    let y = c.digits(4, 9)?;
    if !c.eat(b'-') {
        return None;
    }
    let m = c.digits(2, 2)? as u32;
    if !c.eat(b'-') {
        return None;
    }
    let d = c.digits(2, 2)? as u32;
    Some((y, m, d))
}

/// Postgres's ISO text for a date (`2024-02-29`, `0044-03-15 BC`, `infinity`) as days since
/// 2000-01-01; infinities map to `i32::MAX` / `i32::MIN` like the binary form.
pub fn parse_date_text(s: &[u8]) -> Result<i32, MergeError> {
    match s {
        b"infinity" => return Ok(i32::MAX),
        b"-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let mut c = Cursor { s, pos: 0 };
    let (y, m, d) = parse_ymd(&mut c).ok_or_else(|| invalid("date", s, "not ISO YYYY-MM-DD"))?;
    let bc = match c.rest() {
        b"" => false,
        b" BC" => true,
        _ => return Err(invalid("date", s, "unexpected text after the date")),
    };
    let days = civil_days(y, m, d, bc).ok_or_else(|| invalid("date", s, "no such date"))?;
    i32::try_from(days).map_err(|_| invalid("date", s, "out of range"))
}

fn civil_days(y: i64, m: u32, d: u32, bc: bool) -> Option<i64> {
    if y == 0 && bc {
        return None;
    }
    let year = if bc { 1 - y } else { y };
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(year, m) {
        return None;
    }
    Some(days_from_civil(year, m, d) - POSTGRES_EPOCH_DAYS)
}

/// Postgres's ISO text for a timestamp (`with_zone` false) or timestamptz (true) as
/// microseconds since 2000-01-01 00:00 (UTC for timestamptz: the offset, `+05:30` or `-08`,
/// is subtracted). Infinities map to `i64::MAX` / `i64::MIN`.
pub fn parse_timestamp_text(s: &[u8], with_zone: bool) -> Result<i64, MergeError> {
    let type_name = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    match s {
        b"infinity" => return Ok(i64::MAX),
        b"-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let bad = |why: &str| invalid(type_name, s, why);
    let mut c = Cursor { s, pos: 0 };
    let (y, m, d) = parse_ymd(&mut c).ok_or_else(|| bad("not ISO YYYY-MM-DD"))?;
    let mut usecs: i64 = 0;
    if c.eat(b' ') {
        usecs = time_of_day(&mut c).ok_or_else(|| bad("not HH:MM:SS[.ffffff]"))?;
        if usecs > USECS_PER_DAY {
            return Err(bad("time of day past 24:00:00"));
        }
    }
    if with_zone {
        let offset = utc_offset(&mut c).ok_or_else(|| bad("bad UTC offset"))?;
        usecs -= offset * 1_000_000;
    }
    let bc = match c.rest() {
        b"" => false,
        b" BC" => true,
        _ => return Err(bad("unexpected text after the timestamp")),
    };
    let days = civil_days(y, m, d, bc).ok_or_else(|| bad("no such date"))?;
    days.checked_mul(USECS_PER_DAY)
        .and_then(|v| v.checked_add(usecs))
        .filter(|v| *v != i64::MAX && *v != i64::MIN)
        .ok_or_else(|| bad("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date_text(b"2000-01-01").unwrap(), 0);
        assert_eq!(parse_date_text(b"1999-12-31").unwrap(), -1);
        assert_eq!(parse_date_text(b"1970-01-01").unwrap(), -10957);
        assert_eq!(parse_date_text(b"2024-02-29").unwrap(), 8825);
        assert_eq!(parse_date_text(b"2000-03-01").unwrap(), 60);
        // Postgres 15: '2000-01-01'::date - '0001-01-01 BC'::date = 730485.
        assert_eq!(parse_date_text(b"0001-01-01 BC").unwrap(), -730485);
        assert_eq!(parse_date_text(b"infinity").unwrap(), i32::MAX);
        // date_send('2024-02-29') = 0x00002279 on Postgres 15.
        assert_eq!(parse_date_text(b"2024-02-29").unwrap(), 0x2279);
        assert!(parse_date_text(b"5874897-12-31").is_ok());
        assert!(parse_date_text(b"4714-11-24 BC").is_ok());
        assert_eq!(parse_date_text(b"-infinity").unwrap(), i32::MIN);
        assert!(parse_date_text(b"10000-01-01").unwrap() > parse_date_text(b"9999-12-31").unwrap());
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-01-32",
            "01/02/2024",
            "2024-1-1",
            "2024-01-01 AD",
            "0000-01-01 BC",
            "",
            "2024-01-01 00:00:00",
        ] {
            assert!(parse_date_text(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        let ts = |s: &str| parse_timestamp_text(s.as_bytes(), false);
        assert_eq!(ts("2000-01-01 00:00:00").unwrap(), 0);
        assert_eq!(ts("2000-01-01").unwrap(), 0);
        assert_eq!(ts("2000-01-01 00:00:01.5").unwrap(), 1_500_000);
        assert_eq!(ts("2000-01-01 00:00:00.000001").unwrap(), 1);
        assert_eq!(ts("1999-12-31 23:59:59.999999").unwrap(), -1);
        assert_eq!(ts("2000-01-02 00:00:00").unwrap(), USECS_PER_DAY);
        assert_eq!(ts("infinity").unwrap(), i64::MAX);
        // Postgres's largest timestamp and years past 9999 print with more digits.
        assert!(ts("294276-12-31 23:59:59.999999").unwrap() > ts("9999-12-31").unwrap());
        assert_eq!(ts("-infinity").unwrap(), i64::MIN);
        for bad in [
            "2000-01-01 1:00:00",
            "2000-01-01 00:60:00",
            "2000-01-01 00:00:00.1234567",
            "2000-01-01T00:00:00",
            "2000-01-01 00:00:00+00",
            "2000-01-01 25:00:00",
        ] {
            assert!(ts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamptz_offsets_normalise_to_utc() {
        let tz = |s: &str| parse_timestamp_text(s.as_bytes(), true).unwrap();
        // Postgres 15 prints '2024-02-29 12:00:00+05:30' as '2024-02-29 06:30:00+00'.
        assert_eq!(
            tz("2024-02-29 12:00:00+05:30"),
            tz("2024-02-29 06:30:00+00")
        );
        // '2000-01-01 00:00:00-09:30' is '2000-01-01 09:30:00+00'.
        assert_eq!(
            tz("2000-01-01 00:00:00-09:30"),
            9 * 3_600_000_000 + 1_800_000_000
        );
        assert_eq!(
            tz("1999-12-31 23:59:59.999999+14"),
            tz("1999-12-31 09:59:59.999999+00")
        );
        assert_eq!(tz("2000-01-01 00:00:00+00:00:30"), -30_000_000);
        assert!(tz("2000-01-01 01:00:00+01") < tz("2000-01-01 00:30:00+00"));
        // timestamptz_send('2024-02-29 12:00:00+05:30') on Postgres 15.
        assert_eq!(tz("2024-02-29 12:00:00+05:30"), 0x0002_b57e_284c_0a00);
        assert!(parse_timestamp_text(b"2000-01-01 00:00:00", true).is_err());
        assert!(parse_timestamp_text(b"2000-01-01 00:00:00 UTC", true).is_err());
        assert!(parse_timestamp_text(b"2000-01-01 00:00:00+5", true).is_err());
    }
}
