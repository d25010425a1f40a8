//! SQL `PREPARE` / `EXECUTE` / `DEALLOCATE` under transaction pooling, without pinning: the
//! proxy keeps each client's SQL-prepared statements itself, and turns `EXECUTE name(args)` into
//! the statement with its `$n` replaced by the (constant) arguments, which then routes like any
//! statement (keyed: one shard; keyless: scattered and merged). Pure: the session runs the text.

use std::collections::HashMap;

use pg_query::protobuf::a_const::Val;
use pg_query::NodeEnum;

use crate::router::merge_plan::SqlTemplate;
use crate::sql_text::quote_literal;
use crate::wire::backend::ErrorFields;

/// One SQL-prepared statement: its text as a template and its declared parameter types.
#[derive(Debug, Clone)]
struct SqlStatement {
    template: SqlTemplate,
    /// Declared types, as written (`PREPARE p(int, text)`); later parameters are inferred.
    types: Vec<String>,
    /// How many arguments EXECUTE must give.
    params: usize,
}

/// A client session's SQL-prepared statements, by name.
#[derive(Debug, Default)]
pub struct SqlStatements {
    by_name: HashMap<String, SqlStatement>,
}

/// What the session does with a PREPARE, EXECUTE or DEALLOCATE.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlPrepareAction {
    /// Answer with this command tag.
    Done(&'static str),
    /// Run this statement in place of the EXECUTE.
    Run(String),
    /// DEALLOCATE of a statement prepared with the protocol's Parse (one namespace, as in
    /// Postgres: pgx's `Deallocate` and its statement cache's evictions send this): forget that
    /// statement and answer DEALLOCATE.
    Forget(String),
}

/// True when `sql` starts with PREPARE, EXECUTE or DEALLOCATE: a cheap look before parsing.
pub fn may_be_sql_prepare(sql: &str) -> bool {
    // A slice of the text, not a copy: every simple Query asks.
    let sql = sql.trim_start();
    let len = sql
        .bytes()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(sql.len());
    let word = &sql[..len];
    ["prepare", "execute", "deallocate"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

fn refusal(message: &str) -> ErrorFields {
    ErrorFields::error("0A000", message)
}

fn missing(name: &str) -> ErrorFields {
    ErrorFields::error(
        "26000",
        format!("prepared statement \"{name}\" does not exist"),
    )
}

impl SqlStatements {
    /// True when the session prepared `name` with SQL PREPARE.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Forgets every statement (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// Handles `sql`, one PREPARE, EXECUTE or DEALLOCATE; `None` when it is something else.
    /// `taken` says whether a protocol-level statement already has a name (one namespace, as in
    /// Postgres).
    pub fn handle(
        &mut self,
        sql: &str,
        taken: impl Fn(&str) -> bool,
    ) -> Option<Result<SqlPrepareAction, ErrorFields>> {
        let parsed = pg_query::parse(sql, 0).ok()?;
        let stmts = &parsed.protobuf.stmts;
        let node = stmts.first()?.stmt.as_ref()?.node.as_ref()?;
        if !matches!(
            node,
            NodeEnum::PrepareStmt(_) | NodeEnum::ExecuteStmt(_) | NodeEnum::DeallocateStmt(_)
        ) {
            return None;
        }
        if stmts.len() > 1 {
            return Some(Err(refusal(
                "SQL PREPARE, EXECUTE and DEALLOCATE must be sent on their own under transaction pooling",
            )));
        }
        Some(match node {
            NodeEnum::PrepareStmt(p) => self.prepare(sql, &p.name, p.argtypes.len(), taken),
            NodeEnum::ExecuteStmt(e) => self.execute(&e.name, &e.params),
            // Answered with the protocol-level statements (`LocalCommand::DeallocateAll`).
            NodeEnum::DeallocateStmt(d) if d.isall => return None,
            NodeEnum::DeallocateStmt(d) => match self.by_name.remove(&d.name) {
                Some(_) => Ok(SqlPrepareAction::Done("DEALLOCATE")),
                None if taken(&d.name) => Ok(SqlPrepareAction::Forget(d.name.clone())),
                None => Err(missing(&d.name)),
            },
            _ => return None,
        })
    }

    fn prepare(
        &mut self,
        sql: &str,
        name: &str,
        declared: usize,
        taken: impl Fn(&str) -> bool,
    ) -> Result<SqlPrepareAction, ErrorFields> {
        if self.by_name.contains_key(name) || taken(name) {
            return Err(ErrorFields::error(
                "42P05",
                format!("prepared statement \"{name}\" already exists"),
            ));
        }
        let (types, query) = split_prepare(sql)
            .ok_or_else(|| refusal("this form of PREPARE cannot be read by pgshard"))?;
        if types.len() != declared {
            return Err(refusal("this form of PREPARE cannot be read by pgshard"));
        }
        let template = SqlTemplate::from_sql(&query).map_err(|e| refusal(&e))?;
        let params = template
            .params()
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(types.len());
        self.by_name.insert(
            name.to_string(),
            SqlStatement {
                template,
                types,
                params,
            },
        );
        Ok(SqlPrepareAction::Done("PREPARE"))
    }

    fn execute(
        &self,
        name: &str,
        args: &[pg_query::Node],
    ) -> Result<SqlPrepareAction, ErrorFields> {
        let st = self.by_name.get(name).ok_or_else(|| missing(name))?;
        if args.len() != st.params {
            return Err(ErrorFields::error(
                "42601",
                format!("wrong number of parameters for prepared statement \"{name}\""),
            )
            .with_detail(format!(
                "Expected {} parameters but got {}.",
                st.params,
                args.len()
            )));
        }
        let mut values = Vec::with_capacity(args.len());
        for (i, arg) in args.iter().enumerate() {
            let declared = st.types.get(i).map(String::as_str);
            let value = constant(arg, declared.is_some()).ok_or_else(|| {
                refusal("EXECUTE arguments other than constants (expressions, casts, parameters) are not supported under transaction pooling")
            })?;
            values.push(match declared {
                Some(t) => format!("CAST({value} AS {t})"),
                None => value,
            });
        }
        let sql = st
            .template
            .render(&mut |n| values.get(n - 1).cloned().unwrap_or_default());
        Ok(SqlPrepareAction::Run(sql))
    }
}

/// A constant argument as SQL. For a parameter of inferred type a number is quoted (an untyped
/// literal, resolved by its context as the parameter was), never given a numeric type of its own.
fn constant(arg: &pg_query::Node, typed: bool) -> Option<String> {
    let NodeEnum::AConst(c) = arg.node.as_ref()? else {
        return None;
    };
    if c.isnull {
        return Some("NULL".into());
    }
    let number = |t: String| {
        if typed {
            format!("({t})")
        } else {
            quote_literal(&t)
        }
    };
    Some(match c.val.as_ref()? {
        Val::Ival(i) => number(i.ival.to_string()),
        Val::Fval(f) => number(f.fval.clone()),
        Val::Boolval(b) => quote_literal(if b.boolval { "true" } else { "false" }),
        Val::Sval(s) => quote_literal(&s.sval),
        Val::Bsval(_) => return None,
    })
}

/// The declared types (as written) and the statement text of `PREPARE name [(types)] AS stmt`,
/// found with the real lexer.
fn split_prepare(sql: &str) -> Option<(Vec<String>, String)> {
    let scan = pg_query::scan(sql).ok()?;
    let text = |t: &pg_query::protobuf::ScanToken| sql.get(t.start as usize..t.end as usize);
    let mut depth = 0usize;
    let mut types = Vec::new();
    let mut type_start = None;
    for t in scan.tokens.iter().skip(2) {
        match text(t)? {
            "(" => {
                if depth == 0 {
                    type_start = Some(t.end as usize);
                }
                depth += 1;
            }
            ")" | "," if depth == 1 => {
                let start = type_start?;
                types.push(sql.get(start..t.start as usize)?.trim().to_string());
                type_start = (text(t)? == ",").then_some(t.end as usize);
                if text(t)? == ")" {
                    depth = 0;
                }
            }
            ")" => depth = depth.checked_sub(1)?,
            w if depth == 0 && w.eq_ignore_ascii_case("as") => {
                let query = sql.get(t.end as usize..)?.trim();
                let query = query.trim_end_matches(';').trim_end();
                return Some((types, query.to_string()));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut SqlStatements, sql: &str) -> Result<SqlPrepareAction, (String, String)> {
        s.handle(sql, |n| n == "proto")
            .expect("a PREPARE, EXECUTE or DEALLOCATE")
            .map_err(|e| (e.code, e.message))
    }

    #[test]
    fn prepare_execute_deallocate() {
        use SqlPrepareAction::*;
        let mut s = SqlStatements::default();
        let cases: &[(&str, Result<SqlPrepareAction, &str>)] = &[
            (
                "PREPARE q(bigint, numeric(10, 2)) AS SELECT $1, '$2', $2;",
                Ok(Done("PREPARE")),
            ),
            (
                "EXECUTE q(7, 1.5)",
                Ok(Run(
                    "SELECT CAST((7) AS bigint), '$2', CAST((1.5) AS numeric(10, 2))".into(),
                )),
            ),
            (
                "EXECUTE q(NULL, 'x''y')",
                Ok(Run(
                    "SELECT CAST(NULL AS bigint), '$2', CAST('x''y' AS numeric(10, 2))".into(),
                )),
            ),
            (
                "prepare u as select * from users where user_id = $1",
                Ok(Done("PREPARE")),
            ),
            (
                "EXECUTE u(5.7)",
                Ok(Run("select * from users where user_id = '5.7'".into())),
            ),
            (
                "EXECUTE u(true)",
                Ok(Run("select * from users where user_id = 'true'".into())),
            ),
            ("EXECUTE u(1, 2)", Err("42601")),
            ("EXECUTE u(1 + 1)", Err("0A000")),
            ("EXECUTE nope(1)", Err("26000")),
            ("PREPARE u AS SELECT 1", Err("42P05")),
            ("PREPARE proto AS SELECT 1", Err("42P05")),
            ("DEALLOCATE u", Ok(Done("DEALLOCATE"))),
            ("DEALLOCATE PREPARE u", Err("26000")),
            ("DEALLOCATE proto", Ok(Forget("proto".into()))),
            ("deallocate \"proto\"", Ok(Forget("proto".into()))),
            ("DEALLOCATE \"Proto\"", Err("26000")),
            ("PREPARE p AS SELECT 1; SELECT 2", Err("0A000")),
        ];
        for (sql, want) in cases {
            let got = run(&mut s, sql).map_err(|(code, _)| code);
            let want = match want {
                Ok(Done(t)) => Ok(Done(t)),
                Ok(Run(t)) => Ok(Run(t.clone())),
                Ok(Forget(t)) => Ok(Forget(t.clone())),
                Err(c) => Err(c.to_string()),
            };
            assert_eq!(got, want, "{sql}");
        }
        assert!(s.handle("SELECT 1", |_| false).is_none());
        assert!(s.handle("DEALLOCATE ALL", |_| false).is_none());
        assert!(s.contains("q"));
        s.clear();
        assert!(run(&mut s, "EXECUTE q(1, 2)").is_err_and(|(c, _)| c == "26000"));
    }

    #[test]
    fn first_word_check() {
        for (sql, want) in [
            ("  PREPARE x AS SELECT 1", true),
            ("execute x", true),
            ("Deallocate all", true),
            ("SELECT 1", false),
            ("prepared", false),
        ] {
            assert_eq!(may_be_sql_prepare(sql), want, "{sql}");
        }
    }
}
