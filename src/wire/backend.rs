//! Messages a server sends: builders for the ones the proxy makes itself (errors, its own results,
//! authentication) and decoders for the few it must read (errors, command tags, ready-for-query).

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::Frame;
use super::frontend::put_cstr;
use super::read::{BodyReader, DecodeError};

pub const AUTHENTICATION: u8 = b'R';
pub const PARAMETER_STATUS: u8 = b'S';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const DATA_ROW: u8 = b'D';
pub const ROW_DESCRIPTION: u8 = b'T';
pub const EMPTY_QUERY: u8 = b'I';
pub const PARSE_COMPLETE: u8 = b'1';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const NO_DATA: u8 = b'n';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const NOTIFICATION: u8 = b'A';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';

/// Authentication request codes (the Int32 after the `R` tag), shared by both sides of the proxy.
pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT: i32 = 3;
pub const AUTH_MD5: i32 = 5;
pub const AUTH_SASL: i32 = 10;
pub const AUTH_SASL_CONTINUE: i32 = 11;
pub const AUTH_SASL_FINAL: i32 = 12;

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }
}

pub fn ready_for_query(status: TxStatus) -> Frame {
    Frame::new(READY_FOR_QUERY, Bytes::copy_from_slice(&[status.byte()]))
}

/// The status byte of a ReadyForQuery body.
pub fn decode_ready_for_query(body: &[u8]) -> Result<TxStatus, DecodeError> {
    match body {
        [b] => TxStatus::from_byte(*b).ok_or(DecodeError {
            message: "ReadyForQuery",
            detail: "unknown status",
        }),
        _ => Err(DecodeError {
            message: "ReadyForQuery",
            detail: "body must be one byte",
        }),
    }
}

/// The fields of an ErrorResponse or NoticeResponse that the proxy builds or inspects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// ERROR, FATAL, PANIC, WARNING, NOTICE… (a `Box<str>`: errors travel in `Result`s, so the
    /// struct stays small).
    pub severity: Box<str>,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The other fields a server sent (position, where, schema, table, column, data type,
    /// constraint, file, line, routine…): an error the proxy relays through these fields
    /// reaches the client with them, as one Postgres sends it. Boxed, as errors travel in
    /// `Result`s and most have none.
    pub other: Option<Box<OtherFields>>,
}

/// Fields of an ErrorResponse beyond those [`ErrorFields`] names, by field type in the order
/// the server sent them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OtherFields(pub Vec<(u8, String)>);

impl ErrorFields {
    /// An ERROR with a SQLSTATE and message.
    pub fn error(code: &str, message: impl Into<String>) -> ErrorFields {
        ErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
            other: None,
        }
    }

    /// A FATAL error (the connection ends after it).
    pub fn fatal(code: &str, message: impl Into<String>) -> ErrorFields {
        ErrorFields {
            severity: "FATAL".into(),
            ..ErrorFields::error(code, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ErrorFields {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ErrorFields {
        self.detail = Some(detail.into());
        self
    }

    /// Encodes as an ErrorResponse.
    pub fn to_frame(&self) -> Frame {
        self.encode(ERROR_RESPONSE)
    }

    /// Encodes as a NoticeResponse.
    pub fn to_notice(&self) -> Frame {
        self.encode(NOTICE_RESPONSE)
    }

    fn encode(&self, tag: u8) -> Frame {
        let mut b = BytesMut::new();
        for (field, value) in [
            (b'S', Some(&*self.severity)),
            (b'V', Some(&*self.severity)),
            (b'C', Some(self.code.as_str())),
            (b'M', Some(self.message.as_str())),
            (b'D', self.detail.as_deref()),
            (b'H', self.hint.as_deref()),
        ] {
            if let Some(v) = value {
                b.put_u8(field);
                put_cstr(&mut b, v);
            }
        }
        for (field, v) in self.other.iter().flat_map(|o| o.0.iter()) {
            b.put_u8(*field);
            put_cstr(&mut b, v);
        }
        b.put_u8(0);
        Frame::new(tag, b.freeze())
    }

    /// Decodes an ErrorResponse or NoticeResponse body.
    pub fn decode(body: &[u8]) -> Result<ErrorFields, DecodeError> {
        let mut r = BodyReader::new(body, "ErrorResponse");
        let mut f = ErrorFields::error("", "");
        loop {
            let field = r.u8()?;
            if field == 0 {
                break;
            }
            let value = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
            match field {
                b'V' => f.severity = value.into(),
                b'S' if &*f.severity == "ERROR" || f.severity.is_empty() => {
                    f.severity = value.into()
                }
                b'C' => f.code = value,
                b'M' => f.message = value,
                b'D' => f.detail = Some(value),
                b'H' => f.hint = Some(value),
                b'S' => {}
                _ => f
                    .other
                    .get_or_insert_with(Box::default)
                    .0
                    .push((field, value)),
            }
        }
        Ok(f)
    }
}

/// The SQLSTATE of an ErrorResponse body, without decoding the rest.
pub fn error_code(body: &[u8]) -> Option<String> {
    ErrorFields::decode(body).ok().map(|f| f.code)
}

pub fn command_complete(tag: &str) -> Frame {
    let mut b = BytesMut::with_capacity(tag.len() + 1);
    put_cstr(&mut b, tag);
    Frame::new(COMMAND_COMPLETE, b.freeze())
}

/// The tag of a CommandComplete body, e.g. `INSERT 0 1`.
pub fn decode_command_complete(body: &[u8]) -> Result<&str, DecodeError> {
    let mut r = BodyReader::new(body, "CommandComplete");
    let tag = r.cstr_bytes()?;
    std::str::from_utf8(tag).map_err(|_| DecodeError {
        message: "CommandComplete",
        detail: "invalid UTF-8",
    })
}

pub fn parameter_status(name: &str, value: &str) -> Frame {
    let mut b = BytesMut::with_capacity(name.len() + value.len() + 2);
    put_cstr(&mut b, name);
    put_cstr(&mut b, value);
    Frame::new(PARAMETER_STATUS, b.freeze())
}

/// Name and value of a ParameterStatus body.
pub fn decode_parameter_status(body: &[u8]) -> Result<(String, String), DecodeError> {
    let mut r = BodyReader::new(body, "ParameterStatus");
    Ok((r.cstr()?, r.cstr()?))
}

pub fn backend_key_data(pid: i32, secret: i32) -> Frame {
    let mut b = BytesMut::with_capacity(8);
    b.put_i32(pid);
    b.put_i32(secret);
    Frame::new(BACKEND_KEY_DATA, b.freeze())
}

/// Pid and secret of a BackendKeyData body.
pub fn decode_backend_key_data(body: &[u8]) -> Result<(i32, i32), DecodeError> {
    let mut r = BodyReader::new(body, "BackendKeyData");
    let pid = r.i32()?;
    let secret = r.i32()?;
    Ok((pid, secret))
}

/// An Authentication message with a sub-code and extra payload (SASL data, md5 salt).
pub fn authentication(code: i32, payload: &[u8]) -> Frame {
    let mut b = BytesMut::with_capacity(4 + payload.len());
    b.put_i32(code);
    b.put_slice(payload);
    Frame::new(AUTHENTICATION, b.freeze())
}

pub fn authentication_ok() -> Frame {
    authentication(0, &[])
}

pub fn empty_query_response() -> Frame {
    Frame::new(EMPTY_QUERY, Bytes::new())
}

pub fn parse_complete() -> Frame {
    Frame::new(PARSE_COMPLETE, Bytes::new())
}

pub fn bind_complete() -> Frame {
    Frame::new(BIND_COMPLETE, Bytes::new())
}

pub fn close_complete() -> Frame {
    Frame::new(CLOSE_COMPLETE, Bytes::new())
}

pub fn no_data() -> Frame {
    Frame::new(NO_DATA, Bytes::new())
}

/// NegotiateProtocolVersion: the newest minor version supported and the options not recognised.
pub fn negotiate_protocol_version(minor: i32, unknown: &[String]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i32(minor);
    b.put_i32(unknown.len() as i32);
    for o in unknown {
        put_cstr(&mut b, o);
    }
    Frame::new(NEGOTIATE_PROTOCOL_VERSION, b.freeze())
}

/// Type OIDs the proxy uses for the result sets it builds itself.
pub const TEXT_OID: u32 = 25;
pub const INT8_OID: u32 = 20;
/// `void`, what `pg_notify` answers.
pub const VOID_OID: u32 = 2278;

/// A RowDescription for columns the proxy computes itself (text format).
pub fn row_description(columns: &[(&str, u32)]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i16(columns.len() as i16);
    for (name, oid) in columns {
        put_cstr(&mut b, name);
        b.put_u32(0); // table oid
        b.put_i16(0); // column number
        b.put_u32(*oid);
        b.put_i16(match *oid {
            INT8_OID => 8,
            VOID_OID => 4,
            _ => -1,
        });
        b.put_i32(-1); // type modifier
        b.put_i16(0); // text format
    }
    Frame::new(ROW_DESCRIPTION, b.freeze())
}

/// A DataRow of raw column values (any format).
pub fn data_row_bytes(values: &[Option<&[u8]>]) -> Frame {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        match v {
            None => b.put_i32(-1),
            Some(bytes) => {
                b.put_i32(bytes.len() as i32);
                b.put_slice(bytes);
            }
        }
    }
    Frame::new(DATA_ROW, b.freeze())
}

/// A DataRow of text values.
pub fn data_row(values: &[Option<&str>]) -> Frame {
    let raw: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
    data_row_bytes(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_round_trip() {
        let e = ErrorFields::error("0A000", "not supported").with_hint("use a key");
        let f = e.to_frame();
        assert_eq!(f.tag, ERROR_RESPONSE);
        assert_eq!(ErrorFields::decode(&f.body).unwrap(), e);
        assert_eq!(error_code(&f.body).as_deref(), Some("0A000"));
    }

    /// A shard's unique violation, relayed through the fields, keeps its schema, table and
    /// constraint (drivers map errors by them: lib/pq's `Constraint`, psycopg's `diag`).
    #[test]
    fn a_servers_other_fields_survive_a_round_trip() {
        let mut b = BytesMut::new();
        for (field, value) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "23505"),
            (
                b'M',
                "duplicate key value violates unique constraint \"t_pkey\"",
            ),
            (b'D', "Key (id)=(2) already exists."),
            (b's', "public"),
            (b't', "t"),
            (b'n', "t_pkey"),
            (b'F', "nbtinsert.c"),
            (b'L', "664"),
            (b'R', "_bt_check_unique"),
        ] {
            b.put_u8(field);
            put_cstr(&mut b, value);
        }
        b.put_u8(0);
        let e = ErrorFields::decode(&b).unwrap();
        assert_eq!((e.code.as_str(), &*e.severity), ("23505", "ERROR"));
        let other: Vec<(u8, &str)> = e
            .other
            .iter()
            .flat_map(|o| o.0.iter())
            .map(|(f, v)| (*f, v.as_str()))
            .collect();
        assert_eq!(
            other,
            [
                (b's', "public"),
                (b't', "t"),
                (b'n', "t_pkey"),
                (b'F', "nbtinsert.c"),
                (b'L', "664"),
                (b'R', "_bt_check_unique")
            ]
        );
        assert_eq!(ErrorFields::decode(&e.to_frame().body).unwrap(), e);
    }

    #[test]
    fn small_messages_decode() {
        assert_eq!(
            decode_ready_for_query(&ready_for_query(TxStatus::Failed).body).unwrap(),
            TxStatus::Failed
        );
        assert!(decode_ready_for_query(b"").is_err());
        assert_eq!(
            decode_command_complete(&command_complete("INSERT 0 1").body).unwrap(),
            "INSERT 0 1"
        );
        assert_eq!(
            decode_parameter_status(&parameter_status("TimeZone", "UTC").body).unwrap(),
            ("TimeZone".to_string(), "UTC".to_string())
        );
        assert_eq!(
            decode_backend_key_data(&backend_key_data(7, -3).body).unwrap(),
            (7, -3)
        );
        assert!(ErrorFields::decode(b"Cxx").is_err());
    }
}
