//! A client speaking the wire protocol byte by byte, for clients that misbehave on purpose
//! (stall mid-message, vanish mid-COPY) where a real driver would not.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: its type byte and body.
pub type Message = (u8, Vec<u8>);

/// A raw protocol connection.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A StartupMessage (protocol 3.0) for `user` on database `app`.
pub fn startup_message(user: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", "app")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// A regular message: type byte, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// The SQLSTATE and message of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut text) = (String::new(), String::new());
    for field in body.split(|&b| b == 0) {
        match field.first() {
            Some(b'C') => code = String::from_utf8_lossy(&field[1..]).into(),
            Some(b'M') => text = String::from_utf8_lossy(&field[1..]).into(),
            _ => {}
        }
    }
    (code, text)
}

impl RawClient {
    /// Connects without sending anything.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connect to pgshard"),
            buf: Vec::new(),
        }
    }

    /// Connects and logs in as a trust user, up to the first ReadyForQuery.
    pub async fn login(addr: SocketAddr, user: &str) -> RawClient {
        let mut client = RawClient::connect(addr).await;
        client.send(&startup_message(user)).await;
        let answer = client.until_ready().await;
        assert!(
            answer.iter().any(|(tag, _)| *tag == b'Z'),
            "login as {user}: {answer:?}"
        );
        client
    }

    /// Writes bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to pgshard");
    }

    /// The next message, `None` once the proxy closed the connection.
    pub async fn read(&mut self) -> Option<Message> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let end = 1 + len as usize;
                if self.buf.len() >= end {
                    let tag = self.buf[0];
                    let body = self.buf[5..end].to_vec();
                    self.buf.drain(..end);
                    return Some((tag, body));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Messages up to and including ReadyForQuery (or up to the end of the connection).
    pub async fn until_ready(&mut self) -> Vec<Message> {
        let mut got = Vec::new();
        while let Some(m) = self.read().await {
            let ready = m.0 == b'Z';
            got.push(m);
            if ready {
                break;
            }
        }
        got
    }

    /// Waits (at most `limit`) for the proxy to end the connection; returns the ErrorResponse it
    /// sent before closing, if any, and whether it closed.
    pub async fn closed_within(&mut self, limit: Duration) -> (Option<(String, String)>, bool) {
        let mut error = None;
        let ended = tokio::time::timeout(limit, async {
            while let Some((tag, body)) = self.read().await {
                if tag == b'E' {
                    error = Some(error_fields(&body));
                }
            }
        })
        .await;
        (error, ended.is_ok())
    }
}
