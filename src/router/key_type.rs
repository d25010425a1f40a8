//! Shard-key types and values: integer, uuid and text keys all become a point of the same i64
//! ring, each through Postgres's own extended hash, so the map, its SQL twin, verification and
//! rebalancing need not know the type beyond the name of the SQL hash function.

use serde::{Deserialize, Serialize};

use super::pg_hash::{hashtextextended, uuid_hash_extended};

/// The type family of a shard-key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyType {
    /// `smallint`, `integer`, `bigint`: hashed with `hashint8extended`; every strategy applies.
    #[default]
    #[serde(
        rename = "bigint",
        alias = "integer",
        alias = "smallint",
        alias = "int8",
        alias = "int4",
        alias = "int2",
        alias = "int"
    )]
    Int,
    /// `uuid`: hashed with `uuid_hash_extended`; hash strategy only.
    #[serde(rename = "uuid")]
    Uuid,
    /// `text` and `varchar` (deterministic collations): hashed with `hashtextextended`; hash
    /// strategy only.
    #[serde(rename = "text", alias = "varchar", alias = "character varying")]
    Text,
}

impl KeyType {
    /// The family of a column type as `format_type` or `pg_type.typname` names it; `None` for a
    /// type that cannot be a shard key.
    pub fn from_pg_type(name: &str) -> Option<KeyType> {
        let base = name.split('(').next().unwrap_or(name).trim();
        match base {
            "bigint" | "integer" | "smallint" | "int8" | "int4" | "int2" => Some(KeyType::Int),
            "uuid" => Some(KeyType::Uuid),
            "text" | "character varying" | "varchar" => Some(KeyType::Text),
            _ => None,
        }
    }

    /// The name used in messages and the config.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Int => "integer",
            KeyType::Uuid => "uuid",
            KeyType::Text => "text",
        }
    }

    /// The SQL type named in input errors, as Postgres names it.
    pub fn sql_name(self) -> &'static str {
        match self {
            KeyType::Int => "bigint",
            KeyType::Uuid => "uuid",
            KeyType::Text => "text",
        }
    }

    /// Only integer keys have an order the range and modulo strategies can use.
    pub fn allows_strategy(self, strategy: &super::Strategy) -> bool {
        self == KeyType::Int || matches!(strategy, super::Strategy::Hash)
    }

    /// The SQL hash (seed 0) of an SQL expression of this type: the twin of [`ShardKey::point`].
    pub fn sql_hash(self, expr: &str) -> String {
        match self {
            KeyType::Int => format!("hashint8extended({expr}, 0)"),
            KeyType::Uuid => format!("uuid_hash_extended({expr}, 0)"),
            KeyType::Text => format!("hashtextextended({expr}, 0)"),
        }
    }

    /// A key of this type written as text (a literal, a text-format parameter, a COPY field).
    pub fn parse_text(self, t: &str) -> Option<ShardKey> {
        match self {
            KeyType::Int => t.trim().parse().ok().map(ShardKey::Int),
            KeyType::Uuid => parse_uuid(t).map(ShardKey::Uuid),
            KeyType::Text => Some(ShardKey::Text(t.to_string())),
        }
    }

    /// A key of this type in binary format (big-endian integer of 2, 4 or 8 bytes; 16 uuid bytes;
    /// UTF-8 text).
    pub fn parse_binary(self, b: &[u8]) -> Option<ShardKey> {
        match self {
            KeyType::Int => match b.len() {
                8 => Some(i64::from_be_bytes(b.try_into().ok()?)),
                4 => Some(i32::from_be_bytes(b.try_into().ok()?) as i64),
                2 => Some(i16::from_be_bytes(b.try_into().ok()?) as i64),
                _ => None,
            }
            .map(ShardKey::Int),
            KeyType::Uuid => b.try_into().ok().map(ShardKey::Uuid),
            KeyType::Text => std::str::from_utf8(b)
                .ok()
                .map(|s| ShardKey::Text(s.to_string())),
        }
    }
}

/// One shard-key value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ShardKey {
    Int(i64),
    Uuid([u8; 16]),
    Text(String),
}

impl ShardKey {
    /// The integer, for the strategies that place raw integers.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            ShardKey::Int(k) => Some(*k),
            _ => None,
        }
    }

    /// The key as an SQL constant of its type, for a statement pgshard rewrites (a generated
    /// key added to an INSERT).
    pub fn sql_literal(&self) -> String {
        match self {
            ShardKey::Int(k) => k.to_string(),
            ShardKey::Uuid(u) => format!("'{}'::uuid", format_uuid(u)),
            ShardKey::Text(t) => crate::sql_text::quote_literal(t),
        }
    }

    /// The point on the hash ring (the hash strategy's point of this key).
    pub fn hash_point(&self) -> i64 {
        match self {
            ShardKey::Int(k) => super::shard_map::hashint8extended(*k),
            ShardKey::Uuid(u) => uuid_hash_extended(u),
            ShardKey::Text(t) => hashtextextended(t),
        }
    }
}

/// A uuid as Postgres's `uuid_out` writes it: lower-case hex, hyphens after 4, 6, 8 and 10
/// bytes.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A uuid as Postgres's `uuid_in` accepts it: 32 hex digits in either case, optionally in braces,
/// with an optional hyphen after any group of four digits (except the last).
pub fn parse_uuid(t: &str) -> Option<[u8; 16]> {
    let mut s = t.as_bytes();
    let braces = s.first() == Some(&b'{');
    if braces {
        s = &s[1..];
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let (&h, &l) = (s.first()?, s.get(1)?);
        *byte = hex(h)? << 4 | hex(l)?;
        s = &s[2..];
        if s.first() == Some(&b'-') && i % 2 == 1 && i < 15 {
            s = &s[1..];
        }
    }
    if braces {
        s = s.strip_prefix(b"}")?;
    }
    s.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_as_postgres_prints_them() {
        let text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let u = parse_uuid(text).unwrap();
        assert_eq!(format_uuid(&u), text);
        assert_eq!(ShardKey::Uuid(u).sql_literal(), format!("'{text}'::uuid"));
        assert_eq!(ShardKey::Int(-5).sql_literal(), "-5");
        assert_eq!(ShardKey::Text("o'k".into()).sql_literal(), "'o''k'");
    }

    #[test]
    fn uuid_input_as_postgres_accepts_it() {
        let want = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        for ok in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
        ] {
            assert_eq!(parse_uuid(ok), Some(want), "{ok}");
        }
        for bad in [
            "",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
        assert_eq!(want[0], 0xa0);
        assert_eq!(want[15], 0x11);
    }

    #[test]
    fn keys_from_text_and_binary() {
        let u = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(KeyType::Uuid.parse_binary(&u), Some(ShardKey::Uuid(u)));
        assert_eq!(KeyType::Uuid.parse_binary(&u[..15]), None);
        assert_eq!(
            KeyType::Int.parse_binary(&7i32.to_be_bytes()),
            Some(ShardKey::Int(7))
        );
        assert_eq!(KeyType::Int.parse_text(" -3 "), Some(ShardKey::Int(-3)));
        assert_eq!(
            KeyType::Text.parse_binary("Grüße".as_bytes()),
            Some(ShardKey::Text("Grüße".into()))
        );
        assert_eq!(KeyType::Text.parse_binary(&[0xff]), None);
        // The same ring point as Postgres computes (see pg_hash's known answers).
        assert_eq!(
            ShardKey::Uuid(u).hash_point(),
            7543054272012930821,
            "uuid_hash_extended"
        );
        assert_eq!(
            ShardKey::Text("abc".into()).hash_point(),
            -6747756470228489321
        );
    }

    #[test]
    fn types_from_the_catalog_and_strategies() {
        use super::super::Strategy;
        assert_eq!(
            KeyType::from_pg_type("character varying(64)"),
            Some(KeyType::Text)
        );
        assert_eq!(KeyType::from_pg_type("integer"), Some(KeyType::Int));
        assert_eq!(KeyType::from_pg_type("uuid"), Some(KeyType::Uuid));
        assert_eq!(KeyType::from_pg_type("character(4)"), None);
        assert_eq!(KeyType::from_pg_type("numeric"), None);
        assert!(KeyType::Uuid.allows_strategy(&Strategy::Hash));
        assert!(!KeyType::Uuid.allows_strategy(&Strategy::Range));
        assert!(!KeyType::Text.allows_strategy(&Strategy::Modulo { modulus: 3 }));
        assert!(KeyType::Int.allows_strategy(&Strategy::Range));
        assert_eq!(KeyType::Text.sql_hash("t.k"), "hashtextextended(t.k, 0)");
    }
}
