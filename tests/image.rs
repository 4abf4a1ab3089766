//! The image's two recipes stay one: `packaging/build-image.sh`, which builds the image without a
//! container engine, takes the labels, environment, user, entrypoint, command, binaries and
//! NVRTC's libraries from the Dockerfile's runtime stage, and refuses a runtime stage holding
//! anything it does not reproduce.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn print_config(dockerfile: &Path) -> Output {
    Command::new("bash")
        .arg(root().join("packaging/build-image.sh"))
        .arg("--print-config")
        .arg(dockerfile)
        .output()
        .unwrap()
}

#[test]
fn the_engine_free_image_is_configured_as_the_dockerfile_says() {
    let out = print_config(&root().join("Dockerfile"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    for line in [
        "user 65532:65532",
        "entrypoint /usr/local/bin/gpubridge",
        "cmd operator",
        "copy /out/gpubridge /out/gpubridge-sidecar",
        "nvrtc /nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 \
         /nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9 -> /usr/local/lib/gpubridge/",
        "env LD_LIBRARY_PATH=/usr/local/lib/gpubridge",
        "label org.opencontainers.image.title=gpubridge",
        "label org.opencontainers.image.licenses=Apache-2.0",
        &format!(
            "label org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in\n{stdout}");
    }
}

#[test]
fn a_runtime_stage_the_script_cannot_reproduce_stops_it() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, String); 6] = [
        (
            "ENV RUST_LOG debug",
            dockerfile.replace("USER 65532", "ENV RUST_LOG debug\nUSER 65532"),
        ),
        (
            "COPY --from=build /out/gpubridge /etc/",
            dockerfile.replace(
                "USER 65532",
                "COPY --from=build /out/gpubridge /etc/\nUSER 65532",
            ),
        ),
        (
            "COPY packaging/nvrtc.sh /usr/local/lib/gpubridge/",
            dockerfile.replace(
                "USER 65532",
                "COPY packaging/nvrtc.sh /usr/local/lib/gpubridge/\nUSER 65532",
            ),
        ),
        (
            "RUN mkdir /data",
            dockerfile.replace("USER 65532", "RUN mkdir /data\nUSER 65532"),
        ),
        (
            "EXPOSE 8080",
            dockerfile.replace("USER 65532", "EXPOSE 8080\nUSER 65532"),
        ),
        (
            "FROM docker.io/library/debian:12",
            dockerfile.replace(
                "FROM gcr.io/distroless/cc-debian12:nonroot",
                "FROM docker.io/library/debian:12",
            ),
        ),
    ];
    for (added, text) in cases {
        assert_ne!(text, dockerfile, "{added}: the edit applies");
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, text).unwrap();
        let out = print_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{added}: accepted");
        assert!(stderr.contains(added), "{added}: {stderr}");
    }
}
