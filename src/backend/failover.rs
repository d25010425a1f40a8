//! Which server of a shard is its primary, and which are fenced, decided from the catalog's record
//! and the monitors' latest samples alone (a pure function, so every case is unit-tested).
//!
//! The rules:
//! - A server claims to be primary when it answers and is not in recovery. Only timelines tell
//!   claimants apart: a promotion always starts a higher timeline.
//! - The agreed primary is the recorded one (or, before any record exists, the one writes go to
//!   now). The floor is the highest timeline known for it: the record's, or its own sample's;
//!   never below 1, the timeline every cluster starts on.
//! - A claimant on a timeline above the floor replaces the agreed primary — whether or not the old
//!   one still answers: a promoted server's history has forked from the old one's, so writes the
//!   old one keeps accepting would be lost anyway. Two claimants on the same highest timeline are
//!   ambiguous: neither is chosen, both are fenced, writes stay where they were.
//! - Any other claimant (a timeline at or below the floor) is fenced, with the reason.
//! - A new primary (or a higher timeline for the same one) must be recorded in the catalog with a
//!   compare-and-set before anyone routes to it; the caller does that and decides again with the
//!   row it got back.

use std::collections::BTreeMap;

use super::topology::Role;

/// The catalog's row for a shard, resolved against the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The recorded server's index, or `None` when its address is not in this proxy's config.
    pub index: Option<u16>,
    pub timeline: u32,
}

/// What the monitors last learnt about one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub index: u16,
    /// Answered its last sample.
    pub healthy: bool,
    /// From the last sample that succeeded: `Some(true)` in recovery, `Some(false)` a primary,
    /// `None` never sampled.
    pub in_recovery: Option<bool>,
    /// From the last sample that succeeded.
    pub timeline: Option<u32>,
}

/// One shard as the decision sees it.
#[derive(Debug, Clone)]
pub struct ShardView {
    pub recorded: Option<Recorded>,
    /// The server writes go to now.
    pub current: u16,
    pub servers: Vec<Observed>,
}

/// What to do with a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The role of every server in the view.
    pub roles: BTreeMap<u16, Role>,
    /// A (server, timeline) to record with a compare-and-set before routing writes to it.
    pub record: Option<(u16, u32)>,
}

/// Decides one shard's roles; `name(index)` names a server in fencing reasons.
pub fn decide(view: &ShardView, name: impl Fn(u16) -> String) -> Decision {
    let agreed = match view.recorded {
        Some(r) => r.index,
        None => Some(view.current),
    };
    let observed = |i: u16| view.servers.iter().find(|s| s.index == i);
    let claims = |s: &&Observed| s.healthy && s.in_recovery == Some(false) && s.timeline.is_some();
    let agreed_timeline = agreed.and_then(observed).and_then(|s| s.timeline);
    let recorded_timeline = view.recorded.map(|r| r.timeline).unwrap_or(0);
    let floor = recorded_timeline.max(agreed_timeline.unwrap_or(0)).max(1);

    let claimants: Vec<&Observed> = view.servers.iter().filter(claims).collect();
    let highest = claimants.iter().filter_map(|s| s.timeline).max();
    let on_highest: Vec<u16> = claimants
        .iter()
        .filter(|s| s.timeline == highest)
        .map(|s| s.index)
        .collect();

    // The primary after this decision and the timeline it is agreed on.
    let mut primary = agreed;
    let mut primary_timeline = floor;
    let mut record = None;
    let mut ambiguous = Vec::new();
    if let Some(top) = highest {
        let agreed_on_top = agreed.filter(|a| on_highest.contains(a) && top >= recorded_timeline);
        if let Some(a) = agreed_on_top {
            // The agreed primary is itself the newest claimant: record a newer timeline of it.
            if view.recorded.is_none_or(|r| r.timeline < top) {
                record = Some((a, top));
            }
            primary_timeline = top;
        } else if top > floor {
            if let [only] = on_highest.as_slice() {
                primary = Some(*only);
                primary_timeline = top;
                record = Some((*only, top));
            } else {
                ambiguous = on_highest.clone();
            }
        }
    }

    // A new server to record: not routed to until the catalog agrees.
    let pending = record.map(|r| r.0).filter(|&i| Some(i) != agreed);
    let mut roles = BTreeMap::new();
    for s in &view.servers {
        let role = match (s.in_recovery, s.timeline) {
            (None, _) => Role::Unknown,
            (Some(true), _) => Role::Replica,
            (Some(false), t)
                if Some(s.index) == primary
                    && pending.is_none()
                    && t.unwrap_or(0) >= primary_timeline =>
            {
                Role::Primary
            }
            (Some(false), t) => {
                let t = t.unwrap_or(0);
                let reason = if ambiguous.contains(&s.index) {
                    format!(
                        "claims to be primary on timeline {t}, as does {}; neither is used until one of them is demoted",
                        ambiguous
                            .iter()
                            .filter(|&&i| i != s.index)
                            .map(|&i| name(i))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else if Some(s.index) == primary && pending.is_none() {
                    format!("claims to be primary on timeline {t}, older than the timeline {primary_timeline} recorded for it")
                } else if pending == Some(s.index) {
                    format!("claims to be primary on timeline {t}, newer than the recorded {floor}, but is not recorded in the catalog yet")
                } else {
                    let holder = match primary {
                        Some(p) => format!("{} on timeline {primary_timeline}", name(p)),
                        None => format!("a server on timeline {primary_timeline} that this proxy's config does not list"),
                    };
                    if t < primary_timeline {
                        format!("claims to be primary on timeline {t}, older than the shard's primary, {holder}")
                    } else {
                        format!("claims to be primary on timeline {t}, but the shard's primary is {holder}")
                    }
                };
                Role::Fenced { reason }
            }
        };
        roles.insert(s.index, role);
    }
    Decision { roles, record }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: u16) -> String {
        format!("server {i}")
    }

    fn primary(index: u16, timeline: u32) -> Observed {
        Observed {
            index,
            healthy: true,
            in_recovery: Some(false),
            timeline: Some(timeline),
        }
    }

    fn replica(index: u16, timeline: u32) -> Observed {
        Observed {
            index,
            healthy: true,
            in_recovery: Some(true),
            timeline: Some(timeline),
        }
    }

    fn down(mut s: Observed) -> Observed {
        s.healthy = false;
        s
    }

    fn recorded(index: u16, timeline: u32) -> Option<Recorded> {
        Some(Recorded {
            index: Some(index),
            timeline,
        })
    }

    fn fenced(d: &Decision, i: u16) -> String {
        match &d.roles[&i] {
            Role::Fenced { reason } => reason.clone(),
            other => panic!("server {i} is {other:?}, not fenced"),
        }
    }

    #[test]
    fn first_sight_of_the_configured_primary_is_recorded() {
        let view = ShardView {
            recorded: None,
            current: 0,
            servers: vec![primary(0, 1), replica(1, 1)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, Some((0, 1)));
        assert_eq!(d.roles[&0], Role::Primary);
        assert_eq!(d.roles[&1], Role::Replica);
    }

    #[test]
    fn steady_state_records_nothing() {
        let view = ShardView {
            recorded: recorded(0, 1),
            current: 0,
            servers: vec![primary(0, 1), replica(1, 1), down(replica(2, 1))],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert_eq!(d.roles[&0], Role::Primary);
        assert_eq!(d.roles[&2], Role::Replica);
    }

    #[test]
    fn a_promoted_replica_replaces_a_dead_primary_once_recorded() {
        let mut view = ShardView {
            recorded: recorded(0, 1),
            current: 0,
            servers: vec![down(primary(0, 1)), primary(1, 2)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, Some((1, 2)));
        // Not routed to before the catalog agrees.
        assert!(fenced(&d, 1).contains("not recorded"), "{d:?}");
        view.recorded = recorded(1, 2);
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert_eq!(d.roles[&1], Role::Primary);
        // The dead old primary's last claim is older than the agreed one.
        assert!(fenced(&d, 0).contains("timeline 1, older"), "{d:?}");
    }

    #[test]
    fn an_old_primary_coming_back_is_fenced() {
        let view = ShardView {
            recorded: recorded(1, 2),
            current: 1,
            servers: vec![primary(0, 1), primary(1, 2)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert_eq!(d.roles[&1], Role::Primary);
        let reason = fenced(&d, 0);
        assert!(
            reason.contains("timeline 1") && reason.contains("server 1 on timeline 2"),
            "{reason}"
        );
    }

    #[test]
    fn the_old_primary_is_fenced_even_while_the_new_one_is_down() {
        let view = ShardView {
            recorded: recorded(1, 2),
            current: 1,
            servers: vec![primary(0, 1), down(primary(1, 2))],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert!(matches!(d.roles[&0], Role::Fenced { .. }));
    }

    #[test]
    fn a_second_primary_on_the_same_timeline_is_fenced() {
        let view = ShardView {
            recorded: recorded(0, 3),
            current: 0,
            servers: vec![primary(0, 3), primary(1, 3)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert_eq!(d.roles[&0], Role::Primary);
        assert!(fenced(&d, 1).contains("but the shard's primary is server 0"));
    }

    #[test]
    fn without_a_record_a_stray_primary_on_timeline_one_is_not_trusted() {
        // The configured primary was never reached; a "replica" claims primary on timeline 1,
        // which no promotion can produce.
        let view = ShardView {
            recorded: None,
            current: 0,
            servers: vec![
                Observed {
                    index: 0,
                    healthy: false,
                    in_recovery: None,
                    timeline: None,
                },
                primary(1, 1),
            ],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert_eq!(d.roles[&0], Role::Unknown);
        assert!(matches!(d.roles[&1], Role::Fenced { .. }));
    }

    #[test]
    fn a_promotion_wins_even_while_the_old_primary_answers() {
        let view = ShardView {
            recorded: recorded(0, 1),
            current: 0,
            servers: vec![primary(0, 1), primary(1, 2)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, Some((1, 2)));
    }

    #[test]
    fn two_claimants_on_the_same_new_timeline_are_both_fenced() {
        let view = ShardView {
            recorded: recorded(0, 1),
            current: 0,
            servers: vec![down(primary(0, 1)), primary(1, 2), primary(2, 2)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert!(fenced(&d, 1).contains("as does server 2"));
        assert!(fenced(&d, 2).contains("as does server 1"));
    }

    #[test]
    fn the_highest_of_several_timelines_wins() {
        let view = ShardView {
            recorded: recorded(0, 1),
            current: 0,
            servers: vec![down(primary(0, 1)), primary(1, 2), primary(2, 3)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, Some((2, 3)));
        assert!(matches!(d.roles[&1], Role::Fenced { .. }));
    }

    #[test]
    fn the_recorded_primary_on_a_newer_timeline_is_recorded_again() {
        let view = ShardView {
            recorded: recorded(0, 1),
            current: 0,
            servers: vec![primary(0, 4)],
        };
        assert_eq!(decide(&view, name).record, Some((0, 4)));
    }

    #[test]
    fn a_record_naming_an_unknown_server_still_sets_the_floor() {
        let view = ShardView {
            recorded: Some(Recorded {
                index: None,
                timeline: 3,
            }),
            current: 0,
            servers: vec![primary(0, 3), primary(1, 4)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, Some((1, 4)));
        assert!(fenced(&d, 0).contains("older than"));
        let view = ShardView {
            recorded: Some(Recorded {
                index: None,
                timeline: 3,
            }),
            current: 0,
            servers: vec![primary(0, 2)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert!(fenced(&d, 0).contains("does not list"));
    }

    #[test]
    fn the_recorded_primary_back_on_an_older_timeline_is_fenced() {
        let view = ShardView {
            recorded: recorded(0, 3),
            current: 0,
            servers: vec![primary(0, 2), replica(1, 3)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert!(fenced(&d, 0).contains("older than the timeline 3 recorded for it"));
    }

    #[test]
    fn a_demoted_recorded_primary_is_a_replica_and_nothing_is_recorded() {
        let view = ShardView {
            recorded: recorded(0, 2),
            current: 0,
            servers: vec![replica(0, 2), replica(1, 2)],
        };
        let d = decide(&view, name);
        assert_eq!(d.record, None);
        assert_eq!(d.roles[&0], Role::Replica);
    }
}
