//! NOTIFYs and LISTEN/UNLISTENs a client makes inside a transaction block take effect when the
//! block commits, as in Postgres: the proxy keeps them here, follows the block's savepoints (a
//! `ROLLBACK TO` drops what came after the savepoint, a `RELEASE` keeps it), and hands them over
//! at COMMIT or forgets them at ROLLBACK. Queued NOTIFYs are then sent on the channel shard in
//! one transaction, so Postgres's own rules (order, duplicates folded) apply there. Pure data.

use crate::txn::statement::SavepointOp;

/// One action that waits for the block's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Notify {
        channel: String,
        payload: String,
    },
    Listen(String),
    /// `None`: `UNLISTEN *`.
    Unlisten(Option<String>),
}

/// The block's actions, in frames: the block's own, then one per open savepoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// `(savepoint name, actions since it)`; the first frame (no name) is the block's.
    frames: Vec<(Option<String>, Vec<Action>)>,
}

impl Pending {
    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.iter().all(|(_, a)| a.is_empty())
    }

    /// Queues an action of the open block.
    pub fn push(&mut self, action: Action) {
        if self.frames.is_empty() {
            self.frames.push((None, Vec::new()));
        }
        if let Some((_, actions)) = self.frames.last_mut() {
            actions.push(action);
        }
    }

    /// Follows a savepoint statement that succeeded.
    pub fn savepoint(&mut self, op: &SavepointOp) {
        if self.frames.is_empty() {
            self.frames.push((None, Vec::new()));
        }
        let find = |frames: &[(Option<String>, Vec<Action>)], name: &str| {
            frames.iter().rposition(|(n, _)| n.as_deref() == Some(name))
        };
        match op {
            SavepointOp::Define(name) => self.frames.push((Some(name.clone()), Vec::new())),
            SavepointOp::Release(name) => {
                if let Some(at) = find(&self.frames, name) {
                    let released: Vec<Action> =
                        self.frames.drain(at..).flat_map(|(_, a)| a).collect();
                    if let Some((_, actions)) = self.frames.last_mut() {
                        actions.extend(released);
                    }
                }
            }
            SavepointOp::RollbackTo(name) => {
                if let Some(at) = find(&self.frames, name) {
                    self.frames.truncate(at + 1);
                    if let Some((_, actions)) = self.frames.last_mut() {
                        actions.clear();
                    }
                }
            }
        }
    }

    /// The block ended: its actions in order when it committed, nothing when it rolled back.
    pub fn finish(&mut self, committed: bool) -> Vec<Action> {
        let frames = std::mem::take(&mut self.frames);
        if !committed {
            return Vec::new();
        }
        frames.into_iter().flat_map(|(_, a)| a).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Action {
        Action::Notify {
            channel: "c".into(),
            payload: p.into(),
        }
    }

    #[test]
    fn savepoints_decide_what_commits() {
        use SavepointOp::*;
        enum Step {
            Push(&'static str),
            Sp(SavepointOp),
        }
        use Step::*;
        // (steps, committed, payloads delivered)
        let cases: Vec<(Vec<Step>, bool, Vec<&str>)> = vec![
            (vec![Push("a"), Push("b")], true, vec!["a", "b"]),
            (vec![Push("a"), Push("b")], false, vec![]),
            (
                vec![
                    Push("a"),
                    Sp(Define("s".into())),
                    Push("b"),
                    Sp(RollbackTo("s".into())),
                    Push("c"),
                ],
                true,
                vec!["a", "c"],
            ),
            (
                vec![
                    Sp(Define("s".into())),
                    Push("a"),
                    Sp(Release("s".into())),
                    Sp(Define("t".into())),
                    Sp(RollbackTo("t".into())),
                ],
                true,
                vec!["a"],
            ),
            (
                vec![
                    Sp(Define("s".into())),
                    Push("a"),
                    Sp(Define("t".into())),
                    Push("b"),
                    Sp(RollbackTo("s".into())),
                    Push("c"),
                ],
                true,
                vec!["c"],
            ),
            (
                vec![
                    Sp(Define("s".into())),
                    Push("a"),
                    Sp(Define("s".into())),
                    Push("b"),
                    Sp(RollbackTo("s".into())),
                ],
                true,
                vec!["a"],
            ),
            (
                vec![Push("a"), Sp(RollbackTo("nope".into()))],
                true,
                vec!["a"],
            ),
        ];
        for (i, (steps, committed, want)) in cases.into_iter().enumerate() {
            let mut p = Pending::default();
            for s in steps {
                match s {
                    Push(x) => p.push(n(x)),
                    Sp(op) => p.savepoint(&op),
                }
            }
            let got: Vec<Action> = p.finish(committed);
            let want: Vec<Action> = want.into_iter().map(n).collect();
            assert_eq!(got, want, "case {i}");
            assert!(p.is_empty());
        }
    }
}
