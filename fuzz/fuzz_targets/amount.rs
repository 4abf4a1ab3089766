//! Any text as an amount: parses only canonical integers, and round-trips them.
#![no_main]

use gpubridge::decoders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decoders::amount(data);
});
