//! Keyring::open on arbitrary datagrams never panics and never authenticates a forgery;
//! sealing the same bytes always opens again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodosum_proto::{Key, Keyring};
use rand::SeedableRng;
use rand::rngs::StdRng;

fuzz_target!(|data: &[u8]| {
    let mut ring = Keyring::new(Key::from_bytes([7; 32]));
    ring.install(Key::from_bytes([9; 32]));
    assert!(ring.open("fuzz", data).is_err(), "a forged datagram was accepted");
    let sealed = ring.seal("fuzz", data, &mut StdRng::seed_from_u64(data.len() as u64));
    assert_eq!(ring.open("fuzz", &sealed).expect("own datagram opens"), data);
});
