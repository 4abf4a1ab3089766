//! The command line's output when its reader has gone away, as in `gpubridge crdgen | head -1`
//! once `head` has what it wants: the command ends quietly and successfully, as Unix tools do.

use std::path::Path;
use std::process::Command;

use gpubridge::probe::challenge::gpu_seed;
use gpubridge::probe::{Prover, Spec};

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // The read end is closed before the command starts, so its first write meets a closed pipe
    // whatever the timing.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .arg("crdgen")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        stderr.is_empty(),
        "nothing said about the closed pipe: {stderr}"
    );
}

/// A port in use stops the operator at once, naming the flag, before it reads any kubeconfig.
#[test]
fn the_operator_stops_at_once_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args([
            "operator",
            "--sidecar-image=ghcr.io/gpubridge/gpubridge:test",
            &format!("--http-addr={addr}"),
        ])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on {addr} for metrics and probes (--http-addr)"
        )),
        "{stderr}"
    );
}

/// `probe-engine` says where a probe would run, and a calibration run prints the figures a
/// band is set from; `--require cuda` on a machine without CUDA fails naming what is missing.
#[test]
fn the_probe_engine_reports_where_a_probe_runs_and_calibrates() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpubridge-sidecar"))
        .args([
            "probe-engine",
            "--calibrate",
            "--engine=cpu",
            "--memory-mib=1",
            "--size=16",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("nvrtc: ")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("cuda: ")), "{stdout}");
    // 90 % of 1 MiB (943,722 bytes, rounded up) in tiles of 6 × 16² bytes.
    let calibration = stdout
        .lines()
        .find(|l| {
            l.starts_with("calibration (cpu engine): 615 tiles of 16² (1 MiB) multiplied in ")
        })
        .unwrap_or_else(|| panic!("no calibration line in {stdout}"));
    let throughput = calibration
        .strip_suffix(" GOPS")
        .and_then(|l| l.rsplit(' ').next())
        .map(str::parse::<u64>);
    assert!(matches!(throughput, Some(Ok(_))), "{calibration}");
    // The root is the reference's for the calibration's fixed nonce, and the product was
    // checked before any figure was printed.
    let spec = Spec::filling(1 << 20, 16);
    let reference = Prover::remaking(spec, &gpu_seed(&[0x5a; 32], 0)).commitment();
    let root = format!("root: {}", hex::encode(reference));
    assert!(stdout.lines().any(|l| l == root), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == "checked: 16 rounds of 2 rows, as the network checks a lease's probe"),
        "{stdout}"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_gpubridge-sidecar"))
        .args(["probe-engine", "--require=cuda"])
        .env("LD_LIBRARY_PATH", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    if !Path::new("/dev/nvidiactl").exists() {
        assert!(!missing.status.success());
        assert!(stderr.contains("libcuda.so.1"), "{stderr}");
    }
}
