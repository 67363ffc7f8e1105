//! StreamInit::decode on arbitrary bytes under arbitrary limits: never panics, consumes
//! only a whole valid frame, and what it accepts re-encodes to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nodosum_proto::{Limits, StreamInit};

fuzz_target!(|data: &[u8]| {
    let Some((&max, data)) = data.split_first() else { return };
    let limits = Limits { max_app_id_len: usize::from(max), ..Limits::default() };
    let mut buf = BytesMut::from(data);
    match StreamInit::decode(&mut buf, &limits) {
        Ok(Some(frame)) => {
            let used = data.len() - buf.len();
            assert_eq!(used, frame.encoded_len());
            assert!(frame.app_id.as_str().len() <= usize::from(max));
            let mut out = BytesMut::new();
            frame.encode(&limits, &mut out).expect("decoded frame re-encodes");
            assert_eq!(&out[..], &data[..used]);
        }
        Ok(None) | Err(_) => assert_eq!(buf.len(), data.len()),
    }
});
