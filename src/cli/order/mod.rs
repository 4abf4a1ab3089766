//! `gpubridge order`: the buyer's command line — a key, deposits, orders — with readable tables
//! by default and `-o json` for scripts.
//!
//! Exit status: 0 done; 1 the command could not be done (no key, the network unreachable or
//! refusing); 2 a mistake in the command line, found before anything is sent; 3 the order was
//! rejected, or its lease failed by a fault not the buyer's.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use tonic::Code;

use crate::cli::emit;
use crate::identity::keyfile;
use crate::identity::public_key_base58;
use crate::wire::amount::Amount;
use crate::wire::amount::from_decimal_units;
use crate::wire::client::{self, NetworkClient, Target};
use crate::wire::proto::{LogOptions, OrderBody, OrderView};
use crate::wire::validate;

pub mod access;
mod input;
mod view;

use view::Outcome;

const GLOBAL: &str = "Global options";

/// The exit statuses, as `--help` lists them.
pub const EXIT_STATUS: &str = "Exit status: 0 done; 1 could not be done (no key, the network \
    unreachable or refusing); 2 a mistake in the command line, found before anything was sent; \
    3 the order was rejected, or its lease failed by a fault not the buyer's.";

#[derive(Args, Debug)]
pub struct OrderArgs {
    /// The network's gateways: http://HOST:PORT, or https://HOST:PORT for TLS, comma-separated.
    /// Each call goes to one that answers: a gateway that fails is left for the others (a
    /// followed log resumes, new connections open, through another).
    #[arg(
        long,
        env = "GPUBRIDGE_NETWORK_URL",
        default_value = "http://127.0.0.1:7300",
        value_delimiter = ',',
        global = true,
        help_heading = GLOBAL
    )]
    pub network: Vec<String>,
    /// PEM CA bundle that signed an https network's certificate; the system's roots when absent.
    #[arg(long, env = "GPUBRIDGE_NETWORK_CA_FILE", global = true, help_heading = GLOBAL)]
    pub ca_file: Option<PathBuf>,
    /// The buyer's key file; `$XDG_CONFIG_HOME/gpubridge/buyer.key` (or under ~/.config) when
    /// absent.
    #[arg(long, env = "GPUBRIDGE_BUYER_KEY", global = true, help_heading = GLOBAL)]
    pub key: Option<PathBuf>,
    /// Output format: readable tables, or JSON for scripts.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true, help_heading = GLOBAL)]
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
    /// Create the buyer key (mode 0600) at --key or the default path, and print its public key.
    Keygen,
    /// Credit the buyer's account.
    Deposit {
        /// The amount in whole units, such as 100 or 2.5.
        #[arg(allow_negative_numbers = true)]
        amount: String,
        /// The currency: uppercase letters and digits.
        #[arg(long, default_value = "USDC")]
        denomination: String,
    },
    /// Submit an order; it is matched at once or rejected with the reason (exit status 3).
    Submit(Box<SubmitArgs>),
    /// The buyer's orders, newest first.
    List,
    /// One order in detail: its lease, provider, usage, hold and charge, verification, end.
    Status {
        /// An order id or a lease id, or a unique prefix of either.
        id: String,
        /// Follow the order, printing it again whenever it changes, until it ends.
        #[arg(long, short)]
        watch: bool,
    },
    /// The workload's log, read by the provider's operator and relayed by the network.
    Logs {
        /// An order id or a lease id, or a unique prefix of either.
        id: String,
        /// Keep printing new lines until the workload ends; a broken stream (an operator
        /// restart, a gateway lost) resumes after the last line printed.
        #[arg(long, short)]
        follow: bool,
        /// Only lines since this time (such as 2026-12-03T18:00:00Z) or for this long (such as
        /// 10m or 2h).
        #[arg(long, value_parser = input::time_or_length, value_name = "TIME|LENGTH")]
        since: Option<input::TimeOrLength>,
        /// Only the last this many lines.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..), value_name = "LINES")]
        tail: Option<i64>,
        /// The container; the workload's when absent (the sidecars' logs are the provider's).
        #[arg(long, default_value = "", hide_default_value = true)]
        container: String,
        /// Print each line's time, as the node stamped it.
        #[arg(long)]
        timestamps: bool,
    },
    /// Forward a local port to a port the workload declared (`submit --port`): each local
    /// connection becomes its own call through the network to the lease's pod. Runs until
    /// stopped (Ctrl-C).
    Connect {
        /// An order id or a lease id, or a unique prefix of either.
        id: String,
        /// The workload's port.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65535))]
        port: u32,
        /// The local address to listen on; 127.0.0.1 and the same port when absent.
        #[arg(long, value_name = "ADDRESS:PORT")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Cancel an order no provider has accepted yet; its hold is refunded.
    Cancel {
        /// An order id or a lease id, or a unique prefix of either.
        id: String,
    },
    /// The buyer's balances: available, held for orders, earned.
    Balance,
    /// The offer book: what is for sale, where, for how long, at what price, and each
    /// provider's bond.
    Offers,
    /// Bond stake as a provider (--key names the provider's key): its offers match only as many
    /// GPUs as its bond covers, and a slash on evidence takes from it.
    Bond {
        /// The amount in whole units of the network's stake denomination, such as 500.
        #[arg(allow_negative_numbers = true)]
        amount: String,
        /// Where it comes from: the spendable balance, or the provider's earnings.
        #[arg(long, value_enum, default_value = "available")]
        from: StakeSource,
    },
    /// Start unbonding stake: paid back after the network's unbonding period, slashable until
    /// then; refused while it would leave running leases uncovered.
    Unbond {
        /// The amount in whole units, such as 100.
        #[arg(allow_negative_numbers = true)]
        amount: String,
    },
    /// The provider's stake: bonded, the GPUs it covers, unbonding, and the slashes it took.
    Stake,
    /// The network's parameters, the rules that change them, the height, and the proposals.
    Params,
    /// Hand the network NVIDIA's reference integrity manifests (the `.swidtag` files NVIDIA's
    /// RIM service publishes for a driver or VBIOS version). Only NVIDIA's signature is trusted;
    /// once held, every attested GPU of that chip and version has its measurements compared.
    Rims {
        /// Manifest files, each at most 128 KiB.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Propose parameter changes, effective at a height after the vote; the deposit comes from
    /// the spendable balance and comes back when the vote reaches quorum.
    Propose {
        /// A change, NAME=VALUE (a whole number; atto units for an amount); repeatable.
        #[arg(long = "set", value_parser = input::pair, value_name = "NAME=VALUE", required = true)]
        changes: Vec<(String, String)>,
        /// The height the changes take effect at (`params` shows the height and the vote's
        /// length).
        #[arg(long)]
        effective_height: u64,
        /// The deposit in whole units of the stake denomination.
        #[arg(long, default_value = "10")]
        deposit: String,
    },
    /// Vote on a proposal with the key's bonded stake; a later vote replaces an earlier one.
    Vote {
        /// The proposal's number.
        proposal: u64,
        #[arg(value_enum)]
        choice: VoteChoice,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VoteChoice {
    Yes,
    No,
}

/// Where bonded stake comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StakeSource {
    Available,
    Earnings,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("length").required(true).args(["hours", "seconds"])))]
pub struct SubmitArgs {
    /// How many GPUs, all on one node: whole GPUs, or slices of the MIG profile --resource
    /// names.
    #[arg(long, allow_negative_numbers = true, value_parser = input::count)]
    pub gpus: u32,
    /// Whole GPUs (nvidia.com/gpu), or a MIG profile such as nvidia.com/mig-1g.10gb. An order
    /// for whole GPUs never gets slices.
    #[arg(long, default_value = validate::WHOLE_GPU)]
    pub resource: String,
    /// The GPU model, as the offer book shows it; any model when absent.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub model: String,
    /// The lease length in hours, such as 1 or 0.5.
    #[arg(long, allow_negative_numbers = true, value_parser = input::hours, value_name = "HOURS")]
    pub hours: Option<u64>,
    /// The lease length in seconds, such as 3600.
    #[arg(long, allow_negative_numbers = true, value_parser = input::seconds)]
    pub seconds: Option<u64>,
    /// The highest price per GPU-hour, in whole units such as 3.2.
    #[arg(long, allow_negative_numbers = true)]
    pub max_price: String,
    /// The currency of --max-price: uppercase letters and digits.
    #[arg(long, default_value = "USDC")]
    pub denomination: String,
    /// The container image, with its registry host, such as ghcr.io/acme/train:1.
    #[arg(long)]
    pub image: String,
    /// CPU for the workload container, such as 8 or 500m.
    #[arg(long, default_value = "4")]
    pub cpu: String,
    /// Memory for the workload container, such as 64Gi.
    #[arg(long, default_value = "16Gi")]
    pub memory: String,
    /// An environment variable of the workload, NAME=VALUE; repeatable.
    #[arg(long = "env", value_parser = input::pair, value_name = "NAME=VALUE")]
    pub env: Vec<(String, String)>,
    /// A TCP port the workload listens on, reachable with `order connect`; repeatable, at most
    /// 16.
    #[arg(long = "port", value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub ports: Vec<u32>,
    /// The region the provider must be in; any when absent.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub region: String,
    /// The provider to lease from, by its public key (the offer book's PROVIDER KEY); any when
    /// absent.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub provider: String,
    /// The least uptime the provider must have shown, in percent, such as 99.5; none when
    /// absent.
    #[arg(long, value_parser = input::percent, default_value = "0", hide_default_value = true, value_name = "PERCENT")]
    pub min_uptime: u32,
    /// The least trust tier the provider's last verified evidence must have reached (the offer
    /// book's TIER); any when absent.
    #[arg(long, value_parser = ["self-reported", "hardware-attested"], value_name = "TIER")]
    pub min_tier: Option<String>,
    /// When no offer fits now, wait for one until this time (such as 2026-12-03T18:00:00Z) or for
    /// this long (30m, 2h, at most 7d) instead of being rejected at once; cancel works until it
    /// matches.
    #[arg(long, value_parser = input::time_or_length, value_name = "TIME|LENGTH")]
    pub wait_until: Option<input::TimeOrLength>,
    /// An offer attribute the provider must have, KEY=VALUE; repeatable.
    #[arg(long = "attribute", value_parser = input::pair, value_name = "KEY=VALUE")]
    pub attributes: Vec<(String, String)>,
    /// The workload's entrypoint and its arguments, after `--`; the image's when absent.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("no buyer key at {} — run `gpubridge order keygen`, or give --key", .0.display())]
    NoKey(PathBuf),
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error(transparent)]
    Endpoint(#[from] client::ConnectError),
    #[error(
        "cannot connect to {url} — is a network node running? set --network or \
         GPUBRIDGE_NETWORK_URL ({detail})"
    )]
    Unreachable { url: String, detail: String },
    #[error(
        "cannot speak gRPC with {url}: {detail} — does its scheme match the node's (http://, or \
         https:// with --ca-file)?"
    )]
    Protocol { url: String, detail: String },
    #[error("the network refused: {message}{hint}")]
    Refused { message: String, hint: &'static str },
    #[error("the network failed: {0}")]
    Failed(String),
    #[error("{0}")]
    Usage(String),
    #[error("order {order_id} {what}: {reason}")]
    Outcome {
        order_id: String,
        what: &'static str,
        reason: String,
    },
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

impl OrderError {
    /// The exit status this error ends the command with (see the module's comment).
    pub fn exit_status(&self) -> u8 {
        match self {
            OrderError::Usage(_) => 2,
            OrderError::Outcome { .. } => 3,
            _ => 1,
        }
    }

    /// What a failed call means to the buyer: the node could not be reached, spoke another
    /// protocol, said no (with the step that fixes it, where there is one), or failed.
    fn from_status(url: &str, status: &tonic::Status) -> OrderError {
        let detail = error_chain(status);
        let refused = |hint| OrderError::Refused {
            message: status.message().to_string(),
            hint,
        };
        match status.code() {
            Code::Unavailable if is_protocol_mismatch(&detail) => OrderError::Protocol {
                url: url.into(),
                detail,
            },
            Code::Unavailable => OrderError::Unreachable {
                url: url.into(),
                detail,
            },
            Code::Unknown | Code::Internal if is_protocol_mismatch(&detail) => {
                OrderError::Protocol {
                    url: url.into(),
                    detail,
                }
            }
            Code::FailedPrecondition if status.message().starts_with("insufficient funds") => {
                refused(" — add funds with `gpubridge order deposit AMOUNT`")
            }
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::OutOfRange => refused(""),
            _ => OrderError::Failed(format!("{:?}: {detail}", status.code())),
        }
    }
}

impl From<OrderError> for ExitCode {
    fn from(error: OrderError) -> ExitCode {
        ExitCode::from(error.exit_status())
    }
}

/// A status's message and the errors under it (tonic puts "tcp connect error" on top and the
/// reason, such as "Connection refused", beneath).
fn error_chain(status: &tonic::Status) -> String {
    let mut parts = vec![status.message().to_string()];
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let text = error.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = error.source();
    }
    parts.join(": ")
}

/// Whether a transport failure says that the two ends disagree on TLS or HTTP/2, not that
/// nothing answered.
fn is_protocol_mismatch(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "corrupt message",
        "invalidcontenttype",
        "h2 protocol error",
        "http2 error",
        "frame with invalid size",
    ]
    .iter()
    .any(|sign| detail.contains(sign))
}

/// Runs the command and prints what it printed; returns the exit status.
pub async fn run(args: OrderArgs) -> ExitCode {
    match command(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gpubridge order: {error}");
            error.into()
        }
    }
}

/// A command with its input checked: what it sends needs nothing more from the buyer.
enum Request {
    Keygen,
    Offers,
    Deposit(Amount, String),
    Submit(Box<OrderBody>),
    List,
    Status {
        id: String,
        watch: bool,
    },
    Logs {
        id: String,
        options: LogOptions,
        timestamps: bool,
    },
    Connect {
        id: String,
        port: u32,
        listen: std::net::SocketAddr,
    },
    Cancel {
        id: String,
    },
    Balance,
    Bond(Amount, StakeSource),
    Unbond(Amount),
    Stake,
    Params,
    Rims(Vec<(String, Vec<u8>)>),
    Propose(Vec<(String, String)>, u64, Amount),
    Vote(u64, bool),
}

/// Checks a command's input, before any key is read or anything is sent.
fn checked(command: OrderCommand) -> Result<Request, OrderError> {
    let usage = |e: crate::wire::Rejection| OrderError::Usage(e.to_string());
    Ok(match command {
        OrderCommand::Keygen => Request::Keygen,
        OrderCommand::Offers => Request::Offers,
        OrderCommand::Deposit {
            amount,
            denomination,
        } => {
            let atto = from_decimal_units("amount", &amount).map_err(usage)?;
            validate::denomination("--denomination", &denomination).map_err(usage)?;
            Request::Deposit(atto, denomination)
        }
        OrderCommand::Submit(submit) => Request::Submit(Box::new(
            input::order_body(*submit).map_err(OrderError::Usage)?,
        )),
        OrderCommand::List => Request::List,
        OrderCommand::Status { id, watch } => Request::Status { id, watch },
        OrderCommand::Logs {
            id,
            follow,
            since,
            tail,
            container,
            timestamps,
        } => Request::Logs {
            id,
            options: LogOptions {
                container,
                follow,
                since_time: since
                    .map(|s| {
                        let at = s.before(jiff::Timestamp::now().as_second());
                        jiff::Timestamp::from_second(at)
                            .map(|t| t.to_string())
                            .map_err(|e| OrderError::Usage(format!("--since: {e}")))
                    })
                    .transpose()?
                    .unwrap_or_default(),
                tail_lines: tail.unwrap_or(0),
            },
            timestamps,
        },
        OrderCommand::Connect { id, port, listen } => Request::Connect {
            id,
            port,
            listen: listen.unwrap_or_else(|| {
                std::net::SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap_or(0)))
            }),
        },
        OrderCommand::Cancel { id } => Request::Cancel { id },
        OrderCommand::Balance => Request::Balance,
        OrderCommand::Bond { amount, from } => {
            Request::Bond(from_decimal_units("amount", &amount).map_err(usage)?, from)
        }
        OrderCommand::Unbond { amount } => {
            Request::Unbond(from_decimal_units("amount", &amount).map_err(usage)?)
        }
        OrderCommand::Stake => Request::Stake,
        OrderCommand::Params => Request::Params,
        OrderCommand::Rims { files } => Request::Rims(
            files
                .iter()
                .map(|path| {
                    input::manifest(path)
                        .map(|bytes| (path.display().to_string(), bytes))
                        .map_err(OrderError::Usage)
                })
                .collect::<Result<_, _>>()?,
        ),
        OrderCommand::Propose {
            changes,
            effective_height,
            deposit,
        } => Request::Propose(
            changes,
            effective_height,
            from_decimal_units("--deposit", &deposit).map_err(usage)?,
        ),
        OrderCommand::Vote { proposal, choice } => {
            Request::Vote(proposal, choice == VoteChoice::Yes)
        }
    })
}

async fn command(args: OrderArgs) -> Result<(), OrderError> {
    let print = |text: String| emit(&text).map_err(OrderError::Output);
    let output = args.output;
    let request = checked(args.command)?;
    if let Request::Keygen = request {
        let key = keyfile::create(&buyer_key_path(args.key.as_deref())?)?;
        return print(format!("{}\n", public_key_base58(&key.verifying_key())));
    }
    let targets: Vec<Target> = args
        .network
        .iter()
        .filter(|url| !url.is_empty())
        .map(|url| Target {
            url: url.clone(),
            ca_file: args.ca_file.clone(),
        })
        .collect();
    if targets.is_empty() {
        return Err(OrderError::Usage(
            "--network: names no gateway; give http://HOST:PORT".into(),
        ));
    }
    let channel = client::any_channel(&targets)?;
    let gateways = args.network.join(",");
    let url = gateways.as_str();
    let call = |status: tonic::Status| OrderError::from_status(url, &status);
    if let Request::Offers | Request::Params = request {
        // Public: no key needed.
        let client = NetworkClient::new(channel, crate::identity::generate_key());
        if let Request::Params = request {
            let reply = client.params().await.map_err(call)?;
            return print(view::params(&reply, output));
        }
        let offers = client.list_offers().await.map_err(call)?;
        return print(view::offers(&offers, output));
    }
    let key_path = buyer_key_path(args.key.as_deref())?;
    let key = match keyfile::load(&key_path) {
        Err(keyfile::KeyFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(OrderError::NoKey(key_path));
        }
        loaded => loaded?,
    };
    let client = NetworkClient::new(channel.clone(), key.clone());
    match request {
        Request::Keygen | Request::Offers | Request::Params => {
            unreachable!("answered without the buyer's key")
        }
        Request::Deposit(atto, denomination) => {
            let reply = client.deposit(atto, &denomination).await.map_err(call)?;
            print(view::balances(&reply, output))
        }
        Request::Submit(body) => {
            let order = client.submit(*body).await.map_err(call)?;
            print(view::orders(std::slice::from_ref(&order), output))?;
            settled(&order)
        }
        Request::List => {
            let orders = client.list_orders().await.map_err(call)?;
            print(view::orders(&orders, output))
        }
        Request::Status { id, watch } => {
            let order_id = resolve(&client, &id, url).await?;
            let mut shown = String::new();
            loop {
                let order = client.order_status(&order_id).await.map_err(call)?;
                let text = view::order_detail(&order, output);
                if text != shown {
                    if !shown.is_empty() {
                        print("\n".into())?;
                    }
                    print(text.clone())?;
                    shown = text;
                }
                if !watch || view::is_final(&order) {
                    return settled(&order);
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        }
        Request::Logs {
            id,
            options,
            timestamps,
        } => {
            let tokens = access::Tokens {
                key,
                lease_id: lease_of(&client, &id, url).await?,
            };
            let relay = access::relay_client(channel);
            access::logs(
                relay,
                &tokens,
                options,
                timestamps,
                std::io::stdout().lock(),
            )
            .await
            .map_err(call)
        }
        Request::Connect { id, port, listen } => {
            let tokens = access::Tokens {
                key,
                lease_id: lease_of(&client, &id, url).await?,
            };
            let listener = access::listen(listen)
                .await
                .map_err(|e| OrderError::Failed(format!("cannot listen on {listen}: {e}")))?;
            eprintln!(
                "forwarding {listen} to port {port} of lease {}; Ctrl-C stops",
                tokens.lease_id
            );
            access::forward(access::relay_client(channel), tokens, port, listener)
                .await
                .map_err(|e| OrderError::Failed(format!("accepting on {listen}: {e}")))
        }
        Request::Cancel { id } => {
            let order_id = resolve(&client, &id, url).await?;
            let order = client.cancel(&order_id).await.map_err(call)?;
            print(view::orders(&[order], output))
        }
        Request::Balance => {
            let reply = client.balance().await.map_err(call)?;
            print(view::balances(&reply, output))
        }
        Request::Bond(amount, from) => {
            let source = match from {
                StakeSource::Available => "available",
                StakeSource::Earnings => "earnings",
            };
            let reply = client.bond(amount, source).await.map_err(call)?;
            print(view::stake(&reply, output))
        }
        Request::Unbond(amount) => {
            let reply = client.unbond(amount).await.map_err(call)?;
            print(view::stake(&reply, output))
        }
        Request::Stake => {
            let reply = client.stake().await.map_err(call)?;
            print(view::stake(&reply, output))
        }
        Request::Rims(files) => {
            let mut held = Vec::with_capacity(files.len());
            for (path, manifest) in files {
                let reply = client.submit_rim(manifest).await.map_err(|status| {
                    OrderError::Failed(format!("{path}: {}", status.message()))
                })?;
                held.push(reply);
            }
            print(view::manifests(&held, output))
        }
        Request::Propose(changes, effective_height, deposit) => {
            let proposal = client
                .propose(changes, effective_height, deposit)
                .await
                .map_err(call)?;
            print(view::proposals(&[proposal], output))
        }
        Request::Vote(proposal, yes) => {
            let proposal = client.vote(proposal, yes).await.map_err(call)?;
            print(view::proposals(&[proposal], output))
        }
    }
}

/// How often `status --watch` asks the network.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The order id `given` names: used as is when it is a whole order id, else looked up among the
/// buyer's orders as an order or lease id or a unique prefix.
async fn resolve(client: &NetworkClient, given: &str, url: &str) -> Result<String, OrderError> {
    if input::is_whole_order_id(given) {
        return Ok(given.to_ascii_lowercase());
    }
    let orders = client
        .list_orders()
        .await
        .map_err(|status| OrderError::from_status(url, &status))?;
    input::resolve_id(given, &orders).map_err(OrderError::Usage)
}

/// The lease of the order `given` names, once the order has one.
async fn lease_of(client: &NetworkClient, given: &str, url: &str) -> Result<String, OrderError> {
    let order_id = resolve(client, given, url).await?;
    let order = client
        .order_status(&order_id)
        .await
        .map_err(|status| OrderError::from_status(url, &status))?;
    if order.lease_id.is_empty() {
        return Err(OrderError::Failed(format!(
            "order {order_id} has no lease (it is {})",
            view::state(&order)
        )));
    }
    Ok(order.lease_id)
}

/// Ends a command that showed an order as the order turned out.
fn settled(order: &OrderView) -> Result<(), OrderError> {
    let what = match view::outcome(order) {
        Outcome::Fine => return Ok(()),
        Outcome::Rejected => "was rejected",
        Outcome::Failed => "failed",
    };
    Err(OrderError::Outcome {
        order_id: order.order_id.clone(),
        what,
        reason: order.reason.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What a failed call tells the buyer, by what went wrong.
    #[test]
    fn failed_calls_name_the_target_and_the_fix() {
        let url = "http://127.0.0.1:7300";
        let cases: Vec<(tonic::Status, &str, u8)> = vec![
            (
                tonic::Status::unavailable("tcp connect error"),
                "cannot connect to http://127.0.0.1:7300 — is a network node running? set \
                 --network or GPUBRIDGE_NETWORK_URL (tcp connect error)",
                1,
            ),
            (
                tonic::Status::unavailable("invalid peer certificate: UnknownIssuer"),
                "cannot speak gRPC with http://127.0.0.1:7300: invalid peer certificate",
                1,
            ),
            (
                tonic::Status::unknown("h2 protocol error: http2 error"),
                "cannot speak gRPC with",
                1,
            ),
            (
                tonic::Status::failed_precondition(
                    "insufficient funds: hold 1 needs 0.35 USDC, 0 available",
                ),
                "the network refused: insufficient funds: hold 1 needs 0.35 USDC, 0 available — \
                 add funds with `gpubridge order deposit AMOUNT`",
                1,
            ),
            (
                tonic::Status::not_found("order 12 does not exist"),
                "the network refused: order 12 does not exist",
                1,
            ),
            (
                tonic::Status::internal("store failed"),
                "the network failed: Internal: store failed",
                1,
            ),
        ];
        for (status, says, exit) in cases {
            let error = OrderError::from_status(url, &status);
            assert!(error.to_string().starts_with(says), "{says:?}: {error}");
            assert_eq!(error.exit_status(), exit, "{error}");
        }
        assert_eq!(OrderError::Usage("--gpus".into()).exit_status(), 2);
    }
}
