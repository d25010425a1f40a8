//! Intervals as Postgres orders them: by their span, a month counting 30 days and a day 24
//! hours (`interval_cmp_value`), so `'1 mon'` equals `'30 days'`. Decoded from the binary form
//! (`int8` microseconds, `int4` days, `int4` months) or from the text of the default
//! `IntervalStyle` (`postgres`: `1 year 2 mons -3 days +04:05:06.5`); the other styles are
//! refused with an error that names the setting rather than misread.

use super::MergeError;

/// Microseconds per day, and days per month in an interval's span.
const USECS_PER_DAY: i128 = 86_400_000_000;
const DAYS_PER_MONTH: i128 = 30;

/// The span of an interval in microseconds, exactly as Postgres compares them (128 bits: the
/// span of `'178000000 years'` does not fit 64).
pub fn span(months: i32, days: i32, micros: i64) -> i128 {
    (i128::from(months) * DAYS_PER_MONTH + i128::from(days)) * USECS_PER_DAY + i128::from(micros)
}

fn invalid(text: &[u8], why: &str) -> MergeError {
    MergeError::UnsupportedStyle {
        type_name: "interval",
        detail: format!(
            "{:?} ({why}) is not in IntervalStyle postgres, the only one pgshard reads: SET IntervalStyle = postgres",
            String::from_utf8_lossy(text)
        ),
    }
}

/// An interval's three fields as Postgres stores them: they add up field by field (`sum`), and
/// `'1 mon'` stays a month rather than 30 days until something compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntervalParts {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl IntervalParts {
    /// The span Postgres compares intervals by.
    pub fn span(self) -> i128 {
        span(self.months, self.days, self.micros)
    }
}

/// The span of an interval in binary form.
pub fn decode_binary(b: &[u8]) -> Result<i128, MergeError> {
    parts_binary(b).map(IntervalParts::span)
}

/// The fields of an interval in binary form (`int8` microseconds, `int4` days, `int4` months).
pub fn parts_binary(b: &[u8]) -> Result<IntervalParts, MergeError> {
    let (Some(micros), Some(days), Some(months), 16) =
        (b.get(0..8), b.get(8..12), b.get(12..16), b.len())
    else {
        return Err(MergeError::InvalidValue {
            type_name: "interval",
            detail: format!("binary value of {} bytes, expected 16", b.len()),
        });
    };
    let int4 = |s: &[u8]| i32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let micros = i64::from_be_bytes([
        micros[0], micros[1], micros[2], micros[3], micros[4], micros[5], micros[6], micros[7],
    ]);
    Ok(IntervalParts {
        months: int4(months),
        days: int4(days),
        micros,
    })
}

/// The span of an interval in the text of IntervalStyle `postgres`: `N year[s]`, `N mon[s]`,
/// `N day[s]` (each signed, in that order, each optional) and an optional signed
/// `H:MM:SS[.ffffff]`; `00:00:00` alone for zero. Infinite intervals (Postgres 17) are refused.
pub fn parse_text(b: &[u8]) -> Result<i128, MergeError> {
    parts_text(b).map(IntervalParts::span)
}

/// The fields of an interval in the text of IntervalStyle `postgres` (see [`parse_text`]).
pub fn parts_text(b: &[u8]) -> Result<IntervalParts, MergeError> {
    let text = std::str::from_utf8(b).map_err(|_| invalid(b, "not UTF-8"))?;
    let mut words = text.split(' ').peekable();
    let (mut months, mut days) = (0i128, 0i128);
    let mut micros = 0i128;
    let mut seen_time = false;
    let mut last_unit = 0;
    while let Some(word) = words.next() {
        if word.contains(':') {
            if seen_time || words.peek().is_some() {
                return Err(invalid(b, "time of day not last"));
            }
            micros = parse_time(word).ok_or_else(|| invalid(b, "malformed time"))?;
            seen_time = true;
            continue;
        }
        let n: i128 = signed_int(word).ok_or_else(|| invalid(b, "not a number or time"))?;
        let unit = words
            .next()
            .ok_or_else(|| invalid(b, "number without a unit"))?;
        let rank = match unit {
            "year" | "years" => 1,
            "mon" | "mons" => 2,
            "day" | "days" => 3,
            _ => return Err(invalid(b, "unknown unit")),
        };
        if rank <= last_unit {
            return Err(invalid(b, "units out of order"));
        }
        last_unit = rank;
        match rank {
            1 => months += n * 12,
            2 => months += n,
            _ => days += n,
        }
    }
    if last_unit == 0 && !seen_time {
        return Err(invalid(b, "empty"));
    }
    match (
        i32::try_from(months),
        i32::try_from(days),
        i64::try_from(micros),
    ) {
        (Ok(months), Ok(days), Ok(micros)) => Ok(IntervalParts {
            months,
            days,
            micros,
        }),
        _ => Err(invalid(b, "a field beyond the range of interval")),
    }
}

/// `-12`, `+3`, `7` (digits only after the sign).
fn signed_int(s: &str) -> Option<i128> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `[-|+]H:MM:SS[.f…]` as signed microseconds (hours may exceed 24).
fn parse_time(s: &str) -> Option<i128> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let mut parts = rest.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || m.len() != 2 {
        return None;
    }
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    if whole.len() != 2 || frac.len() > 6 {
        return None;
    }
    let number = |d: &str| -> Option<i128> {
        (!d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
            .then(|| d.parse().ok())
            .flatten()
    };
    let frac_micros = if frac.is_empty() {
        0
    } else {
        number(frac)? * 10i128.pow(6 - frac.len() as u32)
    };
    let total = (number(h)? * 3600 + number(m)? * 60 + number(whole)?) * 1_000_000 + frac_micros;
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i128 = 3_600_000_000;
    const DAY: i128 = 24 * HOUR;

    /// Texts as Postgres 15 prints them in IntervalStyle postgres, with their spans.
    #[test]
    fn postgres_style_text() {
        let cases: [(&str, i128); 11] = [
            ("00:00:00", 0),
            ("00:07:00", 7 * 60_000_000),
            ("04:05:06.789", 4 * HOUR + 5 * 60_000_000 + 6_789_000),
            ("-00:00:00.000001", -1),
            ("1 day", DAY),
            ("-1 days +02:03:00", -DAY + 2 * HOUR + 3 * 60_000_000),
            ("1 year 2 mons", (12 + 2) * 30 * DAY),
            ("1 mon", 30 * DAY),
            ("30 days", 30 * DAY),
            (
                "-1 years -2 mons +3 days -04:00:00",
                -(14 * 30 * DAY) + 3 * DAY - 4 * HOUR,
            ),
            ("100:00:00", 100 * HOUR),
        ];
        for (text, want) in cases {
            assert_eq!(parse_text(text.as_bytes()).unwrap(), want, "{text}");
        }
        // '1 mon' and '30 days' are equal intervals in Postgres.
        assert_eq!(
            parse_text(b"1 mon").unwrap(),
            parse_text(b"30 days").unwrap()
        );
    }

    /// Other styles, and anything else, are errors rather than misread spans.
    #[test]
    fn other_styles_are_errors() {
        for text in [
            "P1Y2M3DT4H5M6S",
            "@ 1 year 2 mons",
            "1-2 3 4:05:06",
            "+1-2 +3 +4:05:06",
            "1 hour",
            "2 days 1 year",
            "1",
            "",
            "infinity",
            "1:2:3",
            "01:02:03.1234567",
        ] {
            assert!(parse_text(text.as_bytes()).is_err(), "{text}");
        }
    }

    #[test]
    fn binary_form() {
        let mut b = (-5i64).to_be_bytes().to_vec();
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        assert_eq!(decode_binary(&b).unwrap(), 30 * DAY + 2 * DAY - 5);
        assert!(decode_binary(&b[..15]).is_err());
        // The largest interval's span needs more than 64 bits.
        let mut max = i64::MAX.to_be_bytes().to_vec();
        max.extend_from_slice(&i32::MAX.to_be_bytes());
        max.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_binary(&max).unwrap() > i128::from(i64::MAX));
    }
}
