//! Generates the Rust types and tonic clients and servers from `proto/`: the network's protocol
//! and the kubelet's device plugin API.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/gpubridge/network/v1/network.proto",
                "proto/gpubridge/network/v1/collector.proto",
                "proto/gpubridge/network/v1/chain.proto",
                "proto/gpubridge/network/v1/relay.proto",
                "proto/k8s/deviceplugin/v1beta1/api.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
