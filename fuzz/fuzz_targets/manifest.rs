//! Any bytes as one of NVIDIA's reference integrity manifests: XML parsing, canonicalization and
//! the signature checks the network node runs.
#![no_main]

use gpubridge::decoders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decoders::manifest(data);
});
