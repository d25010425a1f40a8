//! The tables at the top level of a SELECT, UPDATE, DELETE or INSERT: whether the sharded ones
//! are co-located, whether unsharded ones are mixed in, and which shard-key values the WHERE
//! clause pins. Shared by the select and write families.

use pg_query::protobuf as pb;
use pg_query::protobuf::a_const::Val;
use pg_query::NodeEnum;

use super::outer_join;
use super::scan::{is_catalog, node, scan_walk, str_of, Scan};
use super::walk::Walk;
use super::{KeyFacts, KeyValue, Refused, ShardedTables, StatementFacts};

/// A table named in the top level of a statement (FROM, JOIN, target of a write).
#[derive(Debug, Clone)]
pub(super) struct TableRef {
    pub(super) name: String,
    /// The alias, or the table name when there is none (how columns are qualified).
    pub(super) refname: String,
    pub(super) key: Option<String>,
}

/// The state of analysing one statement.
pub(super) struct Ctx<'a> {
    pub(super) tables: &'a ShardedTables,
    pub(super) refs: Vec<TableRef>,
    /// Equality conditions from JOIN … ON / WHERE / USING, as pairs of (qualifier, column).
    pub(super) quals: Vec<&'a pb::Node>,
    pub(super) using: Vec<(usize, Vec<usize>, Vec<String>)>,
    /// The `LATERAL` subqueries of FROM, which may be correlated with the refs by shard key.
    pub(super) laterals: Vec<&'a pb::SelectStmt>,
    /// Expressions besides WHERE whose subqueries may be correlated with the refs by shard key
    /// (a SELECT's output columns).
    pub(super) correlated_scopes: Vec<&'a pb::Node>,
    /// The refs on the nullable side of an outer join (LEFT, RIGHT, FULL): their columns,
    /// the shard key too, may be NULL in rows of any shard.
    pub(super) nullable: Vec<usize>,
    pub(super) refuse: Option<Refused>,
    /// The SELECT whose FROM this is, when it is one: an outer join keeping rows no shard owns
    /// may still merge exactly by its grouping (see `outer_join`).
    pub(super) select: Option<&'a pb::SelectStmt>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(tables: &'a ShardedTables) -> Ctx<'a> {
        Ctx {
            tables,
            refs: Vec::new(),
            quals: Vec::new(),
            using: Vec::new(),
            laterals: Vec::new(),
            correlated_scopes: Vec::new(),
            nullable: Vec::new(),
            select: None,
            refuse: None,
        }
    }
}

impl<'a> Ctx<'a> {
    pub(super) fn refuse(&mut self, why: Refused) {
        if self.refuse.is_none() {
            self.refuse = Some(why);
        }
    }

    pub(super) fn add_range_var(&mut self, rv: &pb::RangeVar) -> usize {
        let name = rv.relname.to_lowercase();
        let schema = rv.schemaname.to_lowercase();
        let key = self.tables.key_of(&schema, &name).map(str::to_string);
        let refname = rv
            .alias
            .as_ref()
            .map(|a| a.aliasname.to_lowercase())
            .unwrap_or_else(|| name.clone());
        self.refs.push(TableRef { name, refname, key });
        self.refs.len() - 1
    }

    /// Walks one FROM item; returns the indexes of the table refs it contains.
    pub(super) fn add_from_item(&mut self, item: &'a pb::Node) -> Vec<usize> {
        match item.node.as_ref() {
            Some(NodeEnum::RangeVar(rv)) => vec![self.add_range_var(rv)],
            Some(NodeEnum::JoinExpr(j)) => {
                let left = j
                    .larg
                    .as_deref()
                    .map(|n| self.add_from_item(n))
                    .unwrap_or_default();
                let right = j
                    .rarg
                    .as_deref()
                    .map(|n| self.add_from_item(n))
                    .unwrap_or_default();
                if let Some(q) = j.quals.as_deref() {
                    self.quals.push(q);
                }
                let (left_null, right_null) = match pb::JoinType::try_from(j.jointype) {
                    Ok(pb::JoinType::JoinLeft) => (false, true),
                    Ok(pb::JoinType::JoinRight) => (true, false),
                    Ok(pb::JoinType::JoinFull) => (true, true),
                    _ => (false, false),
                };
                for (side, null) in [(&left, left_null), (&right, right_null)] {
                    if null {
                        self.nullable.extend(side.iter().copied());
                    }
                }
                self.check_outer_join(j, (&left, left_null), (&right, right_null));
                let cols: Vec<String> = j
                    .using_clause
                    .iter()
                    .filter_map(str_of)
                    .map(str::to_lowercase)
                    .collect();
                if !cols.is_empty() {
                    for &r in &right {
                        self.using.push((r, left.clone(), cols.clone()));
                    }
                }
                left.into_iter().chain(right).collect()
            }
            Some(NodeEnum::RangeSubselect(r)) if r.lateral => {
                if let Some(NodeEnum::SelectStmt(s)) =
                    r.subquery.as_deref().and_then(|n| n.node.as_ref())
                {
                    self.laterals.push(s);
                }
                Vec::new()
            }
            // Subqueries and functions: their tables are found by the whole-tree scan.
            _ => Vec::new(),
        }
    }

    /// Refuses an outer join that keeps every row of a side reading no sharded table (a
    /// function, VALUES, a reference table, rows pgshard wrote in) while matching them with a
    /// sharded table joined directly: every shard would answer each kept row, NULL-extended on
    /// the shards its match is not on — unless the SELECT groups over the kept side with
    /// NULL-skipping aggregates of the matched side, which merge exactly (`outer_join`). (A
    /// derived table over sharded tables on the matched side is run first, which is exact.)
    fn check_outer_join(
        &mut self,
        j: &pb::JoinExpr,
        (left, left_null): (&[usize], bool),
        (right, right_null): (&[usize], bool),
    ) {
        let join = match pb::JoinType::try_from(j.jointype) {
            Ok(pb::JoinType::JoinLeft) => "LEFT",
            Ok(pb::JoinType::JoinRight) => "RIGHT",
            Ok(pb::JoinType::JoinFull) => "FULL",
            _ => return,
        };
        let sharded_ref = |side: &[usize]| {
            side.iter()
                .find(|&&i| self.refs[i].key.is_some())
                .map(|&i| self.refs[i].name.clone())
        };
        let reads_sharded = |n: Option<&pb::Node>| {
            n.and_then(|n| n.node.as_ref()).is_some_and(|n| {
                scan_walk(Walk::new([n.to_ref()]))
                    .relations
                    .iter()
                    .any(|(schema, name)| self.tables.key_of(schema, name).is_some())
            })
        };
        // (kept whole, matched refs, matched) of this join.
        let mut pairs = Vec::new();
        if right_null {
            pairs.push((j.larg.as_deref(), right, j.rarg.as_deref()));
        }
        if left_null {
            pairs.push((j.rarg.as_deref(), left, j.larg.as_deref()));
        }
        let names = |n: Option<&pb::Node>| {
            let mut out = Vec::new();
            if let Some(n) = n {
                outer_join::qualifiers(n, &mut out);
            }
            out
        };
        for (kept, matched_refs, matched) in pairs {
            let Some(table) = sharded_ref(matched_refs).filter(|_| !reads_sharded(kept)) else {
                continue;
            };
            let grouped = self
                .select
                .is_some_and(|s| outer_join::merges_exactly(s, &names(kept), &names(matched)));
            if !grouped {
                self.refuse(Refused::OuterJoinKeepsUnsharded { join, table });
                return;
            }
        }
    }

    /// Which table ref a column reference names, if it is `[qualifier.]column` of a known ref.
    fn column_ref(&self, n: &pb::Node) -> Option<(usize, String)> {
        let cr = match n.node.as_ref()? {
            NodeEnum::ColumnRef(c) => c,
            _ => return None,
        };
        let parts: Vec<&str> = cr.fields.iter().map(str_of).collect::<Option<_>>()?;
        match parts.as_slice() {
            [col] => {
                // Unqualified: only unambiguous with exactly one table at the top level.
                if self.refs.len() == 1 {
                    Some((0, col.to_lowercase()))
                } else {
                    None
                }
            }
            [qual, col] | [_, qual, col] => {
                let qual = qual.to_lowercase();
                let mut found = self
                    .refs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.refname == qual);
                let (i, _) = found.next()?;
                if found.next().is_some() {
                    return None;
                }
                Some((i, col.to_lowercase()))
            }
            _ => None,
        }
    }

    /// The ref whose shard key `n` is.
    pub(super) fn key_column(&self, n: &pb::Node) -> Option<usize> {
        let (i, col) = self.column_ref(strip_casts(n))?;
        (self.refs[i].key.as_deref() == Some(col.as_str())).then_some(i)
    }

    /// Whether `n` is the shard key of a ref no outer join makes NULL: equal values of it
    /// live on one shard (a NULL key of an outer join's nullable side comes from any shard),
    /// so a merge may take its groups and distinct values from each shard as final.
    pub(super) fn is_placed_key(&self, n: &pb::Node) -> bool {
        self.key_column(n)
            .is_some_and(|i| !self.nullable.contains(&i))
    }
}

/// `n` without the casts around it.
pub(super) fn strip_casts(mut n: &pb::Node) -> &pb::Node {
    while let Some(NodeEnum::TypeCast(tc)) = n.node.as_ref() {
        match tc.arg.as_deref() {
            Some(a) => n = a,
            None => break,
        }
    }
    n
}

pub(crate) fn op_name(e: &pb::AExpr) -> Option<&str> {
    match e.name.as_slice() {
        [n] => str_of(n),
        [schema, n] if str_of(schema) == Some("pg_catalog") => str_of(n),
        _ => None,
    }
}

/// True for a NULL constant (`NULL`, `NULL::bigint`): a key value no shard can hold.
pub(super) fn is_null_constant(n: &pb::Node) -> bool {
    matches!(strip_casts(n).node.as_ref(), Some(NodeEnum::AConst(c)) if c.isnull)
}

/// A constant or `$n` usable as a key value.
pub(super) fn key_value(n: &pb::Node) -> Option<KeyValue> {
    let n = strip_casts(n);
    match n.node.as_ref()? {
        NodeEnum::ParamRef(p) => usize::try_from(p.number)
            .ok()
            .filter(|&n| n > 0)
            .map(KeyValue::Param),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            Val::Sval(s) if !c.isnull => Some(KeyValue::Text(s.sval.clone())),
            _ => const_int(c, false).map(KeyValue::Const),
        },
        NodeEnum::AExpr(e)
            if e.kind == pb::AExprKind::AexprOp as i32
                && op_name(e) == Some("-")
                && e.lexpr.is_none() =>
        {
            match node(&e.rexpr) {
                Some(NodeEnum::AConst(c)) => const_int(c, true).map(KeyValue::Const),
                _ => None,
            }
        }
        _ => None,
    }
}

fn const_int(c: &pb::AConst, negate: bool) -> Option<i64> {
    if c.isnull {
        return None;
    }
    let v: i128 = match c.val.as_ref()? {
        Val::Ival(i) => i.ival as i128,
        Val::Fval(f) => f.fval.trim().parse().ok()?,
        Val::Sval(s) => s.sval.trim().parse().ok()?,
        _ => return None,
    };
    let v = if negate { -v } else { v };
    i64::try_from(v).ok()
}

/// The top-level AND conjuncts of a condition.
pub(crate) fn conjuncts<'n>(n: &'n pb::Node, out: &mut Vec<&'n pb::Node>) {
    match n.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) if b.boolop == pb::BoolExprType::AndExpr as i32 => {
            for a in &b.args {
                conjuncts(a, out);
            }
        }
        Some(_) => out.push(n),
        None => {}
    }
}

/// What one conjunct says about a key: (ref index, key facts).
fn conjunct_key(ctx: &Ctx, c: &pb::Node) -> Option<(usize, KeyFacts)> {
    let e = match c.node.as_ref()? {
        NodeEnum::AExpr(e) => e,
        _ => return None,
    };
    if op_name(e) != Some("=") {
        return None;
    }
    let l = e.lexpr.as_deref()?;
    let r = e.rexpr.as_deref()?;
    let kind = e.kind;
    if kind == pb::AExprKind::AexprOp as i32 {
        if let Some(i) = ctx.key_column(l) {
            return key_value(r).map(|v| (i, KeyFacts::Values(vec![v])));
        }
        if let Some(i) = ctx.key_column(r) {
            return key_value(l).map(|v| (i, KeyFacts::Values(vec![v])));
        }
        None
    } else if kind == pb::AExprKind::AexprIn as i32 {
        let i = ctx.key_column(l)?;
        let items = match r.node.as_ref()? {
            NodeEnum::List(list) => &list.items,
            _ => return None,
        };
        let vals: Option<Vec<KeyValue>> = items.iter().map(key_value).collect();
        vals.map(|v| (i, KeyFacts::Values(v)))
    } else if kind == pb::AExprKind::AexprOpAny as i32 {
        let i = ctx.key_column(l)?;
        let r = strip_casts(r);
        match r.node.as_ref()? {
            NodeEnum::ParamRef(p) => usize::try_from(p.number)
                .ok()
                .filter(|&n| n > 0)
                .map(|n| (i, KeyFacts::ArrayParam(n))),
            NodeEnum::AArrayExpr(a) => {
                let vals: Option<Vec<KeyValue>> = a.elements.iter().map(key_value).collect();
                vals.map(|v| (i, KeyFacts::Values(v)))
            }
            NodeEnum::AConst(c) => match c.val.as_ref()? {
                Val::Sval(s) => crate::router::pg_array::decode_text(&s.sval)
                    .ok()?
                    .into_iter()
                    .map(|e| e.map(KeyValue::Text))
                    .collect::<Option<Vec<_>>>()
                    .map(|v| (i, KeyFacts::Values(v))),
                _ => None,
            },
            _ => None,
        }
    } else {
        None
    }
}

/// Pairs of refs whose keys a conjunct equates (`a.key = b.key`).
fn key_equality(ctx: &Ctx, c: &pb::Node) -> Option<(usize, usize)> {
    let e = match c.node.as_ref()? {
        NodeEnum::AExpr(e) if e.kind == pb::AExprKind::AexprOp as i32 => e,
        _ => return None,
    };
    if op_name(e) != Some("=") {
        return None;
    }
    let a = ctx.key_column(e.lexpr.as_deref()?)?;
    let b = ctx.key_column(e.rexpr.as_deref()?)?;
    Some((a, b))
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Checks the top-level tables (co-location, mixing) and finds the key from `where_clause`.
/// `scan` is the scan of the whole statement, for tables outside the top level.
pub(super) fn tables_and_key(
    ctx: &mut Ctx,
    scan: &Scan,
    where_clause: Option<&pb::Node>,
    facts: &mut StatementFacts,
) {
    // Tables anywhere in the statement.
    let mut all_sharded: Vec<String> = Vec::new();
    let mut user_unsharded: Option<String> = None;
    for (schema, name) in &scan.relations {
        if schema.is_empty() && scan.ctes.contains(name) {
            continue;
        }
        if let Some(key) = ctx.tables.key_of(schema, name) {
            facts.sharded = true;
            if facts.shard_key.is_none() {
                facts.shard_key = Some((ctx.tables.display_name(schema, name), key.to_string()));
                facts.key_type = ctx.tables.key_type_of(schema, name);
            }
            all_sharded.push(name.clone());
        } else if ctx.tables.is_reference(schema, name) {
            // A full copy on every shard: joins with anything local to a shard.
            facts.reference = true;
        } else {
            facts.unsharded = true;
            if !is_catalog(schema, name) && user_unsharded.is_none() {
                user_unsharded = Some(name.clone());
            }
        }
    }
    if !facts.sharded {
        return;
    }
    if let Some(u) = user_unsharded {
        let t = all_sharded[0].clone();
        ctx.refuse(Refused::JoinWithUnsharded {
            sharded: t,
            unsharded: u,
        });
        return;
    }
    // Subqueries in WHERE or the output columns, and LATERAL subqueries in FROM, correlated with
    // the outer tables by shard key run whole on each shard.
    let outer: Vec<crate::router::subquery::OuterRef> = ctx
        .refs
        .iter()
        .map(|r| crate::router::subquery::OuterRef {
            refname: &r.refname,
            key: r.key.as_deref(),
        })
        .collect();
    let mut pushed_down = Vec::new();
    for scope in where_clause.iter().chain(&ctx.correlated_scopes) {
        pushed_down.extend(crate::router::subquery::pushed_down_tables(
            scope, &outer, ctx.tables,
        ));
    }
    for s in &ctx.laterals {
        pushed_down.extend(
            crate::router::subquery::lateral_tables(s, &outer, ctx.tables).unwrap_or_default(),
        );
    }
    for t in pushed_down {
        if let Some(p) = all_sharded.iter().position(|x| *x == t) {
            all_sharded.swap_remove(p);
        }
    }
    // Sharded tables outside the top level (subqueries, CTEs, set-operation arms handled by caller).
    let mut top: Vec<String> = ctx
        .refs
        .iter()
        .filter(|r| r.key.is_some())
        .map(|r| r.name.clone())
        .collect();
    for t in &all_sharded {
        match top.iter().position(|x| x == t) {
            Some(p) => {
                top.swap_remove(p);
            }
            None => {
                ctx.refuse(Refused::SubqueryOverSharded { table: t.clone() });
                return;
            }
        }
    }
    // Co-location of the sharded tables at the top level.
    let sharded_refs: Vec<usize> = (0..ctx.refs.len())
        .filter(|&i| ctx.refs[i].key.is_some())
        .collect();
    let mut conds: Vec<&pb::Node> = Vec::new();
    for q in ctx.quals.clone() {
        conjuncts(q, &mut conds);
    }
    if let Some(w) = where_clause {
        conjuncts(w, &mut conds);
    }
    let mut parent: Vec<usize> = (0..ctx.refs.len()).collect();
    if sharded_refs.len() > 1 {
        for c in &conds {
            if let Some((a, b)) = key_equality(ctx, c) {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                parent[ra] = rb;
            }
        }
        for (r, left, cols) in ctx.using.clone() {
            let Some(rkey) = ctx.refs[r].key.clone() else {
                continue;
            };
            if !cols.contains(&rkey) {
                continue;
            }
            for l in left {
                if ctx.refs[l].key.as_deref() == Some(rkey.as_str()) {
                    let (ra, rb) = (find(&mut parent, l), find(&mut parent, r));
                    parent[ra] = rb;
                }
            }
        }
        let root = find(&mut parent, sharded_refs[0]);
        for &i in &sharded_refs[1..] {
            if find(&mut parent, i) != root {
                let (a, b) = (
                    ctx.refs[sharded_refs[0]].name.clone(),
                    ctx.refs[i].name.clone(),
                );
                ctx.refuse(Refused::NotCoLocated { a, b });
                return;
            }
        }
    }
    // The key: the first WHERE conjunct that pins a sharded ref's key (all refs are co-located).
    if let Some(w) = where_clause {
        let mut cs = Vec::new();
        conjuncts(w, &mut cs);
        for c in cs {
            if let Some((_, k)) = conjunct_key(ctx, c) {
                facts.key = k;
                break;
            }
        }
    }
}

/// Marks the tables of a statement without top-level analysis (DDL, COPY, utility commands).
pub(super) fn mark_tables(scan: &Scan, tables: &ShardedTables, facts: &mut StatementFacts) {
    for (schema, name) in &scan.relations {
        if schema.is_empty() && scan.ctes.contains(name) {
            continue;
        }
        if let Some(key) = tables.key_of(schema, name) {
            facts.sharded = true;
            if facts.shard_key.is_none() {
                facts.shard_key = Some((tables.display_name(schema, name), key.to_string()));
                facts.key_type = tables.key_type_of(schema, name);
            }
        } else if tables.is_reference(schema, name) {
            facts.reference = true;
        } else {
            facts.unsharded = true;
        }
    }
}

/// The first table named that is neither sharded, nor a reference table, nor a catalog: one that
/// lives only on the first shard.
pub(super) fn first_local_table(scan: &Scan, tables: &ShardedTables) -> Option<String> {
    scan.relations
        .iter()
        .filter(|(schema, name)| !(schema.is_empty() && scan.ctes.contains(name)))
        .find(|(schema, name)| {
            tables.key_of(schema, name).is_none()
                && !tables.is_reference(schema, name)
                && !is_catalog(schema, name)
        })
        .map(|(_, name)| name.clone())
}

/// The first table named that is sharded or a reference table (lives on every shard).
pub(super) fn first_everywhere_table(scan: &Scan, tables: &ShardedTables) -> Option<String> {
    scan.relations
        .iter()
        .filter(|(schema, name)| !(schema.is_empty() && scan.ctes.contains(name)))
        .find(|(schema, name)| {
            tables.key_of(schema, name).is_some() || tables.is_reference(schema, name)
        })
        .map(|(_, name)| name.clone())
}
