//! The command line's output when its reader has gone away, as in `gpubridge crdgen | head -1`
//! once `head` has what it wants: the command ends quietly and successfully, as Unix tools do.

use std::process::Command;

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
