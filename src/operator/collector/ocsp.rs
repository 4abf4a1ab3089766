//! Fetches OCSP responses for the GPUs' certificate chains from a responder (NVIDIA's is
//! `http://ocsp.ndis.nvidia.com/`), so the network can check revocation. A shell: the requests
//! and the responses' lifetimes come from [`crate::attestation::ocsp`]; the network verifies
//! every response itself. A response is kept until it stops being current. A responder that
//! fails is left alone for a minute, and one evidence's fetching has a budget, so a responder
//! that is down never holds evidence past its freshness: its GPUs go unchecked instead.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::attestation::ocsp::{MAX_RESPONSE_BYTES, current_until, requests};
use crate::wire::proto::{Evidence, GpuOcsp};

/// How long one responder call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long fetching for one evidence may take in all: well inside the evidence's freshness
/// (`FRESHNESS_SECONDS`, 60 s), whatever the number of GPUs.
const FETCH_BUDGET: Duration = Duration::from_secs(10);
/// How long a responder that failed is left alone, seconds.
const BACK_OFF_SECONDS: i64 = 60;
/// Responses kept at most: four per GPU of a few hundred leases.
const KEPT: usize = 4096;

/// Request → (response, current until), seconds since the epoch.
type Kept = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

pub struct OcspFetcher {
    responder: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    kept: Mutex<Kept>,
    /// Until when (seconds since the epoch) the responder is not asked, after a failure.
    resting_until: Mutex<i64>,
}

impl OcspFetcher {
    pub fn new(responder: Uri) -> OcspFetcher {
        OcspFetcher {
            responder,
            client: Client::builder(TokioExecutor::new()).build_http(),
            kept: Mutex::default(),
            resting_until: Mutex::new(i64::MIN),
        }
    }

    fn resting_until(&self) -> std::sync::MutexGuard<'_, i64> {
        self.resting_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Responses for each GPU of `evidence` with a certificate chain, in order. A GPU for which
    /// any call failed gets none: partial responses would refuse it, none leaves its
    /// revocation unchecked, and the verdict says so.
    pub async fn for_evidence(&self, evidence: &Evidence, now: i64) -> Vec<GpuOcsp> {
        let deadline = tokio::time::Instant::now() + FETCH_BUDGET;
        let mut all = Vec::with_capacity(evidence.gpus.len());
        for gpu in &evidence.gpus {
            let mut responses = Vec::new();
            if !gpu.certificate_chain.is_empty() && *self.resting_until() <= now {
                let fetched =
                    tokio::time::timeout_at(deadline, self.chain(&gpu.certificate_chain, now))
                        .await
                        .unwrap_or_else(|_| Err(format!("over the budget of {FETCH_BUDGET:?}")));
                match fetched {
                    Ok(fetched) => responses = fetched,
                    Err(reason) => {
                        *self.resting_until() = now + BACK_OFF_SECONDS;
                        tracing::warn!(
                            gpu = %gpu.uuid,
                            responder = %self.responder,
                            "OCSP responses not fetched, revocation stays unchecked; the \
                             responder rests {BACK_OFF_SECONDS} s: {reason}"
                        );
                    }
                }
            }
            all.push(GpuOcsp { responses });
        }
        all
    }

    async fn chain(&self, chain: &[u8], now: i64) -> Result<Vec<Vec<u8>>, String> {
        let mut responses = Vec::new();
        for request in requests(chain).map_err(|e| e.to_string())? {
            let kept = self
                .kept()
                .get(&request)
                .filter(|(_, until)| *until > now)
                .map(|(response, _)| response.clone());
            let response = match kept {
                Some(response) => response,
                None => {
                    let response = self.call(&request).await?;
                    let until = current_until(&response)
                        .ok_or("the responder's answer is not an OCSP response")?;
                    let mut kept = self.kept();
                    if kept.len() >= KEPT {
                        kept.retain(|_, (_, until)| *until > now);
                    }
                    if kept.len() < KEPT {
                        kept.insert(request, (response.clone(), until));
                    }
                    response
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn call(&self, request: &[u8]) -> Result<Vec<u8>, String> {
        let http = Request::post(self.responder.clone())
            .header(hyper::header::CONTENT_TYPE, "application/ocsp-request")
            .body(Full::new(Bytes::copy_from_slice(request)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(CALL_TIMEOUT, self.client.request(http))
            .await
            .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the responder answered HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
        let bytes = tokio::time::timeout(CALL_TIMEOUT, body.collect())
            .await
            .map_err(|_| format!("no whole answer within {CALL_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::attestation::nvidia::tests::SAMPLE_CHAIN;
    use crate::attestation::ocsp::tests::responses_for_forged_chain;
    use crate::wire::proto::GpuIdentity;

    /// A listener on a free loopback port, and its URL.
    async fn loopback() -> (TcpListener, Uri) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        (listener, url)
    }

    /// A responder on loopback answering every request with `status` and `body`; counts calls.
    async fn responder(status: &'static str, body: Vec<u8>) -> (Uri, Arc<AtomicUsize>) {
        let (listener, url) = loopback().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (body, counted) = (body.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0; 4096];
                    // Headers, then the body its Content-Length gives.
                    loop {
                        let n = stream.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buffer[..n]);
                        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length: usize = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    assert!(String::from_utf8_lossy(&request).contains("application/ocsp-request"));
                    counted.fetch_add(1, Ordering::SeqCst);
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/ocsp-response\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                });
            }
        });
        (url, calls)
    }

    fn evidence() -> Evidence {
        Evidence {
            gpus: vec![
                GpuIdentity {
                    uuid: "GPU-a".into(),
                    certificate_chain: SAMPLE_CHAIN.to_vec(),
                    ..Default::default()
                },
                // A simulated GPU has no chain: nothing to ask about.
                GpuIdentity {
                    uuid: "GPU-b".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn each_certificate_is_asked_about_once_while_its_answer_is_current() {
        let answer = responses_for_forged_chain().remove(0);
        let until = current_until(&answer).unwrap();
        let (url, calls) = responder("200 OK", answer.clone()).await;
        let fetcher = OcspFetcher::new(url);
        let fetched = fetcher.for_evidence(&evidence(), until - 60).await;
        assert_eq!(fetched.len(), 2);
        assert_eq!(fetched[0].responses, vec![answer.clone(); 3]);
        assert!(fetched[1].responses.is_empty());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "one call per certificate asked about"
        );
        // Again while current: from what was kept. Once no longer current: asked again.
        assert_eq!(fetcher.for_evidence(&evidence(), until - 30).await, fetched);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        fetcher.for_evidence(&evidence(), until + 1).await;
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_responder_that_hangs_costs_one_budget_then_rests() {
        let (listener, url) = loopback().await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        // Accepts, reads, never answers.
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                open.push(stream);
            }
        });
        let fetcher = OcspFetcher::new(url);
        let mut many = evidence();
        many.gpus = vec![many.gpus[0].clone(); 8];
        let started = std::time::Instant::now();
        let fetched = fetcher.for_evidence(&many, 0).await;
        assert!(fetched.iter().all(|gpu| gpu.responses.is_empty()));
        // One call timed out; the responder then rests, so the other seven GPUs ask nothing.
        assert!(started.elapsed() < FETCH_BUDGET, "{:?}", started.elapsed());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        fetcher.for_evidence(&many, BACK_OFF_SECONDS - 1).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "resting");
    }

    #[tokio::test]
    async fn a_failing_or_absent_responder_leaves_the_gpu_without_responses() {
        let (refusing, _) = responder("500 Internal Server Error", Vec::new()).await;
        let (garbling, _) = responder("200 OK", b"not ocsp".to_vec()).await;
        let (listener, closed) = loopback().await;
        drop(listener);
        for url in [refusing, garbling, closed] {
            let fetched = OcspFetcher::new(url).for_evidence(&evidence(), 0).await;
            assert!(
                fetched.iter().all(|gpu| gpu.responses.is_empty()),
                "{fetched:?}"
            );
        }
    }
}
