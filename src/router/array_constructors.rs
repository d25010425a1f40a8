//! psycopg2 (and any driver interpolating on the client) writes a list as an array constructor,
//! so Django's `bulk_create` sends `INSERT INTO t (…) SELECT * FROM UNNEST((ARRAY[1, 2])::int8[],
//! (ARRAY['a', 'b'])::varchar[])`. Where each element is a constant that Postgres would read
//! with the element type's own input function, that is exactly the array literal
//! `'{1,2}'::int8[]`, which the UNNEST split reads like a parameter. Pure: text in, text out.

use pg_query::protobuf::{self as pb, a_const};
use pg_query::NodeEnum;

use super::insert_rewrite::rewrite_insert;
use super::pg_array;
use super::unnest_insert::unnest_call;

/// `sql` with the UNNEST arguments of an `INSERT … SELECT * FROM UNNEST(…)` that are cast array
/// constructors of constants written as cast array literals; `None` when the statement is not
/// such an INSERT, or when one argument cannot be written so with the same meaning.
pub fn unnest_arrays_as_literals(sql: &str) -> Option<String> {
    rewrite_insert(sql, "array", |insert| {
        unnest_call(insert)?;
        let mut changed = false;
        for arg in unnest_args_mut(insert)?.iter_mut() {
            if let Some(literal) = as_literal(arg) {
                *arg = literal;
                changed = true;
            } else if !is_plain_argument(arg) {
                return None;
            }
        }
        changed.then_some(())
    })
}

/// The arguments of the UNNEST call [`unnest_call`] accepted.
fn unnest_args_mut(i: &mut pb::InsertStmt) -> Option<&mut Vec<pb::Node>> {
    let Some(NodeEnum::SelectStmt(s)) = i.select_stmt.as_deref_mut()?.node.as_mut() else {
        return None;
    };
    let Some(NodeEnum::RangeFunction(rf)) = s.from_clause.first_mut()?.node.as_mut() else {
        return None;
    };
    let Some(NodeEnum::List(pair)) = rf.functions.first_mut()?.node.as_mut() else {
        return None;
    };
    let Some(NodeEnum::FuncCall(f)) = pair.items.first_mut()?.node.as_mut() else {
        return None;
    };
    Some(&mut f.args)
}

/// An argument left as it is: a parameter or a constant, cast or not.
fn is_plain_argument(n: &pb::Node) -> bool {
    match n.node.as_ref() {
        Some(NodeEnum::ParamRef(_)) | Some(NodeEnum::AConst(_)) => true,
        Some(NodeEnum::TypeCast(c)) => c.arg.as_deref().is_some_and(is_plain_argument),
        _ => false,
    }
}

/// `(ARRAY[c, …])::T[]` as `'{c,…}'::T[]`, when every element reads the same through `T`'s
/// input function.
fn as_literal(n: &pb::Node) -> Option<pb::Node> {
    let Some(NodeEnum::TypeCast(cast)) = n.node.as_ref() else {
        return None;
    };
    let array_type = cast.type_name.as_ref()?;
    if array_type.array_bounds.len() != 1 || array_type.setof || array_type.pct_type {
        return None;
    }
    let element_type = type_key(array_type);
    if element_type.last().is_some_and(|t| t == "box") {
        // box arrays are delimited by ';', not ','.
        return None;
    }
    let Some(NodeEnum::AArrayExpr(array)) = cast.arg.as_deref()?.node.as_ref() else {
        return None;
    };
    let texts: Vec<Option<String>> = array
        .elements
        .iter()
        .map(|e| element_text(e, array_type, &element_type))
        .collect::<Option<_>>()?;
    let bytes: Vec<Option<&[u8]>> = texts
        .iter()
        .map(|t| t.as_deref().map(str::as_bytes))
        .collect();
    let literal = pb::Node {
        node: Some(NodeEnum::AConst(pb::AConst {
            isnull: false,
            location: -1,
            val: Some(a_const::Val::Sval(pb::String {
                sval: pg_array::encode_text(&bytes),
            })),
        })),
    };
    Some(pb::Node {
        node: Some(NodeEnum::TypeCast(Box::new(pb::TypeCast {
            arg: Some(Box::new(literal)),
            type_name: Some(array_type.clone()),
            location: -1,
        }))),
    })
}

/// The element type's name parts, lower-cased, without schema `pg_catalog`.
fn type_key(t: &pb::TypeName) -> Vec<String> {
    t.names
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.to_lowercase()),
            _ => None,
        })
        .filter(|s| s != "pg_catalog")
        .collect()
}

/// Types whose input function reads a number's text as the number's cast to them would give.
const NUMERIC_TYPES: [&str; 6] = ["int2", "int4", "int8", "numeric", "float4", "float8"];
/// Types that keep a constant's text as it is.
const TEXT_TYPES: [&str; 4] = ["text", "varchar", "bpchar", "name"];

/// One element's text for the array literal (`None` inside is NULL); `None` when the element's
/// text through the input function could differ from the element's own conversion.
fn element_text(
    e: &pb::Node,
    array_type: &pb::TypeName,
    element_type: &[String],
) -> Option<Option<String>> {
    let type_is = |names: &[&str]| matches!(element_type, [t] if names.contains(&t.as_str()));
    let constant = match e.node.as_ref()? {
        NodeEnum::AConst(c) => c,
        // `'2024-01-01'::date` inside a `date[]`: a cast to the element type itself.
        NodeEnum::TypeCast(c) => {
            let t = c.type_name.as_ref()?;
            let same = t.array_bounds.is_empty()
                && type_key(t) == element_type
                && t.typmods == array_type.typmods;
            let Some(NodeEnum::AConst(inner)) = c.arg.as_deref()?.node.as_ref() else {
                return None;
            };
            if !same || !matches!(inner.val, Some(a_const::Val::Sval(_)) | None) {
                return None;
            }
            inner
        }
        _ => return None,
    };
    if constant.isnull {
        return Some(None);
    }
    match constant.val.as_ref()? {
        // An untyped string literal is read by the element type's input function either way.
        a_const::Val::Sval(s) => Some(Some(s.sval.clone())),
        a_const::Val::Ival(i) if type_is(&NUMERIC_TYPES) || type_is(&TEXT_TYPES) => {
            Some(Some(i.ival.to_string()))
        }
        // A fractional number into an integer type rounds when cast but fails on input.
        a_const::Val::Fval(f)
            if type_is(&["numeric", "float4", "float8"]) || type_is(&TEXT_TYPES) =>
        {
            Some(Some(f.fval.clone()))
        }
        a_const::Val::Boolval(b) if type_is(&["bool"]) || type_is(&TEXT_TYPES) => {
            Some(Some(if b.boolval { "true" } else { "false" }.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_constructors_of_constants_become_literals() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "INSERT INTO t (id, name) SELECT * FROM UNNEST((ARRAY[1, -2])::bigint[], (ARRAY['a', 'b c'])::varchar(20)[])",
                Some("INSERT INTO t (id, name) SELECT * FROM unnest('{1,-2}'::bigint[], '{a,\"b c\"}'::varchar(20)[])"),
            ),
            (
                "insert into t (id, d, ok, n) select * from unnest(ARRAY[1]::int8[], ARRAY['2024-01-02'::date, NULL]::date[], ARRAY[true]::bool[], ARRAY[1.50]::numeric[])",
                Some("INSERT INTO t (id, d, ok, n) SELECT * FROM unnest('{1}'::int8[], '{2024-01-02,NULL}'::date[], '{true}'::bool[], '{1.50}'::numeric[])"),
            ),
            // A literal or parameter argument stays as it is beside a rewritten one.
            (
                "INSERT INTO t (id, name) SELECT * FROM UNNEST($1::bigint[], ARRAY['x']::text[])",
                Some("INSERT INTO t (id, name) SELECT * FROM unnest($1::bigint[], '{x}'::text[])"),
            ),
            // Quotes and backslashes survive (the deparser writes an escape string).
            (
                r#"INSERT INTO t (id, name) SELECT * FROM UNNEST(ARRAY[1]::int8[], ARRAY[E'a\\b"c']::text[])"#,
                Some(r#"INSERT INTO t (id, name) SELECT * FROM unnest('{1}'::int8[], E'{"a\\\\b\\"c"}'::text[])"#),
            ),
            // 1.5 cast to an integer rounds; read by int8in it fails: left alone.
            ("INSERT INTO t (id) SELECT * FROM UNNEST(ARRAY[1.5]::int8[])", None),
            // Not cast: the array's type comes from its elements.
            ("INSERT INTO t (id) SELECT * FROM UNNEST(ARRAY[1, 2])", None),
            // An element that is an expression, or cast to another type.
            ("INSERT INTO t (id) SELECT * FROM UNNEST(ARRAY[1 + 1]::int8[])", None),
            ("INSERT INTO t (id) SELECT * FROM UNNEST(ARRAY['01'::int4]::text[])", None),
            // Another argument that is not a plain value: the statement is left whole.
            ("INSERT INTO t (id, n) SELECT * FROM UNNEST(ARRAY[1]::int8[], f())", None),
            // Nothing to rewrite, or not an UNNEST insert.
            ("INSERT INTO t (id) SELECT * FROM UNNEST($1::int8[])", None),
            ("INSERT INTO t (id) VALUES (1)", None),
            ("SELECT * FROM UNNEST(ARRAY[1]::int8[])", None),
        ];
        for (sql, want) in cases {
            assert_eq!(unnest_arrays_as_literals(sql).as_deref(), *want, "{sql}");
        }
    }
}
