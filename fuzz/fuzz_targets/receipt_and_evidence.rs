//! Any bytes as a meter receipt or attestation evidence signed by the lease key, through the
//! checks the collector and the network node run.
#![no_main]

use gpubridge::decoders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decoders::receipt_and_evidence(data);
});
