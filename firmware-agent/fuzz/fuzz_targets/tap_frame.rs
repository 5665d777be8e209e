//! Fuzz target: untrusted bytes into the tap-protocol frame decoder and message decoders of
//! `firstkey-agent`. Must never panic, never buffer a frame above the cap, and every message that
//! decodes must re-encode and decode to the same value.
//!
//! The first input byte sets the chunk size the stream is fed in (1..=256 bytes), so frame
//! boundaries land at every position; the rest is the byte stream as a peer would send it.
#![no_main]

use firstkey_agent::protocol::FrameDecoder;
use firstkey_agent::protocol::channel::{
    MAX_CHANNEL_FRAME, decode_agent_message, decode_server_message, encode_agent_message,
    encode_server_message,
};
use firstkey_agent::protocol::tap::{
    MAX_TAP_FRAME, decode_lock_message, decode_presenter_message, encode_lock_message,
    encode_presenter_message,
};
use libfuzzer_sys::fuzz_target;

fn check_payload(payload: &[u8]) {
    if let Ok(m) = decode_presenter_message(payload) {
        let again = encode_presenter_message(&m).expect("encode decoded presenter message");
        assert_eq!(decode_presenter_message(&again).ok(), Some(m));
    }
    if let Ok(m) = decode_lock_message(payload) {
        let again = encode_lock_message(&m).expect("encode decoded lock message");
        assert_eq!(decode_lock_message(&again).ok(), Some(m));
    }
    if payload.len() <= MAX_CHANNEL_FRAME {
        if let Ok(m) = decode_agent_message(payload) {
            let again = encode_agent_message(&m).expect("encode decoded agent message");
            assert_eq!(decode_agent_message(&again).ok(), Some(m));
        }
        if let Ok(m) = decode_server_message(payload) {
            let again = encode_server_message(&m).expect("encode decoded server message");
            assert_eq!(decode_server_message(&again).ok(), Some(m));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    // The payload alone, unframed.
    check_payload(stream);
    // The stream, framed, fed in chunks.
    let mut decoder = FrameDecoder::new(MAX_TAP_FRAME);
    for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_TAP_FRAME);
                    check_payload(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(decoder.buffered() <= stream.len());
});
