//! A catalog connection made on first use and made again after a failure, for work that must not
//! stop the proxy while the catalog is away (the monitors' primary records, key blocks).

use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::CatalogError;
use crate::backend::ServerTls;

/// One lazily (re)connected catalog client; queries wait their turn on it.
pub struct LazyClient {
    url: String,
    tls: ServerTls,
    timeout: Duration,
    client: Mutex<Option<Client>>,
}

impl LazyClient {
    /// Connects on first use; `timeout` bounds connecting and each query.
    pub fn new(url: &str, tls: &ServerTls, timeout: Duration) -> LazyClient {
        LazyClient {
            url: url.to_string(),
            tls: tls.clone(),
            timeout,
            client: Mutex::new(None),
        }
    }

    /// Runs `sql`; a failed or timed-out query drops the client so the next call reconnects.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, CatalogError> {
        let mut guard = self.connected().await?;
        let outcome = match guard.as_ref() {
            Some(c) => tokio::time::timeout(self.timeout, c.query(sql, params)).await,
            None => return Err(CatalogError::Timeout),
        };
        match outcome {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                *guard = None;
                Err(CatalogError::from(e))
            }
            Err(_) => {
                *guard = None;
                Err(CatalogError::Timeout)
            }
        }
    }

    /// The client, connected first if there is none or it was closed.
    async fn connected(&self) -> Result<MutexGuard<'_, Option<Client>>, CatalogError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect().await?);
        }
        Ok(guard)
    }

    async fn connect(&self) -> Result<Client, CatalogError> {
        let connecting = self.tls.connect_url(&self.url);
        let (client, connection) = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| CatalogError::Timeout)?
            .map_err(CatalogError::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "lazy catalog connection ended");
            }
        });
        Ok(client)
    }
}
