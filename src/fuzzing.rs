//! Entry points for the fuzz targets in `fuzz/` (built only with the `fuzzing` feature): the
//! decoders that are private to their modules, reachable without widening the crate's API.
//! Each function runs one decoder on untrusted bytes; any panic inside is a bug.

use crate::frontend::auth;

/// The client's SASLInitialResponse (mechanism, length, client-first-message) as the proxy's
/// SCRAM server parses it. Returns the gs2 header and nonce it would go on with.
pub fn sasl_initial_response(body: &[u8]) -> Option<(String, String)> {
    let first = auth::parse_sasl_initial_response(body).ok()?;
    let parsed = auth::parse_client_first(first).ok()?;
    Some((
        parsed.gs2_header.to_string(),
        parsed.client_nonce.to_string(),
    ))
}

/// The client's SASLResponse (client-final-message), checked against a gs2 header and nonce.
pub fn sasl_response(body: &[u8], gs2_header: &str, nonce: &str) -> bool {
    auth::parse_client_final(body, gs2_header, nonce).is_ok()
}

/// A PasswordMessage body (cleartext or md5): its NUL-terminated text, and whether it has the
/// shape of an md5 hash.
pub fn password_message(body: &[u8]) -> Option<bool> {
    let text = auth::cstr_body(body, "password packet").ok()?;
    Some(std::str::from_utf8(text).is_ok_and(crate::config::is_md5_hash))
}

/// The message of a CopyFail body, as the proxy passes it to the shards.
pub fn copy_fail_message(body: &[u8]) -> String {
    crate::exec::copy_in::fe_cstr(body)
}

/// A server's RowDescription as the merge reads it. Returns the number of fields, after checking
/// that encoding the decoded fields gives back the very bytes.
pub fn row_description(body: &[u8]) -> Option<usize> {
    let fields = crate::exec::merged::decode_row_description(body)?;
    let again = crate::exec::merged::encode_row_description(&fields);
    assert_eq!(&again.body[..], body, "RowDescription does not round-trip");
    Some(fields.len())
}

/// The first column of a server's DataRow as text, as the proxy reads one-value answers.
pub fn first_text_column(body: &[u8]) -> Option<String> {
    crate::backend::conn::text_columns(body)?
        .into_iter()
        .next()
        .flatten()
}

/// The (type OID, format) of each field of a server's RowDescription, as the merge reads them.
pub fn row_description_types(body: &[u8]) -> Option<Vec<(u32, i16)>> {
    let fields = crate::exec::merged::decode_row_description(body)?;
    Some(fields.iter().map(|f| (f.type_oid, f.format)).collect())
}
