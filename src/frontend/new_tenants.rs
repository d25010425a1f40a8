//! New tenants by `CREATE SCHEMA` (`[tenants] schema_prefix`): before a request whose statements
//! create a schema so named runs, the tenant is placed — a map version putting it on the shard with
//! the fewest tenants is published (or the one another proxy published is found) and installed,
//! so the request's analysis routes the `CREATE SCHEMA` there. When placing fails, the analysis
//! refuses the statement (`router::schemas`), so an unplaced tenant is never created elsewhere.

use super::session::Session;
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Parse};

impl Session {
    /// Places the new tenants that the request `frame` (a Query, or the Sync/Flush ending the
    /// buffered batch) creates.
    pub async fn place_new_tenants(&self, frame: &Frame) {
        let Some(rule) = &self.proxy.config.tenants else {
            return;
        };
        let texts: Vec<String> = match frame.tag {
            fe::QUERY => fe::decode_query(&frame.body)
                .map(|q| vec![q.to_string()])
                .unwrap_or_default(),
            fe::SYNC | fe::FLUSH => self
                .batch
                .iter()
                .filter(|f| f.tag == fe::PARSE)
                .filter_map(|f| Parse::decode(&f.body).ok().map(|p| p.query))
                .collect(),
            _ => return,
        };
        let map = self.proxy.map.current();
        let new: Vec<String> = texts
            .iter()
            .flat_map(|sql| crate::router::schemas::created_schemas(sql))
            .filter(|s| rule.matches(s) && map.tenant_shard(s).is_none())
            .collect();
        for schema in new {
            if let Err(e) = self.place_tenant(&schema).await {
                tracing::warn!(schema, error = %e, "cannot place the new tenant");
            }
        }
    }

    async fn place_tenant(&self, schema: &str) -> Result<(), String> {
        let mut catalog = crate::rebalance::shards::catalog(&self.proxy.config)
            .await
            .map_err(|e| e.to_string())?;
        let shards: Vec<u32> = self
            .proxy
            .shards
            .current()
            .shards
            .iter()
            .map(|s| s.id)
            .collect();
        let map = crate::catalog::place_tenant(&mut catalog, schema, &shards)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            schema,
            shard = map.tenant_shard(schema),
            version = map.version,
            "new tenant placed"
        );
        self.proxy.map.install(map);
        Ok(())
    }
}
