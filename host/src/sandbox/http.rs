//! Outgoing HTTP for task components (`wasi:http/outgoing-handler`), denied by default.
//!
//! Every request a guest sends goes through [`HttpPolicy`], the store's
//! [`WasiHttpHooks`]. Before anything touches the network (no DNS lookup, no connect)
//! the request's scheme, host and port are checked against the task manifest's
//! `allowed_hosts` ([`AllowList`]); a request that matches no pattern fails with
//! `error-code.HTTP-request-denied` and a warning in the worker's log naming the job,
//! the task and the host. Allowed `http://` requests go out on the process's keep-alive
//! connection pool ([`super::http_pool`]), `https://` ones on wasmtime's
//! default sender (a new connection each), both with Sprout's limits applied:
//!
//! - **timeouts** — connect, first byte and between bytes, each at most
//!   [`HttpPolicy::timeout`] (manifest `http_timeout`, default 30 s); a guest may ask for
//!   shorter ones through `request-options`, never longer;
//! - **response size** — a body larger than the cap (manifest `http_max_response_kib`,
//!   default 10 MiB) fails with `error-code.HTTP-response-body-size(some(cap))`: at once
//!   when `content-length` announces it, else on the read that crosses the cap.
//!
//! Neither sender follows redirects: the guest sees the 3xx response and
//! the SDK's helpers re-issue the request to the new location, which passes this check
//! again, so every hop of a redirect chain is checked.
//!
//! What the check does *not* cover: the addresses a name resolves to (an allowed name
//! that resolves to a private address is reached). Allow IP literals when that matters.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::http_pool::{self, Timeouts};
use crate::model::time;
use crate::model::{AllowList, Capabilities, HostPattern};

/// Default per-phase timeout of an outgoing request (connect, first byte, between bytes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on a response body: 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 << 20;

/// The per-job `wasi:http` hooks: allow-list, timeouts and response cap.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    allow: Arc<AllowList>,
    /// Longest wait for each of connect, first byte and the next body bytes.
    pub timeout: Duration,
    /// Largest response body in bytes.
    pub max_response_bytes: u64,
    job_id: String,
    task: String,
}

impl Default for HttpPolicy {
    /// Denies every request.
    fn default() -> Self {
        HttpPolicy {
            allow: Arc::default(),
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            job_id: String::new(),
            task: String::new(),
        }
    }
}

impl HttpPolicy {
    /// The policy a manifest grants one job. Invalid patterns (manifests are validated
    /// when loaded, so only hand-built capabilities have them) are dropped with a warning.
    pub fn new(capabilities: &Capabilities, job_id: &str, task: &str) -> HttpPolicy {
        let allow = if capabilities.allowed_hosts.is_empty() {
            AllowList::default()
        } else {
            let patterns = capabilities
                .allowed_hosts
                .iter()
                .filter_map(|p| match HostPattern::parse(p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(job = %job_id, task = %task, "ignoring {e}");
                        None
                    }
                })
                .collect();
            AllowList::from_patterns(patterns)
        };
        HttpPolicy {
            allow: Arc::new(allow),
            // Checked when the manifest was parsed; a hand-built value out of range
            // (model::time) gives the default.
            timeout: capabilities
                .http_timeout
                .and_then(|s| time::seconds(s).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT),
            max_response_bytes: capabilities
                .http_max_response_kib
                .map_or(DEFAULT_MAX_RESPONSE_BYTES, |k| k.saturating_mul(1024)),
            job_id: job_id.to_string(),
            task: task.to_string(),
        }
    }

    /// The guest's request options, each capped at this policy's timeout.
    fn options(&self, guest: Option<RequestOptions>) -> RequestOptions {
        let cap = |d: Option<Duration>| Some(d.map_or(self.timeout, |d| d.min(self.timeout)));
        let guest = guest.unwrap_or_default();
        RequestOptions {
            connect_timeout: cap(guest.connect_timeout),
            first_byte_timeout: cap(guest.first_byte_timeout),
            between_bytes_timeout: cap(guest.between_bytes_timeout),
        }
    }
}

/// The future that reports a connection's errors after the response head arrived.
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// The future type `WasiHttpHooks::send_request` returns.
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        if let Err(dest) = self.allow.check(request.uri()) {
            tracing::warn!(
                job = %self.job_id,
                task = %self.task,
                "http: denied {} {}: host {dest} is not in allowed_hosts",
                request.method(),
                request.uri()
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let options = self.options(options);
        let cap = self.max_response_bytes;
        // A HEAD response announces the length of a body it does not carry.
        let has_body = request.method() != http::Method::HEAD;
        let pooled = request.uri().scheme() == Some(&http::uri::Scheme::HTTP);
        Box::new(async move {
            let (response, io): (_, IoFuture) = if pooled {
                let timeouts = Timeouts {
                    connect: options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT),
                    first_byte: options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT),
                    between_bytes: options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT),
                };
                (
                    http_pool::send(request, timeouts).await?,
                    Box::new(async { Ok(()) }),
                )
            } else {
                let (response, io) =
                    wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                (response.map(BodyExt::boxed_unsync), Box::new(io))
            };
            let announced = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if has_body && announced.is_some_and(|n| n > cap) {
                return Err(HttpError::HttpResponseBodySize(Some(cap)));
            }
            let limit = usize::try_from(cap).unwrap_or(usize::MAX);
            let response = response.map(|body| {
                Limited::new(body, limit)
                    .map_err(move |e| match e.downcast::<HttpError>() {
                        Ok(e) => *e,
                        Err(e) if e.is::<LengthLimitError>() => {
                            HttpError::HttpResponseBodySize(Some(cap))
                        }
                        Err(e) => HttpError::InternalError(Some(e.to_string())),
                    })
                    .boxed_unsync()
            });
            Ok((response, io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn guest_timeouts_are_capped() {
        let policy = HttpPolicy {
            timeout: Duration::from_secs(5),
            ..HttpPolicy::default()
        };
        let o = policy.options(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(60)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.first_byte_timeout, Some(Duration::from_secs(5)));
        assert_eq!(o.between_bytes_timeout, Some(Duration::from_secs(5)));
    }
}
