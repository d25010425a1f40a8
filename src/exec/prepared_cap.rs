//! Keeps a server connection within `pool.max_prepared_statements`: before an exchange prepares
//! new server-side statements, the least recently used ones it does not need are closed (Close
//! 'S', answered by CloseComplete that only the proxy sees), in the same write. A statement
//! closed this way is prepared again when next used, as on any connection that lacks it.

use std::collections::HashSet;

use super::exchange::{Expect, Step};
use crate::backend::ServerConn;
use crate::wire::frontend::{self as fe, Target};
use crate::wire::read::BodyReader;

/// The server-side statements `steps` prepare (in order, once each) and every one they use.
pub fn statements_named(steps: &[Step]) -> (Vec<String>, HashSet<String>) {
    let mut new = Vec::new();
    let mut used = HashSet::new();
    for step in steps {
        let Step::Send { frame, expect, .. } = step else {
            continue;
        };
        let name = match (frame.tag, expect) {
            (
                fe::PARSE,
                Expect::Parse {
                    register: Some(name),
                },
            ) => {
                if !new.contains(name) {
                    new.push(name.clone());
                }
                Some(name.clone())
            }
            (fe::BIND, _) => bound_statement(&frame.body),
            (fe::DESCRIBE, _) => Target::decode(&frame.body, "Describe")
                .ok()
                .filter(|t| t.kind == b'S')
                .map(|t| t.name),
            _ => None,
        };
        used.extend(name.filter(|n| !n.is_empty()));
    }
    (new, used)
}

/// True for a step that prepares a server-side statement the connection is to remember.
fn prepares(step: &Step) -> bool {
    matches!(
        step,
        Step::Send {
            expect: Expect::Parse { register: Some(_) },
            ..
        }
    )
}

/// The named statement a Bind or a statement Describe uses, borrowed from its body (bytes: the
/// prepared set is keyed by them, so no UTF-8 check on every exchange).
fn used_name(step: &Step) -> Option<&[u8]> {
    let Step::Send { frame, .. } = step else {
        return None;
    };
    let body = &frame.body[..];
    let name = match frame.tag {
        // Bind: the portal's name, then the statement's.
        fe::BIND => cstr_at(body, body.iter().position(|b| *b == 0)? + 1)?,
        // Describe: 'S' or 'P', then the name.
        fe::DESCRIBE if body.first() == Some(&b'S') => cstr_at(body, 1)?,
        _ => return None,
    };
    (!name.is_empty()).then_some(name)
}

/// The NUL-terminated string starting at `at` in `body`, without its NUL.
fn cstr_at(body: &[u8], at: usize) -> Option<&[u8]> {
    let rest = body.get(at..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    rest.get(..end)
}

/// The statement a Bind names (its second string).
fn bound_statement(body: &[u8]) -> Option<String> {
    let mut r = BodyReader::new(body, "Bind");
    r.cstr().ok()?;
    r.cstr().ok()
}

/// Puts Close messages for the statements `conn` must give up first in `steps`, and marks the
/// ones `steps` use as just used. Each is forgotten once its CloseComplete arrives (a Close the
/// server skips after an error leaves the statement known, to be closed another time).
pub fn add_evictions(conn: &mut ServerConn, steps: &mut Vec<Step>) {
    if !steps.iter().any(prepares) {
        // Most exchanges prepare nothing (a known statement bound and run): mark what they use,
        // with no names copied and no sets built.
        for step in steps.iter() {
            if let Some(name) = used_name(step) {
                conn.prepared.touch(name);
            }
        }
        return;
    }
    let (new, used) = statements_named(steps);
    for name in &used {
        conn.prepared.touch(name.as_bytes());
    }
    if new.is_empty() {
        return;
    }
    let closes: Vec<Step> = conn
        .prepared
        .victims(new.len(), &used)
        .into_iter()
        .map(|name| Step::Send {
            frame: Target {
                kind: b'S',
                name: name.clone(),
            }
            .encode(fe::CLOSE),
            expect: Expect::CloseStatement { unregister: name },
            forward: false,
        })
        .collect();
    steps.splice(0..0, closes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frontend::{Bind, Parse};

    fn parse(name: &str, register: bool) -> Step {
        Step::Send {
            frame: Parse {
                name: name.into(),
                query: "SELECT 1".into(),
                param_types: Vec::new(),
            }
            .encode(),
            expect: Expect::Parse {
                register: register.then(|| name.to_string()),
            },
            forward: false,
        }
    }

    fn bind(statement: &str) -> Step {
        Step::Send {
            frame: Bind {
                portal: "p".into(),
                statement: statement.into(),
                param_formats: Vec::new(),
                params: Vec::new(),
                result_formats: Vec::new(),
            }
            .encode(),
            expect: Expect::Bind,
            forward: true,
        }
    }

    fn describe(kind: u8, name: &str) -> Step {
        Step::Send {
            frame: Target {
                kind,
                name: name.into(),
            }
            .encode(fe::DESCRIBE),
            expect: Expect::DescribeStatement,
            forward: true,
        }
    }

    #[test]
    fn names_prepared_and_used_by_steps() {
        let cases: Vec<(Vec<Step>, Vec<&str>, Vec<&str>)> = vec![
            (vec![parse("a", true), bind("a")], vec!["a"], vec!["a"]),
            (vec![bind("b"), describe(b'S', "c")], vec![], vec!["b", "c"]),
            (vec![parse("", false), bind("")], vec![], vec![]),
            (
                vec![parse("a", true), parse("a", true), describe(b'P', "p")],
                vec!["a"],
                vec!["a"],
            ),
            (
                vec![
                    parse("x", true),
                    Step::Synthetic(fe::sync()),
                    parse("y", true),
                ],
                vec!["x", "y"],
                vec!["x", "y"],
            ),
        ];
        for (steps, want_new, want_used) in cases {
            let (new, used) = statements_named(&steps);
            assert_eq!(new, want_new);
            let want: HashSet<String> = want_used.iter().map(|s| s.to_string()).collect();
            assert_eq!(used, want);
        }
    }
}
