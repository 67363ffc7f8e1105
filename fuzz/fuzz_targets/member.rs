//! Member::decode on arbitrary bytes: never panics, and whatever decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodosum_proto::Member;

fuzz_target!(|data: &[u8]| {
    if let Ok(member) = Member::decode(data) {
        assert_eq!(Member::decode(&member.encode()).expect("re-decodes"), member);
    }
});
