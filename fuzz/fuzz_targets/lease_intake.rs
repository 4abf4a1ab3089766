//! Any bytes as a lease from the network, through the operator's intake verification.
#![no_main]

use gpubridge::decoders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decoders::lease(data);
});
