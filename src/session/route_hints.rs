//! `SET pgshard.shard = N` / `SET pgshard.key = '…'`: a routing hint for every statement of the
//! session (or, with `SET LOCAL`, of the open block), for applications whose statements the
//! parser cannot key (functions taking the key, views). Proxy-side state: never sent to a server,
//! so it survives transaction pooling. It follows Postgres's rules for a setting: `SET LOCAL`
//! ends with the block, a ROLLBACK undoes a `SET` made in the block, `RESET` (or `SET … TO
//! DEFAULT`, or an empty value) and `RESET ALL` clear it. One hint at a time: setting the shard
//! replaces a key and the other way round. Pure: the frontend applies it to routes.

use crate::router::hint::{self, Hint};
use crate::router::KeyType;

/// The `pgshard.*` names this module answers (without the `pgshard.` prefix).
pub const NAMES: [&str; 2] = ["shard", "key"];

/// True for `shard` and `key` (`pgshard.shard`, `pgshard.key`).
pub fn is_route_setting(name: &str) -> bool {
    NAMES.contains(&name)
}

/// The session's routing hints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteHints {
    /// `SET pgshard.…`: lasts for the session.
    session: Option<Hint>,
    /// `SET LOCAL pgshard.…` in the open block (`Some(None)`: a local RESET-like empty value).
    local: Option<Option<Hint>>,
    /// The session hint when the open block began: a ROLLBACK puts it back.
    at_begin: Option<Option<Hint>>,
}

/// What a SET did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// The hint changed (`SET`).
    Set,
    /// The hint was cleared (`RESET`).
    Reset,
    /// `SET LOCAL` outside a transaction block: no effect, as in Postgres (which warns).
    OutsideBlock,
}

impl RouteHints {
    /// Applies `SET [LOCAL] pgshard.<name> = value` (`value` `None` for RESET). `in_block`: an
    /// explicit transaction block is open. `known`: the shards of the map, so a shard that does
    /// not exist is refused at once. Errors are bad-hint messages (SQLSTATE 22023).
    pub fn set(
        &mut self,
        name: &str,
        value: Option<&str>,
        local: bool,
        in_block: bool,
        known: &[u32],
    ) -> Result<SetOutcome, String> {
        let hint = match value.map(str::trim) {
            None | Some("") => None,
            Some(v) => Some(parse(name, v, known)?),
        };
        if local {
            if !in_block {
                return Ok(SetOutcome::OutsideBlock);
            }
            let outcome = if hint.is_some() {
                SetOutcome::Set
            } else {
                SetOutcome::Reset
            };
            self.local = Some(hint);
            return Ok(outcome);
        }
        // A session-level SET (or RESET) in a block also overrides a SET LOCAL made before it.
        self.local = None;
        let outcome = if hint.is_some() {
            SetOutcome::Set
        } else {
            SetOutcome::Reset
        };
        self.session = hint;
        Ok(outcome)
    }

    /// The hint that applies to the next statement.
    pub fn current(&self) -> Option<&Hint> {
        match &self.local {
            Some(local) => local.as_ref(),
            None => self.session.as_ref(),
        }
    }

    /// What `SHOW pgshard.<name>` answers: the hinted shard or key, or an empty string.
    pub fn show(&self, name: &str) -> String {
        match (name, self.current()) {
            ("shard", Some(Hint::Shard(s))) => s.to_string(),
            ("key", Some(Hint::Key(k, None))) => k.clone(),
            ("key", Some(Hint::Key(k, Some(t)))) => format!("{k}::{}", t.sql_name()),
            _ => String::new(),
        }
    }

    /// A transaction block began.
    pub fn begin(&mut self) {
        self.at_begin = Some(self.session.clone());
    }

    /// The block ended: `SET LOCAL` ends with it, and a rollback undoes the block's `SET`s.
    pub fn end(&mut self, rolled_back: bool) {
        if let Some(before) = self.at_begin.take() {
            if rolled_back {
                self.session = before;
            }
        }
        self.local = None;
    }

    /// `RESET ALL` / `DISCARD ALL`.
    pub fn reset_all(&mut self) {
        self.session = None;
        self.local = None;
    }
}

/// The hint a value names: a shard number for `shard`; for `key` a key, with an optional
/// `::type` suffix (`'…'::uuid`) for statements that name no sharded table.
fn parse(name: &str, value: &str, known: &[u32]) -> Result<Hint, String> {
    match name {
        "shard" => {
            let shard = value.parse::<u32>().map_err(|_| {
                hint::invalid(format!("pgshard.shard = \"{value}\" is not a shard number"))
            })?;
            if !known.contains(&shard) {
                return Err(hint::invalid(format!(
                    "shard {shard} does not exist (shards: {})",
                    known
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Ok(Hint::Shard(shard))
        }
        "key" => match value.rsplit_once("::") {
            Some((key, ty)) if KeyType::from_pg_type(ty.trim()).is_some() => {
                let key_type = KeyType::from_pg_type(ty.trim());
                if let Some(t) = key_type {
                    if t.parse_text(key).is_none() {
                        return Err(hint::invalid(format!(
                            "pgshard.key \"{key}\" is not a valid {} key",
                            t.name()
                        )));
                    }
                }
                Ok(Hint::Key(key.to_string(), key_type))
            }
            _ => Ok(Hint::Key(value.to_string(), None)),
        },
        other => Err(hint::invalid(format!(
            "pgshard.{other} is not a routing setting"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [u32; 3] = [1, 2, 3];

    #[test]
    fn values_parse_or_are_refused() {
        let table: [(&str, &str, Result<Hint, &str>); 7] = [
            ("shard", "2", Ok(Hint::Shard(2))),
            ("shard", " 3 ", Ok(Hint::Shard(3))),
            (
                "shard",
                "9",
                Err("shard 9 does not exist (shards: 1, 2, 3)"),
            ),
            ("shard", "two", Err("is not a shard number")),
            ("key", "tenant-7", Ok(Hint::Key("tenant-7".into(), None))),
            (
                "key",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11::uuid",
                Ok(Hint::Key(
                    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
                    Some(KeyType::Uuid),
                )),
            ),
            ("key", "12x::bigint", Err("is not a valid integer key")),
        ];
        for (name, value, want) in table {
            let mut h = RouteHints::default();
            let got = h.set(name, Some(value), false, false, &KNOWN);
            match want {
                Ok(hint) => {
                    assert_eq!(got, Ok(SetOutcome::Set), "{name}={value}");
                    assert_eq!(h.current(), Some(&hint), "{name}={value}");
                }
                Err(text) => {
                    let e = got.unwrap_err();
                    assert!(e.starts_with(hint::INVALID_HINT), "{e}");
                    assert!(e.contains(text), "{name}={value}: {e}");
                    assert_eq!(h.current(), None, "a refused SET changes nothing");
                }
            }
        }
    }

    #[test]
    fn follows_postgres_setting_rules() {
        let mut h = RouteHints::default();
        // One hint at a time; SHOW answers the one that is set.
        h.set("shard", Some("1"), false, false, &KNOWN).unwrap();
        assert_eq!((h.show("shard"), h.show("key")), ("1".into(), "".into()));
        h.set("key", Some("k1"), false, false, &KNOWN).unwrap();
        assert_eq!((h.show("shard"), h.show("key")), ("".into(), "k1".into()));
        h.set("shard", Some("1"), false, false, &KNOWN).unwrap();
        // SET LOCAL outside a block does nothing.
        assert_eq!(
            h.set("shard", Some("2"), true, false, &KNOWN),
            Ok(SetOutcome::OutsideBlock)
        );
        assert_eq!(h.current(), Some(&Hint::Shard(1)));
        // SET LOCAL lasts for the block, committed or not.
        for rolled_back in [false, true] {
            h.begin();
            h.set("shard", Some("3"), true, true, &KNOWN).unwrap();
            assert_eq!(h.current(), Some(&Hint::Shard(3)));
            h.end(rolled_back);
            assert_eq!(h.current(), Some(&Hint::Shard(1)));
        }
        // An empty SET LOCAL clears the hint for the block only.
        h.begin();
        assert_eq!(
            h.set("shard", Some(""), true, true, &KNOWN),
            Ok(SetOutcome::Reset)
        );
        assert_eq!(h.current(), None);
        h.end(false);
        assert_eq!(h.current(), Some(&Hint::Shard(1)));
        // A SET in a block: kept by COMMIT, undone by ROLLBACK; it overrides an earlier SET LOCAL.
        h.begin();
        h.set("shard", Some("3"), true, true, &KNOWN).unwrap();
        h.set("shard", Some("2"), false, true, &KNOWN).unwrap();
        assert_eq!(h.current(), Some(&Hint::Shard(2)));
        h.end(true);
        assert_eq!(h.current(), Some(&Hint::Shard(1)));
        h.begin();
        h.set("shard", Some("2"), false, true, &KNOWN).unwrap();
        h.end(false);
        assert_eq!(h.current(), Some(&Hint::Shard(2)));
        // RESET, and RESET ALL.
        assert_eq!(
            h.set("shard", None, false, false, &KNOWN),
            Ok(SetOutcome::Reset)
        );
        assert_eq!(h.current(), None);
        h.set("key", Some("k"), false, false, &KNOWN).unwrap();
        h.reset_all();
        assert_eq!((h.current(), h.show("key")), (None, String::new()));
    }
}
