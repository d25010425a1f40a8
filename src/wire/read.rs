//! A bounds-checked cursor over a message body: every read can fail, none can panic.

use bytes::Bytes;

/// Why a message body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {message} message: {detail}")]
pub struct DecodeError {
    pub message: &'static str,
    pub detail: &'static str,
}

/// Reads fields from a message body in order.
pub struct BodyReader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> BodyReader<'a> {
    /// `message` names the message kind in errors.
    pub fn new(buf: &'a [u8], message: &'static str) -> BodyReader<'a> {
        BodyReader { buf, message }
    }

    fn err(&self, detail: &'static str) -> DecodeError {
        DecodeError {
            message: self.message,
            detail,
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(self.err("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.i32()? as u32)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, as raw bytes without the NUL.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(self.err("string without terminator"))?;
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self) -> Result<String, DecodeError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| self.err("invalid UTF-8"))
    }

    /// A length-prefixed value (`-1` is NULL), sliced out of `whole` without copying.
    pub fn value(&mut self, whole: &Bytes) -> Result<Option<Bytes>, DecodeError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(self.err("negative value length"));
        }
        let slice = self.take(len as usize)?;
        Ok(Some(whole.slice_ref(slice)))
    }

    /// Fails unless the whole body was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}
