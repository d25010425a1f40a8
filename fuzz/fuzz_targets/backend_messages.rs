//! What a server sends, as one byte stream: first through the proxy's login (authentication
//! requests: cleartext, md5, SASL/SCRAM, errors), then framed and decoded message by message as
//! the server connection and the merge read them (ErrorResponse/NoticeResponse, RowDescription,
//! DataRow, CommandComplete, ParameterStatus, BackendKeyData, ReadyForQuery).
#![no_main]

use std::io::Cursor;

use bytes::BytesMut;
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use pgshard::backend::auth::login;
use pgshard::fuzzing;
use pgshard::wire::backend::{self as be, ErrorFields};
use pgshard::wire::frame::split_frame;

/// Larger than any message a server sends during these exchanges in the tests.
const LIMIT: usize = 1 << 20;

/// True when a SASL exchange asks for so many PBKDF2 rounds that one input would take seconds:
/// a server may ask for any count (Postgres allows up to 2^31-1), so that is slow, not a bug.
fn costly_scram(data: &[u8]) -> bool {
    data.windows(2).enumerate().any(|(at, w)| {
        w == b"i="
            && data[at + 2..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
                > 5
    })
}

fuzz_target!(|data: &[u8]| {
    if !costly_scram(data) {
        // The server's half of the login, against the proxy's client side (password "pw").
        let mut stream = tokio::io::join(Cursor::new(data.to_vec()), tokio::io::sink());
        let mut buf = BytesMut::new();
        let done = login(&mut stream, &mut buf, "app", Some("pw")).now_or_never();
        assert!(done.is_some(), "login waited on an in-memory stream");
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, LIMIT) {
        let body = &frame.body[..];
        match frame.tag {
            be::ERROR_RESPONSE | be::NOTICE_RESPONSE => {
                if let Ok(f) = ErrorFields::decode(body) {
                    let _ = f.to_frame();
                }
                let _ = be::error_code(body);
            }
            be::READY_FOR_QUERY => {
                if let Ok(s) = be::decode_ready_for_query(body) {
                    assert_eq!(be::ready_for_query(s).body, body);
                }
            }
            be::COMMAND_COMPLETE => {
                let _ = be::decode_command_complete(body);
            }
            be::PARAMETER_STATUS => {
                let _ = be::decode_parameter_status(body);
            }
            be::BACKEND_KEY_DATA => {
                let _ = be::decode_backend_key_data(body);
            }
            be::ROW_DESCRIPTION => {
                let _ = fuzzing::row_description(body);
            }
            be::DATA_ROW => {
                let _ = fuzzing::first_text_column(body);
                let _ = pgshard::exec::merge::split_row(&frame.body);
            }
            _ => {}
        }
    }
});
