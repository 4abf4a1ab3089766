//! kwok runs no containers, so the harness runs each lease pod's probe, then its sidecars, as
//! local processes, in the pod's order: with the pod's own arguments, its identity Secret written to a private folder, its downward-
//! API values, and a simulated GPU.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gpubridge::workload::{
    ATTEST_CONTAINER, IDENTITY_SECRET, METER_CONTAINER, POD_NAME, PROBE_CONTAINER, namespace_for,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, Client};

/// One lease pod's meter and attest processes.
pub struct Sidecars {
    pub lease: String,
    dir: tempfile::TempDir,
    meter_args: Vec<String>,
    attest_args: Vec<String>,
    pub meter: Option<Child>,
    attest: Option<Child>,
}

/// The container's arguments with the pod's mount paths moved into `dir`.
fn local_args(pod: &Pod, container: &str, dir: &std::path::Path) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    let c = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == container)
        .unwrap_or_else(|| panic!("the pod has a {container} sidecar"));
    c.args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            if a.starts_with("--identity-dir=") {
                format!("--identity-dir={}", dir.join("identity").display())
            } else if a.starts_with("--receipts-dir=") {
                format!("--receipts-dir={}", dir.join("receipts").display())
            } else {
                a
            }
        })
        .collect()
}

impl Sidecars {
    /// Reads the lease pod and its identity Secret, runs its GPU probe to its end as the kubelet
    /// runs the first init container, then starts both sidecars, the meter sealing a receipt
    /// every `receipt_seconds`.
    pub async fn start(client: &Client, lease: &str, receipt_seconds: u64) -> Sidecars {
        let mut sidecars = Sidecars::probed(client, lease, receipt_seconds).await;
        sidecars.start_sidecars();
        sidecars
    }

    /// The same up to the probe's pass: the sidecars not started yet.
    pub async fn probed(client: &Client, lease: &str, receipt_seconds: u64) -> Sidecars {
        let namespace = namespace_for(lease);
        let pod = Api::<Pod>::namespaced(client.clone(), &namespace)
            .get(POD_NAME)
            .await
            .unwrap();
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get(IDENTITY_SECRET)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity");
        std::fs::create_dir_all(&identity).unwrap();
        std::fs::create_dir_all(dir.path().join("receipts")).unwrap();
        for (name, value) in secret.data.unwrap() {
            std::fs::write(identity.join(name), value.0).unwrap();
        }
        let uid = pod.metadata.uid.clone().unwrap();
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        let common = |mut args: Vec<String>| {
            args.extend(
                [
                    "--gpu-source=simulated",
                    "--simulated-gpus=1",
                    "--log-format=text",
                ]
                .map(String::from),
            );
            args.push(format!("--simulated-seed={node}"));
            args
        };
        let mut meter_args = common(local_args(&pod, METER_CONTAINER, dir.path()));
        meter_args.extend([
            format!("--receipt-seconds={receipt_seconds}"),
            "--http-addr=127.0.0.1:0".to_string(),
        ]);
        let mut attest_args = common(local_args(&pod, ATTEST_CONTAINER, dir.path()));
        attest_args.extend([
            "--poll-seconds=1".to_string(),
            format!("--pod-uid={uid}"),
            format!("--node-name={node}"),
        ]);
        let sidecars = Sidecars {
            lease: lease.to_string(),
            dir,
            meter_args,
            attest_args,
            meter: None,
            attest: None,
        };
        let mut probe_args = local_args(&pod, PROBE_CONTAINER, sidecars.dir.path());
        probe_args.extend(["--log-format=text", "--retry-seconds=1"].map(String::from));
        let mut probe = sidecars.spawn("probe", &probe_args);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = probe.try_wait().unwrap() {
                assert!(status.success(), "the lease's GPU probe passed: {status}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the GPU probe did not end within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sidecars
    }

    /// Starts the meter and the attest sidecar, as the kubelet does once the probe ended.
    pub fn start_sidecars(&mut self) {
        self.start_meter();
        self.attest = Some(self.spawn("attest", &self.attest_args.clone()));
    }

    fn spawn(&self, name: &str, args: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("gpubridge-e2e-{name}-{}.log", self.lease)))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_gpubridge-sidecar"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the sidecar starts")
    }

    pub fn start_meter(&mut self) {
        self.meter = Some(self.spawn("meter", &self.meter_args.clone()));
    }

    /// SIGKILL: a crash, with no final receipt.
    pub fn kill_meter(&mut self) {
        if let Some(mut child) = self.meter.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as the kubelet stops a sidecar, and waits for it to exit.
    pub fn stop_meter(&mut self) {
        if let Some(mut child) = self.meter.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "the meter stopped cleanly: {status}");
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("the meter did not stop within 30 s of SIGTERM");
        }
    }

    pub fn meter_pid(&self) -> Option<u32> {
        self.meter.as_ref().map(Child::id)
    }

    pub fn receipts_dir(&self) -> PathBuf {
        self.dir.path().join("receipts")
    }

    pub fn identity_dir(&self) -> PathBuf {
        self.dir.path().join("identity")
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        for child in [self.meter.take(), self.attest.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `/proc/<pid>/status` field in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident memory (KiB) and CPU time (clock ticks) of a process, from /proc.
pub fn footprint(pid: u32) -> Option<(u64, u64)> {
    let rss = status_kib(pid, "VmRSS:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}
