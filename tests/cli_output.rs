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
