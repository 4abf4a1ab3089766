//! The device plugin's gRPC shell: serves `DevicePlugin` on a socket in the kubelet's
//! device-plugin folder and registers it with the kubelet; when the kubelet restarts (it removes
//! every socket in the folder then), it serves and registers again.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use futures::{Stream, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use super::api::registration_client::RegistrationClient;
use super::api::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse, Device, DevicePluginOptions,
    Empty, ListAndWatchResponse, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
};
use super::{RESOURCE_NAME, allocate};
use crate::gpu::{SimulatedSettings, SimulatedSource};
use crate::process::shutdown::Shutdown;

/// The kubelet's API version this plugin speaks.
const API_VERSION: &str = "v1beta1";

#[derive(clap::Args, Debug, Clone)]
pub struct DevicePluginArgs {
    /// The kubelet's device-plugin folder: its registration socket is `kubelet.sock` in it.
    #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
    pub plugin_dir: PathBuf,
    /// This plugin's socket, in that folder.
    #[arg(long, default_value = "gpubridge-simulated-gpu.sock")]
    pub socket_name: String,
    #[command(flatten)]
    pub simulated: SimulatedSettings,
    /// Log format.
    #[arg(long, env = "GPUBRIDGE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::process::telemetry::LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    #[error("{path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("registering with the kubelet at {path}: {reason}")]
    Register { path: PathBuf, reason: String },
    #[error("serving the device plugin: {0}")]
    Serve(#[from] tonic::transport::Error),
}

struct Plugin {
    devices: Vec<String>,
    /// Becomes true when this generation of the server stops, which ends ListAndWatch.
    stopped: watch::Receiver<bool>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions::default()))
    }

    type ListAndWatchStream = DeviceStream;

    /// The devices once (simulated GPUs never change health), then open until the server stops.
    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<DeviceStream>, Status> {
        let devices = self
            .devices
            .iter()
            .map(|id| Device {
                id: id.clone(),
                health: "Healthy".to_string(),
                topology: None,
            })
            .collect();
        let mut stopped = self.stopped.clone();
        let until_stopped = futures::stream::once(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .filter_map(|()| async { None });
        let stream = futures::stream::once(async { Ok(ListAndWatchResponse { devices }) })
            .chain(until_stopped);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        Err(Status::unimplemented(
            "this plugin states no preferred allocation (its options say so)",
        ))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let requests: Vec<Vec<String>> = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| c.devices_ids)
            .collect();
        let envs = allocate(&self.devices, &requests).map_err(|e| {
            warn!(error = %e, "allocation refused");
            Status::invalid_argument(e.to_string())
        })?;
        info!(?requests, "allocated");
        Ok(Response::new(AllocateResponse {
            container_responses: envs
                .into_iter()
                .map(|envs| ContainerAllocateResponse {
                    envs: envs.into_iter().collect(),
                    ..Default::default()
                })
                .collect(),
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// Tells the kubelet at `kubelet_socket` where this plugin serves, retrying the connection
/// each second for 30 s while the kubelet starts.
async fn register(kubelet_socket: &Path, socket_name: &str) -> Result<(), DevicePluginError> {
    let failed = |reason: String| DevicePluginError::Register {
        path: kubelet_socket.to_path_buf(),
        reason,
    };
    let connect = || {
        let path = kubelet_socket.to_path_buf();
        async move {
            // The URI is required but unused: the connector dials the socket.
            Endpoint::from_static("http://kubelet")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        }
    };
    let channel = connect
        .retry(
            ConstantBuilder::new()
                .with_delay(Duration::from_secs(1))
                .with_max_times(30),
        )
        .await
        .map_err(|e| failed(format!("no answer for 30 s: {e}")))?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: API_VERSION.to_string(),
            endpoint: socket_name.to_string(),
            resource_name: RESOURCE_NAME.to_string(),
            options: Some(DevicePluginOptions::default()),
        })
        .await
        .map_err(|status| failed(status.message().to_string()))?;
    Ok(())
}

pub async fn run(args: DevicePluginArgs) -> Result<(), DevicePluginError> {
    let shutdown = Shutdown::on_signals();
    let devices = SimulatedSource::new(args.simulated.clone()).all_uuids();
    let socket = args.plugin_dir.join(&args.socket_name);
    loop {
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DevicePluginError::Socket {
                    path: socket,
                    source: e,
                });
            }
            _ => {}
        }
        let listener = UnixListener::bind(&socket).map_err(|source| DevicePluginError::Socket {
            path: socket.clone(),
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let plugin = Plugin {
            devices: devices.clone(),
            stopped: stopped.clone(),
        };
        let mut stopped_for_server = stopped;
        let server = tokio::spawn(
            Server::builder()
                .add_service(DevicePluginServer::new(plugin))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = stopped_for_server.wait_for(|s| *s).await;
                }),
        );
        register(&args.plugin_dir.join("kubelet.sock"), &args.socket_name).await?;
        info!(
            resource = RESOURCE_NAME,
            devices = devices.len(),
            socket = %socket.display(),
            "registered with the kubelet"
        );
        let shut_down = loop {
            tokio::select! {
                () = shutdown.signalled() => break true,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !socket.exists() {
                        info!("the kubelet restarted; serving and registering again");
                        break false;
                    }
                }
            }
        };
        stop.send_replace(true);
        server.await.expect("the server task does not panic")?;
        if shut_down {
            let _ = std::fs::remove_file(&socket);
            return Ok(());
        }
    }
}
