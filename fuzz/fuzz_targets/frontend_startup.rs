//! The first bytes a client sends: startup-family packets (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage) and then the password-family messages of authentication,
//! exactly as they arrive on the proxy's listening socket.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgshard::backend::session_state::startup_settings;
use pgshard::fuzzing;
use pgshard::wire::frame::{split_frame, split_startup, StartupFrame};
use pgshard::wire::frontend::PASSWORD;

/// What the proxy accepts before authentication (frontend/auth.rs).
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // A client may send SSLRequest/GSSENCRequest first, then the StartupMessage.
    let mut startup_done = false;
    for _ in 0..4 {
        match split_startup(&mut buf) {
            Ok(Some(StartupFrame::Startup { params, .. })) => {
                let _ = startup_settings(&params);
                startup_done = true;
                break;
            }
            Ok(Some(StartupFrame::Ssl | StartupFrame::GssEnc)) => continue,
            Ok(Some(StartupFrame::Cancel { .. })) | Ok(None) | Err(_) => return,
        }
    }
    if !startup_done {
        return;
    }
    // Authentication: the SASLInitialResponse (or a password), then the SASLResponse.
    let mut scram: Option<(String, String)> = None;
    while let Ok(Some(frame)) = split_frame(&mut buf, MAX_AUTH_MESSAGE) {
        if frame.tag != PASSWORD {
            continue;
        }
        let _ = fuzzing::password_message(&frame.body);
        match &scram {
            None => scram = fuzzing::sasl_initial_response(&frame.body),
            Some((gs2, nonce)) => {
                let _ = fuzzing::sasl_response(&frame.body, gs2, nonce);
                // Echoing the client's own nonce reaches the proof check.
                let _ = fuzzing::sasl_response(&frame.body, gs2, &nonce_of(&frame.body));
            }
        }
    }
});

/// The `r=` attribute of a client-final-message, so the nonce check can pass.
fn nonce_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap_or("")
        .to_string()
}
