//! What a client sends after startup, as one byte stream: framed with the size limit, then every
//! message the proxy decodes (Query, Parse, Bind, Describe, Close, Execute, password and SASL
//! messages, CopyData/CopyDone/CopyFail). A `COPY … FROM STDIN` query sets up the COPY splitter
//! its options describe, and the CopyData that follows goes through it as in the session.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgshard::config::ShardedTableConfig;
use pgshard::exec::copy_split::{CopySplitter, SplitSpec};
use pgshard::fuzzing;
use pgshard::router::{Router, StatementKind};
use pgshard::wire::frame::split_frame;
use pgshard::wire::frontend::{
    self as fe, Bind, Execute, Parse, Target, BIND, CLOSE, COPY_DATA, COPY_DONE, COPY_FAIL,
    DESCRIBE, EXECUTE, PARSE, PASSWORD, QUERY,
};

/// Small enough that the fuzzer meets the limit, large enough for real messages.
const LIMIT: usize = 64 * 1024;

fn router() -> Router {
    let table = |name: &str| ShardedTableConfig {
        name: name.into(),
        key: "user_id".into(),
        key_type: None,
    };
    Router::new(&[table("users"), table("orders")], 64)
}

/// The splitter a COPY FROM STDIN statement asks for, keyed on its first listed column.
fn copy_splitter(router: &Router, sql: &str) -> Option<CopySplitter> {
    let (facts, _) = router.analyze_simple(sql);
    let f = facts.first()?;
    if f.kind != (StatementKind::Copy { from_stdin: true }) {
        return None;
    }
    let copy = f.copy.as_deref()?;
    let key = f.shard_key.clone().map(|(_, k)| k).unwrap_or_default();
    let index = copy
        .columns
        .as_ref()
        .and_then(|c| c.iter().position(|c| *c == key))
        .unwrap_or(0);
    Some(CopySplitter::new(SplitSpec::from_facts(copy, index, &key)))
}

fuzz_target!(|data: &[u8]| {
    let router = router();
    let mut buf = BytesMut::from(data);
    let mut copy: Option<CopySplitter> = None;
    let mut scram: Option<(String, String)> = None;
    while let Ok(Some(frame)) = split_frame(&mut buf, LIMIT) {
        let body: &Bytes = &frame.body;
        match frame.tag {
            QUERY => {
                if let Ok(sql) = fe::decode_query(body) {
                    // Parsing is the router target's job: only COPY statements are analysed.
                    copy = if sql.to_ascii_lowercase().contains("copy") {
                        copy_splitter(&router, sql)
                    } else {
                        None
                    };
                }
            }
            PARSE => {
                if let Ok(p) = Parse::decode(body) {
                    assert_eq!(Parse::decode(&p.encode().body).as_ref(), Ok(&p));
                }
            }
            BIND => {
                if let Ok(b) = Bind::decode(body) {
                    assert_eq!(Bind::decode(&b.encode().body).as_ref(), Ok(&b));
                    for i in 0..b.params.len() {
                        let _ = b.param_format(i);
                    }
                }
            }
            DESCRIBE | CLOSE => {
                let name = if frame.tag == DESCRIBE {
                    "Describe"
                } else {
                    "Close"
                };
                if let Ok(t) = Target::decode(body, name) {
                    assert_eq!(Target::decode(&t.encode(frame.tag).body, name), Ok(t));
                }
            }
            EXECUTE => {
                if let Ok(e) = Execute::decode(body) {
                    assert_eq!(Execute::decode(&e.encode().body), Ok(e));
                }
            }
            PASSWORD => {
                let _ = fuzzing::password_message(body);
                match &scram {
                    None => scram = fuzzing::sasl_initial_response(body),
                    Some((gs2, nonce)) => {
                        let _ = fuzzing::sasl_response(body, gs2, nonce);
                    }
                }
            }
            COPY_DATA => {
                if let Some(s) = copy.as_mut() {
                    if s.feed(body, |_, _| {}).is_err() {
                        copy = None;
                    }
                }
            }
            COPY_DONE => {
                if let Some(mut s) = copy.take() {
                    let _ = s.finish(|_, _| {});
                }
            }
            COPY_FAIL => {
                copy = None;
                let _ = fuzzing::copy_fail_message(body);
            }
            _ => {}
        }
    }
});
