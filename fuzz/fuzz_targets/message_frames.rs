//! MessageDecoder on arbitrary bytes: never panics, every message respects the limit, and
//! the decoded messages re-encode to exactly the bytes consumed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nodosum_proto::{Limits, MessageDecoder, encode_message};

fuzz_target!(|data: &[u8]| {
    let Some((&max, data)) = data.split_first() else { return };
    let limits = Limits { max_message_size: usize::from(max) * 4, ..Limits::default() };
    let decoder = MessageDecoder::new(&limits);
    let mut buf = BytesMut::from(data);
    let mut again = BytesMut::new();
    while let Ok(Some(msg)) = decoder.decode(&mut buf) {
        assert!(msg.len() <= limits.max_message_size);
        encode_message(&msg, &limits, &mut again).expect("decoded message re-encodes");
    }
    assert_eq!(&again[..], &data[..data.len() - buf.len()]);
});
