//! What the e2e tests share: the cluster's client, the chart installed as the suite's release,
//! the operator as a child process with exactly the chart's permissions, applying YAML with
//! server-side apply, and waiting for conditions.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope, pinned_kind};
use kube::{Api, Client, Config, ResourceExt};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

pub const FIELD_MANAGER: &str = "gpubridge-e2e";

/// The suite's helm release of charts/gpubridge, and the namespace it lives in.
pub const RELEASE: &str = "gpubridge";
pub const RELEASE_NAMESPACE: &str = "gpubridge-system";
/// The identity of the chart's ServiceAccount: the operator runs as it, by impersonation.
pub const OPERATOR_USER: &str = "system:serviceaccount:gpubridge-system:gpubridge";
/// Values of the suite's release (the operator runs as a local process, not as the
/// Deployment's pods; the tests install the CRDs themselves).
pub const SUITE_VALUES: &str = "e2e/chart-values.yaml";

/// Whether the suite's release was installed by this test process.
static RELEASE_INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Tests share one control plane; each holds this lock so that they run one at a time whatever
/// the test harness's thread count.
static CLUSTER_LOCK: Mutex<()> = Mutex::const_new(());

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `e2e/cluster.sh` writes the kubeconfig: $GPUBRIDGE_E2E_KUBECONFIG, else
/// $GPUBRIDGE_CACHE/e2e/kubeconfig, the cache defaulting to ~/.cache/gpubridge.
pub fn kubeconfig_path() -> PathBuf {
    if let Some(path) = std::env::var_os("GPUBRIDGE_E2E_KUBECONFIG") {
        return PathBuf::from(path);
    }
    cache_dir().join("e2e/kubeconfig")
}

/// The test bed's cache, $GPUBRIDGE_CACHE or ~/.cache/gpubridge, as the scripts use it.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GPUBRIDGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/gpubridge")
        })
}

pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// The same cluster as the chart's ServiceAccount: what the operator is given.
    pub operator_kubeconfig: PathBuf,
    _guard: MutexGuard<'static, ()>,
}

impl Cluster {
    /// A client with exactly the permissions the chart grants the operator.
    pub async fn operator_client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.operator_kubeconfig).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    /// A command in the repository against this cluster as its administrator, with the control
    /// plane's binaries (kubectl, helm) first on PATH and helm's folders kept out of $HOME.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin_dir()];
        paths.extend(std::env::split_paths(&path));
        let helm_home = std::env::temp_dir().join("gpubridge-e2e-helm");
        let mut command = Command::new(program);
        command
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.join("config"))
            .env("HELM_DATA_HOME", helm_home.join("data"))
            .current_dir(repo());
        command
    }

    /// Runs helm against this cluster; panics when it cannot start.
    pub fn helm(&self, args: &[&str]) -> std::process::Output {
        self.command(bin_dir().join("helm"))
            .args(args)
            .output()
            .expect("helm runs")
    }

    /// Installs or upgrades the suite's release with its values and `extra` arguments.
    pub fn install_release(&self, extra: &[&str]) {
        let mut args = vec![
            "upgrade",
            "--install",
            RELEASE,
            "charts/gpubridge",
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--values",
            SUITE_VALUES,
        ];
        args.extend_from_slice(extra);
        let out = self.helm(&args);
        assert!(
            out.status.success(),
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The folder of the control plane's binaries (`e2e/cluster.sh bin`: built or cached).
pub fn bin_dir() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .args(["e2e/cluster.sh", "bin"])
            .current_dir(repo())
            .stderr(Stdio::inherit())
            .output()
            .expect("e2e/cluster.sh bin runs");
        assert!(out.status.success(), "e2e/cluster.sh bin failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// The admin kubeconfig with every user impersonating the chart's ServiceAccount, written
/// beside it: the API server then authorizes and admits the operator's requests exactly as it
/// would those of the chart's pods.
fn write_operator_kubeconfig(mut kubeconfig: Kubeconfig, path: &Path) -> PathBuf {
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.impersonate = Some(OPERATOR_USER.to_string());
        }
    }
    let target = path.with_extension("operator");
    std::fs::write(&target, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    target
}

/// The e2e cluster, or `None` with a message when none is running (start one with
/// `make cluster-up`). With GPUBRIDGE_E2E_REQUIRED set, as `make e2e` sets it, a missing
/// cluster fails the test instead.
pub async fn cluster(test: &str) -> Option<Cluster> {
    let guard = CLUSTER_LOCK.lock().await;
    let path = kubeconfig_path();
    let required = std::env::var_os("GPUBRIDGE_E2E_REQUIRED").is_some();
    let skip = |why: String| {
        assert!(!required, "{test}: no e2e cluster: {why}");
        eprintln!(
            "SKIPPED {test}: no e2e cluster ({why}); run `make e2e`, or `make cluster-up` first"
        );
        None
    };
    let Ok(kubeconfig) = Kubeconfig::read_from(&path) else {
        return skip(format!("no kubeconfig at {}", path.display()));
    };
    let config =
        match Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
            .await
        {
            Ok(c) => c,
            Err(e) => return skip(format!("kubeconfig {}: {e}", path.display())),
        };
    let client = Client::try_from(config).expect("client from kubeconfig");
    if let Err(e) = client.apiserver_version().await {
        return skip(format!("apiserver does not answer: {e}"));
    }
    let cluster = Cluster {
        client,
        operator_kubeconfig: write_operator_kubeconfig(kubeconfig, &path),
        kubeconfig: path,
        _guard: guard,
    };
    RELEASE_INSTALLED
        .get_or_init(|| async { cluster.install_release(&[]) })
        .await;
    Some(cluster)
}

/// Server-side applies every document of a YAML file or string; returns the applied objects.
pub async fn apply_yaml(client: &Client, yaml: &str) -> Vec<DynamicObject> {
    let mut applied = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("YAML document");
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value).expect("a Kubernetes object");
        let (api, name) = dynamic_api(client, &object).await;
        let patched = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        applied.push(patched);
    }
    applied
}

pub async fn dynamic_api(client: &Client, object: &DynamicObject) -> (Api<DynamicObject>, String) {
    let types = object
        .types
        .as_ref()
        .expect("object has apiVersion and kind");
    let gvk = GroupVersionKind::try_from(types).expect("valid apiVersion");
    let (resource, caps): (ApiResource, ApiCapabilities) = pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discover {gvk:?}: {e}"));
    let api = match (caps.scope, object.namespace()) {
        (Scope::Namespaced, ns) => Api::namespaced_with(
            client.clone(),
            ns.as_deref().unwrap_or("default"),
            &resource,
        ),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
    };
    (api, object.name_any())
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let why = match check().await {
            Ok(value) => return value,
            Err(why) => why,
        };
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator, run as a process against the e2e cluster; killed when dropped.
pub struct Operator {
    /// `None` once killed.
    child: Option<Child>,
    pub http: String,
    /// Where this replica's collector serves lease sidecars.
    pub collector_url: String,
    args: Vec<String>,
    /// The chart ServiceAccount's kubeconfig: the operator has exactly the chart's permissions.
    kubeconfig: PathBuf,
    identity: String,
}

impl Operator {
    pub fn start(cluster: &Cluster, identity: &str) -> Operator {
        Operator::start_with(cluster, identity, &[])
    }

    /// Starts it with extra flags, such as those of the network session. Its collector listens
    /// on a port of its own; lease ends wait at most 20 s for a final receipt.
    pub fn start_with(cluster: &Cluster, identity: &str, extra: &[String]) -> Operator {
        Operator::start_as(identity, extra, &cluster.operator_kubeconfig)
    }

    /// Starts it with extra flags, as whoever `kubeconfig` names.
    pub fn start_as(identity: &str, extra: &[String], kubeconfig: &Path) -> Operator {
        let (port, collector_port) = (free_port(), free_port());
        let collector_url = format!("http://127.0.0.1:{collector_port}");
        let mut args: Vec<String> = [
            "operator",
            "--log-format",
            "text",
            "--namespace",
            "gpubridge-system",
            "--sidecar-image",
            "ghcr.io/gpubridge/gpubridge:e2e",
            "--offer-resync-seconds",
            "30",
            "--collector-status-seconds",
            "1",
            "--final-receipt-grace-seconds",
            "20",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--http-addr".into(),
            format!("127.0.0.1:{port}"),
            "--identity".into(),
            identity.into(),
            "--collector-addr".into(),
            format!("127.0.0.1:{collector_port}"),
            "--collector-url".into(),
            collector_url.clone(),
        ]);
        args.extend(extra.iter().cloned());
        let mut operator = Operator {
            child: None,
            http: format!("http://127.0.0.1:{port}"),
            collector_url,
            args,
            kubeconfig: kubeconfig.to_path_buf(),
            identity: identity.into(),
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("gpubridge-e2e-{}.log", self.identity)))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the operator starts");
        self.child = Some(child);
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (SIGKILL) and starts it again with the same flags and ports.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Kills the process at once, as a crash would (SIGKILL).
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a metric line of this replica reads exactly `line`.
    pub async fn wait_metric(&self, line: &str, timeout: Duration) {
        let url = format!("{}/metrics", self.http);
        eventually(&format!("metric {line}"), timeout, || async {
            let (_, body) = http_get(&url).await?;
            if body.lines().any(|l| l == line) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        })
        .await
    }

    /// Waits until the sample `series` (name and labels) reads at least `min`.
    pub async fn wait_metric_at_least(&self, series: &str, min: u64, timeout: Duration) {
        let url = format!("{}/metrics", self.http);
        eventually(&format!("metric {series} >= {min}"), timeout, || async {
            let (_, body) = http_get(&url).await?;
            match metric(&body, series) {
                Some(v) if v >= min as f64 => Ok(()),
                other => Err(format!("reads {other:?}")),
            }
        })
        .await
    }

    /// Waits until this replica leads, as its metrics say.
    pub async fn wait_leader(&self) {
        let url = format!("{}/metrics", self.http);
        eventually(
            "the operator to lead",
            60 * Duration::from_secs(1),
            || async {
                let (_, body) = http_get(&url).await?;
                if body.lines().any(|l| l == "gpubridge_leader 1") {
                    Ok(())
                } else {
                    Err("not leading".into())
                }
            },
        )
        .await
    }

    /// Waits until the caches are synced and this replica leads.
    pub async fn wait_ready(&self) {
        self.wait_ready_or_standby().await;
        self.wait_leader().await;
    }

    /// Waits until the caches are synced, leading or not.
    pub async fn wait_ready_or_standby(&self) {
        wait_http_ok(
            "the operator to be ready",
            &format!("{}/readyz", self.http),
            Duration::from_secs(30),
        )
        .await;
    }
}

/// The value of the sample `series` (name and labels) in a Prometheus text exposition.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

impl Drop for Operator {
    /// Stops it as Kubernetes would (SIGTERM), so that it releases leadership; kills it if it
    /// has not exited within ten seconds.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
/// A plain HTTP GET on loopback: status code and body. HTTP/1.0, so that no server answers in
/// chunks (large Prometheus answers would).
pub async fn http_get(url: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or("only http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Waits until `url` answers 200, or panics with `what` after `timeout`.
/// The `p`th percentile (nearest rank) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn wait_http_ok(what: &str, url: &str, timeout: Duration) {
    eventually(what, timeout, || async {
        match http_get(url).await {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("{code} {body}")),
            Err(e) => Err(e),
        }
    })
    .await
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The reference network node as a process on a loopback port, with its own data folder; its
/// key is created first so that operators can pin it. Killed when dropped.
pub struct NetworkNode {
    child: Child,
    name: String,
    port: u16,
    pub url: String,
    /// The network's public key, base58.
    pub key: String,
    _dir: tempfile::TempDir,
}

impl NetworkNode {
    pub fn start(name: &str) -> NetworkNode {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("network.key");
        let keygen = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
            .args(["keygen", "--out"])
            .arg(&key_file)
            .output()
            .unwrap();
        assert!(keygen.status.success(), "keygen: {keygen:?}");
        let key = String::from_utf8(keygen.stdout).unwrap().trim().to_string();
        let port = free_port();
        NetworkNode {
            child: Self::spawn(name, port, dir.path()),
            name: name.to_string(),
            port,
            url: format!("http://127.0.0.1:{port}"),
            key,
            _dir: dir,
        }
    }

    fn spawn(name: &str, port: u16, dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("gpubridge-e2e-network-{name}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_gpubridge"))
            .args(["network", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the network node starts")
    }

    /// Kills the node (SIGKILL) and leaves it down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.name, self.port, self._dir.path());
    }

    /// The operator flags that connect it to this node, key pinned.
    pub fn operator_flags(&self) -> Vec<String> {
        vec![
            "--network-url".into(),
            self.url.clone(),
            "--network-key".into(),
            self.key.clone(),
            "--provider-name".into(),
            "e2e".into(),
        ]
    }

    /// A client signing with `key`, once the node answers.
    pub async fn client(
        &self,
        key: ed25519_dalek::SigningKey,
    ) -> gpubridge::wire::client::NetworkClient {
        let target = gpubridge::wire::client::Target {
            url: self.url.clone(),
            ca_file: None,
        };
        let client = gpubridge::wire::client::NetworkClient::new(
            gpubridge::wire::client::channel(&target).unwrap(),
            key,
        );
        eventually(
            "the network node to answer",
            Duration::from_secs(10),
            || async { client.info().await.map(drop).map_err(|e| e.to_string()) },
        )
        .await;
        client
    }
}

impl Drop for NetworkNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus (built by `e2e/build-binaries.sh`) on a loopback port, scraping `targets` every
/// second into its own data folder. Killed when dropped.
pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
                 scrape_configs:\n- job_name: gpubridge\n  static_configs:\n  - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(std::env::temp_dir().join("gpubridge-e2e-prometheus.log"))
            .unwrap();
        let child = Command::new(bin_dir().join("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_http_ok(
            "prometheus to be ready",
            &format!("{}/-/ready", prometheus.url),
            Duration::from_secs(60),
        )
        .await;
        prometheus
    }

    /// Waits until every target has been scraped after the whole second `second` (Unix
    /// seconds), so that queries see the state the targets were in then.
    pub async fn wait_scraped_after(&self, second: i64) {
        let after = second + 1;
        eventually(
            "prometheus to scrape every target again",
            Duration::from_secs(30),
            || async {
                let now = now_unix();
                let stale = self
                    .query_range(&format!("timestamp(up) < {after}"), now, now)
                    .await?;
                let fresh = self
                    .query_range(&format!("timestamp(up) >= {after}"), now, now)
                    .await?;
                if stale.is_empty() && !fresh.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{} targets not scraped since", stale.len()))
                }
            },
        )
        .await
    }

    /// The series `expr` returns over [start, end] (Unix seconds), as the API's `result`.
    pub async fn query_range(
        &self,
        expr: &str,
        start: i64,
        end: i64,
    ) -> Result<Vec<serde_json::Value>, String> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("start", &start.to_string())
            .append_pair("end", &end.to_string())
            .append_pair("step", "1")
            .finish();
        let (code, body) = http_get(&format!("{}/api/v1/query_range?{query}", self.url)).await?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{code}: {body}"));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on a scrape: the exposition parses and follows Prometheus' naming
/// and documentation rules. Returns what promtool said when it did not pass.
pub fn promtool_check_metrics(exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(bin_dir().join("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}
