//! Writing names and values into SQL text the proxy builds itself: one way to quote an
//! identifier (as Postgres's own `quote_ident` does, so a key column named `order` or `User` is
//! spliced correctly), one way to quote a string literal, and one way to turn an edited parse
//! tree back into text, for the whole crate.

use pg_query::protobuf::KeywordKind;

/// `tree` as SQL text, or None. Deparsing a tree the parser produced does not fail in practice;
/// should libpg_query ever panic on one, the caller treats it as not rewritable rather than let
/// the panic take the session down.
pub fn deparse(tree: pg_query::protobuf::ParseResult) -> Option<String> {
    std::panic::catch_unwind(move || pg_query::deparse(&tree, Default::default()))
        .ok()?
        .ok()
}

/// `name` as an SQL identifier that means exactly `name`: bare when Postgres would read it back
/// unchanged (lowercase letters, digits and underscores, not starting with a digit, and not a
/// keyword other than an unreserved one), double-quoted otherwise.
pub fn quote_ident(name: &str) -> String {
    if is_bare_identifier(name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `text` as a standard-conforming SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `text` as an escape string literal (`E'…'`), which reads back the same whatever the
/// session's `standard_conforming_strings`: for values that may hold backslashes.
pub fn quote_escaped_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

fn is_bare_identifier(name: &str) -> bool {
    let shape = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !shape {
        return false;
    }
    // The real scanner knows every keyword and its category.
    match pg_query::scan(name) {
        Ok(scan) => match scan.tokens.as_slice() {
            [token] => {
                token.keyword_kind == KeywordKind::NoKeyword as i32
                    || token.keyword_kind == KeywordKind::UnreservedKeyword as i32
            }
            _ => false,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_quote_as_postgres_quote_ident_does() {
        let table = [
            ("user_id", "user_id"),
            ("name", "name"),
            ("_x1", "_x1"),
            ("order", "\"order\""),
            ("user", "\"user\""),
            ("select", "\"select\""),
            ("int", "\"int\""),
            ("between", "\"between\""),
            ("UserId", "\"UserId\""),
            ("1st", "\"1st\""),
            ("a b", "\"a b\""),
            ("we\"ird", "\"we\"\"ird\""),
            ("", "\"\""),
            ("été", "\"été\""),
        ];
        for (name, want) in table {
            assert_eq!(quote_ident(name), want, "{name}");
        }
    }

    #[test]
    fn escaped_literals_double_backslashes_and_quotes() {
        assert_eq!(
            quote_escaped_literal(r#"{"a\\b",c'd}"#),
            r#"E'{"a\\\\b",c''d}'"#
        );
    }

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("a\\b"), "'a\\b'");
    }
}
