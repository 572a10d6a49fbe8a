//! The wire decoders under arbitrary bytes: decoding a client or a server
//! frame returns `Ok` or a `DecodeError`, never panics, and whatever decodes
//! encodes back to a frame that decodes to the same value. The same for
//! the typed content inside MLS application messages (every kind, and
//! kinds of later versions): it decodes or not, its rules check it without
//! panicking, and what decodes encodes (as content) to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = sotto_proto::decode_client(data) {
        let again = sotto_proto::encode_client(&f);
        assert_eq!(sotto_proto::decode_client(&again), Ok(f));
    }
    if let Ok(f) = sotto_proto::decode_server(data) {
        let again = sotto_proto::encode_server(&f);
        assert_eq!(sotto_proto::decode_server(&again), Ok(f));
    }
    if let Some(m) = sotto_core::AppMessage::decode(data) {
        let _ = m.body.check();
        let again = sotto_core::AppMessage::decode(&m.encode());
        assert!(again == Some(m), "typed content does not round-trip");
    }
});
