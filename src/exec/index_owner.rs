//! Looking up, on the shards' catalogs, the tables of the indexes a utility statement names
//! (see `router::index_owner`), so the statement runs where those tables live.

use crate::exec::merge::row::split_row;
use crate::router::index_owner::OwnerTable;

/// (table schema, table name) of one lookup row.
pub fn owner_of(body: &bytes::Bytes) -> Option<OwnerTable> {
    let cols = split_row(body).ok()?;
    let text = |i: usize| {
        cols.get(i)?
            .as_ref()
            .and_then(|b| std::str::from_utf8(b).ok().map(str::to_string))
    };
    Some(OwnerTable {
        schema: text(0)?,
        table: text(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::backend as be;

    #[test]
    fn lookup_rows_decode_or_fail() {
        let row = be::data_row(&[Some("public"), Some("users")]);
        assert_eq!(
            owner_of(&row.body),
            Some(OwnerTable {
                schema: "public".into(),
                table: "users".into()
            })
        );
        assert_eq!(owner_of(&be::data_row(&[Some("public"), None]).body), None);
        assert_eq!(owner_of(&be::data_row(&[Some("public")]).body), None);
        assert_eq!(owner_of(&bytes::Bytes::from_static(b"\x00")), None);
    }
}
