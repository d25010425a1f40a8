//! Deciding how a merge compares text so that it agrees with every shard, or refusing: the
//! shards must share one database collation the proxy can reproduce (C/POSIX bytewise, or a libc
//! locale through the same glibc), and the columns behind a compared value must not carry a
//! collation of their own.

use std::collections::BTreeMap;

use super::collation::{CollatedColumn, CollatedDomain, Collation, ShardText};
use super::merge::collate::{is_c_locale, libc_collator, platform_version, CollateError};
use super::merge::TextOrder;
use crate::router::merge_plan::{CollationUse, TableName};

/// The order of text in the shards' database collation, the same on every shard; `Err` is the
/// message of a 0A000 refusal naming what is missing.
pub fn database_order(shards: &[ShardText]) -> Result<TextOrder, String> {
    let mut by_collation: BTreeMap<(String, String, String), Vec<u32>> = BTreeMap::new();
    for s in shards {
        let Some(c) = &s.collation else {
            return Err(format!(
                "ordering text across shards needs each shard's collation, which could not be read from shard {}",
                s.shard
            ));
        };
        let d = &c.database;
        // Text arrives in the connection's encoding but the shard compared it in the database's:
        // the bytes are the same only when no conversion happens.
        let client = s.client_encoding.as_deref().unwrap_or("UTF8");
        if client != d.encoding && d.encoding != "SQL_ASCII" {
            return Err(format!(
                "ordering text across shards needs client_encoding to be the database encoding (shard {}: database {}, client {client})",
                s.shard, d.encoding
            ));
        }
        by_collation
            .entry((d.provider.clone(), d.collate.clone(), d.ctype.clone()))
            .or_default()
            .push(s.shard);
    }
    if by_collation.len() > 1 {
        let groups: Vec<String> = by_collation
            .iter()
            .map(|((_, collate, _), ids)| {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                let (word, verb) = if ids.len() == 1 {
                    ("shard", "uses")
                } else {
                    ("shards", "use")
                };
                format!("{word} {} {verb} \"{collate}\"", ids.join(", "))
            })
            .collect();
        return Err(format!(
            "ordering text across shards whose database collations differ is not supported ({}); create every shard's database with the same locale",
            groups.join("; ")
        ));
    }
    let Some(first) = shards.first().and_then(|s| s.collation.as_ref()) else {
        return Ok(TextOrder::Bytewise);
    };
    let d = &first.database;
    match d.provider.as_str() {
        "c" => {}
        "i" => {
            return Err(format!(
                "ordering text across shards whose databases use the ICU locale provider is not supported (database collation \"{}\"); pgshard reproduces libc collations only",
                d.collate
            ))
        }
        other => {
            return Err(format!(
                "ordering text across shards whose databases use locale provider \"{other}\" is not supported; pgshard reproduces libc collations only"
            ))
        }
    }
    if is_c_locale(&d.collate) {
        return Ok(TextOrder::Bytewise);
    }
    let Some(mine) = platform_version() else {
        return Err(format!(
            "ordering text in collation \"{}\" across shards needs pgshard to run on glibc, whose collations the shards use",
            d.collate
        ));
    };
    for s in shards {
        let theirs = s
            .collation
            .as_ref()
            .and_then(|c| c.database.version.clone());
        match theirs {
            Some(v) if v == mine => {}
            Some(v) => {
                return Err(format!(
                    "ordering text in collation \"{}\" across shards is not supported: shard {} sorts with glibc {v} and pgshard runs on glibc {mine}, whose collations may differ",
                    d.collate, s.shard
                ))
            }
            None => {
                return Err(format!(
                    "ordering text in collation \"{}\" across shards needs the collation version of shard {} (reported by Postgres 15 and later)",
                    d.collate, s.shard
                ))
            }
        }
    }
    match libc_collator(&d.collate, &d.ctype) {
        Ok(c) => Ok(TextOrder::Libc(c)),
        Err(CollateError::NotInstalled(name)) => Err(format!(
            "ordering text across shards in collation \"{}\" needs the locale \"{name}\" where pgshard runs, and it is not installed; install it ({})",
            d.collate,
            install_hint(&name)
        )),
        Err(e) => Err(format!(
            "ordering text across shards in collation \"{}\" is not supported: {e}",
            d.collate
        )),
    }
}

/// How to install a glibc locale on Debian/Ubuntu, e.g. for `en_US.UTF-8`.
fn install_hint(name: &str) -> String {
    let (base, charset) = match name.split_once('.') {
        Some((b, rest)) => (b, rest.split('@').next().unwrap_or(rest)),
        None => (name, "UTF-8"),
    };
    format!(
        "on Debian: apt-get install locales, then localedef -i {base} -f {charset} {name}, or enable it in /etc/locale.gen and run locale-gen"
    )
}

/// The collated columns of the statement's tables among those `reads` names (`None`: all).
pub(crate) fn behind<'a>(
    columns: &'a [CollatedColumn],
    tables: &'a [TableName],
    reads: Option<&'a [String]>,
) -> impl Iterator<Item = &'a CollatedColumn> + 'a {
    columns.iter().filter(move |c| {
        tables
            .iter()
            .any(|t| t.name == c.table && t.schema.as_ref().is_none_or(|s| *s == c.schema))
            && reads.is_none_or(|r| r.contains(&c.column))
    })
}

/// The collated domains the statement's compared expressions cast to.
pub(crate) fn cast_to<'a>(
    domains: &'a [CollatedDomain],
    casts: &'a [String],
) -> impl Iterator<Item = &'a CollatedDomain> + 'a {
    domains.iter().filter(move |d| casts.contains(&d.name))
}

/// True when text in collation `c` sorts in `order`.
fn sorts_in(c: &Collation, order: &TextOrder) -> bool {
    match (c.provider.as_str(), &c.collate, &c.ctype) {
        ("c", Some(collate), Some(ctype)) => order.is_libc(collate, ctype),
        _ => false,
    }
}

fn describe(c: &Collation) -> String {
    let provider = match c.provider.as_str() {
        "i" => " (ICU)",
        _ => "",
    };
    format!("COLLATE \"{}\"{provider}", c.name)
}

/// A collated column as messages name it.
pub(crate) fn column_name(c: &CollatedColumn) -> String {
    format!(
        "column {}.{}.{} ({})",
        c.schema,
        c.table,
        c.column,
        describe(&c.collation)
    )
}

/// A collated domain as messages name it.
pub(crate) fn domain_name(d: &CollatedDomain) -> String {
    format!(
        "domain {}.{} ({})",
        d.schema,
        d.name,
        describe(&d.collation)
    )
}

/// The refusal when a shard's collations could not be read.
pub(crate) fn unread(shard: u32) -> String {
    format!(
        "comparing text across shards needs each shard's collations, which could not be read from shard {shard}"
    )
}

/// Checks that the text of a value the merge orders — read from the columns named `reads`
/// (`None`: any) of the statement's tables — sorts in `order` on every shard, and that nothing
/// compared is cast to a domain of another collation. `default_is_order` says whether text in
/// the database's default collation sorts in `order` too (false for `name` values in a non-C
/// database: then each column read must be shown to sort in `order`).
pub fn check_ordered(
    uses: &CollationUse,
    reads: Option<&[String]>,
    shards: &[ShardText],
    order: &TextOrder,
    default_is_order: bool,
) -> Result<(), String> {
    for s in shards {
        let Some(facts) = &s.collation else {
            return Err(unread(s.shard));
        };
        let wrong = behind(&facts.columns, &uses.tables, reads)
            .find(|c| !sorts_in(&c.collation, order))
            .map(column_name)
            .or_else(|| {
                cast_to(&facts.domains, &uses.casts)
                    .find(|d| !sorts_in(&d.collation, order))
                    .map(domain_name)
            });
        if let Some(what) = wrong {
            return Err(format!(
                "ordering text of {what} across shards is not supported: pgshard merges text in {} only",
                order.describe()
            ));
        }
        if !default_is_order {
            let unknown = match reads {
                None => true,
                Some(r) => r.iter().any(|name| {
                    behind(
                        &facts.columns,
                        &uses.tables,
                        Some(std::slice::from_ref(name)),
                    )
                    .next()
                    .is_none()
                }),
            };
            if unknown {
                return Err(format!(
                    "ordering values of type name computed from text across shards is not supported: pgshard cannot tell whether they sort in {} or in the database collation \"{}\"",
                    order.describe(),
                    facts.database.collate
                ));
            }
        }
    }
    Ok(())
}

/// Checks that grouping on values read from the columns `uses.grouped` (`None`: any) may use
/// byte equality: nothing behind them has a nondeterministic collation on any shard.
pub fn check_grouped(uses: &CollationUse, shards: &[ShardText]) -> Result<(), String> {
    for s in shards {
        let Some(facts) = &s.collation else {
            return Err(unread(s.shard));
        };
        let wrong = behind(&facts.columns, &uses.tables, uses.grouped.as_deref())
            .find(|c| !c.collation.deterministic)
            .map(column_name)
            .or_else(|| {
                cast_to(&facts.domains, &uses.casts)
                    .find(|d| !d.collation.deterministic)
                    .map(domain_name)
            });
        if let Some(what) = wrong {
            return Err(format!(
                "grouping text of {what} across shards is not supported: its collation is nondeterministic and pgshard groups text by byte equality only"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::exec::collation::{DatabaseCollation, ShardCollation};

    fn db(collate: &str, provider: &str, version: Option<&str>) -> DatabaseCollation {
        DatabaseCollation {
            collate: collate.into(),
            ctype: collate.into(),
            provider: provider.into(),
            encoding: "UTF8".into(),
            version: version.map(Into::into),
        }
    }

    fn coll(name: &str, provider: &str) -> Collation {
        let libc = (provider == "c").then(|| name.to_string());
        Collation {
            name: name.into(),
            provider: provider.into(),
            collate: libc.clone(),
            ctype: libc,
            deterministic: true,
        }
    }

    fn col(table: &str, column: &str, collation: &str, provider: &str) -> CollatedColumn {
        CollatedColumn {
            schema: "public".into(),
            table: table.into(),
            column: column.into(),
            collation: coll(collation, provider),
        }
    }

    fn shard(id: u32, database: DatabaseCollation, columns: Vec<CollatedColumn>) -> ShardText {
        ShardText {
            shard: id,
            collation: Some(Arc::new(ShardCollation {
                database,
                columns,
                domains: vec![CollatedDomain {
                    schema: "public".into(),
                    name: "code_t".into(),
                    collation: coll("C", "c"),
                }],
                nondeterministic: vec![],
            })),
            client_encoding: Some("UTF8".into()),
        }
    }

    fn glibc() -> String {
        platform_version().unwrap()
    }

    fn table(name: &str) -> CollationUse {
        CollationUse {
            ordered: vec![],
            grouped: None,
            tables: vec![TableName {
                schema: None,
                name: name.into(),
            }],
            casts: vec![],
            distinct: vec![],
        }
    }

    #[test]
    fn c_databases_compare_bytewise() {
        let shards = [
            shard(1, db("C", "c", None), vec![]),
            shard(2, db("C", "c", None), vec![]),
        ];
        assert!(matches!(database_order(&shards), Ok(TextOrder::Bytewise)));
        assert!(matches!(database_order(&[]), Ok(TextOrder::Bytewise)));
        let posix = [shard(1, db("POSIX", "c", None), vec![])];
        assert!(matches!(database_order(&posix), Ok(TextOrder::Bytewise)));
    }

    #[test]
    fn libc_databases_use_the_locale() {
        let v = glibc();
        let shards = [
            shard(1, db("en_US.UTF-8", "c", Some(&v)), vec![]),
            shard(2, db("en_US.UTF-8", "c", Some(&v)), vec![]),
        ];
        let order = database_order(&shards).unwrap();
        assert!(order.is_libc("en_US.UTF-8", "en_US.UTF-8"));
        assert_eq!(
            order.compare(b"a", b"B"),
            std::cmp::Ordering::Less,
            "not bytewise"
        );
    }

    #[test]
    fn refusals_name_what_is_missing() {
        let v = glibc();
        let e = database_order(&[
            shard(1, db("C", "c", None), vec![]),
            shard(2, db("en_US.UTF-8", "c", Some(&v)), vec![]),
            shard(3, db("C", "c", None), vec![]),
        ])
        .unwrap_err();
        assert!(
            e.contains("shards 1, 3 use \"C\"") && e.contains("shard 2 uses \"en_US.UTF-8\""),
            "{e}"
        );
        let e = database_order(&[shard(1, db("en-US-x-icu", "i", None), vec![])]).unwrap_err();
        assert!(e.contains("ICU"), "{e}");
        let e =
            database_order(&[shard(4, db("de_DE.UTF-8", "c", Some("1.0")), vec![])]).unwrap_err();
        assert!(e.contains("shard 4 sorts with glibc 1.0"), "{e}");
        let e = database_order(&[shard(4, db("de_DE.UTF-8", "c", None), vec![])]).unwrap_err();
        assert!(e.contains("collation version of shard 4"), "{e}");
        let e =
            database_order(&[shard(5, db("xx_NOPE.UTF-8", "c", Some(&v)), vec![])]).unwrap_err();
        assert!(
            e.contains("\"xx_NOPE.UTF-8\"")
                && e.contains("not installed")
                && e.contains("localedef -i xx_NOPE -f UTF-8 xx_NOPE.UTF-8"),
            "{e}"
        );
        let unknown = ShardText {
            shard: 6,
            collation: None,
            client_encoding: None,
        };
        assert!(database_order(&[unknown]).unwrap_err().contains("shard 6"));
        let mut latin = shard(7, db("C", "c", None), vec![]);
        latin.client_encoding = Some("LATIN1".into());
        assert!(database_order(&[latin])
            .unwrap_err()
            .contains("client LATIN1"));
    }

    #[test]
    fn columns_with_their_own_collation_are_refused() {
        let v = glibc();
        let cols = vec![
            col("users", "code", "C", "c"),
            col("users", "nick", "en_US.UTF-8", "c"),
            col("other", "name", "C", "c"),
        ];
        let c_db = [shard(1, db("C", "c", None), cols.clone())];
        let en_db = [shard(2, db("en_US.UTF-8", "c", Some(&v)), cols)];
        let users = table("users");
        let c_order = TextOrder::Bytewise;
        let en_order = database_order(&en_db).unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ordered = |uses: &CollationUse,
                       reads: Option<&[&str]>,
                       shards: &[ShardText],
                       o: &TextOrder,
                       d: bool| {
            let reads = reads.map(names);
            check_ordered(uses, reads.as_deref(), shards, o, d)
        };
        // A C column in a C database sorts as the merge does; an en_US one does not.
        assert!(ordered(&users, Some(&["code"]), &c_db, &c_order, true).is_ok());
        let e = ordered(&users, Some(&["nick", "x"]), &c_db, &c_order, true).unwrap_err();
        assert!(
            e.contains("column public.users.nick (COLLATE \"en_US.UTF-8\")"),
            "{e}"
        );
        // And the other way round in an en_US database.
        let e = ordered(&users, Some(&["code"]), &en_db, &en_order, true).unwrap_err();
        assert!(
            e.contains("users.code") && e.contains("\"en_US.UTF-8\" only"),
            "{e}"
        );
        assert!(ordered(&users, Some(&["nick"]), &en_db, &en_order, true).is_ok());
        // Another table's column of the same name does not matter; unknown reads check all.
        assert!(ordered(&users, Some(&["name"]), &en_db, &en_order, true).is_ok());
        assert!(ordered(&users, None, &en_db, &en_order, true).is_err());
        let mut qualified = table("users");
        qualified.tables[0].schema = Some("other_schema".into());
        assert!(ordered(&qualified, None, &en_db, &en_order, true).is_ok());
        // name values in an en_US database: only from C-collated columns.
        assert!(ordered(&users, Some(&["code"]), &en_db, &c_order, false).is_ok());
        assert!(ordered(&users, Some(&[]), &en_db, &c_order, false).is_ok());
        let e = ordered(&users, Some(&["plain"]), &en_db, &c_order, false).unwrap_err();
        assert!(e.contains("type name"), "{e}");
        // A cast to a domain with its own collation.
        let mut cast = table("users");
        cast.casts = names(&["code_t"]);
        assert!(ordered(&cast, Some(&["plain"]), &c_db, &c_order, true).is_ok());
        let e = ordered(&cast, Some(&["plain"]), &en_db, &en_order, true).unwrap_err();
        assert!(e.contains("domain public.code_t (COLLATE \"C\")"), "{e}");
    }

    #[test]
    fn nondeterministic_columns_cannot_be_grouped() {
        let mut ci = col("users", "email", "case_insensitive", "i");
        ci.collation.deterministic = false;
        let shards = [shard(
            1,
            db("C", "c", None),
            vec![ci, col("users", "code", "C", "c")],
        )];
        let mut uses = table("users");
        uses.grouped = Some(vec!["code".to_string()]);
        assert!(check_grouped(&uses, &shards).is_ok());
        uses.grouped = None;
        let e = check_grouped(&uses, &shards).unwrap_err();
        assert!(
            e.contains("users.email (COLLATE \"case_insensitive\" (ICU))"),
            "{e}"
        );
        let e = check_ordered(
            &uses,
            Some(&["email".to_string()]),
            &shards,
            &TextOrder::Bytewise,
            true,
        )
        .unwrap_err();
        assert!(e.contains("ICU"), "{e}");
        let unknown = ShardText {
            shard: 9,
            collation: None,
            client_encoding: None,
        };
        assert!(check_grouped(&uses, &[unknown])
            .unwrap_err()
            .contains("shard 9"));
    }
}
