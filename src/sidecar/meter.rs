//! `gpubridge-sidecar meter`: samples the lease's GPUs, seals a receipt every interval, logs it
//! on the pod's emptyDir, and delivers the log to the collector until each receipt is
//! acknowledged.
//! On SIGTERM it seals a final receipt and tries to deliver it before the pod goes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use prost::Message;
use tracing::{error, info, warn};

use super::gpu::GpuSourceArgs;
use crate::gpu::{DeviceInfo, GpuSource};
use crate::identity::LeaseCredentials;
use crate::identity::lease_files::{self, LeaseFilesError};
use crate::metering::access;
use crate::metering::chain::{WindowReport, seal_receipt};
use crate::metering::window::Window;
use crate::process::http::{self, Probe};
use crate::process::shutdown::Shutdown;
use crate::process::telemetry::LogFormat;
use crate::sidecar::client::{LeaseArgs, SidecarClient};
use crate::sidecar::receipt_log::{LogError, ReceiptLog};
use crate::wire::proto::{AccessUsage, Attribution, Signed};

/// Receipts per delivery, and their encoded size, kept well under the collector's body limit.
const DELIVERY_MAX_RECEIPTS: usize = 64;
const DELIVERY_MAX_BYTES: usize = 96 * 1024;
/// How long a stopping meter tries to deliver its final receipt: inside the pod's 30 s grace.
const FINAL_DELIVERY_DEADLINE: Duration = Duration::from_secs(20);
/// How long sealing a receipt waits for the lease's access count.
const ACCESS_COUNT_WITHIN: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug, Clone)]
pub struct MeterArgs {
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// GPUs the lease was allocated: allocated time is this × the window.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gpus: u32,
    /// Folder of the receipt log (the pod's emptyDir).
    #[arg(long)]
    pub receipts_dir: PathBuf,
    /// Seconds between two samples of each GPU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub sample_seconds: u64,
    /// Seconds between two receipts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub receipt_seconds: u64,
    /// Address of the meter's /metrics.
    #[arg(
        long,
        env = "GPUBRIDGE_METER_HTTP_ADDR",
        default_value = "0.0.0.0:9464"
    )]
    pub http_addr: SocketAddr,
    #[arg(long, env = "GPUBRIDGE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub gpu: GpuSourceArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("lease identity: {0}")]
    Identity(#[from] LeaseFilesError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Collector(String),
    #[error("cannot serve /metrics on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct MeterMetrics {
    registry: Registry,
    sealed: IntCounter,
    acknowledged: IntGauge,
    pending: IntGauge,
    delivery_failures: IntCounter,
    sample_failures: IntCounter,
}

impl MeterMetrics {
    fn new() -> MeterMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        MeterMetrics {
            sealed: counter(
                "gpubridge_meter_receipts_sealed_total",
                "Receipts sealed and logged",
            ),
            acknowledged: gauge(
                "gpubridge_meter_acknowledged_sequence",
                "Highest receipt sequence the collector acknowledged",
            ),
            pending: gauge(
                "gpubridge_meter_pending_receipts",
                "Logged receipts not yet acknowledged",
            ),
            delivery_failures: counter(
                "gpubridge_meter_delivery_failures_total",
                "Deliveries to the collector that failed (they are retried)",
            ),
            sample_failures: counter(
                "gpubridge_meter_sample_failures_total",
                "GPU readings that failed",
            ),
            registry,
        }
    }
}

impl Probe for MeterMetrics {
    fn ready(&self) -> bool {
        true
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }
}

/// Which GPUs to read and what the receipts may claim from them.
fn attribution(devices: &[DeviceInfo], gpus: u32) -> Attribution {
    if devices.is_empty() {
        Attribution::AllocationOnly
    } else if devices.iter().any(|d| d.shared) {
        Attribution::Modelled
    } else if devices.len() == gpus as usize {
        Attribution::Measured
    } else {
        // It sees GPUs that are not (only) the lease's: nothing it reads can be attributed.
        Attribution::AllocationOnly
    }
}

struct Meter {
    args: MeterArgs,
    source: Option<Box<dyn GpuSource>>,
    devices: Vec<DeviceInfo>,
    attribution: Attribution,
    log: ReceiptLog,
    window: Window,
    first_start_ms: i64,
    credentials: LeaseCredentials,
    client: SidecarClient,
    metrics: MeterMetrics,
}

impl Meter {
    fn sample(&mut self) {
        let Some(source) = &self.source else { return };
        if self.attribution == Attribution::AllocationOnly {
            return;
        }
        for device in &self.devices {
            match source.sample(&device.uuid) {
                Ok(sample) => self.window.record(&device.uuid, sample),
                Err(e) => {
                    self.metrics.sample_failures.inc();
                    warn!(error = %e, "GPU reading failed");
                }
            }
        }
    }

    /// What the buyer's access added since the logged receipts, by the operator's count; none
    /// when the collector cannot say now (the next window carries it).
    async fn access_increment(&self) -> Option<AccessUsage> {
        let count = match tokio::time::timeout(ACCESS_COUNT_WITHIN, self.client.access_count())
            .await
        {
            Ok(Ok(count)) => count,
            Ok(Err(status)) => {
                warn!(code = ?status.code(), message = %status.message(),
                        "cannot read the lease's access count; the next receipt carries it");
                return None;
            }
            Err(_) => {
                warn!("the lease's access count did not come in time; the next receipt carries it");
                return None;
            }
        };
        Some(access::increment(&count, &self.log.access)).filter(access::any)
    }

    fn seal(&mut self, access: Option<AccessUsage>, r#final: bool) -> Result<(), MeterError> {
        let (mut usage, next_window) = std::mem::take(&mut self.window).close();
        self.window = next_window;
        let mut attribution = self.attribution;
        if attribution == Attribution::Measured && usage.len() != self.args.gpus as usize {
            // A GPU gave no reading all window: claim nothing rather than part of the lease.
            warn!(
                read = usage.len(),
                "not every GPU was read this window; allocated time only"
            );
            usage.clear();
            attribution = Attribution::AllocationOnly;
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let start = self.log.head.window_end_ms.unwrap_or(self.first_start_ms);
        let (signed, head) = seal_receipt(
            &self.credentials.key,
            &self.args.lease.lease_id,
            self.args.gpus,
            &self.log.head,
            self.first_start_ms,
            WindowReport {
                window_end_ms: now_ms.max(start + 1),
                gpus: usage,
                attribution,
                access,
                r#final,
            },
        );
        self.log.append(signed, head)?;
        self.metrics.sealed.inc();
        self.metrics.pending.set(self.log.pending.len() as i64);
        Ok(())
    }

    /// Sends every unacknowledged receipt, in batches; stops at the first failure (the next
    /// delivery retries from there). True when nothing is left pending.
    async fn deliver(&mut self) -> Result<bool, MeterError> {
        while !self.log.pending.is_empty() {
            let mut batch: Vec<Signed> = Vec::new();
            let mut bytes = 0;
            for (_, signed) in self.log.pending.iter().take(DELIVERY_MAX_RECEIPTS) {
                bytes += signed.encoded_len();
                if !batch.is_empty() && bytes > DELIVERY_MAX_BYTES {
                    break;
                }
                batch.push(signed.clone());
            }
            match self.client.submit_receipts(batch).await {
                Ok(reply) => {
                    let through = reply.accepted_through.min(self.log.head.sequence);
                    let progressed = through > self.log.acked;
                    self.log.acknowledge(through)?;
                    self.metrics.acknowledged.set(self.log.acked as i64);
                    self.metrics.pending.set(self.log.pending.len() as i64);
                    if let Some(r) = reply.rejection {
                        self.metrics.delivery_failures.inc();
                        error!(kind = %r.kind, sequence = r.sequence, message = %r.message,
                            "the collector refused a receipt");
                        return Ok(false);
                    }
                    if !progressed {
                        return Ok(self.log.pending.is_empty());
                    }
                }
                Err(status) => {
                    self.metrics.delivery_failures.inc();
                    warn!(code = ?status.code(), message = %status.message(),
                        "delivery failed; the receipts stay in the log and are resent");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

pub async fn run(args: MeterArgs) -> Result<(), MeterError> {
    let now = jiff::Timestamp::now();
    let credentials = lease_files::load(
        &args.lease.identity_dir,
        &args.lease.lease_id,
        now.as_second(),
    )?;
    let client = SidecarClient::new(&args.lease.collector_url, credentials.clone())
        .map_err(MeterError::Collector)?;
    let (source, devices) = match args.gpu.open() {
        Ok(source) => match source.devices() {
            Ok(devices) => (Some(source), devices),
            Err(e) => {
                warn!(error = %e, "cannot list GPUs; metering allocated time only");
                (None, vec![])
            }
        },
        Err(e) => {
            warn!(error = %e, "metering allocated time only");
            (None, vec![])
        }
    };
    let attribution = attribution(&devices, args.gpus);
    info!(
        lease = %args.lease.lease_id,
        gpus = args.gpus,
        visible = devices.len(),
        attribution = attribution.as_str_name(),
        "meter starting"
    );
    let log = ReceiptLog::open(&args.receipts_dir)?;
    if log.head.sequence > 0 {
        info!(
            sequence = log.head.sequence,
            pending = log.pending.len(),
            "continuing the receipt chain from the log"
        );
    }
    let metrics = MeterMetrics::new();
    let shutdown = Shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| MeterError::Http {
            addr: args.http_addr,
            source,
        })?;
    let http = tokio::spawn(http::serve(
        listener,
        Arc::new(metrics.clone()),
        shutdown.signalled(),
    ));
    let mut meter = Meter {
        source,
        devices,
        attribution,
        log,
        window: Window::default(),
        first_start_ms: now.as_millisecond(),
        credentials,
        client,
        metrics,
        args,
    };
    meter.metrics.acknowledged.set(meter.log.acked as i64);
    if meter.log.head.final_received {
        info!("the final receipt is already logged; delivering what is left");
    }
    let mut sample = tokio::time::interval(Duration::from_secs(meter.args.sample_seconds));
    let mut receipt = tokio::time::interval(Duration::from_secs(meter.args.receipt_seconds));
    receipt.tick().await;
    let stop = shutdown.signalled();
    loop {
        tokio::select! {
            _ = stop.clone() => break,
            _ = sample.tick() => meter.sample(),
            _ = receipt.tick() => {
                if !meter.log.head.final_received {
                    let access = meter.access_increment().await;
                    meter.seal(access, false)?;
                }
                meter.deliver().await?;
            }
        }
    }
    if !meter.log.head.final_received {
        let access = meter.access_increment().await;
        meter.seal(access, true)?;
        info!(sequence = meter.log.head.sequence, "final receipt sealed");
    }
    let deadline = tokio::time::Instant::now() + FINAL_DELIVERY_DEADLINE;
    while !meter.deliver().await? && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !meter.log.pending.is_empty() {
        warn!(
            pending = meter.log.pending.len(),
            "stopping with receipts not acknowledged"
        );
    }
    if let Ok(Err(source)) = http.await {
        return Err(MeterError::Http {
            addr: meter.args.http_addr,
            source,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(shared: bool) -> DeviceInfo {
        DeviceInfo {
            uuid: "GPU-1".into(),
            serial: String::new(),
            model: String::new(),
            vbios: String::new(),
            driver: String::new(),
            cc_mode: false,
            shared,
        }
    }

    #[test]
    fn attribution_says_what_the_meter_can_see() {
        assert_eq!(attribution(&[], 1), Attribution::AllocationOnly);
        assert_eq!(attribution(&[device(false)], 1), Attribution::Measured);
        assert_eq!(attribution(&[device(true)], 1), Attribution::Modelled);
        // More GPUs than the lease's: none of it can be attributed to the lease.
        assert_eq!(
            attribution(&[device(false), device(false)], 1),
            Attribution::AllocationOnly
        );
    }
}
