//! Mycel's RESP request parser on arbitrary bytes arriving in arbitrary pieces: never
//! panics, returns only whole requests (dropping one with a too large argument as it
//! arrives), and keeps every argument within the limits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mycel::resp::{RequestLimits, RequestParser};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let step = usize::from(step.max(1));
    let limits = RequestLimits {
        max_bulk_len: 512,
        max_discard_len: 4096,
        max_args: 16,
        max_inline_len: 256,
    };
    let mut parser = RequestParser::new(limits);
    let mut buf = BytesMut::new();
    let mut args = Vec::new();
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match parser.parse(&mut buf, &mut args) {
                Ok(true) => {
                    assert!(buf.len() < before, "a request must consume input");
                    assert!(args.len() <= limits.max_args);
                    assert!(args.iter().all(|a| a.len() <= limits.max_bulk_len.max(limits.max_inline_len)));
                }
                // More data needed. Nothing was consumed, unless a request with a too
                // large argument is being dropped as it arrives.
                Ok(false) => break,
                // That request is over; the next one follows.
                Err(e) if !e.is_fatal() => {}
                Err(_) => return,
            }
        }
    }
});
