//! The wire decoder under arbitrary bytes: decoding a client or a server
//! frame returns `Ok` or a `DecodeError`, never panics, and whatever decodes
//! encodes back to a frame that decodes to the same value.
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
});
