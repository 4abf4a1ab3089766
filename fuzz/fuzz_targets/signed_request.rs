//! Any bytes as a signed request of every kind: opening never panics, and what opens verified.
#![no_main]

use gpubridge::decoders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decoders::signed_request(data);
});
