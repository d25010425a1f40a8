//! The listening connection: a control-plane tokio-postgres connection to the channel shard's
//! primary that LISTENs on the channels this proxy's clients use, passes every notification to
//! the [`Hub`], runs the NOTIFYs the proxy sends, and reconnects (LISTENing again) when lost.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client};

use super::{Command, Hub, Notification, WeakHub};
use crate::backend::topology::Topology;
use crate::backend::ServerTls;
use crate::config::Config;
use crate::sql_text::quote_ident;
use crate::wire::backend::ErrorFields;

/// Where the listening connection goes.
#[derive(Clone)]
pub struct Target {
    pub config: Arc<Config>,
    /// Which server is the shard's primary now (after a failover too).
    pub topology: Arc<Topology>,
    pub tls: ServerTls,
    /// The channel shard.
    pub shard: u32,
}

impl Target {
    fn pg_config(&self) -> Result<tokio_postgres::Config, String> {
        let shard = self
            .config
            .shard(self.shard)
            .ok_or_else(|| format!("shard {} is not configured", self.shard))?;
        let (user, password) = self.config.control_login(shard);
        let (host, port) = self
            .topology
            .primary(self.shard)
            .and_then(|id| self.topology.server(id))
            .and_then(|s| {
                let (h, p) = s.address.rsplit_once(':')?;
                Some((
                    h.trim_matches(|c| c == '[' || c == ']').to_string(),
                    p.parse().ok()?,
                ))
            })
            .unwrap_or_else(|| (shard.host.clone(), shard.port));
        let mut pg = tokio_postgres::Config::new();
        pg.host(&host)
            .port(port)
            .dbname(&shard.database)
            .user(user)
            .application_name("pgshard-listen")
            .connect_timeout(self.config.pool.connect_timeout());
        if let Some(p) = password {
            pg.password(p);
        }
        Ok(pg)
    }
}

/// A connection and a receiver that ends when the connection does.
async fn connect(
    target: &Target,
    hub: &WeakHub,
) -> Result<(Client, oneshot::Receiver<()>), String> {
    let pg = target.pg_config()?;
    let (client, mut connection) = target.tls.connect(&pg).await.map_err(|e| e.to_string())?;
    let (lost, gone) = oneshot::channel::<()>();
    let hub = hub.clone();
    tokio::spawn(async move {
        let _lost = lost;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let Some(hub) = Hub::upgrade(&hub) else {
                        return;
                    };
                    hub.dispatch(Notification {
                        pid: n.process_id(),
                        channel: n.channel().to_string(),
                        payload: n.payload().to_string(),
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "listening connection ended");
                    return;
                }
            }
        }
    });
    Ok((client, gone))
}

fn listen_sql(channels: &BTreeSet<String>) -> String {
    channels
        .iter()
        .map(|c| format!("LISTEN {}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The error a client gets for a failed statement on the listening connection.
fn fields(e: &tokio_postgres::Error) -> ErrorFields {
    match e.as_db_error() {
        Some(db) => ErrorFields::error(db.code().code(), db.message().to_string()),
        None => ErrorFields::error(
            "08006",
            format!("lost the connection to the shard that carries LISTEN/NOTIFY channels: {e}"),
        ),
    }
}

/// Serves commands until the hub is gone, reconnecting with backoff.
pub(crate) async fn run(
    weak: WeakHub,
    target: Target,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Duration::from_millis(50);
    // Held only while used, never across a wait: the hub ends with the proxy, and so does this.
    let hub = || Hub::upgrade(&weak);
    loop {
        if hub().is_none() {
            return;
        }
        let (client, mut gone) = match connect(&target, &weak).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, shard = target.shard, "cannot open the LISTEN connection; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let channels = hub().map(|h| h.channels_in_use()).unwrap_or_default();
        if !channels.is_empty() {
            if let Err(e) = client.batch_execute(&listen_sql(&channels)).await {
                tracing::warn!(error = %e, "cannot LISTEN again after reconnecting");
                continue;
            }
        }
        if let Some(h) = hub() {
            h.confirm(&channels, true);
        }
        loop {
            let command = tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
                _ = &mut gone => break,
            };
            let lost = match command {
                Command::Listen(channel, ack) => {
                    let r = client
                        .batch_execute(&listen_sql(&BTreeSet::from([channel.clone()])))
                        .await;
                    if let (Ok(_), Some(h)) = (&r, hub()) {
                        h.confirm(&BTreeSet::from([channel]), false);
                    }
                    let lost = r.as_ref().is_err_and(|e| e.as_db_error().is_none());
                    let _ = ack.send(r.map_err(|e| fields(&e)));
                    lost
                }
                Command::Unlisten(channel) => {
                    if hub().is_some_and(|h| h.in_use(&channel)) {
                        false
                    } else {
                        let sql = format!("UNLISTEN {}", quote_ident(&channel));
                        client.batch_execute(&sql).await.is_err()
                    }
                }
                Command::Notify(notes, ack) => {
                    let (channels, payloads): (Vec<String>, Vec<String>) =
                        notes.into_iter().unzip();
                    let r = client
                        .execute(
                            "SELECT pg_catalog.pg_notify(c, p) FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS t(c, p)",
                            &[&channels, &payloads],
                        )
                        .await;
                    if let Err(e) = &r {
                        tracing::debug!(error = %e, "NOTIFY on the channel shard failed");
                    }
                    let lost = r.as_ref().is_err_and(|e| e.as_db_error().is_none());
                    if let Some(ack) = ack {
                        let _ = ack.send(r.map(|_| ()).map_err(|e| fields(&e)));
                    }
                    lost
                }
            };
            if lost || client.is_closed() {
                break;
            }
        }
        tracing::info!(shard = target.shard, "LISTEN connection lost; reconnecting");
    }
}
