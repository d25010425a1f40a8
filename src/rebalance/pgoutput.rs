//! The few `pgoutput` (protocol version 1) messages a cut-over needs to learn which keys changed
//! since a point: relation descriptions, inserts, updates and deletes. Pure: bytes in, changed
//! keys out; everything else (begin, commit, origin, type, truncate) is skipped.

use std::collections::HashMap;

/// One decoded message that matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A relation's namespace, name and column names, in order.
    Relation {
        id: u32,
        namespace: String,
        name: String,
        columns: Vec<String>,
    },
    /// An insert, update or delete of relation `id`; each tuple's columns as text (`None` for
    /// null, unchanged TOAST or binary values).
    Change {
        id: u32,
        tuples: Vec<Vec<Option<String>>>,
    },
    /// A truncate (its row filter ignored): every row of these relations may have changed.
    Truncate { ids: Vec<u32> },
    /// Anything else.
    Other,
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct Malformed(&'static str);

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String, Malformed> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(Malformed("unterminated string"))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Option<String>>, Malformed> {
        let n = self.u16()?;
        let mut cols = Vec::with_capacity(n as usize);
        for _ in 0..n {
            cols.push(match self.u8()? {
                b'n' | b'u' => None,
                b't' => {
                    let len = self.u32()? as usize;
                    Some(String::from_utf8_lossy(self.take(len)?).into_owned())
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    self.take(len)?;
                    None
                }
                _ => return Err(Malformed("unknown column kind")),
            });
        }
        Ok(cols)
    }
}

/// Decodes one message.
pub fn decode(buf: &[u8]) -> Result<Message, Malformed> {
    let mut r = Reader { buf };
    match r.u8()? {
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                r.u8()?;
                columns.push(r.cstr()?);
                r.u32()?;
                r.u32()?;
            }
            Ok(Message::Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let id = r.u32()?;
            if r.u8()? != b'N' {
                return Err(Malformed("insert without a new tuple"));
            }
            Ok(Message::Change {
                id,
                tuples: vec![r.tuple()?],
            })
        }
        b'U' => {
            let id = r.u32()?;
            let mut tuples = Vec::with_capacity(2);
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                tuples.push(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(Malformed("update without a new tuple"));
            }
            tuples.push(r.tuple()?);
            Ok(Message::Change { id, tuples })
        }
        b'D' => {
            let id = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Ok(Message::Change {
                    id,
                    tuples: vec![r.tuple()?],
                }),
                _ => Err(Malformed("delete without an old tuple")),
            }
        }
        b'T' => {
            let n = r.u32()?;
            r.u8()?;
            let ids = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Ok(Message::Truncate { ids })
        }
        _ => Ok(Message::Other),
    }
}

/// What a run of messages says changed in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChanges {
    /// Keys (as text) of rows inserted, updated or deleted.
    pub keys: std::collections::BTreeSet<String>,
    /// A change whose key could not be read (or a truncate): any row may differ.
    pub unknown: bool,
}

/// Collects changed keys per watched table from decoded messages; `tables` maps a table's name
/// (as configured: `name` or `schema.name`) to its key column.
#[derive(Debug, Default)]
pub struct ChangedKeys {
    /// Relation id → (configured table name, key column index).
    relations: HashMap<u32, Option<(String, Option<usize>)>>,
    pub tables: HashMap<String, TableChanges>,
}

impl ChangedKeys {
    /// Feeds one message; `watched` maps configured table names to their key columns.
    pub fn feed(&mut self, msg: Message, watched: &[(String, String)]) {
        match msg {
            Message::Relation {
                id,
                namespace,
                name,
                columns,
            } => {
                let qualified = format!("{namespace}.{name}");
                let entry = watched
                    .iter()
                    .find(|(t, _)| {
                        *t == qualified || (namespace == "public" && t.eq_ignore_ascii_case(&name))
                    })
                    .map(|(t, key)| {
                        let idx = columns.iter().position(|c| c.eq_ignore_ascii_case(key));
                        (t.clone(), idx)
                    });
                self.relations.insert(id, entry);
            }
            Message::Change { id, tuples } => {
                let Some(Some((table, idx))) = self.relations.get(&id) else {
                    if !self.relations.contains_key(&id) {
                        // A change of an undescribed relation: cannot tell which table.
                        for (t, _) in watched {
                            self.tables.entry(t.clone()).or_default().unknown = true;
                        }
                    }
                    return;
                };
                let changes = self.tables.entry(table.clone()).or_default();
                for tuple in tuples {
                    match idx.and_then(|i| tuple.get(i).cloned().flatten()) {
                        Some(k) => {
                            changes.keys.insert(k);
                        }
                        None => changes.unknown = true,
                    }
                }
            }
            Message::Truncate { ids } => {
                for id in ids {
                    if let Some(Some((table, _))) = self.relations.get(&id) {
                        self.tables.entry(table.clone()).or_default().unknown = true;
                    }
                }
            }
            Message::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> Vec<u8> {
        let mut b = vec![b't'];
        b.extend((v.len() as u32).to_be_bytes());
        b.extend(v.as_bytes());
        b
    }

    fn tuple(cols: &[Option<&str>]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            match c {
                Some(v) => b.extend(text(v)),
                None => b.push(b'n'),
            }
        }
        b
    }

    fn relation(id: u32, ns: &str, name: &str, cols: &[&str]) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(id.to_be_bytes());
        b.extend(ns.as_bytes());
        b.push(0);
        b.extend(name.as_bytes());
        b.push(0);
        b.push(b'd');
        b.extend((cols.len() as u16).to_be_bytes());
        for c in cols {
            b.push(1);
            b.extend(c.as_bytes());
            b.push(0);
            b.extend(23u32.to_be_bytes());
            b.extend(u32::MAX.to_be_bytes());
        }
        b
    }

    fn change(kind: u8, id: u32, parts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend(id.to_be_bytes());
        for (k, t) in parts {
            b.push(*k);
            b.extend(t);
        }
        b
    }

    #[test]
    fn collects_keys_of_watched_tables() {
        let watched = vec![
            ("users".to_string(), "user_id".to_string()),
            ("app.items".to_string(), "id".to_string()),
        ];
        let mut keys = ChangedKeys::default();
        let messages = vec![
            vec![b'B', 0, 0],
            relation(7, "public", "users", &["user_id", "name"]),
            relation(8, "app", "items", &["name", "id"]),
            relation(9, "public", "other", &["id"]),
            change(b'I', 7, &[(b'N', tuple(&[Some("5"), Some("a")]))]),
            change(
                b'U',
                7,
                &[
                    (b'K', tuple(&[Some("6"), None])),
                    (b'N', tuple(&[Some("6"), Some("b")])),
                ],
            ),
            change(b'U', 8, &[(b'N', tuple(&[Some("x"), Some("'q'")]))]),
            change(b'D', 7, &[(b'K', tuple(&[Some("7"), None]))]),
            change(b'D', 8, &[(b'K', tuple(&[None, None]))]),
            change(b'I', 9, &[(b'N', tuple(&[Some("1")]))]),
        ];
        for m in messages {
            keys.feed(decode(&m).unwrap(), &watched);
        }
        let users = &keys.tables["users"];
        assert_eq!(
            users.keys.iter().cloned().collect::<Vec<_>>(),
            vec!["5", "6", "7"]
        );
        assert!(!users.unknown);
        let items = &keys.tables["app.items"];
        assert!(items.keys.contains("'q'"));
        assert!(items.unknown, "a delete without its key is unknown");
        assert!(!keys.tables.contains_key("other"));
    }

    #[test]
    fn truncates_and_undescribed_relations_are_unknown() {
        let watched = vec![("users".to_string(), "user_id".to_string())];
        let mut keys = ChangedKeys::default();
        keys.feed(
            decode(&change(b'I', 3, &[(b'N', tuple(&[Some("1")]))])).unwrap(),
            &watched,
        );
        assert!(keys.tables["users"].unknown);
        let mut keys = ChangedKeys::default();
        keys.feed(
            decode(&relation(7, "public", "users", &["user_id"])).unwrap(),
            &watched,
        );
        let mut t = vec![b'T'];
        t.extend(1u32.to_be_bytes());
        t.push(0);
        t.extend(7u32.to_be_bytes());
        keys.feed(decode(&t).unwrap(), &watched);
        assert!(keys.tables["users"].unknown);
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &b"I"[..],
            &[b'I', 0, 0, 0, 1, b'X'][..],
            &[b'R', 0, 0, 0, 1, b'p'][..],
            &[b'D', 0, 0, 0, 1, b'N', 0, 0][..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
