//! Buyer access tokens (DESIGN §9): what a lease-scoped token a buyer signed allows, decided the
//! same way by a network gateway (against the lease its validators committed) and by the
//! operator (against its ComputeLease). Pure: the caller reads the lease and the clock.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;

use crate::identity::public_key_base58;
use crate::wire::envelope::open_signed;
use crate::wire::proto::{AccessTokenBody, Signed};
use crate::wire::validate;
use crate::wire::{Opened, Rejection};

/// The longest a token may be valid, from its signing to its expiry.
pub const MAX_TOKEN_SECONDS: i64 = 15 * 60;
/// How far in the future a token's signing time may be (the signer's clock may run ahead).
pub const CLOCK_SKEW_SECONDS: i64 = crate::wire::envelope::FRESHNESS_SECONDS;

/// What a token may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Logs,
    Connect,
}

impl Scope {
    pub const fn name(self) -> &'static str {
        match self {
            Scope::Logs => "logs",
            Scope::Connect => "connect",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        [Scope::Logs, Scope::Connect]
            .into_iter()
            .find(|s| s.name() == text)
    }
}

/// What one access asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// The logs of a container; `""` is the workload's.
    Logs { container: &'a str },
    /// A TCP connection to a port of the lease's pod.
    Connect { port: u32 },
}

/// A token whose signature verified and whose fields are well formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub lease_id: String,
    pub buyer: VerifyingKey,
    pub scopes: BTreeSet<Scope>,
    pub ports: BTreeSet<u32>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub nonce: Vec<u8>,
}

/// The lease an access is for, as the checker knows it.
#[derive(Clone, Debug)]
pub struct LeaseFacts<'a> {
    pub lease_id: &'a str,
    /// The key that signed the lease's order.
    pub buyer: &'a VerifyingKey,
    /// The TCP ports the workload declared.
    pub ports: &'a [u32],
    /// Whether the lease runs: accepted and not ended.
    pub running: bool,
    /// The containers whose logs the buyer may read, where the checker knows them (the
    /// operator); `None` at a gateway, which leaves that to the operator.
    pub log_containers: Option<&'a [&'a str]>,
}

/// Verifies a token's signature over the bytes received, then its fields, then its time at
/// `now`: refused with the field and the rule, never trusted before its signature verifies.
pub fn open_token(signed: &Signed, now: i64) -> Result<Token, Rejection> {
    let Opened {
        body,
        signer,
        issued_at,
        nonce,
    } = open_signed::<AccessTokenBody>(signed)?;
    validate::object_id("token.leaseId", &body.lease_id)?;
    let mut scopes = BTreeSet::new();
    for (i, text) in body.scopes.iter().enumerate() {
        let field = format!("token.scopes[{i}]");
        let scope = Scope::parse(text)
            .ok_or_else(|| Rejection::invalid(&field, "must be \"logs\" or \"connect\""))?;
        if !scopes.insert(scope) {
            return Err(Rejection::invalid(&field, "is listed twice"));
        }
    }
    if scopes.is_empty() {
        return Err(Rejection::invalid(
            "token.scopes",
            "must grant logs or connect",
        ));
    }
    validate::ports("token.ports", &body.ports)?;
    if scopes.contains(&Scope::Connect) == body.ports.is_empty() {
        return Err(Rejection::invalid(
            "token.ports",
            "must list the ports to connect to with the connect scope, and only with it",
        ));
    }
    let lifetime = body.expires_at - issued_at;
    if !(1..=MAX_TOKEN_SECONDS).contains(&lifetime) {
        return Err(Rejection::invalid(
            "token.expiresAt",
            &format!(
                "must be 1 to {MAX_TOKEN_SECONDS} s after header.issuedAt (it is {lifetime} s)"
            ),
        ));
    }
    if issued_at > now + CLOCK_SKEW_SECONDS {
        return Err(Rejection::Precondition(format!(
            "token.header.issuedAt: {issued_at} is in the future (now {now})"
        )));
    }
    if now >= body.expires_at {
        return Err(Rejection::Precondition(format!(
            "token.expiresAt: the token expired at {} (now {now})",
            body.expires_at
        )));
    }
    Ok(Token {
        lease_id: body.lease_id,
        buyer: signer,
        scopes,
        ports: body.ports.into_iter().collect(),
        issued_at,
        expires_at: body.expires_at,
        nonce,
    })
}

/// Whether `token` allows `access` to `lease`.
pub fn authorize(token: &Token, lease: &LeaseFacts, access: Access) -> Result<(), Rejection> {
    if token.lease_id != lease.lease_id {
        return Err(Rejection::PermissionDenied(format!(
            "token.leaseId: the token is for lease {}, not {}",
            token.lease_id, lease.lease_id
        )));
    }
    if &token.buyer != lease.buyer {
        return Err(Rejection::PermissionDenied(format!(
            "token.header.signer: {} did not order lease {}",
            public_key_base58(&token.buyer),
            lease.lease_id
        )));
    }
    if !lease.running {
        return Err(Rejection::Precondition(format!(
            "lease {} is not running",
            lease.lease_id
        )));
    }
    let needs = match access {
        Access::Logs { .. } => Scope::Logs,
        Access::Connect { .. } => Scope::Connect,
    };
    if !token.scopes.contains(&needs) {
        return Err(Rejection::PermissionDenied(format!(
            "token.scopes: the token does not grant {}",
            needs.name()
        )));
    }
    match access {
        Access::Logs { container } => match lease.log_containers {
            Some(allowed) if !container.is_empty() && !allowed.contains(&container) => {
                Err(Rejection::PermissionDenied(format!(
                    "container: the logs of {container:?} are not the buyer's (allowed: {})",
                    allowed.join(", ")
                )))
            }
            _ => Ok(()),
        },
        Access::Connect { port } if !token.ports.contains(&port) => Err(
            Rejection::PermissionDenied(format!("port: the token does not grant port {port}")),
        ),
        Access::Connect { port } if !lease.ports.contains(&port) => {
            Err(Rejection::PermissionDenied(format!(
                "port: lease {} declares no port {port}",
                lease.lease_id
            )))
        }
        Access::Connect { .. } => Ok(()),
    }
}

/// (signer, nonce) pairs accepted once each, remembered until the time their message stops being
/// valid; a full set refuses new ones rather than forgetting live ones. The set is empty when its
/// process starts, so it refuses what was signed before then: such a message may have been used
/// with a process that is gone, and its sender signs a fresh one.
#[derive(Debug)]
pub struct SeenNonces {
    /// (valid until, signer ‖ nonce), oldest first, to forget them in order.
    until: BTreeSet<(i64, Vec<u8>)>,
    seen: BTreeSet<Vec<u8>>,
    capacity: usize,
    /// Unix seconds from which this set remembers.
    since: i64,
}

impl SeenNonces {
    pub fn new(capacity: usize, since: i64) -> SeenNonces {
        SeenNonces {
            until: BTreeSet::new(),
            seen: BTreeSet::new(),
            capacity,
            since,
        }
    }

    /// Accepts `signer`'s `nonce`, signed at `issued_at`, once, remembered until `valid_until`;
    /// `now` forgets those no longer valid, which no one can replay.
    pub fn admit(
        &mut self,
        signer: &VerifyingKey,
        nonce: &[u8],
        issued_at: i64,
        valid_until: i64,
        now: i64,
    ) -> Result<(), Rejection> {
        if issued_at < self.since {
            return Err(Rejection::Unavailable(format!(
                "header.issuedAt: {issued_at} is before {}, when this relay started remembering \
                 what was used; sign a fresh one",
                self.since
            )));
        }
        while self.until.first().is_some_and(|(until, _)| *until <= now) {
            if let Some((_, key)) = self.until.pop_first() {
                self.seen.remove(&key);
            }
        }
        let key = [signer.as_bytes().as_slice(), nonce].concat();
        if self.seen.contains(&key) {
            return Err(Rejection::Duplicate(
                "header.nonce: this token (or request) was used already".to_string(),
            ));
        }
        if self.seen.len() >= self.capacity {
            return Err(Rejection::TooLarge(format!(
                "{} live tokens are remembered here, the most there may be; retry later",
                self.capacity
            )));
        }
        self.seen.insert(key.clone());
        self.until.insert((valid_until, key));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests;
