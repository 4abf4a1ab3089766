use ed25519_dalek::SigningKey;

use super::*;
use crate::wire::envelope::{seal, sign_body};
use crate::wire::proto::QueryBody;

const NOW: i64 = 1_800_000_000;
const LEASE: &str = "lease7";

fn buyer() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn body(scopes: &[&str], ports: &[u32]) -> AccessTokenBody {
    AccessTokenBody {
        header: None,
        lease_id: LEASE.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ports: ports.to_vec(),
        expires_at: NOW + 300,
    }
}

fn token(body: AccessTokenBody) -> Signed {
    seal(&buyer(), body, NOW)
}

fn facts<'a>(buyer: &'a VerifyingKey, running: bool) -> LeaseFacts<'a> {
    LeaseFacts {
        lease_id: LEASE,
        buyer,
        ports: &[8000, 9000],
        running,
        log_containers: Some(&["workload"]),
    }
}

#[test]
fn a_token_opens_and_grants_what_it_names() {
    let opened = open_token(&token(body(&["logs", "connect"], &[8000])), NOW).unwrap();
    assert_eq!(opened.lease_id, LEASE);
    assert_eq!(opened.buyer, buyer().verifying_key());
    assert_eq!(opened.expires_at, NOW + 300);
    let key = buyer().verifying_key();
    let lease = facts(&key, true);
    for access in [
        Access::Logs { container: "" },
        Access::Logs {
            container: "workload",
        },
        Access::Connect { port: 8000 },
    ] {
        assert_eq!(authorize(&opened, &lease, access), Ok(()), "{access:?}");
    }
    // At a gateway, which does not know the containers, the operator decides about them.
    let gateway = LeaseFacts {
        log_containers: None,
        ..lease.clone()
    };
    assert_eq!(
        authorize(&opened, &gateway, Access::Logs { container: "meter" }),
        Ok(())
    );
}

#[test]
fn a_malformed_forged_or_stale_token_is_refused_naming_the_field() {
    type Make = fn() -> Signed;
    let cases: Vec<(Make, &str)> = vec![
        (
            || {
                let mut t = token(body(&["logs"], &[]));
                let last = t.body.len() - 1;
                t.body[last] ^= 1;
                t
            },
            "signature:",
        ),
        // Signed by the buyer, but as another kind of message.
        (
            || Signed {
                body: token(body(&["logs"], &[])).body,
                signature: sign_body(&buyer(), &QueryBody::default()).signature,
            },
            "signature:",
        ),
        (|| token(body(&["shell"], &[])), "token.scopes[0]: must be"),
        (
            || token(body(&["logs", "logs"], &[])),
            "token.scopes[1]: is listed twice",
        ),
        (|| token(body(&[], &[])), "token.scopes: must grant"),
        (|| token(body(&["connect"], &[])), "token.ports: must list"),
        (|| token(body(&["logs"], &[8000])), "token.ports: must list"),
        (
            || token(body(&["connect"], &[0])),
            "token.ports[0]: must be a TCP port",
        ),
        (
            || {
                let mut b = body(&["logs"], &[]);
                b.lease_id = "Lease-7".into();
                token(b)
            },
            "token.leaseId:",
        ),
        (
            || {
                let mut b = body(&["logs"], &[]);
                b.expires_at = NOW + MAX_TOKEN_SECONDS + 1;
                token(b)
            },
            "token.expiresAt: must be 1 to 900 s",
        ),
        (
            || {
                let mut b = body(&["logs"], &[]);
                b.expires_at = NOW;
                token(b)
            },
            "token.expiresAt: must be 1 to 900 s",
        ),
        (
            || {
                let mut b = body(&["logs"], &[]);
                b.expires_at = NOW + 3000;
                seal(&buyer(), b, NOW + 2700)
            },
            "token.header.issuedAt: 1800002700 is in the future",
        ),
        (
            || {
                let mut b = body(&["logs"], &[]);
                b.expires_at = NOW - 1;
                seal(&buyer(), b, NOW - 301)
            },
            "token.expiresAt: the token expired",
        ),
    ];
    for (make, reason) in cases {
        let err = open_token(&make(), NOW).unwrap_err();
        assert!(err.to_string().starts_with(reason), "{reason}: {err}");
    }
    // The kinds a client tells apart: forged, malformed, out of time.
    let mut forged = token(body(&["logs"], &[]));
    forged.signature[0] ^= 1;
    assert_eq!(
        open_token(&forged, NOW).unwrap_err().kind(),
        "unauthenticated"
    );
    let expired = open_token(&token(body(&["logs"], &[])), NOW + 300).unwrap_err();
    assert_eq!(expired.kind(), "precondition");
}

#[test]
fn a_token_grants_only_its_buyer_its_lease_its_scopes_and_declared_ports() {
    let key = buyer().verifying_key();
    let other_buyer = SigningKey::from_bytes(&[8; 32]).verifying_key();
    let logs = open_token(&token(body(&["logs"], &[])), NOW).unwrap();
    let connect = open_token(&token(body(&["connect"], &[8000, 7000])), NOW).unwrap();
    let other_lease = LeaseFacts {
        lease_id: "lease8",
        ..facts(&key, true)
    };
    let cases = [
        (
            &logs,
            other_lease,
            Access::Logs { container: "" },
            "permission_denied",
            "token.leaseId: the token is for lease lease7, not lease8",
        ),
        (
            &logs,
            facts(&other_buyer, true),
            Access::Logs { container: "" },
            "permission_denied",
            "token.header.signer: ",
        ),
        (
            &logs,
            facts(&key, false),
            Access::Logs { container: "" },
            "precondition",
            "lease lease7 is not running",
        ),
        (
            &logs,
            facts(&key, true),
            Access::Connect { port: 8000 },
            "permission_denied",
            "token.scopes: the token does not grant connect",
        ),
        (
            &connect,
            facts(&key, true),
            Access::Logs { container: "" },
            "permission_denied",
            "token.scopes: the token does not grant logs",
        ),
        (
            &connect,
            facts(&key, true),
            Access::Connect { port: 9000 },
            "permission_denied",
            "port: the token does not grant port 9000",
        ),
        (
            &connect,
            facts(&key, true),
            Access::Connect { port: 7000 },
            "permission_denied",
            "port: lease lease7 declares no port 7000",
        ),
        (
            &logs,
            facts(&key, true),
            Access::Logs { container: "meter" },
            "permission_denied",
            "container: the logs of \"meter\" are not the buyer's",
        ),
    ];
    for (token, lease, access, kind, reason) in cases {
        let err = authorize(token, &lease, access).unwrap_err();
        assert_eq!(err.kind(), kind, "{reason}");
        assert!(err.to_string().starts_with(reason), "{reason}: {err}");
    }
}

#[test]
fn a_nonce_is_accepted_once_while_its_token_lives_and_the_set_is_bounded() {
    let key = buyer().verifying_key();
    let mut seen = SeenNonces::new(2, NOW);
    seen.admit(&key, b"nonce-1", NOW, NOW + 10, NOW).unwrap();
    let again = seen
        .admit(&key, b"nonce-1", NOW, NOW + 10, NOW + 5)
        .unwrap_err();
    assert_eq!(again.kind(), "duplicate");
    // Another signer's same nonce is another token.
    let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
    seen.admit(&other, b"nonce-1", NOW, NOW + 20, NOW).unwrap();
    // Full: refused, not forgetting a live one.
    let full = seen
        .admit(&key, b"nonce-2", NOW, NOW + 10, NOW + 1)
        .unwrap_err();
    assert_eq!(full.kind(), "too_large");
    assert_eq!(seen.len(), 2);
    // Once the first token expired it cannot be replayed anyway: forgotten, making room.
    seen.admit(&key, b"nonce-2", NOW + 10, NOW + 30, NOW + 10)
        .unwrap();
    assert_eq!(seen.len(), 2);
    let other_again = seen.admit(&other, b"nonce-1", NOW, NOW + 20, NOW + 19);
    assert_eq!(other_again.unwrap_err().kind(), "duplicate");
}

#[test]
fn a_set_that_started_after_a_token_was_signed_refuses_it_for_a_fresh_one() {
    // The set of a restarted relay knows nothing of what was used before: a token from then,
    // though still live, may be a replay.
    let key = buyer().verifying_key();
    let mut restarted = SeenNonces::new(8, NOW);
    let before = restarted
        .admit(&key, b"nonce-1", NOW - 1, NOW + 100, NOW)
        .unwrap_err();
    assert_eq!(before.kind(), "unavailable");
    assert!(
        before.to_string().starts_with("header.issuedAt: "),
        "{before}"
    );
    // Nothing was remembered: a fresh one passes.
    assert!(restarted.is_empty());
    restarted
        .admit(&key, b"nonce-2", NOW, NOW + 100, NOW)
        .unwrap();
}
