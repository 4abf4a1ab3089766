//! Any bytes as an offer or order body, through the field rules.
#![no_main]

use gpubridge::decoders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decoders::bodies(data);
});
