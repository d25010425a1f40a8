//! LISTEN/NOTIFY across shards and proxies without pinning a client to a server connection.
//!
//! One designated shard carries every channel: the shard of the unsharded tables
//! (`proxy.first_shard`, where advisory locks and temporary tables live too), so the clients of
//! every proxy meet there. Each proxy keeps one control-plane connection to that shard's primary
//! that LISTENs on the channels its clients use ([`connection`]), and hands each notification to
//! the clients listening on its channel ([`Hub`]), in the order the shard sent them. NOTIFYs the
//! proxy runs itself (a client's `NOTIFY`, or those a block queued until its COMMIT, see
//! [`pending`]) go through the same connection, in order.

pub mod connection;
pub mod pending;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::wire::backend::ErrorFields;

pub use connection::Target;

/// How long a LISTEN or a NOTIFY waits for the listening connection (connecting included).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One notification as the channel shard sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notifying server process (on the channel shard).
    pub pid: i32,
    pub channel: String,
    pub payload: String,
}

impl Notification {
    /// The NotificationResponse frame a client gets.
    pub fn frame(&self) -> crate::wire::frame::Frame {
        use bytes::BufMut;
        let mut b = bytes::BytesMut::with_capacity(6 + self.channel.len() + self.payload.len());
        b.put_i32(self.pid);
        b.put_slice(self.channel.as_bytes());
        b.put_u8(0);
        b.put_slice(self.payload.as_bytes());
        b.put_u8(0);
        crate::wire::frame::Frame::new(crate::wire::backend::NOTIFICATION, b.freeze())
    }
}

/// What the listening connection's task is asked to do.
pub(crate) enum Command {
    /// LISTEN on a channel; answered once the shard ran it.
    Listen(String, oneshot::Sender<Result<(), ErrorFields>>),
    /// UNLISTEN a channel no client of this proxy uses any more.
    Unlisten(String),
    /// `pg_notify` each `(channel, payload)` in one transaction, in order.
    Notify(
        Vec<(String, String)>,
        Option<oneshot::Sender<Result<(), ErrorFields>>>,
    ),
}

/// A listening client: the channels it listens on and where its notifications go.
struct Entry {
    channels: BTreeSet<String>,
    tx: mpsc::UnboundedSender<Notification>,
}

#[derive(Default)]
struct Registry {
    clients: HashMap<u64, Entry>,
    /// Channels the listening connection has LISTENed on since it last connected.
    confirmed: HashSet<String>,
}

impl Registry {
    fn in_use(&self, channel: &str) -> bool {
        self.clients.values().any(|e| e.channels.contains(channel))
    }

    fn channels(&self) -> BTreeSet<String> {
        self.clients
            .values()
            .flat_map(|e| e.channels.iter().cloned())
            .collect()
    }
}

#[derive(Default)]
pub(crate) struct Inner {
    registry: Mutex<Registry>,
    commands: OnceLock<mpsc::UnboundedSender<Command>>,
    next_id: AtomicU64,
}

/// This proxy's listening clients and its one listening connection (started on first use).
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// The hub as its connection task holds it: gone once the proxy is.
pub(crate) type WeakHub = std::sync::Weak<Inner>;

impl Hub {
    pub(crate) fn upgrade(weak: &WeakHub) -> Option<Hub> {
        weak.upgrade().map(|inner| Hub { inner })
    }
}

/// A client's registration: its notifications arrive on `inbox`; dropping it (the client left)
/// drops its channels.
pub struct ClientHandle {
    id: u64,
    hub: Hub,
    inbox: mpsc::UnboundedReceiver<Notification>,
}

impl ClientHandle {
    /// The next notification for this client.
    pub async fn recv(&mut self) -> Option<Notification> {
        self.inbox.recv().await
    }

    /// A notification already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Notification> {
        self.inbox.try_recv().ok()
    }

    /// The channels this client listens on.
    pub fn channels(&self) -> BTreeSet<String> {
        self.hub
            .lock()
            .clients
            .get(&self.id)
            .map(|e| e.channels.clone())
            .unwrap_or_default()
    }

    /// `LISTEN channel`: answered once the listening connection listens on it.
    pub async fn listen(
        &self,
        channel: &str,
        target: impl FnOnce() -> Target,
    ) -> Result<(), ErrorFields> {
        let confirmed = {
            let mut reg = self.hub.lock();
            if let Some(e) = reg.clients.get_mut(&self.id) {
                e.channels.insert(channel.to_string());
            }
            reg.confirmed.contains(channel)
        };
        if confirmed {
            return Ok(());
        }
        let (ack, answer) = oneshot::channel();
        self.hub
            .send(Command::Listen(channel.to_string(), ack), target);
        let result = wait(answer).await;
        if result.is_err() {
            self.unlisten(Some(channel));
        }
        result
    }

    /// `UNLISTEN channel`, or `UNLISTEN *` for `None`.
    pub fn unlisten(&self, channel: Option<&str>) {
        let dropped: Vec<String> = {
            let mut reg = self.hub.lock();
            let Some(e) = reg.clients.get_mut(&self.id) else {
                return;
            };
            let dropped: Vec<String> = match channel {
                Some(c) => e.channels.take(c).into_iter().collect(),
                None => std::mem::take(&mut e.channels).into_iter().collect(),
            };
            self.hub.unused(&mut reg, dropped)
        };
        for c in dropped {
            self.hub.send_started(Command::Unlisten(c));
        }
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        let dropped = {
            let mut reg = self.hub.lock();
            let channels = reg
                .clients
                .remove(&self.id)
                .map(|e| e.channels.into_iter().collect())
                .unwrap_or_default();
            self.hub.unused(&mut reg, channels)
        };
        for c in dropped {
            self.hub.send_started(Command::Unlisten(c));
        }
    }
}

async fn wait(answer: oneshot::Receiver<Result<(), ErrorFields>>) -> Result<(), ErrorFields> {
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        _ => Err(unreachable_shard()),
    }
}

fn unreachable_shard() -> ErrorFields {
    ErrorFields::error(
        "08006",
        "the shard that carries LISTEN/NOTIFY channels did not answer in time",
    )
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Of `channels` just given up by a client, those no client uses any more (no longer
    /// confirmed: a later LISTEN asks the connection again).
    fn unused(&self, reg: &mut Registry, channels: Vec<String>) -> Vec<String> {
        let unused: Vec<String> = channels.into_iter().filter(|c| !reg.in_use(c)).collect();
        for c in &unused {
            reg.confirmed.remove(c);
        }
        unused
    }

    /// A new listening client.
    pub fn register(&self) -> ClientHandle {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, inbox) = mpsc::unbounded_channel();
        self.lock().clients.insert(
            id,
            Entry {
                channels: BTreeSet::new(),
                tx,
            },
        );
        ClientHandle {
            id,
            hub: self.clone(),
            inbox,
        }
    }

    /// Runs `pg_notify` for each `(channel, payload)` on the channel shard, in one transaction,
    /// in order; waits for it when `wait_for_it`.
    pub async fn notify(
        &self,
        notes: Vec<(String, String)>,
        wait_for_it: bool,
        target: impl FnOnce() -> Target,
    ) -> Result<(), ErrorFields> {
        if notes.is_empty() {
            return Ok(());
        }
        if !wait_for_it {
            self.send(Command::Notify(notes, None), target);
            return Ok(());
        }
        let (ack, answer) = oneshot::channel();
        self.send(Command::Notify(notes, Some(ack)), target);
        wait(answer).await
    }

    /// The number of clients listening on at least one channel, and the channels in use.
    pub fn summary(&self) -> (usize, BTreeSet<String>) {
        let reg = self.lock();
        let listening = reg
            .clients
            .values()
            .filter(|e| !e.channels.is_empty())
            .count();
        (listening, reg.channels())
    }

    fn send(&self, command: Command, target: impl FnOnce() -> Target) {
        let tx = self.inner.commands.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // The task holds the hub weakly: it ends with the proxy.
            tokio::spawn(connection::run(Arc::downgrade(&self.inner), target(), rx));
            tx
        });
        let _ = tx.send(command);
    }

    /// Sends to a connection that is already running (an UNLISTEN needs none otherwise).
    fn send_started(&self, command: Command) {
        if let Some(tx) = self.inner.commands.get() {
            let _ = tx.send(command);
        }
    }

    /// Hands a notification to every client listening on its channel.
    pub(crate) fn dispatch(&self, note: Notification) {
        let reg = self.lock();
        for e in reg.clients.values() {
            if e.channels.contains(&note.channel) {
                let _ = e.tx.send(note.clone());
            }
        }
    }

    /// Channels in use, for a fresh connection to LISTEN on again.
    pub(crate) fn channels_in_use(&self) -> BTreeSet<String> {
        self.lock().channels()
    }

    /// Records that the connection listens on `channels` (a reconnect forgets them all first).
    pub(crate) fn confirm(&self, channels: &BTreeSet<String>, reset: bool) {
        let mut reg = self.lock();
        if reset {
            reg.confirmed.clear();
        }
        for c in channels {
            if reg.in_use(c) {
                reg.confirmed.insert(c.clone());
            }
        }
    }

    /// True while some client listens on `channel`.
    pub(crate) fn in_use(&self, channel: &str) -> bool {
        self.lock().in_use(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_frame_is_postgres_layout() {
        let n = Notification {
            pid: 7,
            channel: "ch".into(),
            payload: "hi".into(),
        };
        let f = n.frame();
        assert_eq!(f.tag, b'A');
        assert_eq!(&f.body[..], b"\0\0\0\x07ch\0hi\0");
    }

    #[tokio::test]
    async fn dispatch_reaches_only_listeners_of_the_channel_until_they_leave() {
        let hub = Hub::default();
        let mut a = hub.register();
        let mut b = hub.register();
        hub.lock()
            .clients
            .get_mut(&a.id)
            .map(|e| e.channels.insert("x".into()));
        hub.lock()
            .clients
            .get_mut(&b.id)
            .map(|e| e.channels.insert("y".into()));
        let note = |c: &str, p: &str| Notification {
            pid: 1,
            channel: c.into(),
            payload: p.into(),
        };
        hub.dispatch(note("x", "1"));
        hub.dispatch(note("y", "2"));
        hub.dispatch(note("x", "3"));
        assert_eq!(a.try_recv(), Some(note("x", "1")));
        assert_eq!(a.try_recv(), Some(note("x", "3")));
        assert_eq!(a.try_recv(), None);
        assert_eq!(b.try_recv(), Some(note("y", "2")));
        a.unlisten(None);
        hub.dispatch(note("x", "4"));
        assert_eq!(a.try_recv(), None);
        assert_eq!(hub.summary().1, BTreeSet::from(["y".to_string()]));
        drop(b);
        assert!(hub.summary().1.is_empty());
    }
}
