//! The statements the portals of one extended batch are bound to, by portal name. A batch binds
//! one portal or a few (most often the unnamed one, again and again), so they are kept in a short
//! list on the stack and searched in turn: no hash table is allocated per batch. A batch binding
//! many different portals moves them to a hash map, so a long pipeline is never searched in turn.

use std::sync::Arc;

use smallvec::SmallVec;

use super::session::Prepared;
use crate::fast_hash::FastMap;

/// Distinct portals kept in the list before they move to a map.
const FEW: usize = 8;

/// Portal name → the statement a Bind of this batch bound it to (the latest Bind wins).
pub enum BatchPortals {
    Few(SmallVec<[(String, Arc<Prepared>); 2]>),
    Many(FastMap<String, Arc<Prepared>>),
}

impl Default for BatchPortals {
    fn default() -> Self {
        BatchPortals::Few(SmallVec::new())
    }
}

impl BatchPortals {
    /// Binds `portal` to `statement`, replacing what an earlier Bind of the batch bound it to.
    pub fn insert(&mut self, portal: String, statement: Arc<Prepared>) {
        match self {
            BatchPortals::Few(few) => {
                if let Some(slot) = few.iter_mut().find(|(p, _)| *p == portal) {
                    slot.1 = statement;
                } else if few.len() < FEW {
                    few.push((portal, statement));
                } else {
                    let mut many: FastMap<String, Arc<Prepared>> = few.drain(..).collect();
                    many.insert(portal, statement);
                    *self = BatchPortals::Many(many);
                }
            }
            BatchPortals::Many(many) => {
                many.insert(portal, statement);
            }
        }
    }

    /// The statement `portal` is bound to in this batch.
    pub fn get(&self, portal: &str) -> Option<&Arc<Prepared>> {
        match self {
            BatchPortals::Few(few) => few.iter().find(|(p, _)| p == portal).map(|(_, st)| st),
            BatchPortals::Many(many) => many.get(portal),
        }
    }

    /// True when a Bind of this batch bound `portal`.
    pub fn contains_key(&self, portal: &str) -> bool {
        self.get(portal).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(sql: &str) -> Arc<Prepared> {
        Arc::new(Prepared {
            sql: sql.to_string(),
            param_types: Vec::new(),
            facts: Arc::from(Vec::new()),
            server_name: String::new(),
        })
    }

    #[test]
    fn the_latest_bind_of_a_portal_wins_few_or_many() {
        for portals in [1usize, 3, FEW, FEW + 1, 40] {
            let mut map = BatchPortals::default();
            for round in 0..2 {
                for i in 0..portals {
                    map.insert(format!("p{i}"), statement(&format!("{round}/{i}")));
                }
            }
            for i in 0..portals {
                let st = map.get(&format!("p{i}")).map(|st| st.sql.as_str());
                assert_eq!(
                    st,
                    Some(format!("1/{i}").as_str()),
                    "{portals} portals, p{i}"
                );
            }
            assert!(!map.contains_key("other"));
            assert_eq!(
                matches!(map, BatchPortals::Many(_)),
                portals > FEW,
                "{portals}"
            );
        }
    }
}
