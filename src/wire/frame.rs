//! Framing: a regular message is a type byte and a big-endian length that counts itself; the startup
//! family has no type byte. Bodies are kept as `Bytes` so forwarding never copies or re-encodes them.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_V3: u32 = 196_608;
/// The magic "version" numbers of the special startup-family requests.
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// Why bytes could not be framed: each one ends the connection with a protocol error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// One regular protocol message: its type byte and its body (without the length word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Frame {
        Frame {
            tag,
            body: body.into(),
        }
    }

    /// Appends the framed message (tag, length, body) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_i32((self.body.len() + 4) as i32);
        out.put_slice(&self.body);
    }

    /// The framed message as a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(5 + self.body.len());
        self.encode(&mut out);
        out.freeze()
    }
}

/// Tries to split one regular message off the front of `buf`. `Ok(None)` means more bytes are needed.
pub fn split_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len as i64));
    }
    let len = len as usize;
    if len - 4 > limit {
        return Err(FrameError::TooLarge {
            size: len - 4,
            limit,
        });
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(1 + len);
    let tag = frame[0];
    // The header skipped in place (a split would make and drop a second handle per message).
    frame.advance(5);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

/// The first message of a connection, which has no type byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupFrame {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A StartupMessage: protocol version and the key/value parameters in order.
    Startup {
        version: u32,
        params: Vec<(String, String)>,
    },
}

/// Largest startup packet accepted (Postgres uses 10000 too).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Tries to split one startup-family packet off `buf`.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<StartupFrame>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len);
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let rest = &packet[8..];
    match code {
        SSL_REQUEST => Ok(Some(StartupFrame::Ssl)),
        GSSENC_REQUEST => Ok(Some(StartupFrame::GssEnc)),
        CANCEL_REQUEST => {
            if rest.len() != 8 {
                return Err(StartupError::Malformed("cancel request must carry 8 bytes"));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            Ok(Some(StartupFrame::Cancel { pid, secret }))
        }
        version if version >> 16 == 3 => {
            let params = parse_startup_params(rest)?;
            Ok(Some(StartupFrame::Startup { version, params }))
        }
        version => Err(StartupError::UnsupportedVersion(version)),
    }
}

fn parse_startup_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (key, after) = take_cstr(rest).ok_or(StartupError::Malformed(
            "startup parameters must be NUL-terminated strings",
        ))?;
        if key.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed(
                    "bytes after the startup parameters' terminator",
                ));
            }
            return Ok(params);
        }
        let (value, after) =
            take_cstr(after).ok_or(StartupError::Malformed("startup parameter without a value"))?;
        params.push((key, value));
        rest = after;
    }
}

fn take_cstr(buf: &[u8]) -> Option<(String, &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&buf[..nul]).ok()?.to_string();
    Some((s, &buf[nul + 1..]))
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {}.{}: server supports 3.0 to 3.0", .0 >> 16, .0 & 0xffff)]
    UnsupportedVersion(u32),
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u32(PROTOCOL_V3);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out
    }

    #[test]
    fn splits_a_startup_message_once_complete() {
        let full = startup_bytes(&[("user", "app"), ("database", "app")]);
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(split_startup(&mut partial).unwrap(), None);
        let mut buf = full.clone();
        let frame = split_startup(&mut buf).unwrap().unwrap();
        assert_eq!(
            frame,
            StartupFrame::Startup {
                version: PROTOCOL_V3,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_garbage_startup_packets() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4][..]);
        assert!(split_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
        assert_eq!(
            split_startup(&mut buf),
            Err(StartupError::UnsupportedVersion(2 << 16))
        );
        let mut bad = startup_bytes(&[("user", "app")]);
        let n = bad.len();
        bad[n - 1] = b'x';
        assert!(split_startup(&mut bad).is_err());
    }

    #[test]
    fn frames_round_trip_and_respect_the_limit() {
        let frame = Frame::new(b'Q', &b"select 1\0"[..]);
        let mut buf = BytesMut::from(&frame.to_bytes()[..]);
        buf.extend_from_slice(&[b'S', 0, 0]);
        assert_eq!(split_frame(&mut buf, 1024).unwrap(), Some(frame));
        assert_eq!(split_frame(&mut buf, 1024).unwrap(), None);
        let mut big = BytesMut::from(&[b'Q', 0, 1, 0, 0][..]);
        assert!(matches!(
            split_frame(&mut big, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        let mut neg = BytesMut::from(&[b'Q', 0xff, 0, 0, 0][..]);
        assert!(matches!(
            split_frame(&mut neg, 1024),
            Err(FrameError::BadLength(_))
        ));
    }
}
