//! `gpubridge order` as a buyer runs it, against a network node on a loopback port: what it
//! prints, what it says when something is wrong, and its exit status (0 done, 1 could not be
//! done, 2 a mistake in the command line, 3 the order was rejected or failed).

mod support;

use std::path::Path;
use std::process::Output;

use gpubridge::identity::generate_key;
use gpubridge::wire::proto::{LeaseEndBody, lease_event};
use support::network::{Node, now, offer};

/// Runs `gpubridge order ARGS` with the buyer key in `config` and the network at `url`.
async fn order(config: &Path, url: &str, args: &[&str]) -> Output {
    // Run off the runtime's thread: the node under test serves on it.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gpubridge"));
    command
        .arg("order")
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("GPUBRIDGE_NETWORK_URL", url)
        .env_remove("GPUBRIDGE_BUYER_KEY")
        .env_remove("GPUBRIDGE_NETWORK_CA_FILE");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn says(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SUBMIT: [&str; 8] = [
    "submit",
    "--gpus",
    "2",
    "--hours",
    "1",
    "--max-price",
    "3",
    "--image=ghcr.io/acme/train:1",
];

/// Before a key exists, and with no node where the URL points: each error names what is
/// missing and the fix, and a mistake in the flags is found before either is needed.
#[tokio::test]
async fn errors_name_the_target_and_the_fix_before_anything_is_sent() {
    let config = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", support::network::free_port());

    let (code, _, err) = says(&order(config.path(), &nowhere, &["list"]).await);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no buyer key at ") && err.contains("run `gpubridge order keygen`"),
        "{err}"
    );

    let (code, _, err) = says(&order(config.path(), &nowhere, &["keygen"]).await);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = says(&order(config.path(), &nowhere, &["list"]).await);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot connect to {nowhere} — is a network node running? set --network or GPUBRIDGE_NETWORK_URL")),
        "{err}"
    );
    assert!(!err.contains("refused:"), "nothing refused it: {err}");

    // Flag mistakes: exit 2, named as the flag, and no attempt to reach the (absent) node.
    for (flags, expected) in [
        (
            vec!["--gpus", "-1"],
            "invalid value '-1' for '--gpus <GPUS>': must be a positive whole number",
        ),
        (vec!["--gpus", "65"], "--gpus: must be between 1 and 64"),
        (
            vec!["--denomination", "usdc"],
            "--denomination: may contain only uppercase letters",
        ),
        (vec!["--max-price", "-2"], "--max-price: "),
        (vec!["--memory", "lots"], "--memory: "),
        (
            vec!["--min-uptime", "100.5"],
            "invalid value '100.5' for '--min-uptime <PERCENT>': must be a percentage from 0 to 100",
        ),
        (
            vec!["--provider", "acme"],
            "--provider: must be a provider's base58 public key",
        ),
    ] {
        // The case's flag replaces the one SUBMIT gives.
        let mut args: Vec<&str> = SUBMIT.to_vec();
        if let Some(at) = args.iter().position(|a| *a == flags[0]) {
            args.drain(at..at + 2);
        }
        args.extend(flags.iter());
        let (code, _, err) = says(&order(config.path(), &nowhere, &args).await);
        assert_eq!(code, Some(2), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
        assert!(
            !err.contains("cannot connect") && !err.contains("-- -1"),
            "{err}"
        );
    }
    let (code, _, err) = says(
        &order(
            config.path(),
            &nowhere,
            &[
                "submit",
                "--gpus",
                "1",
                "--max-price",
                "3",
                "--image=ghcr.io/a/b",
            ],
        )
        .await,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("<--hours <HOURS>|--seconds <SECONDS>>"),
        "one required choice: {err}"
    );
}

/// NVIDIA's manifests go to the network from the CLI and are checked there: NVIDIA's published
/// ones were signed by certificates that expired in June 2025, so today's network refuses them
/// with that reason (their acceptance at a time they were valid is the state's test). A missing or
/// oversized file is refused before anything is sent.
#[tokio::test]
async fn manifests_are_handed_to_the_network_and_checked_there() {
    let node = Node::start().await;
    let config = tempfile::tempdir().unwrap();
    assert!(
        order(config.path(), &node.url, &["keygen"])
            .await
            .status
            .success()
    );
    let rim = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/attestation/testdata/Driver_RIM_test_no_gpu.swidtag"
    );
    let (code, out, err) = says(&order(config.path(), &node.url, &["rims", rim]).await);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("Driver_RIM_test_no_gpu.swidtag: manifest: RimCertificate")
            && err.contains("certificateChain[0]: expired"),
        "{err}"
    );

    let nowhere = "http://127.0.0.1:9";
    let large = config.path().join("large.swidtag");
    std::fs::write(&large, vec![b' '; 128 * 1024 + 1]).unwrap();
    for (file, expected) in [
        (
            "/nonexistent.swidtag",
            "files: cannot read /nonexistent.swidtag",
        ),
        (large.to_str().unwrap(), "over a manifest's limit of 131072"),
    ] {
        let (code, _, err) = says(&order(config.path(), nowhere, &["rims", file]).await);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

/// A buyer's session: a rejected order exits 3 and says the bound that failed; funds short of
/// the hold name the deposit; a matched order is found by a prefix of its lease id and shown in
/// detail; the list is newest first; an order whose lease failed by the provider's fault exits 3.
#[tokio::test]
async fn a_buyers_orders_from_rejection_to_detail() {
    let node = Node::start().await;
    let url = node.url.as_str();
    let config = tempfile::tempdir().unwrap();
    assert!(
        order(config.path(), url, &["keygen"])
            .await
            .status
            .success()
    );

    let (code, out, err) = says(&order(config.path(), url, &SUBMIT).await);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.contains("rejected") && out.contains("≤ 3 USDC"),
        "{out}"
    );
    assert!(
        err.contains("was rejected: no offer matches: the offer book is empty"),
        "{err}"
    );

    let provider = generate_key();
    let seller = node.client(provider.clone());
    seller.register("acme", "eu-west").await.unwrap();
    let mut published = offer("h100", &[8]);
    published.price_per_gpu_hour = (4 * support::network::UNIT).to_string();
    seller.publish(published).await.unwrap();
    let (code, _, err) = says(&order(config.path(), url, &SUBMIT).await);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("the only offer costs more than the order's maximum price (the cheapest asks 4 USDC per GPU-hour)"),
        "{err}"
    );

    seller.publish(offer("h100", &[8])).await.unwrap();
    let (code, _, err) = says(&order(config.path(), url, &SUBMIT).await);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("insufficient funds: hold ")
            && err.contains(
                " needs 5 USDC, 0 available — add funds with `gpubridge order deposit AMOUNT`"
            ),
        "{err}"
    );

    assert!(
        order(config.path(), url, &["deposit", "20"])
            .await
            .status
            .success()
    );
    let (code, out, err) =
        says(&order(config.path(), url, &[&SUBMIT[..], &["-o", "json"]].concat()).await);
    assert_eq!(code, Some(0), "{err}");
    let matched: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (order_id, lease_id) = (
        matched[0]["orderId"].as_str().unwrap().to_string(),
        matched[0]["leaseId"].as_str().unwrap().to_string(),
    );

    let (code, out, err) = says(&order(config.path(), url, &["list"]).await);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    // Two rejected, one matched; the order short of funds was refused whole and not recorded.
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[0].starts_with(&order_id), "newest first:\n{out}");

    let (code, out, err) = says(&order(config.path(), url, &["status", &lease_id[..6]]).await);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        format!("Order:        {order_id}"),
        "State:        matched".to_string(),
        format!("Lease:        {lease_id} (offered)"),
        "Provider:     acme (".to_string(),
        "Region:       eu-west".to_string(),
        "Price:        2.5 USDC per GPU-hour".to_string(),
        "Hold:         5 USDC held, 0 USDC charged, 0 USDC refunded".to_string(),
        "Verification: self-reported: no probe passed, no evidence verified".to_string(),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&line)),
            "{line:?} in\n{out}"
        );
    }
    let (code, _, err) = says(&order(config.path(), url, &["status", "zz"]).await);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("\"zz\" is not an order or lease id"), "{err}");

    // The provider accepts, then ends the lease by its own fault: the order failed.
    let mut leases = seller.leases().await.unwrap();
    let event = leases.message().await.unwrap().unwrap();
    let Some(lease_event::Event::Lease(_)) = event.event else {
        panic!("a lease: {event:?}");
    };
    seller.decide(&lease_id, true, "").await.unwrap();
    seller
        .report_end(LeaseEndBody {
            header: None,
            lease_id: lease_id.clone(),
            phase: "Failed".into(),
            reason: "NodeLost".into(),
            fault: "provider".into(),
            started_at: now() - 5,
            ended_at: now(),
            gpu_seconds: 10,
        })
        .await
        .unwrap();
    let (code, out, err) =
        says(&order(config.path(), url, &["status", "--watch", &order_id]).await);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.contains("Reason:       Failed (NodeLost); the provider's fault"),
        "{out}"
    );
    assert!(
        out.contains("Hold:         5 USDC held, 0 USDC charged, 5 USDC refunded"),
        "{out}"
    );
    assert!(
        err.contains(&format!("order {order_id} failed: Failed (NodeLost)")),
        "{err}"
    );
}

/// A provider's stake through the CLI on a network that asks 10 USDC per GPU: unbonded, its
/// offer matches nothing; bonded, it matches what the bond covers and the book shows the bond;
/// an unbond that would uncover its lease is refused with the rule; a lease it accepts and never
/// starts ends at the deadline as its fault, and the slash is the buyer's.
#[tokio::test]
async fn a_providers_bond_covers_its_leases_and_pays_the_buyer_when_it_never_starts() {
    use gpubridge::wire::amount::Amount;
    let node = Node::start_with(gpubridge::node::Params {
        bond_per_gpu: Amount::from_atto(10 * support::network::UNIT),
        start_deadline_seconds: 300,
        ..gpubridge::node::Params::default()
    })
    .await;
    let url = node.url.as_str();
    let (buyer, seller) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for config in [&buyer, &seller] {
        assert!(
            order(config.path(), url, &["keygen"])
                .await
                .status
                .success()
        );
        assert!(
            order(config.path(), url, &["deposit", "100"])
                .await
                .status
                .success()
        );
    }
    let provider =
        gpubridge::identity::keyfile::load(&seller.path().join("gpubridge/buyer.key")).unwrap();
    let p = node.client(provider.clone());
    p.register("acme", "eu-west").await.unwrap();
    p.publish(offer("h100", &[8])).await.unwrap();

    let (code, _, err) = says(&order(buyer.path(), url, &SUBMIT).await);
    assert_eq!(code, Some(3), "no bond, no match: {err}");

    let (code, out, err) = says(&order(seller.path(), url, &["bond", "25"]).await);
    assert_eq!(code, Some(0), "{err}");
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["USDC", "25", "2", "0"], "{out}");
    let (code, out, _) = says(&order(buyer.path(), url, &["offers"]).await);
    assert_eq!(code, Some(0));
    let header = out.lines().next().unwrap();
    for column in [
        "BONDED",
        "UPTIME",
        "TIER",
        "DONE/FAULTS",
        "ATTRIBUTES",
        "PROVIDER KEY",
    ] {
        assert!(header.contains(column), "{out}");
    }
    assert!(out.contains(" egress=internet "), "{out}");
    let (_, out, _) = says(&order(buyer.path(), url, &["offers", "-o", "json"]).await);
    let book: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(book[0]["bonded"], "25", "{out}");
    assert_eq!(
        book[0]["providerKey"],
        gpubridge::identity::public_key_base58(&provider.verifying_key()).as_str()
    );
    assert_eq!(book[0]["uptimeBasisPoints"], 10_000, "{out}");
    // The terms an order's --attribute can ask for, as the provider published them.
    assert_eq!(
        book[0]["attributes"],
        serde_json::json!({"egress": "internet"}),
        "{out}"
    );
    // No evidence verified yet: the provider's word only, and an order asking more waits in vain.
    assert_eq!(book[0]["trustTier"], "self-reported", "{out}");
    let (code, _, err) = says(
        &order(
            buyer.path(),
            url,
            &[&SUBMIT[..], &["--min-tier", "hardware-attested"]].concat(),
        )
        .await,
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("lower trust tier (the best: self-reported)"),
        "{err}"
    );
    let (code, out, err) =
        says(&order(buyer.path(), url, &[&SUBMIT[..], &["-o", "json"]].concat()).await);
    assert_eq!(code, Some(0), "two GPUs are covered: {err}");
    let matched: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lease_id = matched[0]["leaseId"].as_str().unwrap().to_string();
    p.decide(&lease_id, true, "").await.unwrap();

    let (code, _, err) = says(&order(seller.path(), url, &["unbond", "10"]).await);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("unbond.amount: would leave 15 USDC bonded, less than the 2 GPUs"),
        "{err}"
    );
    let (code, _, err) = says(&order(seller.path(), url, &["bond", "0"]).await);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bond.amount"), "{err}");

    // The lease sends no receipt; the upkeep at the deadline ends it.
    node.store.sweep(support::network::now() + 301).unwrap();
    let (code, out, err) = says(&order(buyer.path(), url, &["status", &lease_id]).await);
    assert_eq!(code, Some(3), "failed by the provider's fault: {out}{err}");
    assert!(
        out.contains("NeverStarted") && out.contains("slashed 2.5 USDC"),
        "{out}"
    );
    let (_, out, _) = says(&order(buyer.path(), url, &["balance", "-o", "json"]).await);
    let balance: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        balance[0]["available"], "102.5",
        "the hold back and the slash: {out}"
    );
    let (code, out, err) = says(&order(seller.path(), url, &["stake", "-o", "json"]).await);
    assert_eq!(code, Some(0), "{err}");
    let stake: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stake["bonded"], "22.5");
    assert_eq!(stake["committedGpus"], 0);
    assert_eq!(stake["slashes"][0]["kind"], "never-started");
    assert_eq!(stake["slashes"][0]["leaseId"], lease_id.as_str());
    node.store.audit().unwrap();
}

/// Governance through the CLI: the parameters are public; a proposal with a deposit passes by
/// the provider's bonded vote and takes effect at its height, which `params` then shows.
#[tokio::test]
async fn a_parameter_changes_by_proposal_and_bonded_vote_only() {
    let node = Node::start_with(gpubridge::node::Params {
        voting_blocks: 2,
        ..gpubridge::node::Params::default()
    })
    .await;
    let url = node.url.as_str();
    let (buyer, seller) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for config in [&buyer, &seller] {
        for args in [&["keygen"][..], &["deposit", "100"]] {
            let (code, _, err) = says(&order(config.path(), url, args).await);
            assert_eq!(code, Some(0), "{err}");
        }
    }
    let provider =
        gpubridge::identity::keyfile::load(&seller.path().join("gpubridge/buyer.key")).unwrap();
    node.client(provider).register("acme", "").await.unwrap();
    let (code, _, err) = says(&order(seller.path(), url, &["bond", "50"]).await);
    assert_eq!(code, Some(0), "{err}");

    let (code, out, err) = says(&order(buyer.path(), url, &["params", "-o", "json"]).await);
    assert_eq!(code, Some(0), "{err}");
    let params: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(params["params"]["answer-seconds"], "30");
    let height = params["height"].as_u64().unwrap();

    let at = (height + 5).to_string();
    let (code, _, err) = says(
        &order(
            buyer.path(),
            url,
            &[
                "propose",
                "--set",
                "answer-seconds=2",
                "--effective-height",
                &at,
            ],
        )
        .await,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("change.value: answer-seconds must be a whole number from 5 to 3600"),
        "{err}"
    );
    let (code, out, err) = says(
        &order(
            buyer.path(),
            url,
            &[
                "propose",
                "--set",
                "answer-seconds=45",
                "--effective-height",
                &at,
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(code, Some(0), "{err}");
    let proposal: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = proposal[0]["id"].to_string();
    let (code, _, err) = says(&order(buyer.path(), url, &["vote", &id, "yes"]).await);
    assert_eq!(code, Some(1), "a buyer has no bond: {err}");
    assert!(err.contains("only bonded stake votes"), "{err}");
    let (code, out, err) = says(&order(seller.path(), url, &["vote", &id, "yes"]).await);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("voting") && out.contains("answer-seconds=45"),
        "{out}"
    );

    // Blocks pass (the upkeep is one each here) until the proposal's height.
    for _ in 0..6 {
        node.store.sweep(support::network::now()).unwrap();
        node.client(generate_key())
            .deposit(gpubridge::wire::amount::Amount::from_atto(1), "USDC")
            .await
            .unwrap();
    }
    let (_, out, _) = says(&order(buyer.path(), url, &["params", "-o", "json"]).await);
    let params: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(params["params"]["answer-seconds"], "45", "{out}");
    assert_eq!(params["proposals"][0]["status"], "applied", "{out}");
    let (_, out, _) = says(&order(buyer.path(), url, &["params"]).await);
    assert!(
        out.starts_with("Height: ") && out.contains("answer-seconds"),
        "{out}"
    );
    node.store.audit().unwrap();
}
