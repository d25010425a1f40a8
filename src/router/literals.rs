//! Literal extraction for the simple protocol: numbers and plain string literals become `$1`, `$2`, …
//! so statements that differ only in their constants share one cache entry (pgbench -S sends a new
//! `aid` every time). A small hand-written lexer; it never panics and, when in doubt, leaves the text
//! unchanged.

use crate::router::params::{parse_int_array_text, ParamSource, RawParam};

/// One literal taken out of a statement, in order of appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A numeric literal, as written (`42`, `1.5`, `2e10`).
    Number(String),
    /// A standard single-quoted string, unescaped (`'it''s'` gives `it's`).
    Str(String),
    /// An escape string (`E'a\\b'`) whose escapes each stand for the character escaped (`\\`,
    /// `\'`, `\"`, `''`; not `\n`, `\x41`, …), unescaped;
    /// written back as an escape string, so it reads the same whatever the session's
    /// `standard_conforming_strings` (the arrays pgshard writes into statements are such).
    Escaped(String),
}

/// A statement with its literals replaced by `$n` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub text: String,
    pub literals: Vec<Literal>,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The end of a plain numeric literal starting at `i` (digits, fraction, exponent), or `None` when
/// the run continues into letters (`0x1F`, `1_000`, `12abc`).
fn lex_number(s: &[u8], mut i: usize) -> Option<usize> {
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    if i < s.len() && s[i] == b'.' && s.get(i + 1) != Some(&b'.') {
        i += 1;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < s.len() && matches!(s[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < s.len() && matches!(s[j], b'+' | b'-') {
            j += 1;
        }
        if j < s.len() && s[j].is_ascii_digit() {
            while j < s.len() && s[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    if i < s.len() && (is_ident_cont(s[i]) || s[i] == b'.') {
        return None;
    }
    Some(i)
}

/// Why lexing gave up: the text is returned unchanged.
struct GiveUp;

/// Index just past a single-quoted string starting at `start` (which holds `'`). `backslash` makes
/// `\x` an escape too (E-strings). Returns the end index.
fn skip_quoted(s: &[u8], start: usize, quote: u8, backslash: bool) -> Result<usize, GiveUp> {
    let mut i = start + 1;
    while i < s.len() {
        let b = s[i];
        if backslash && b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            if s.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(GiveUp)
}

/// The body of an escape string whose escapes each stand for the character escaped, unescaped;
/// `None` for the escapes that stand for something else (`\n`, `\x41`, `\101`, `\u0041`),
/// which pgshard leaves to Postgres.
fn unescape_plain(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'b' | 'f' | 'n' | 'r' | 't' | 'x' | 'u' | 'U' | '0'..='7' => return None,
                e => out.push(e),
            },
            '\'' => {
                chars.next().filter(|q| *q == '\'')?;
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Appends `n` in decimal: a placeholder's number, written on every literal of every simple query,
/// where `to_string` cost an allocation and a pass through the formatter.
fn push_decimal(out: &mut String, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

fn lex(head: &[&str], sql: &str) -> Result<Normalized, GiveUp> {
    let s = sql.as_bytes();
    let head_len: usize = head.iter().map(|h| h.len()).sum();
    let mut out = String::with_capacity(head_len + sql.len());
    head.iter().for_each(|h| out.push_str(h));
    let mut literals = Vec::new();
    // Start of the not-yet-copied part of the input.
    let mut copied = 0;
    let mut i = 0;
    let mut replace =
        |out: &mut String, copied: &mut usize, from: usize, to: usize, lit: Literal| {
            out.push_str(&sql[*copied..from]);
            literals.push(lit);
            out.push('$');
            push_decimal(out, literals.len());
            *copied = to;
        };
    while i < s.len() {
        let b = s[i];
        match b {
            b'-' if s.get(i + 1).is_some_and(u8::is_ascii_digit)
                && matches!(
                    sql[..i].trim_end().as_bytes().last(),
                    None | Some(b'=' | b'(' | b',' | b'<' | b'>')
                ) =>
            {
                // A negative number right after `=`, `(`, `,`, `<`, `>`: one literal with its sign.
                match lex_number(s, i + 1) {
                    Some(end) => {
                        let text = sql[i..end].to_string();
                        replace(&mut out, &mut copied, i, end, Literal::Number(text));
                        i = end;
                    }
                    None => i += 1,
                }
            }
            b'-' if s.get(i + 1) == Some(&b'-') => {
                while i < s.len() && s[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while depth > 0 {
                    match (s.get(i), s.get(i + 1)) {
                        (None, _) => return Err(GiveUp),
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                        }
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'"' => i = skip_quoted(s, i, b'"', false)?,
            b'\'' => {
                let end = skip_quoted(s, i, b'\'', false)?;
                let value = sql[i + 1..end - 1].replace("''", "'");
                replace(&mut out, &mut copied, i, end, Literal::Str(value));
                i = end;
            }
            b'$' => {
                let next = s.get(i + 1).copied();
                match next {
                    Some(d) if d.is_ascii_digit() => return Err(GiveUp),
                    Some(c) if c == b'$' || is_ident_start(c) => {
                        // Dollar-quoted string: $tag$ … $tag$, left as it is.
                        let mut j = i + 1;
                        while j < s.len() && s[j] != b'$' {
                            if !(is_ident_start(s[j]) || s[j].is_ascii_digit()) {
                                // Not a dollar quote after all; `$` alone is not valid SQL here.
                                return Err(GiveUp);
                            }
                            j += 1;
                        }
                        if j >= s.len() {
                            return Err(GiveUp);
                        }
                        let tag = &sql[i..=j];
                        match sql[j + 1..].find(tag) {
                            Some(pos) => i = j + 1 + pos + tag.len(),
                            None => return Err(GiveUp),
                        }
                    }
                    _ => i += 1,
                }
            }
            _ if is_ident_start(b) => {
                let start = i;
                while i < s.len() && is_ident_cont(s[i]) {
                    i += 1;
                }
                let word = &s[start..i];
                let next = s.get(i).copied();
                if next == Some(b'\'') && word.len() == 1 {
                    // E'…' with only quote and backslash escapes is a literal; other E'…',
                    // B'…', X'…', N'…': left unchanged.
                    let backslash = matches!(word[0], b'e' | b'E');
                    if backslash {
                        let end = skip_quoted(s, i, b'\'', true)?;
                        if let Some(value) = unescape_plain(&sql[i + 1..end - 1]) {
                            replace(&mut out, &mut copied, start, end, Literal::Escaped(value));
                        }
                        i = end;
                        continue;
                    }
                    if !matches!(
                        word[0],
                        b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'
                    ) {
                        // Some other one-letter word followed by a string: an ordinary literal.
                        continue;
                    }
                    i = skip_quoted(s, i, b'\'', backslash)?;
                } else if word.len() == 1
                    && matches!(word[0], b'u' | b'U')
                    && next == Some(b'&')
                    && matches!(s.get(i + 1), Some(b'\'') | Some(b'"'))
                {
                    let q = s[i + 1];
                    i = skip_quoted(s, i + 1, q, false)?;
                }
            }
            _ if b.is_ascii_digit()
                || (b == b'.' && s.get(i + 1).is_some_and(|c| c.is_ascii_digit())) =>
            {
                let start = i;
                match lex_number(s, i) {
                    Some(end) => i = end,
                    None => {
                        // 0x1F, 1_000, 12abc …: not a plain number; leave the whole run alone.
                        while i < s.len() && (is_ident_cont(s[i]) || s[i] == b'.') {
                            i += 1;
                        }
                        continue;
                    }
                }
                let text = sql[start..i].to_string();
                replace(&mut out, &mut copied, start, i, Literal::Number(text));
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    Ok(Normalized {
        text: out,
        literals,
    })
}

/// Replace the literals of `sql` by `$1`, `$2`, …; the text unchanged (and no literals) when it
/// already has placeholders or cannot be lexed.
pub fn normalize(sql: &str) -> Normalized {
    normalize_after(&[], sql)
}

/// [`normalize`], its text written after the strings of `head` in the same buffer: a route-cache
/// key (kind and search_path, then the normalized text) made without a second allocation and copy.
pub fn normalize_after(head: &[&str], sql: &str) -> Normalized {
    lex(head, sql).unwrap_or_else(|GiveUp| {
        let mut text = head.concat();
        text.push_str(sql);
        Normalized {
            text,
            literals: Vec::new(),
        }
    })
}

/// Extracted literals as the values of `$n`.
pub struct LiteralParams<'a>(pub &'a [Literal]);

impl ParamSource for LiteralParams<'_> {
    fn int(&self, n: usize) -> Option<i64> {
        let lit = self.0.get(n.checked_sub(1)?)?;
        match lit {
            Literal::Number(t) | Literal::Str(t) | Literal::Escaped(t) => t.trim().parse().ok(),
        }
    }
    fn int_array(&self, n: usize) -> Option<Vec<i64>> {
        match self.0.get(n.checked_sub(1)?)? {
            Literal::Str(t) | Literal::Escaped(t) => parse_int_array_text(t),
            Literal::Number(_) => None,
        }
    }
    fn raw(&self, n: usize) -> Option<RawParam> {
        let (Literal::Number(t) | Literal::Str(t) | Literal::Escaped(t)) =
            self.0.get(n.checked_sub(1)?)?;
        Some(RawParam {
            value: Some(bytes::Bytes::from(t.clone())),
            binary: false,
        })
    }
    fn sql_literal(&self, n: usize) -> Option<String> {
        Some(self.0.get(n.checked_sub(1)?)?.to_sql())
    }
}

impl Literal {
    /// The literal as SQL text again, to fill a rewritten statement's `$n` (negative numbers in
    /// parentheses so they never merge with a preceding operator).
    pub fn to_sql(&self) -> String {
        match self {
            Literal::Number(t) if t.starts_with('-') => format!("({t})"),
            Literal::Number(t) => t.clone(),
            Literal::Str(s) => crate::sql_text::quote_literal(s),
            Literal::Escaped(s) => crate::sql_text::quote_escaped_literal(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Literal {
        Literal::Number(s.into())
    }
    fn st(s: &str) -> Literal {
        Literal::Str(s.into())
    }

    #[test]
    fn placeholder_numbers_in_decimal() {
        for n in [0usize, 1, 9, 10, 99, 100, 12345, usize::MAX] {
            let mut out = String::from("$");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("${n}"));
        }
    }

    #[test]
    fn normalized_after_a_head() {
        let sql = "SELECT * FROM t WHERE id = 7 AND s = 'x'";
        let plain = normalize(sql);
        let keyed = normalize_after(&["s:", "public|"], sql);
        assert_eq!(keyed.text, format!("s:public|{}", plain.text));
        assert_eq!(keyed.literals, plain.literals);
        // Text that cannot be lexed comes back unchanged, after the head all the same.
        let odd = normalize_after(&["s:"], "SELECT 'unterminated");
        assert_eq!(odd.text, "s:SELECT 'unterminated");
        assert!(odd.literals.is_empty());
    }

    #[test]
    fn pgbench_select() {
        let a = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;");
        let b = normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 17;");
        assert_eq!(
            a.text,
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
        );
        assert_eq!(a.text, b.text);
        assert_eq!(a.literals, vec![n("4242")]);
        assert_eq!(LiteralParams(&a.literals).int(1), Some(4242));
        assert_eq!(LiteralParams(&a.literals).int(2), None);
        assert_eq!(LiteralParams(&a.literals).int(0), None);
    }

    #[test]
    fn numbers_and_strings() {
        let r =
            normalize("select 1.5, .5, 2e10, 3E-2, 'it''s', t1.x2y, \"a 1\" from t where x='7'");
        assert_eq!(
            r.text,
            "select $1, $2, $3, $4, $5, t1.x2y, \"a 1\" from t where x=$6"
        );
        assert_eq!(
            r.literals,
            vec![n("1.5"), n(".5"), n("2e10"), n("3E-2"), st("it's"), st("7")]
        );
        assert_eq!(LiteralParams(&r.literals).int(6), Some(7));
        assert_eq!(LiteralParams(&r.literals).int(1), None);
    }

    #[test]
    fn comments_and_special_strings_are_left() {
        let r = normalize("select 1 -- 2\n /* 3 /* 4 */ 5 */ , E'\\n6', B'101', X'1F', U&'d\\0061', $$7$$, $q$ 8 $q$, 9");
        assert_eq!(
            r.text,
            "select $1 -- 2\n /* 3 /* 4 */ 5 */ , E'\\n6', B'101', X'1F', U&'d\\0061', $$7$$, $q$ 8 $q$, $2"
        );
        assert_eq!(r.literals, vec![n("1"), n("9")]);
    }

    #[test]
    fn escape_strings_with_only_quote_and_backslash_escapes_are_literals() {
        let r = normalize(r#"select E'{"a\\\"b"}', e'it\'s''', E'tab\t'"#);
        assert_eq!(r.text, r#"select $1, $2, E'tab\t'"#);
        assert_eq!(
            r.literals,
            vec![
                Literal::Escaped(r#"{"a\"b"}"#.into()),
                Literal::Escaped("it's'".into())
            ]
        );
        assert_eq!(r.literals[1].to_sql(), "E'it''s'''");
        assert_eq!(r.literals[0].to_sql(), r#"E'{"a\\"b"}'"#);
    }

    #[test]
    fn placeholders_and_broken_text_unchanged() {
        for sql in [
            "select * from t where id = $1 and x = 5",
            "select 'unterminated",
            "select /* open",
            "select \"open",
            "select $$ open",
            "select E'\\'",
        ] {
            let r = normalize(sql);
            assert_eq!(r.text, sql);
            assert!(r.literals.is_empty(), "{sql}");
        }
    }

    #[test]
    fn odd_input_never_panics() {
        for sql in [
            "",
            "'",
            "$",
            "$$",
            "$a",
            "1e",
            "1.",
            "0x1F",
            "1_000",
            "é = 'ü' 3",
            "😀 1 '😀'",
            "a$1",
            "-",
            "/",
            "/*",
            "U&",
            "E",
            "x'",
            "1..2",
            "\u{0}",
        ] {
            let _ = normalize(sql);
        }
        assert_eq!(normalize("é = 'ü' 3").literals, vec![st("ü"), n("3")]);
        assert_eq!(normalize("a$1 = 2").text, "a$1 = $1");
        assert_eq!(normalize("x = 0x1F").text, "x = 0x1F");
        let neg = normalize("x = -7 and y in (-1, - 2) and z = 5 - 3 and w=-0.5");
        assert_eq!(
            neg.text,
            "x = $1 and y in ($2, - $3) and z = $4 - $5 and w=$6"
        );
        assert_eq!(LiteralParams(&neg.literals).int(1), Some(-7));
        assert_eq!(neg.literals[5], n("-0.5"));
    }

    #[test]
    fn literal_arrays() {
        let r = normalize("select * from t where id = any('{1, 2,3}')");
        assert_eq!(r.text, "select * from t where id = any($1)");
        assert_eq!(LiteralParams(&r.literals).int_array(1), Some(vec![1, 2, 3]));
        assert_eq!(LiteralParams(&[st(" 5 ")]).int(1), Some(5));
        assert_eq!(LiteralParams(&[n("5")]).int_array(1), None);
    }
}
