//! Verification's costs, side by side: NVIDIA CC evidence verified (chain of five ECDSA P-384
//! signatures, the report's signature, parsing), one of NVIDIA's RIMs verified (canonicalizing
//! the document twice, SHA-384, four certificates and the XML signature) and compared, and the GPU challenge on the CPU path — the
//! probe's work for one tile (generate A and B, multiply) against the verifier's for one round on
//! it (regenerate, Freivalds, one row opened); and the network's default probe of one GPU whole,
//! the probe's work against the network's check of its answers; and the host's tree over a GPU
//! probe's rows. `make bench` prints them.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gpubridge::attestation::nvidia::{Claimed, PinnedRoot, verify_gpu};
use gpubridge::attestation::rim::{compare, verify_rim};
use gpubridge::commitment::merkle::{self, Hash, Tree};
use gpubridge::node::Params;
use gpubridge::probe::challenge::{check_gpu, gpu_rounds, gpu_seed};
use gpubridge::probe::{Matrix, Prover, Spec, generate, multiply, rounds, verify_round};

const REPORT: &str = include_str!("../src/attestation/testdata/hopperAttestationReport.txt");
const CHAIN: &[u8] = include_bytes!("../src/attestation/testdata/hopperCertChain.txt");

fn cc_evidence(c: &mut Criterion) {
    let report = hex::decode(REPORT.trim()).unwrap();
    let nonce =
        hex::decode("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb").unwrap();
    let root = PinnedRoot::nvidia_device();
    let claimed = Claimed {
        nonce: &nonce,
        driver: "550.90.07",
        vbios: "96.00.9F.00.01",
        ocsp: &[],
    };
    c.bench_function(
        "cc evidence: verify one H100 sample (chain + report)",
        |b| {
            b.iter(|| {
                verify_gpu(black_box(&report), CHAIN, &claimed, &root, 1_796_083_200).unwrap()
            })
        },
    );
}

fn reference_manifest(c: &mut Criterion) {
    const RIM: &[u8] = include_bytes!("../src/attestation/testdata/Driver_RIM_test_no_gpu.swidtag");
    const TEST_REPORT: &str =
        include_str!("../src/attestation/testdata/testNoGpuAttestationReport.txt");
    const TEST_CHAIN: &[u8] = include_bytes!("../src/attestation/testdata/gpuAkCertChain.txt");
    // 2024-06-01, when the manifest's signer was valid.
    const AT: i64 = 1_717_200_000;
    let root = PinnedRoot::nvidia_rim();
    c.bench_function(
        "rim: verify NVIDIA's driver RIM (20 KiB, signature + chain)",
        |b| b.iter(|| verify_rim(black_box(RIM), &root, AT).unwrap()),
    );
    let manifest = verify_rim(RIM, &root, AT).unwrap();
    let nonce =
        hex::decode("4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e").unwrap();
    let claimed = Claimed {
        nonce: &nonce,
        driver: "545.00",
        vbios: "96.00.5e.00.01",
        ocsp: &[],
    };
    let report = hex::decode(TEST_REPORT.trim()).unwrap();
    let gpu = verify_gpu(
        &report,
        TEST_CHAIN,
        &claimed,
        &PinnedRoot::nvidia_device(),
        AT,
    )
    .unwrap();
    c.bench_function("rim: compare one GPU's 64 measurements with it", |b| {
        b.iter(|| compare(black_box(&gpu), Some(&manifest), None).unwrap())
    });
}

fn challenge(c: &mut Criterion) {
    let seed = [7; 32];
    let mut group = c.benchmark_group("challenge, CPU path");
    group.sample_size(10);
    for size in [128u32, 256, 512] {
        let spec = Spec { size, tiles: 1 };
        group.bench_function(
            format!("probe: one {size}² tile (generate + multiply)"),
            |b| {
                b.iter(|| {
                    let a = generate(&seed, size, 0, Matrix::A);
                    let m = generate(&seed, size, 0, Matrix::B);
                    multiply(black_box(&a), &m, size)
                })
            },
        );
        let prover = Prover::run(spec, &seed);
        let root = prover.commitment();
        let round = rounds(&spec, &[9; 32], 1, 1).remove(0);
        let answer = prover.answer(&round);
        group.bench_function(
            format!("verifier: one round on a {size}² tile, one row"),
            |b| b.iter(|| verify_round(&spec, &seed, &root, black_box(&round), &answer).unwrap()),
        );
    }
    group.finish();
}

/// The probe a lease of one GPU of an uncalibrated model runs under the default parameters
/// (90 % of 16 MiB in 256² tiles, 16 rounds of two rows), as the pod's probe runs it and as a
/// validator checks the answers in a block.
fn default_probe(c: &mut Criterion) {
    let rules = Params::default().probe_rules();
    let spec = rules.spec("a model with no calibration");
    let nonce = [3; 32];
    let seed = gpu_seed(&nonce, 0);
    let mut group = c.benchmark_group("the default probe, one GPU");
    group.sample_size(10);
    group.bench_function(
        format!(
            "probe: {} tiles of {}², products and commitment",
            spec.tiles, spec.size
        ),
        |b| b.iter(|| Prover::run(black_box(spec), &seed).commitment()),
    );
    let prover = Prover::run(spec, &seed);
    let root = prover.commitment();
    let checks = [4; 32];
    let answers: Vec<_> = gpu_rounds(&rules, &spec, &checks, 0)
        .iter()
        .map(|r| prover.answer(r))
        .collect();
    group.bench_function(
        format!(
            "network: check {} rounds of {} rows",
            rules.rounds, rules.rows
        ),
        |b| {
            b.iter(|| {
                check_gpu(
                    &rules,
                    &spec,
                    &nonce,
                    &checks,
                    0,
                    &root,
                    black_box(&answers),
                )
                .unwrap()
            })
        },
    );
    group.finish();
}

/// The host's share of a GPU probe's commitment, now that the GPU hashes the rows: the tree
/// over the rows' leaves, which answers every round's paths, beside the plain recursive root of
/// the same leaves on one core. 2^22 leaves are a 21st of a full H200's 88 million (256² tiles).
fn probe_tree(c: &mut Criterion) {
    let leaves: Vec<Hash> = (0u32..1 << 22)
        .map(|i| merkle::leaf(&i.to_le_bytes()))
        .collect();
    let mut group = c.benchmark_group("a GPU probe's tree on the host, 2^22 rows");
    group.sample_size(10);
    group.bench_function("Tree::new, blocks on every core", |b| {
        b.iter(|| Tree::new(black_box(leaves.clone())).root())
    });
    group.bench_function("baseline: merkle::root on one core", |b| {
        b.iter(|| merkle::root(black_box(&leaves)))
    });
    group.finish();
}

criterion_group!(
    benches,
    cc_evidence,
    reference_manifest,
    challenge,
    default_probe,
    probe_tree
);
criterion_main!(benches);
