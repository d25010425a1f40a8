//! Table names as Postgres resolves them: which schema an unqualified name in a statement means
//! under the session's `search_path`, so `invoices` is `billing.invoices` (sharded) for one
//! session and `public.invoices` (not sharded) for another — and the sharded and reference
//! tables of the configuration, keyed by schema and name.
//!
//! What the proxy knows of a shard's catalog: the configured tables (assumed to exist where the
//! configuration says) plus every relation the shards hold under one of their names in another
//! schema, read at start-up and after DDL ([`Shadows`]). Postgres takes the first schema on the
//! path holding a relation of that name; so does [`ShardedTables::resolve`], over that
//! knowledge.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::ShardedTableConfig;
use crate::router::KeyType;
use crate::sql_text::quote_ident;

/// The schema Postgres puts tables in when none is named and nothing else is set.
pub const PUBLIC: &str = "public";

/// `(schema, name)` of one relation, both as the catalog spells them (lowercase for names written
/// without quotes).
pub type QualifiedName = (String, String);

/// Splits a configured table name (`billing.invoices`, or `invoices` for `public.invoices`) into
/// schema and name, lowercased as Postgres folds unquoted identifiers.
pub fn split_config_name(name: &str) -> QualifiedName {
    let lower = name.to_lowercase();
    match lower.split_once('.') {
        Some((schema, table)) => (schema.to_string(), table.to_string()),
        None => (PUBLIC.to_string(), lower),
    }
}

/// A configured table name as SQL text that names exactly that table whatever the session's
/// search_path (`billing.invoices`, `public.invoices`).
pub fn quote_config_name(name: &str) -> String {
    let (schema, table) = split_config_name(name);
    quote_qualified(&schema, &table)
}

/// `schema.name` quoted for SQL.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// The schemas an unqualified table name is looked up in, in order, with `$user` already
/// replaced by the role's name: what `current_schemas(false)` would list, less the schemas that
/// do not exist (which simply hold nothing).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchPath {
    schemas: Vec<String>,
    /// `cache_key`, made once: every statement's route-cache lookup starts with it.
    key: String,
}

impl Default for SearchPath {
    /// Postgres's default, `"$user", public`, for a role whose schema does not exist.
    fn default() -> SearchPath {
        SearchPath::new(vec![PUBLIC.to_string()])
    }
}

impl SearchPath {
    /// A path of these schemas (`$user` replaced by the caller).
    pub fn new(schemas: Vec<String>) -> SearchPath {
        let mut key = schemas
            .iter()
            .map(|s| quote_ident(s))
            .collect::<Vec<_>>()
            .join(",");
        key.push('\u{0}');
        SearchPath { schemas, key }
    }

    /// The path a `search_path` setting holds, given as the SQL value the session replays
    /// (`'billing', 'public'`, `DEFAULT`): each string is one schema, exactly as `SET` reads
    /// it. `role` replaces `$user`. `None` when the value cannot be read.
    pub fn from_setting(sql_value: &str, role: &str) -> Option<SearchPath> {
        let items = sql_list(sql_value)?;
        if let [SqlItem::Word(w)] = items.as_slice() {
            if w.eq_ignore_ascii_case("default") {
                return Some(SearchPath::with_role(&["$user", PUBLIC], role));
            }
        }
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            match item {
                SqlItem::Str(s) => names.push(s),
                // SET folds a bare word as an unquoted identifier.
                SqlItem::Word(w) => names.push(w.to_lowercase()),
            }
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Some(SearchPath::with_role(&refs, role))
    }

    /// The default path (`"$user", public`) of `role`.
    pub fn default_for(role: &str) -> SearchPath {
        SearchPath::with_role(&["$user", PUBLIC], role)
    }

    fn with_role(names: &[&str], role: &str) -> SearchPath {
        let schemas = names
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| {
                if *n == "$user" {
                    role.to_string()
                } else {
                    n.to_string()
                }
            })
            .filter(|n| !n.is_empty())
            .collect();
        SearchPath::new(schemas)
    }

    /// The schemas, in lookup order.
    pub fn schemas(&self) -> &[String] {
        &self.schemas
    }

    /// The first schema, where Postgres creates a table named without a schema.
    pub fn first(&self) -> Option<&str> {
        self.schemas.first().map(String::as_str)
    }

    /// A short text that differs between any two paths (ending in a NUL, which no SQL text
    /// holds): the start of the route cache's key.
    pub fn cache_key(&self) -> &str {
        &self.key
    }
}

/// A `search_path` given as one string (a startup option, `set_config`'s value): the schemas it
/// lists, split and folded as Postgres's `SplitIdentifierString` does (commas, double quotes
/// keep case, unquoted names are lowercased), written as the SQL value `SET` reads back as the
/// same path (`'billing', 'Public'`). `None` when the string is malformed (Postgres refuses it).
pub fn setting_sql_from_string(value: &str) -> Option<String> {
    let names = split_identifier_string(value)?;
    if names.is_empty() {
        return Some("''".into());
    }
    Some(
        names
            .iter()
            .map(|n| crate::sql_text::quote_literal(n))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The SQL value that `SET name TO …` reads back as the string `value` (given to `set_config`
/// or as a startup option): a search_path string lists schemas, which SET takes one per literal.
pub fn string_setting_sql(name: &str, value: &str) -> String {
    if name == "search_path" {
        if let Some(sql) = setting_sql_from_string(value) {
            return sql;
        }
    }
    crate::sql_text::quote_literal(value)
}

/// Postgres's `SplitIdentifierString` with a comma separator.
pub fn split_identifier_string(value: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    skip_ws(&mut chars);
    if chars.peek().is_none() {
        return Some(out);
    }
    loop {
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    c => name.push(c),
                }
            }
            if name.is_empty() {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() || c == '"' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            if name.is_empty() {
                return None;
            }
            name = name.to_lowercase();
        }
        out.push(name);
        skip_ws(&mut chars);
        match chars.next() {
            None => return Some(out),
            Some(',') => skip_ws(&mut chars),
            Some(_) => return None,
        }
    }
}

enum SqlItem {
    Str(String),
    Word(String),
}

/// Reads a comma-separated list of SQL string literals (`'a''b'`, `E'…'`) and bare words.
fn sql_list(text: &str) -> Option<Vec<SqlItem>> {
    let mut out = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let escaped = matches!(chars.peek(), Some('E' | 'e')) && {
            let mut look = chars.clone();
            look.next();
            look.peek() == Some(&'\'')
        };
        if escaped {
            chars.next();
        }
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    '\'' => break,
                    '\\' if escaped => s.push(chars.next()?),
                    c => s.push(c),
                }
            }
            out.push(SqlItem::Str(s));
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            if w.is_empty() {
                return None;
            }
            out.push(SqlItem::Word(w));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Relations the shards hold under the name of a configured table but in another schema (a
/// `public.invoices` beside the sharded `billing.invoices`): they take the name first when their
/// schema comes first on the path.
pub type Shadows = HashSet<QualifiedName>;

#[derive(Debug, Clone, Copy)]
struct Sharded {
    key_index: usize,
    key_type: KeyType,
}

#[derive(Debug, Default, Clone)]
struct Config {
    /// Key columns, lowercased; `Sharded::key_index` points here.
    keys: Vec<String>,
    sharded: HashMap<QualifiedName, Sharded>,
    reference: HashSet<QualifiedName>,
    /// Every name (without schema) of a sharded or reference table.
    names: HashSet<String>,
}

/// Tenant schemas (lowercase) and the shard holding each whole.
pub type Tenants = HashMap<String, u32>;

/// The sharded tables of the configuration (`(schema, name)` → key column and type), its
/// reference tables, and how this session's unqualified names resolve (its search_path and what
/// the shards' catalogs hold).
#[derive(Debug, Clone, Default)]
pub struct ShardedTables {
    config: Arc<Config>,
    path: SearchPath,
    shadows: Arc<Shadows>,
    /// Tenant schemas and their shards: the config's at first, the shard map's once the router
    /// follows one (see `Router::follow_tenants`).
    tenants: Arc<Tenants>,
    /// `[tenants] schema_prefix`: a schema so named is a tenant once pgshard has placed it.
    tenant_prefix: Option<Arc<str>>,
}

impl ShardedTables {
    /// The tables of `[[sharded_tables]]` (a name without schema is in `public`).
    pub fn new(tables: &[ShardedTableConfig]) -> ShardedTables {
        let mut config = Config::default();
        for t in tables {
            let name = split_config_name(&t.name);
            config.names.insert(name.1.clone());
            config.sharded.insert(
                name,
                Sharded {
                    key_index: config.keys.len(),
                    key_type: t.key_type.unwrap_or_default(),
                },
            );
            config.keys.push(t.key.to_lowercase());
        }
        ShardedTables {
            config: Arc::new(config),
            ..ShardedTables::default()
        }
    }

    /// The same tables with these key types (configured names): `None` when none changes.
    pub fn with_key_types(&self, types: &[(String, KeyType)]) -> Option<ShardedTables> {
        let mut config = (*self.config).clone();
        let mut changed = false;
        for (name, ty) in types {
            if let Some(s) = config.sharded.get_mut(&split_config_name(name)) {
                changed |= s.key_type != *ty;
                s.key_type = *ty;
            }
        }
        changed.then(|| ShardedTables {
            config: Arc::new(config),
            ..self.clone()
        })
    }

    /// The same tables plus these reference tables (names as in the config, `public.` optional).
    pub fn with_reference(self, names: &[String]) -> ShardedTables {
        let mut config = Config {
            keys: self.config.keys.clone(),
            sharded: self.config.sharded.clone(),
            reference: HashSet::new(),
            names: self.config.names.clone(),
        };
        for n in names {
            let name = split_config_name(n);
            config.names.insert(name.1.clone());
            config.reference.insert(name);
        }
        ShardedTables {
            config: Arc::new(config),
            ..self
        }
    }

    /// The same tables plus these tenant schemas, each placed whole on its shard.
    pub fn with_schemas(
        self,
        schemas: &[crate::config::schemas::ShardedSchemaConfig],
    ) -> ShardedTables {
        let tenants = schemas
            .iter()
            .map(|s| (s.name.to_lowercase(), s.shard))
            .collect();
        self.with_tenants(Arc::new(tenants))
    }

    /// The same tables, where a schema named with `prefix` is a new tenant ([tenants]).
    pub fn with_tenant_prefix(self, prefix: Option<&str>) -> ShardedTables {
        ShardedTables {
            tenant_prefix: prefix.map(Arc::from),
            ..self
        }
    }

    /// Whether `schema` is named as a tenant by `[tenants] schema_prefix` but not placed yet.
    pub fn unplaced_tenant(&self, schema: &str) -> bool {
        self.tenant_prefix
            .as_deref()
            .is_some_and(|p| schema.to_lowercase().starts_with(p))
            && self.tenant_shard(schema).is_none()
    }

    /// The same tables with these tenant placements instead of the current ones.
    pub fn with_tenants(self, tenants: Arc<Tenants>) -> ShardedTables {
        ShardedTables { tenants, ..self }
    }

    /// The tenant placements in use.
    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.tenants
    }

    /// True when some schema is placed whole on one shard (or may be, by `[tenants]`).
    pub fn has_tenants(&self) -> bool {
        !self.tenants.is_empty() || self.tenant_prefix.is_some()
    }

    /// The shard of tenant schema `schema`.
    pub fn tenant_shard(&self, schema: &str) -> Option<u32> {
        self.tenants.get(&schema.to_lowercase()).copied()
    }

    /// The first schema of the session's path.
    pub fn path_first(&self) -> Option<&str> {
        self.path.first()
    }

    /// How many schemas the session's path lists.
    pub fn path_len(&self) -> usize {
        self.path.schemas().len()
    }

    /// The schema `schema.name` means over every relation the proxy knows (configured tables and
    /// what the catalogs hold), `None` when no schema on the path holds it.
    pub fn resolve_known(&self, schema: &str, name: &str) -> Option<String> {
        if !schema.is_empty() {
            return Some(schema.to_lowercase());
        }
        let name = name.to_lowercase();
        self.path
            .schemas()
            .iter()
            .map(|s| s.to_lowercase())
            .find(|s| {
                let q = (s.clone(), name.clone());
                self.config.sharded.contains_key(&q)
                    || self.config.reference.contains(&q)
                    || self.shadows.contains(&q)
            })
    }

    /// The same tables, resolving unqualified names with `path` over what the catalogs hold.
    pub fn resolving(&self, path: &SearchPath, shadows: &Arc<Shadows>) -> ShardedTables {
        ShardedTables {
            config: self.config.clone(),
            path: path.clone(),
            shadows: shadows.clone(),
            tenants: self.tenants.clone(),
            tenant_prefix: self.tenant_prefix.clone(),
        }
    }

    /// Every name (without schema) of a configured table: the relations worth reading from the
    /// catalogs as [`Shadows`].
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.config.names.iter().cloned().collect();
        names.sort();
        names
    }

    /// The schema a table named `schema.name` (schema empty when not written) is in: the written
    /// one, or the first schema on the path that holds a relation of that name as far as the
    /// proxy knows; `None` when none does (Postgres would report it missing, or it is a table the
    /// configuration does not name, which lives on the first shard).
    pub fn resolve(&self, schema: &str, name: &str) -> Option<String> {
        if schema.is_empty() && !self.config.names.contains(&name.to_lowercase()) {
            return None;
        }
        self.resolve_known(schema, name)
    }

    fn sharded(&self, schema: &str, name: &str) -> Option<Sharded> {
        let schema = self.resolve(schema, name)?;
        self.config
            .sharded
            .get(&(schema, name.to_lowercase()))
            .copied()
    }

    /// True when `schema.name` (schema empty when not written) is a reference table.
    pub fn is_reference(&self, schema: &str, name: &str) -> bool {
        self.resolve(schema, name)
            .is_some_and(|s| self.config.reference.contains(&(s, name.to_lowercase())))
    }

    /// The key type every sharded table shares, if they all share one (for a key hint on a
    /// statement that names no sharded table).
    pub fn common_key_type(&self) -> Option<KeyType> {
        let mut types = self.config.sharded.values().map(|s| s.key_type);
        let first = types.next().unwrap_or_default();
        types.all(|t| t == first).then_some(first)
    }

    /// The type of a sharded table's key (integer when unknown).
    pub fn key_type_of(&self, schema: &str, name: &str) -> KeyType {
        self.sharded(schema, name)
            .map(|s| s.key_type)
            .unwrap_or_default()
    }

    /// The key column of `schema.name` (schema empty when not written) when it is sharded.
    pub fn key_of(&self, schema: &str, name: &str) -> Option<&str> {
        let s = self.sharded(schema, name)?;
        self.config.keys.get(s.key_index).map(String::as_str)
    }

    /// How facts and messages name a sharded table: its bare name in `public` (as before schemas
    /// were known), `schema.name` quoted for SQL elsewhere, so a shard's `to_regclass` finds it
    /// whatever its connection's search_path.
    pub fn display_name(&self, schema: &str, name: &str) -> String {
        match self.resolve(schema, name) {
            Some(s) if s != PUBLIC => quote_qualified(&s, &name.to_lowercase()),
            _ => name.to_lowercase(),
        }
    }
}

/// Why a statement naming tables after a change of search_path in the same query string is
/// refused: its names were resolved before the change ran.
pub const NAMES_AFTER_PATH_CHANGE: &str = "a statement naming tables after a change of search_path in the same query string (send it in a query of its own: pgshard resolves table names before the query runs)";

/// Why `SET LOCAL search_path` is refused together with other statements: the block follows
/// SET LOCAL only when it is sent alone.
pub const SET_LOCAL_NOT_ALONE: &str = "SET LOCAL search_path together with other statements in one query string (send it on its own so pgshard can follow it)";

/// True when the statement of text `sql` may change the session's search_path (SET, RESET ALL,
/// DISCARD ALL, `set_config`, a SET LOCAL of it).
pub fn changes_search_path(f: &super::StatementFacts, sql: &str) -> bool {
    changes_path(f, sql.to_ascii_lowercase().contains("search_path"))
}

/// True when the statement may change the session's search_path.
fn changes_path(f: &super::StatementFacts, mentions_path: bool) -> bool {
    use super::StatementKind as K;
    match &f.kind {
        K::Set { name, .. } => name == "search_path",
        K::ResetAll | K::Discard { all: true } => true,
        K::SetLocal => mentions_path,
        _ => matches!(&f.set_config, Some(Ok((name, _))) if name == "search_path"),
    }
}

/// Refuses the statements that name tables after one that changes the search_path: Postgres
/// resolves their names under the new path, the router resolved them under the old one.
fn refuse_names_after_path_change(sql: &str, facts: &mut [super::StatementFacts]) {
    for f in facts.iter_mut() {
        if matches!(&f.set_config, Some(Err(m)) if m == super::set_config::LOCAL_SEARCH_PATH) {
            f.refuse = Some(super::facts::Refused::LocalSearchPath);
        }
    }
    if facts.len() < 2 {
        return;
    }
    let mentions_path = sql.to_ascii_lowercase().contains("search_path");
    if mentions_path {
        for f in facts.iter_mut() {
            if f.kind == super::StatementKind::SetLocal && f.refuse.is_none() {
                f.refuse = Some(super::facts::Refused::SetLocalNotAlone);
            }
        }
    }
    let Some(first) = facts.iter().position(|f| changes_path(f, mentions_path)) else {
        return;
    };
    for f in &mut facts[first + 1..] {
        if (f.sharded || f.reference || f.unsharded) && f.refuse.is_none() {
            f.refuse = Some(super::facts::Refused::NamesAfterPathChange);
        }
    }
}

impl super::Router {
    /// Analyses `sql` with unqualified names resolved under `path`.
    pub(super) fn analyze_in(&self, sql: &str, path: &SearchPath) -> Vec<super::StatementFacts> {
        let mut facts = super::facts::analyze(sql, &self.tables_in(path));
        refuse_names_after_path_change(sql, &mut facts);
        super::schemas::place(sql, &self.tables_in(path), &mut facts);
        facts
    }

    /// The sharded tables with names resolved under `path`, for rewrites that find tables
    /// themselves (the rebalancing fence).
    pub fn tables_in(&self, path: &SearchPath) -> ShardedTables {
        let shadows = self
            .shadows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tenants = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.tables()
            .resolving(path, &shadows)
            .with_tenants(tenants)
    }

    /// Takes the tenant placements of `map`: the catalog's shard for every tenant it lists, the
    /// configured one for a `[[sharded_schemas]]` entry it does not list yet; cached facts placed
    /// with other placements are dropped. Called with every map the proxy installs.
    pub fn follow_tenants(&self, map: &super::ShardMap) {
        let mut tenants: Tenants = (**self.tables().tenants()).clone();
        tenants.extend(map.tenants.iter().map(|(s, &n)| (s.clone(), n)));
        let mut current = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if **current != tenants {
            *current = Arc::new(tenants);
            self.cache.clear();
        }
    }

    /// The tenant schemas the router places now (configured ones and those of the shard map it
    /// follows, new tenants included), sorted: every relation in them is read from the catalogs
    /// as [`Shadows`].
    pub fn tenant_schemas(&self) -> Vec<String> {
        let tenants = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut s: Vec<String> = tenants.keys().cloned().collect();
        s.sort();
        s
    }

    /// Replaces what the shards' catalogs hold under the configured names (read at start-up and
    /// after DDL); cached facts resolved with the old knowledge are dropped.
    pub fn set_shadows(&self, shadows: Shadows) {
        let mut current = self.shadows.write().unwrap_or_else(|p| p.into_inner());
        if **current != shadows {
            *current = Arc::new(shadows);
            self.cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, key: &str) -> ShardedTableConfig {
        ShardedTableConfig {
            name: name.into(),
            key: key.into(),
            key_type: None,
        }
    }

    fn path(s: &[&str]) -> SearchPath {
        SearchPath::new(s.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn unqualified_names_resolve_as_postgres_does() {
        let tables =
            ShardedTables::new(&[table("billing.invoices", "id"), table("users", "user_id")])
                .with_reference(&["countries".into()]);
        let shadows: Arc<Shadows> = Arc::new(
            [("public".to_string(), "invoices".to_string())]
                .into_iter()
                .collect(),
        );
        // (path, schema written, name, key column found, resolved schema)
        type Case<'a> = (
            &'a [&'a str],
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (&["public"], "", "invoices", None, Some("public")),
            (&["billing"], "", "invoices", Some("id"), Some("billing")),
            (
                &["billing", "public"],
                "",
                "invoices",
                Some("id"),
                Some("billing"),
            ),
            (&["public", "billing"], "", "invoices", None, Some("public")),
            (
                &["nowhere", "billing"],
                "",
                "invoices",
                Some("id"),
                Some("billing"),
            ),
            (
                &["public"],
                "billing",
                "invoices",
                Some("id"),
                Some("billing"),
            ),
            (&["billing"], "public", "invoices", None, Some("public")),
            (&["billing"], "", "users", None, None),
            (
                &["billing", "public"],
                "",
                "users",
                Some("user_id"),
                Some("public"),
            ),
            (&["public"], "", "orders", None, None),
            (&["public"], "", "INVOICES", None, Some("public")),
        ];
        for (p, schema, name, key, resolved) in cases {
            let t = tables.resolving(&path(p), &shadows);
            assert_eq!(t.key_of(schema, name), *key, "{p:?} {schema}.{name}");
            assert_eq!(
                t.resolve(schema, name).as_deref(),
                *resolved,
                "{p:?} {schema}.{name}"
            );
        }
        let t = tables.resolving(&path(&["billing"]), &shadows);
        assert!(!t.is_reference("", "countries"));
        assert!(t
            .resolving(&path(&["public"]), &shadows)
            .is_reference("", "countries"));
        assert_eq!(t.display_name("", "invoices"), "billing.invoices");
        assert_eq!(t.display_name("public", "users"), "users");
    }

    #[test]
    fn search_path_settings_read_as_set_reads_them() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("'billing', 'public'", Some(&["billing", "public"])),
            ("'a,b'", Some(&["a,b"])),
            ("'B'", Some(&["B"])),
            ("'$user', public", Some(&["app", "public"])),
            ("DEFAULT", Some(&["app", "public"])),
            ("''", Some(&[])),
            ("E'x\\'y'", Some(&["x'y"])),
            ("'it''s'", Some(&["it's"])),
            ("'unterminated", None),
        ];
        for (value, want) in cases {
            let got = SearchPath::from_setting(value, "app");
            let want = want.map(path);
            assert_eq!(got, want, "{value}");
        }
    }

    #[test]
    fn search_path_strings_split_as_postgres_splits_them() {
        let cases: &[(&str, Option<&str>)] = &[
            ("billing, public", Some("'billing', 'public'")),
            ("a,b", Some("'a', 'b'")),
            ("X, \"Y\"", Some("'x', 'Y'")),
            ("\"a,b\"", Some("'a,b'")),
            ("\"$user\", public", Some("'$user', 'public'")),
            ("", Some("''")),
            ("a,,b", None),
            ("\"open", None),
        ];
        for (value, want) in cases {
            assert_eq!(setting_sql_from_string(value).as_deref(), *want, "{value}");
        }
    }

    #[test]
    fn config_names_split_and_quote() {
        assert_eq!(
            split_config_name("Billing.Invoices"),
            ("billing".into(), "invoices".into())
        );
        assert_eq!(
            split_config_name("users"),
            ("public".into(), "users".into())
        );
        assert_eq!(quote_config_name("users"), "public.users");
        assert_eq!(quote_config_name("billing.order"), "billing.\"order\"");
    }
}
