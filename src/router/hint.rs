//! Routing hints in a statement's leading comment, for statements the parser cannot key (a
//! function that takes the key, a view): `/* pgshard: shard=3 */` sends the statement to shard 3,
//! `/* pgshard: key=… */` to the shard of that key. Pure: text in, hint out; and the one check
//! that applies a hint to a statement's route.

/// What a leading `/* pgshard: … */` comment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Run on this shard.
    Shard(u32),
    /// Run on the shard of this key, written as text: read as the type of a `::type` suffix
    /// (`key='…'::uuid`), else as the statement's (or every sharded table's) key type.
    Key(String, Option<KeyType>),
}

use super::KeyType;

/// Every message of a bad hint starts with this, so its refusal carries SQLSTATE 22023
/// (invalid_parameter_value) rather than 0A000: see [`crate::refusal::Refusal::of_route`].
pub const INVALID_HINT: &str = "invalid pgshard routing hint";

/// A bad-hint message.
pub fn invalid(detail: impl std::fmt::Display) -> String {
    format!("{INVALID_HINT}: {detail}")
}

/// The hint of a statement: the first `/* pgshard: … */` block comment among the comments before
/// its first token. `None` when there is none; `Some(Err(message))` when one is there but
/// malformed (the message starts with [`INVALID_HINT`]).
pub fn leading_hint(sql: &str) -> Option<Result<Hint, String>> {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            let (body, r) = after.split_once("*/")?;
            let body = body.trim();
            let Some(directive) = strip_prefix_ci(body, "pgshard:") else {
                rest = r;
                continue;
            };
            return Some(parse_directive(directive.trim()));
        } else {
            return None;
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `shard=N` or `key=V` (V bare or in single quotes, `''` for a quote).
fn parse_directive(d: &str) -> Result<Hint, String> {
    let Some((name, value)) = d.split_once('=') else {
        return Err(invalid(format!("\"{d}\": expected shard=N or key=VALUE")));
    };
    let value = value.trim();
    match name.trim().to_ascii_lowercase().as_str() {
        "shard" => value
            .parse::<u32>()
            .map(Hint::Shard)
            .map_err(|_| invalid(format!("shard id \"{value}\" is not a shard number"))),
        "key" => {
            let (value, key_type) = match value.rsplit_once("::") {
                Some((v, ty)) if !ty.contains('\'') => {
                    let key_type = KeyType::from_pg_type(ty.trim()).ok_or_else(|| {
                        invalid(format!("\"{ty}\" is not a shard-key type (bigint, integer, smallint, uuid, text, varchar)"))
                    })?;
                    (v.trim(), Some(key_type))
                }
                _ => (value, None),
            };
            key_value(value).map(|v| Hint::Key(v, key_type))
        }
        other => Err(invalid(format!(
            "unknown setting \"{other}\": expected shard=N or key=VALUE"
        ))),
    }
}

fn key_value(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err(invalid("key= needs a value"));
    }
    let Some(inner) = v.strip_prefix('\'') else {
        if v.chars()
            .any(|c| c.is_whitespace() || c == ',' || c == '\'')
        {
            return Err(invalid(format!(
                "key value \"{v}\" must be quoted ('…') when it holds blanks, commas or quotes"
            )));
        }
        return Ok(v.to_string());
    };
    let inner = inner
        .strip_suffix('\'')
        .ok_or_else(|| invalid(format!("unterminated quoted key {v}")))?;
    if inner.replace("''", "").contains('\'') {
        return Err(invalid(format!(
            "quoted key {v} has a lone quote: write '' for one"
        )));
    }
    Ok(inner.replace("''", "'"))
}

/// True when a session's routing hint (`SET pgshard.shard`) applies to a statement: one that
/// reads or writes and has no comment hint of its own; not transaction control, settings or
/// pgshard's own commands.
pub fn session_hint_applies(facts: &super::StatementFacts) -> bool {
    use super::StatementKind as K;
    facts.hint.is_none()
        && facts.local.is_none()
        && facts.refuse.is_none()
        && !matches!(
            facts.kind,
            K::Begin
                | K::Commit
                | K::Rollback
                | K::Savepoint
                | K::Set { .. }
                | K::SetLocal
                | K::ResetAll
                | K::Show { .. }
                | K::Discard { .. }
        )
}

/// What a hint makes of a statement's route: the hinted shard, or why the hint cannot apply.
/// `hinted` is the hinted shard (already resolved from a key), `keyed` the shards of the keys the
/// statement names itself (`None` when it names none), `known` the configured shards.
pub fn apply(hinted: u32, keyed: Option<&[u32]>, known: &[u32]) -> Result<u32, String> {
    if !known.contains(&hinted) {
        return Err(invalid(format!(
            "shard {hinted} does not exist (shards: {})",
            known
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    match keyed {
        Some(shards) if shards.iter().any(|&s| s != hinted) => Err(invalid(format!(
            "the hint names shard {hinted}, but the statement's own key is on shard {}; remove the hint or fix the key",
            shards
                .iter()
                .find(|&&s| s != hinted)
                .copied()
                .unwrap_or_default()
        ))),
        _ => Ok(hinted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_read_from_the_leading_comment_only() {
        let ok = |sql: &str| leading_hint(sql).map(|r| r.unwrap());
        assert_eq!(
            ok("/* pgshard: shard=3 */ SELECT f(1)"),
            Some(Hint::Shard(3))
        );
        assert_eq!(
            ok("  /*PGSHARD:shard = 12*/SELECT 1"),
            Some(Hint::Shard(12))
        );
        assert_eq!(
            ok("/* pgshard: key=42 */ SELECT f(42)"),
            Some(Hint::Key("42".into(), None))
        );
        assert_eq!(
            ok("/* pgshard: key=a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 */ SELECT * FROM v"),
            Some(Hint::Key(
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
                None
            ))
        );
        assert_eq!(
            ok("/* pgshard: key='O''Brien, Ltd' */ SELECT * FROM v"),
            Some(Hint::Key("O'Brien, Ltd".into(), None))
        );
        assert_eq!(
            ok("/* pgshard: key='a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid */ SELECT f()"),
            Some(Hint::Key(
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
                Some(KeyType::Uuid)
            ))
        );
        assert_eq!(
            ok("/* pgshard: key = 'x::y' :: varchar */ SELECT f()"),
            Some(Hint::Key("x::y".into(), Some(KeyType::Text)))
        );
        assert_eq!(
            ok("/* pgshard: key=7::bigint */ SELECT f()"),
            Some(Hint::Key("7".into(), Some(KeyType::Int)))
        );
        assert_eq!(
            ok("-- a psql comment\n/* app: tracing */ /* pgshard: shard=2 */ SELECT 1"),
            Some(Hint::Shard(2))
        );
        for none in [
            "SELECT 1 /* pgshard: shard=3 */",
            "SELECT '/* pgshard: shard=3 */'",
            "/* not a hint */ SELECT 1",
            "/* pgshard: shard=3",
            "",
        ] {
            assert_eq!(leading_hint(none), None, "{none}");
        }
    }

    #[test]
    fn malformed_hints_are_errors_with_sqlstate_22023() {
        for (sql, want) in [
            ("/* pgshard: shard=x */ SELECT 1", "shard id \"x\""),
            ("/* pgshard: shard=-1 */ SELECT 1", "shard id \"-1\""),
            ("/* pgshard: shard */ SELECT 1", "expected shard=N"),
            ("/* pgshard: node=1 */ SELECT 1", "unknown setting \"node\""),
            ("/* pgshard: key= */ SELECT 1", "needs a value"),
            ("/* pgshard: key=a b */ SELECT 1", "must be quoted"),
            ("/* pgshard: key='abc */ SELECT 1", "unterminated"),
            ("/* pgshard: key='a'b' */ SELECT 1", "lone quote"),
            (
                "/* pgshard: key=1::numeric */ SELECT 1",
                "not a shard-key type",
            ),
        ] {
            let e = leading_hint(sql).expect(sql).unwrap_err();
            assert!(e.contains(want), "{sql}: {e}");
            assert_eq!(
                crate::refusal::Refusal::of_route(e.as_str()).sqlstate(),
                "22023",
                "{e}"
            );
        }
        assert_eq!(
            crate::refusal::Refusal::of_route("a join that is not co-located").sqlstate(),
            "0A000"
        );
    }

    #[test]
    fn hints_meet_the_statement_s_own_keys() {
        let known = [1, 2, 3];
        assert_eq!(apply(2, None, &known), Ok(2));
        assert_eq!(apply(2, Some(&[2]), &known), Ok(2));
        assert_eq!(apply(2, Some(&[]), &known), Ok(2));
        let e = apply(2, Some(&[2, 3]), &known).unwrap_err();
        assert!(
            e.contains("names shard 2, but the statement's own key is on shard 3"),
            "{e}"
        );
        assert_eq!(
            crate::refusal::Refusal::of_route(e.as_str()).sqlstate(),
            "22023"
        );
        let e = apply(9, None, &known).unwrap_err();
        assert!(
            e.contains("shard 9 does not exist (shards: 1, 2, 3)"),
            "{e}"
        );
        assert_eq!(
            crate::refusal::Refusal::of_route(e.as_str()).sqlstate(),
            "22023"
        );
    }
}
