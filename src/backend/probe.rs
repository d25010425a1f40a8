//! One server's monitor connection: asks whether it is in recovery, how far its WAL goes, which
//! timeline it is on and how old its last replayed transaction is. Reconnects with backoff and
//! checks, once per connection, that the server belongs to the shard the config says.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::tls::ServerTls;

use super::topology::{Lsn, ServerId};
use crate::config::ShardConfig;

/// The first wait before reconnecting to a server that failed; doubled up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One sample. `pg_is_in_recovery()` is evaluated once, so the columns are consistent even while
/// the server is being promoted. The primary's timeline comes from its current WAL file name
/// (`pg_control_checkpoint()` only moves at the next checkpoint); a replica's from its WAL
/// receiver, else from its last restartpoint.
const SAMPLE_SQL: &str = "SELECT r,
       (CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
       CASE WHEN r THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       CASE WHEN r THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                                 (SELECT timeline_id FROM pg_control_checkpoint())) END,
       CASE WHEN r THEN (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8 END
FROM (SELECT pg_is_in_recovery() AS r) s";

/// What one server said in one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub in_recovery: bool,
    /// Primary: `pg_current_wal_lsn()`. Replica: `pg_last_wal_replay_lsn()` (`None` before it
    /// replayed anything).
    pub lsn: Option<Lsn>,
    pub timeline: Option<u32>,
    /// Replica only: milliseconds since the last replayed transaction committed on the primary.
    pub replay_delay_ms: Option<u64>,
    pub at: Instant,
}

/// Why a server could not be sampled.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("identifies as shard {found:?}, not shard {expected}")]
    WrongShard { expected: u32, found: Option<i32> },
    #[error("unparsable answer: {0}")]
    Malformed(String),
    #[error("waiting {0:?} before reconnecting (last error: {1})")]
    Backoff(Duration, String),
}

/// The timeline in a WAL file name: its first eight hex digits (`000000020000000000000003` → 2).
pub fn timeline_from_walfile(name: &str) -> Option<u32> {
    let name = name.trim();
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(name.get(..8)?, 16)
        .ok()
        .filter(|&t| t > 0)
}

/// A server's monitor connection.
pub struct Probe {
    id: ServerId,
    pg: tokio_postgres::Config,
    tls: ServerTls,
    timeout: Duration,
    client: Option<Client>,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Probe {
    /// A probe of server `id` of `shard` at `host:port`, logging in as `login` (pgshard's
    /// control-plane role and password).
    pub fn new(
        shard: &ShardConfig,
        login: (&str, Option<&str>),
        id: ServerId,
        host: &str,
        port: u16,
        tls: &ServerTls,
        timeout: Duration,
    ) -> Probe {
        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(port)
            .dbname(&shard.database)
            .user(login.0)
            .application_name("pgshard-monitor")
            .connect_timeout(timeout);
        if let Some(p) = login.1 {
            pg.password(p);
        }
        Probe {
            id,
            pg,
            tls: tls.clone(),
            timeout,
            client: None,
            backoff: MIN_BACKOFF,
            retry_at: None,
            last_error: String::new(),
        }
    }

    /// Samples the server, connecting first if needed (not before the backoff has passed).
    pub async fn sample(&mut self) -> Result<Sample, ProbeError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            if let Some(at) = self.retry_at {
                let now = Instant::now();
                if now < at {
                    return Err(ProbeError::Backoff(at - now, self.last_error.clone()));
                }
            }
            match self.connect().await {
                Ok(c) => self.client = Some(c),
                Err(e) => return Err(self.failed(e)),
            }
        }
        let Some(client) = self.client.as_ref() else {
            return Err(ProbeError::Malformed("no connection".into()));
        };
        let outcome =
            match tokio::time::timeout(self.timeout, client.query_one(SAMPLE_SQL, &[])).await {
                Err(_) => Err(ProbeError::Timeout(self.timeout)),
                Ok(Err(e)) => Err(ProbeError::Query(e)),
                Ok(Ok(row)) => parse_row(&row),
            };
        match outcome {
            Ok(sample) => {
                self.backoff = MIN_BACKOFF;
                self.retry_at = None;
                Ok(sample)
            }
            Err(e) => {
                self.client = None;
                Err(self.failed(e))
            }
        }
    }

    /// Notes a failure and when to try again.
    fn failed(&mut self, e: ProbeError) -> ProbeError {
        self.last_error = e.to_string();
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        e
    }

    async fn connect(&self) -> Result<Client, ProbeError> {
        let connecting = self.tls.connect(&self.pg);
        let (client, connection) = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| ProbeError::Timeout(self.timeout))?
            .map_err(ProbeError::Connect)?;
        let id = self.id;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(server = %id, error = %e, "monitor connection ended");
            }
        });
        let identity = client.query_opt("SELECT shard_id FROM pgshard_meta.identity", &[]);
        let row = tokio::time::timeout(self.timeout, identity)
            .await
            .map_err(|_| ProbeError::Timeout(self.timeout))??;
        let found: Option<i32> = row.and_then(|r| r.try_get(0).ok());
        if found.is_none_or(|f| i64::from(f) != i64::from(self.id.shard)) {
            return Err(ProbeError::WrongShard {
                expected: self.id.shard,
                found,
            });
        }
        Ok(client)
    }
}

fn parse_row(row: &tokio_postgres::Row) -> Result<Sample, ProbeError> {
    let in_recovery: bool = row.try_get(0)?;
    let lsn_text: Option<String> = row.try_get(1)?;
    let lsn = match lsn_text {
        Some(t) => Some(Lsn::parse(&t).ok_or_else(|| ProbeError::Malformed(format!("LSN `{t}`")))?),
        None => None,
    };
    let timeline = if in_recovery {
        let t: Option<i32> = row.try_get(3)?;
        t.and_then(|t| u32::try_from(t).ok()).filter(|&t| t > 0)
    } else {
        let name: Option<String> = row.try_get(2)?;
        let name = name.unwrap_or_default();
        Some(
            timeline_from_walfile(&name)
                .ok_or_else(|| ProbeError::Malformed(format!("WAL file name `{name}`")))?,
        )
    };
    let delay: Option<f64> = row.try_get(4)?;
    Ok(Sample {
        in_recovery,
        lsn,
        timeline,
        replay_delay_ms: delay.map(|d| d.max(0.0) as u64),
        at: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_is_the_first_eight_hex_digits_of_the_wal_file_name() {
        assert_eq!(timeline_from_walfile("000000010000000000000002"), Some(1));
        assert_eq!(timeline_from_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_from_walfile("0000001A00000003000000FF"), Some(26));
        assert_eq!(
            timeline_from_walfile(" 000000FF0000000000000001\n"),
            Some(255)
        );
    }

    #[test]
    fn malformed_wal_file_names_have_no_timeline() {
        assert_eq!(timeline_from_walfile(""), None);
        assert_eq!(timeline_from_walfile("00000001"), None);
        assert_eq!(timeline_from_walfile("00000001000000000000000"), None);
        assert_eq!(timeline_from_walfile("0000000100000000000000020"), None);
        assert_eq!(timeline_from_walfile("00000001000000000000000G"), None);
        assert_eq!(timeline_from_walfile("000000000000000000000001"), None);
        assert_eq!(timeline_from_walfile("+00000010000000000000002"), None);
        assert_eq!(timeline_from_walfile("0000000100000000000000é"), None);
    }
}
