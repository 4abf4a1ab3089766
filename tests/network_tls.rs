//! The gateway over TLS: a client trusting the node's CA talks to it; one that does not, and a
//! plaintext client, are refused. The certificate is made here with the openssl command line.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use gpubridge::identity::generate_key;
use gpubridge::wire::client::{NetworkClient, Target, channel};
use support::network::{KillOnDrop, free_port};

fn client(url: String, ca_file: Option<std::path::PathBuf>) -> NetworkClient {
    NetworkClient::new(channel(&Target { url, ca_file }).unwrap(), generate_key())
}

#[tokio::test]
async fn the_gateway_serves_tls_to_clients_that_trust_its_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // openssl with its arguments as one line of words.
    let openssl = |line: &str| {
        let ok = Command::new("openssl")
            .args(line.split_whitespace())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs")
            .success();
        assert!(ok, "openssl {line}");
    };
    // A CA, and the node's certificate signed by it for 127.0.0.1.
    std::fs::write(
        path("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    for line in [
        "ecparam -name prime256v1 -genkey -noout -out ca.key",
        "req -x509 -new -key ca.key -days 1 -subj /CN=test-ca -out ca.crt",
        "ecparam -name prime256v1 -genkey -noout -out tls.key",
        "req -new -key tls.key -subj /CN=gpubridge-network -out tls.csr",
        "x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out tls.crt",
    ] {
        openssl(line);
    }
    let (ca, cert, key) = (path("ca.crt"), path("tls.crt"), path("tls.key"));
    let port = free_port();
    let _node = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_gpubridge"))
            .args(["network", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let trusting = client(format!("https://127.0.0.1:{port}"), Some(ca));
    let mut answered = Err(tonic::Status::unavailable("not tried"));
    for _ in 0..100 {
        answered = trusting.info().await;
        if answered.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = answered.expect("a client trusting the CA is served over TLS");
    assert_eq!(info.protocol, "gpubridge.network.v1");
    assert_eq!(info.network_key.len(), 32);

    let untrusting = client(format!("https://127.0.0.1:{port}"), None);
    assert!(
        untrusting.info().await.is_err(),
        "an unknown issuer is refused"
    );
    let plaintext = client(format!("http://127.0.0.1:{port}"), None);
    assert!(plaintext.info().await.is_err(), "plaintext is refused");
}
