//! `count`/`sum`/`avg(DISTINCT x)` over several shards is finished by a query that judges the
//! distinctness of the merged values in the database's default collation. That is right only
//! when `x`'s own collation is deterministic (equal means byte-equal); a nondeterministic one
//! (`'a'` = `'A'` under a case-insensitive ICU collation) would give a wrong count, so refuse.

use super::collation::{Collation, ShardText};
use super::text_order::{behind, cast_to, column_name, domain_name, unread};
use crate::router::merge_plan::{CollationSource, CollationUse, DistinctUse};

/// `text[]`, `varchar[]`, `bpchar[]`, `record[]`.
const COLLATABLE_ARRAYS: [u32; 4] = [1009, 1015, 1014, 2287];
/// Types with a lower oid are built in.
const FIRST_USER_OID: u32 = 16384;

/// True when elements of an array of type `oid` may be compared in a collation: text arrays,
/// records (whose text fields keep theirs) and anything user-defined (domains, composites).
fn may_collate(array_oid: u32) -> bool {
    COLLATABLE_ARRAYS.contains(&array_oid) || array_oid >= FIRST_USER_OID
}

/// The nondeterministic collation behind `d`'s argument on one shard, with what carries it.
fn nondeterministic_on(
    d: &DistinctUse,
    uses: &CollationUse,
    s: &ShardText,
) -> Result<Option<(String, String)>, String> {
    let Some(facts) = &s.collation else {
        return Err(unread(s.shard));
    };
    let named = |name: &str| {
        facts
            .nondeterministic
            .iter()
            .any(|n| n == name)
            .then(|| (name.to_string(), format!("COLLATE \"{name}\"")))
    };
    let of = |c: &Collation, what: String| (c.name.clone(), what);
    Ok(match &d.source {
        CollationSource::Explicit(name) => named(name),
        CollationSource::Derived {
            collates,
            reads,
            casts,
        } => collates
            .iter()
            .find_map(|n| named(n))
            .or_else(|| {
                behind(&facts.columns, &uses.tables, reads.as_deref())
                    .find(|c| !c.collation.deterministic)
                    .map(|c| of(&c.collation, column_name(c)))
            })
            .or_else(|| {
                cast_to(&facts.domains, casts)
                    .find(|dm| !dm.collation.deterministic)
                    .map(|dm| of(&dm.collation, domain_name(dm)))
            }),
    })
}

/// Checks every merged DISTINCT aggregate whose values are of a collatable type (`types` gives
/// the oid of each shard row column, `total` columns of which `hidden` are hidden): refuses
/// when its argument may have a nondeterministic collation on any shard.
pub fn check(
    uses: &CollationUse,
    types: &[u32],
    shards: &[ShardText],
    total: usize,
    hidden: usize,
) -> Result<(), String> {
    for d in &uses.distinct {
        let oid = d
            .column
            .index(total, hidden)
            .and_then(|i| types.get(i).copied());
        if oid.is_some_and(|o| !may_collate(o)) {
            continue;
        }
        for s in shards {
            if let Some((collation, what)) = nondeterministic_on(d, uses, s)? {
                return Err(format!(
                    "{}(DISTINCT …) over several shards with the nondeterministic collation {collation} ({what}) is not supported; add a condition on the shard key",
                    d.func
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::exec::collation::{
        CollatedColumn, CollatedDomain, DatabaseCollation, ShardCollation,
    };
    use crate::router::merge_plan::{ColRef, TableName};

    fn coll(name: &str, deterministic: bool) -> Collation {
        Collation {
            name: name.into(),
            provider: "i".into(),
            collate: None,
            ctype: None,
            deterministic,
        }
    }

    fn shard(id: u32) -> ShardText {
        ShardText {
            shard: id,
            collation: Some(Arc::new(ShardCollation {
                database: DatabaseCollation {
                    collate: "C".into(),
                    ctype: "C".into(),
                    provider: "c".into(),
                    encoding: "UTF8".into(),
                    version: None,
                },
                columns: vec![
                    CollatedColumn {
                        schema: "public".into(),
                        table: "t".into(),
                        column: "email".into(),
                        collation: coll("ci", false),
                    },
                    CollatedColumn {
                        schema: "public".into(),
                        table: "t".into(),
                        column: "code".into(),
                        collation: coll("C", true),
                    },
                ],
                domains: vec![CollatedDomain {
                    schema: "public".into(),
                    name: "ci_text".into(),
                    collation: coll("ci", false),
                }],
                nondeterministic: vec!["ci".into()],
            })),
            client_encoding: None,
        }
    }

    fn uses(source: CollationSource) -> CollationUse {
        CollationUse {
            ordered: vec![],
            grouped: Some(vec![]),
            tables: vec![TableName {
                schema: None,
                name: "t".into(),
            }],
            casts: vec![],
            distinct: vec![DistinctUse {
                column: ColRef::Hidden(0),
                func: "count".into(),
                source,
            }],
        }
    }

    fn derived(collates: &[&str], reads: Option<&[&str]>, casts: &[&str]) -> CollationSource {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        CollationSource::Derived {
            collates: v(collates),
            reads: reads.map(v),
            casts: v(casts),
        }
    }

    /// The check on one visible int column and the hidden array column of type `array_oid`.
    fn run(source: CollationSource, array_oid: u32) -> Result<(), String> {
        check(&uses(source), &[20, array_oid], &[shard(1), shard(2)], 2, 1)
    }

    #[test]
    fn refuses_text_in_a_nondeterministic_collation() {
        let e = run(derived(&[], Some(&["email"]), &[]), 1009).unwrap_err();
        assert!(
            e.starts_with("count(DISTINCT …) over several shards with the nondeterministic collation ci (column public.t.email")
                && e.ends_with("add a condition on the shard key"),
            "{e}"
        );
        let e = run(CollationSource::Explicit("ci".into()), 1009).unwrap_err();
        assert!(e.contains("collation ci (COLLATE \"ci\")"), "{e}");
        let e = run(derived(&["ci"], Some(&["name"]), &[]), 1015).unwrap_err();
        assert!(e.contains("collation ci"), "{e}");
        let e = run(derived(&[], Some(&["name"]), &["ci_text"]), 1009).unwrap_err();
        assert!(e.contains("domain public.ci_text"), "{e}");
        // Unknown columns (a subquery in FROM): any of the tables' columns may be read.
        assert!(run(derived(&[], None, &[]), 1009).is_err());
        assert!(run(derived(&[], Some(&["email"]), &[]), 2287).is_err());
        let unread = ShardText {
            shard: 3,
            collation: None,
            client_encoding: None,
        };
        let e = check(
            &uses(derived(&[], Some(&["name"]), &[])),
            &[20, 1009],
            &[unread],
            2,
            1,
        )
        .unwrap_err();
        assert!(e.contains("shard 3"), "{e}");
    }

    #[test]
    fn allows_deterministic_and_non_text() {
        assert_eq!(run(derived(&[], Some(&["name"]), &[]), 1009), Ok(()));
        assert_eq!(run(derived(&[], Some(&["code"]), &[]), 1009), Ok(()));
        assert_eq!(run(CollationSource::Explicit("C".into()), 1009), Ok(()));
        // An explicit deterministic COLLATE over the ci column decides the collation.
        assert_eq!(run(CollationSource::Explicit("C".into()), 1015), Ok(()));
        // int8[]: the values are not compared in any collation.
        assert_eq!(run(derived(&[], Some(&["email"]), &[]), 1016), Ok(()));
    }
}
