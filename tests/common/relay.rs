//! A fault-injecting TCP relay for tests: listens on a loopback port and forwards every connection
//! to a target, unless told to delay, black-hole or drop the traffic. Pointing a shard's entry in
//! the proxy config at a relay lets a test cut that shard off the network the way a switch or a
//! firewall would, without touching the Postgres process.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the relay does with traffic, changeable at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    Pass,
    /// Hold every chunk this long before forwarding it (both directions).
    Delay(Duration),
    /// Accept connections and keep them open, but forward nothing and never close: a network
    /// partition. What was sent stays queued and flows again after `Pass` (TCP retransmits).
    BlackHole,
    /// Reset every open connection and every new one at once: a host that went away.
    Drop,
}

/// A running relay; dropping it stops it and closes its connections.
pub struct Relay {
    /// Where clients connect (the address to put in the proxy config).
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts a relay on a free loopback port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay's listener");
        let addr = listener.local_addr().expect("relay address");
        let (fault, watcher) = watch::channel(Fault::Pass);
        let task = tokio::spawn(accept_loop(listener, target, watcher));
        Relay { addr, fault, task }
    }

    /// Changes what the relay does, for open and new connections alike.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// What the relay does now.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Connections end with their tasks once the sender is gone (they watch it).
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, fault: watch::Receiver<Fault>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *fault.borrow() == Fault::Drop {
            reset(client);
            continue;
        }
        tokio::spawn(serve(client, target, fault.clone()));
    }
}

/// Closes a socket with a TCP reset rather than a clean FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(client: TcpStream, target: SocketAddr, fault: watch::Receiver<Fault>) {
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            // Nothing listens behind the relay: the client sees the connection reset.
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, fault.clone());
    let down = pump(server_read, client_write, fault);
    // Either direction ending (EOF, error, Drop) ends the connection: every half is dropped here.
    tokio::select! {
        () = up => {},
        () = down => {},
    }
}

/// Makes both sockets of a pump end with a reset when they close.
fn arm_reset(from: &OwnedReadHalf, to: &OwnedWriteHalf) {
    let _ = from.as_ref().set_zero_linger();
    let _ = to.as_ref().set_zero_linger();
}

/// Copies one direction until EOF, an error or `Drop` (which arms a reset of both sockets).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut fault: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Wait until forwarding is allowed; a black hole neither reads nor writes.
        let current = loop {
            let f = *fault.borrow_and_update();
            if f != Fault::BlackHole {
                break f;
            }
            if fault.changed().await.is_err() {
                return;
            }
        };
        if current == Fault::Drop {
            return arm_reset(&from, &to);
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // The chunk is in hand: apply the fault in force now, holding it through a black hole.
        loop {
            let f = *fault.borrow_and_update();
            match f {
                Fault::Pass => break,
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Drop => return arm_reset(&from, &to),
                Fault::BlackHole => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
