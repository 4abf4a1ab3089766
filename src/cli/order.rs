//! `gpubridge order`: the buyer's command line — a key, deposits, orders — with readable tables
//! by default and `-o json` for scripts.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::cli::emit;
use crate::identity::keyfile;
use crate::identity::public_key_base58;
use crate::wire::amount::{self, from_decimal_units};
use crate::wire::client::{self, NetworkClient, Target};
use crate::wire::proto::{
    Attribute, BalanceReply, EnvVar, OfferView, OrderBody, OrderState, OrderView, Workload,
};

#[derive(Args, Debug)]
pub struct OrderArgs {
    /// The network node's gateway.
    #[arg(
        long,
        env = "GPUBRIDGE_NETWORK_URL",
        default_value = "http://127.0.0.1:7300",
        global = true
    )]
    pub network: String,
    /// PEM CA bundle for an https network.
    #[arg(long, env = "GPUBRIDGE_NETWORK_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// The buyer's key file; `$XDG_CONFIG_HOME/gpubridge/buyer.key` (or under ~/.config) when
    /// absent.
    #[arg(long, env = "GPUBRIDGE_BUYER_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: OrderCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum OrderCommand {
    /// Create the buyer key (mode 0600) and print its public key.
    Keygen,
    /// Credit the buyer's account, in whole units such as 100 or 2.5.
    Deposit {
        amount: String,
        #[arg(long, default_value = "USDC")]
        denomination: String,
    },
    /// Submit an order; it is matched at once or rejected with the reason.
    Submit(Box<SubmitArgs>),
    /// The buyer's orders, newest first.
    List,
    /// One order.
    Status { order_id: String },
    /// Cancel an order no provider has accepted yet.
    Cancel { order_id: String },
    /// The buyer's balances.
    Balance,
    /// The offer book.
    Offers,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// GPUs, all on one node: whole GPUs, or slices of the MIG profile `--resource` names.
    #[arg(long)]
    pub gpus: u32,
    /// Whole GPUs (nvidia.com/gpu), or a MIG profile such as nvidia.com/mig-1g.10gb. An order
    /// for whole GPUs never gets slices.
    #[arg(long, default_value = "nvidia.com/gpu")]
    pub resource: String,
    /// GPU model, as in the offer book; any when absent.
    #[arg(long, default_value = "")]
    pub model: String,
    /// Lease length in hours, such as 1 or 0.5.
    #[arg(long, conflicts_with = "seconds")]
    pub hours: Option<f64>,
    /// Lease length in seconds.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Highest price per GPU-hour, in whole units such as 3.2.
    #[arg(long)]
    pub max_price: String,
    #[arg(long, default_value = "USDC")]
    pub denomination: String,
    /// Container image, with its registry host.
    #[arg(long)]
    pub image: String,
    /// CPU and memory for the workload container.
    #[arg(long, default_value = "4")]
    pub cpu: String,
    #[arg(long, default_value = "16Gi")]
    pub memory: String,
    /// Environment variable NAME=VALUE; repeatable.
    #[arg(long = "env", value_parser = parse_pair)]
    pub env: Vec<(String, String)>,
    /// Required region.
    #[arg(long, default_value = "")]
    pub region: String,
    /// Required offer attribute KEY=VALUE; repeatable.
    #[arg(long = "attribute", value_parser = parse_pair)]
    pub attributes: Vec<(String, String)>,
    /// Entrypoint and arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error(transparent)]
    Connect(#[from] client::ConnectError),
    #[error("the network refused: {}", .0.message())]
    Refused(#[from] tonic::Status),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

pub async fn run(args: OrderArgs) -> Result<(), OrderError> {
    let text = command_output(args).await?;
    emit(&text).map_err(OrderError::Output)
}

/// What the command prints.
async fn command_output(args: OrderArgs) -> Result<String, OrderError> {
    if let OrderCommand::Keygen = args.command {
        let key = keyfile::create(&buyer_key_path(args.key.as_deref())?)?;
        return Ok(format!("{}\n", public_key_base58(&key.verifying_key())));
    }
    let target = Target {
        url: args.network.clone(),
        ca_file: args.ca_file.clone(),
    };
    let channel = client::channel(&target)?;
    if let OrderCommand::Offers = args.command {
        let client = NetworkClient::new(channel, crate::identity::generate_key());
        let offers = client.list_offers().await?;
        return Ok(render_offers(&offers, args.output));
    }
    let key = keyfile::load(&buyer_key_path(args.key.as_deref())?)?;
    let client = NetworkClient::new(channel, key);
    Ok(match args.command {
        OrderCommand::Keygen | OrderCommand::Offers => unreachable!("handled above"),
        OrderCommand::Deposit {
            amount,
            denomination,
        } => {
            let atto = from_decimal_units("amount", &amount)
                .map_err(|e| OrderError::Usage(e.to_string()))?;
            render_balances(&client.deposit(atto, &denomination).await?, args.output)
        }
        OrderCommand::Submit(submit) => {
            let body = order_body(*submit)?;
            render_orders(&[client.submit(body).await?], args.output)
        }
        OrderCommand::List => render_orders(&client.list_orders().await?, args.output),
        OrderCommand::Status { order_id } => {
            render_orders(&[client.order_status(&order_id).await?], args.output)
        }
        OrderCommand::Cancel { order_id } => {
            render_orders(&[client.cancel(&order_id).await?], args.output)
        }
        OrderCommand::Balance => render_balances(&client.balance().await?, args.output),
    })
}

/// `--key`, else the buyer key in the user's configuration folder.
fn buyer_key_path(given: Option<&std::path::Path>) -> Result<PathBuf, OrderError> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| {
            OrderError::Usage("--key: give a key file (no HOME to default to)".into())
        })?;
    Ok(config.join("gpubridge").join("buyer.key"))
}

fn order_body(args: SubmitArgs) -> Result<OrderBody, OrderError> {
    let duration_seconds = match (args.hours, args.seconds) {
        (_, Some(s)) => s,
        (Some(h), None) if h.is_finite() && h > 0.0 => (h * 3600.0).round() as u64,
        _ => {
            return Err(OrderError::Usage(
                "--hours or --seconds: give a positive lease length".into(),
            ));
        }
    };
    let max_price = from_decimal_units("--max-price", &args.max_price)
        .map_err(|e| OrderError::Usage(e.to_string()))?;
    let (command, rest) = match args.command.split_first() {
        Some((first, rest)) => (vec![first.clone()], rest.to_vec()),
        None => (vec![], vec![]),
    };
    Ok(OrderBody {
        header: None,
        gpus: args.gpus,
        resource_name: args.resource,
        model: args.model,
        duration_seconds,
        max_price_per_gpu_hour: max_price.to_string(),
        denomination: args.denomination,
        region: args.region,
        attributes: args
            .attributes
            .into_iter()
            .map(|(key, value)| Attribute { key, value })
            .collect(),
        workload: Some(Workload {
            image: args.image,
            command,
            args: rest,
            env: args
                .env
                .into_iter()
                .map(|(name, value)| EnvVar { name, value })
                .collect(),
            cpu: args.cpu,
            memory: args.memory,
        }),
    })
}

/// An amount from the network in whole units; shown as sent when it is not an amount.
fn units(atto: &str) -> String {
    amount::parse("amount", atto).map_or_else(|_| atto.to_string(), |a| a.to_decimal_units())
}

/// A count of GPUs as a table shows it: whole GPUs as a number, slices with their MIG profile
/// (`7 × mig-1g.10gb`), so that slices never read as whole GPUs.
fn gpus_of(count: u32, resource: &str) -> String {
    match resource.strip_prefix("nvidia.com/") {
        Some(mig) if mig.starts_with("mig-") => format!("{count} × {mig}"),
        _ => count.to_string(),
    }
}

/// An order's state as a lowercase word, for tables and JSON.
fn state(order: &OrderView) -> &'static str {
    match OrderState::try_from(order.state).unwrap_or(OrderState::Unspecified) {
        OrderState::Unspecified => "unknown",
        OrderState::Matched => "matched",
        OrderState::Leased => "leased",
        OrderState::Ended => "ended",
        OrderState::Rejected => "rejected",
        OrderState::Cancelled => "cancelled",
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(line(&header))
        .chain(rows.iter().map(|row| line(row)))
        .collect()
}

fn pretty(value: &serde_json::Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).expect("JSON renders")
    )
}

fn render_orders(orders: &[OrderView], output: Output) -> String {
    if output == Output::Json {
        let list: Vec<_> = orders
            .iter()
            .map(|o| {
                json!({
                    "orderId": o.order_id, "state": state(o), "reason": o.reason,
                    "gpus": o.gpus, "resourceName": o.resource_name, "model": o.model, "durationSeconds": o.duration_seconds,
                    "maxPricePerGpuHour": units(&o.max_price_per_gpu_hour),
                    "pricePerGpuHour": units(&o.price_per_gpu_hour), "denomination": o.denomination,
                    "leaseId": o.lease_id, "offerId": o.offer_id, "image": o.image,
                    "held": units(&o.held), "charged": units(&o.charged), "refunded": units(&o.refunded),
                    "createdAt": o.created_at, "updatedAt": o.updated_at,
                })
            })
            .collect();
        return pretty(&json!(list));
    }
    let rows: Vec<Vec<String>> = orders
        .iter()
        .map(|o| {
            vec![
                o.order_id.clone(),
                state(o).to_string(),
                gpus_of(o.gpus, &o.resource_name),
                if o.model.is_empty() {
                    "any".into()
                } else {
                    o.model.clone()
                },
                format!("{}s", o.duration_seconds),
                if o.price_per_gpu_hour.is_empty() {
                    "-".into()
                } else {
                    format!("{} {}", units(&o.price_per_gpu_hour), o.denomination)
                },
                if o.lease_id.is_empty() {
                    "-".into()
                } else {
                    o.lease_id.clone()
                },
                units(&o.charged),
                o.reason.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ORDER",
            "STATE",
            "GPUS",
            "MODEL",
            "DURATION",
            "PRICE/GPU-H",
            "LEASE",
            "CHARGED",
            "REASON",
        ],
        &rows,
    )
}

fn render_balances(reply: &BalanceReply, output: Output) -> String {
    if output == Output::Json {
        let list: Vec<_> = reply
            .balances
            .iter()
            .map(|b| json!({"denomination": b.denomination, "available": units(&b.available), "held": units(&b.held), "earned": units(&b.earned)}))
            .collect();
        return pretty(&json!(list));
    }
    let rows: Vec<Vec<String>> = reply
        .balances
        .iter()
        .map(|b| {
            vec![
                b.denomination.clone(),
                units(&b.available),
                units(&b.held),
                units(&b.earned),
            ]
        })
        .collect();
    table(&["DENOMINATION", "AVAILABLE", "HELD", "EARNED"], &rows)
}

fn render_offers(offers: &[OfferView], output: Output) -> String {
    if output == Output::Json {
        let list: Vec<_> = offers
            .iter()
            .map(|o| {
                json!({
                    "offerId": o.offer_id, "provider": o.provider_name,
                    "resourceName": o.resource_name, "model": o.model,
                    "availableGpus": o.available_gpus, "largestBlock": o.largest_block,
                    "pricePerGpuHour": units(&o.price_per_gpu_hour), "denomination": o.denomination,
                    "minDurationSeconds": o.min_duration_seconds, "maxDurationSeconds": o.max_duration_seconds,
                    "region": o.region, "expiresAt": o.expires_at,
                })
            })
            .collect();
        return pretty(&json!(list));
    }
    let rows: Vec<Vec<String>> = offers
        .iter()
        .map(|o| {
            vec![
                o.offer_id
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                o.provider_name.clone(),
                if o.model.is_empty() {
                    "mixed".into()
                } else {
                    o.model.clone()
                },
                gpus_of(o.available_gpus, &o.resource_name),
                o.largest_block.to_string(),
                format!("{} {}", units(&o.price_per_gpu_hour), o.denomination),
                format!("{}-{}s", o.min_duration_seconds, o.max_duration_seconds),
                if o.region.is_empty() {
                    "-".into()
                } else {
                    o.region.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "OFFER",
            "PROVIDER",
            "MODEL",
            "GPUS",
            "LARGEST",
            "PRICE/GPU-H",
            "DURATION",
            "REGION",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns_and_trim_line_ends() {
        let text = table(
            &["ORDER", "STATE", "REASON"],
            &[
                vec!["a1".into(), "matched".into(), String::new()],
                vec!["b22222".into(), "ended".into(), "done".into()],
            ],
        );
        assert_eq!(
            text,
            "ORDER   STATE    REASON\na1      matched\nb22222  ended    done\n"
        );
    }

    #[test]
    fn slices_show_their_profile_and_whole_gpus_a_number() {
        assert_eq!(gpus_of(7, "nvidia.com/mig-1g.10gb"), "7 × mig-1g.10gb");
        assert_eq!(gpus_of(8, "nvidia.com/gpu"), "8");
        assert_eq!(gpus_of(8, ""), "8");
    }

    #[test]
    fn json_output_is_one_document_with_amounts_in_whole_units() {
        let order = OrderView {
            order_id: "o1".into(),
            state: OrderState::Matched as i32,
            charged: "1500000000000000000".into(),
            ..Default::default()
        };
        let text = render_orders(&[order], Output::Json);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[0]["state"], "matched");
        assert_eq!(parsed[0]["charged"], "1.5");
        assert!(text.ends_with("}\n]\n"), "{text}");
    }
}
