//! Blocking HTTP for tasks: [`get`] and [`request`], built on `wasi:http`.
//!
//! Write plain blocking code; while a request waits for the network the host suspends
//! this guest and runs others, so a thousand tasks waiting on HTTP cost no threads.
//!
//! ```no_run
//! use sprout_guest::{http, task, TaskError};
//!
//! #[task]
//! fn title(url: String) -> Result<String, TaskError> {
//!     let page = http::get(&url)?.error_for_status()?;
//!     Ok(page.text().lines().next().unwrap_or_default().to_string())
//! }
//! # sprout_guest::export_tasks!(title);
//! # fn main() {}
//! ```
//!
//! # What the worker allows
//! Nothing, unless the task's manifest lists the destination in `[capabilities]
//! allowed_hosts` (`"https://api.example.com"`, `"http://127.0.0.1:*"`). Each request
//! and each redirect hop is checked before anything is sent. The manifest also sets the
//! timeouts (`http_timeout`, default 30 s for each of connect, first byte and between
//! bytes) and the largest response (`http_max_response_kib`, default 10 MiB).
//!
//! # Redirects
//! 301, 302, 303, 307 and 308 responses with a `Location` are followed, at most
//! [`MAX_REDIRECTS`] times, each hop going through the worker's allow-list again. 303,
//! and 301/302 after a `POST`, continue as a `GET` without a body (what browsers and
//! Python's `requests` do); `Authorization` is dropped when the host changes.
//!
//! # Errors
//! Every failure is a [`TaskError`], so `?` in a task makes it the job's failure:
//!
//! | kind | when | message (example) |
//! |---|---|---|
//! | `PermissionError` | the host is not in `allowed_hosts` | `http: host 127.0.0.1:9 is not in allowed_hosts` (plus `(redirected from …)` for a redirect hop) |
//! | `TimeoutError` | connect, first byte or a body read took longer than `http_timeout` | `http: GET http://…/feed: no response within the timeout` |
//! | `ResponseTooLarge` | the body is larger than `http_max_response_kib` | `http: GET http://…/big: the response is larger than the worker allows (10485760 bytes)` |
//! | `ConnectionError` | refused, reset, DNS failure | `http: GET http://127.0.0.1:9/: connection refused` |
//! | `ValueError` | the URL or a header is malformed | `http: invalid URL "ftp://x": the scheme must be http or https` |
//! | `HTTPError` | protocol errors, too many redirects, [`Response::error_for_status`] | `http: GET http://…/missing returned 404` |
//!
//! A non-2xx status is not an error by itself: check [`Response::status`] or call
//! [`Response::error_for_status`].
//!
//! # Outside a worker
//! Natively (`cargo test`) there is no network: requests fail with `HTTPError`, unless
//! a test installs a fake server with [`testing::mock_http`](crate::testing::mock_http).

use crate::TaskError;
use crate::error::kind;

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;

/// A request as the transport sees it (after redirects are resolved). Fakes installed
/// with [`testing::mock_http`](crate::testing::mock_http) receive these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, … (upper case).
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for none).
    pub body: Vec<u8>,
}

/// A complete response: status, headers and the whole body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The status code (200, 404, …).
    pub status: u16,
    /// Header names (lower case) and values, in the order received. Values that are not
    /// UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The URL that produced this response (the last hop of any redirects).
    pub url: String,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 is replaced with U+FFFD).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// Kind `ValueError` when the body is not valid JSON for `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            TaskError::new(
                kind::VALUE_ERROR,
                format!(
                    "http: the response from {} is not the expected JSON: {e}",
                    self.url
                ),
            )
        })
    }

    /// `Ok(self)` for a 2xx status, else an error of kind `HTTPError` naming the URL and
    /// the status (like `requests`' `raise_for_status`).
    ///
    /// # Errors
    /// Kind `HTTPError` for any non-2xx status.
    pub fn error_for_status(self) -> Result<Response, TaskError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(TaskError::new(
                kind::HTTP_ERROR,
                format!("http: {} returned {}", self.url, self.status),
            ))
        }
    }
}

/// `GET url`, following redirects. See the [module docs](self) for errors.
///
/// # Errors
/// A [`TaskError`] whose kind says what went wrong (`PermissionError`, `TimeoutError`,
/// `ResponseTooLarge`, `ConnectionError`, `ValueError`, `HTTPError`).
pub fn get(url: &str) -> Result<Response, TaskError> {
    request("GET", url, &[], &[])
}

/// Sends `method url` with `headers` and `body` (empty = none), following redirects, and
/// returns the whole response. See the [module docs](self) for errors.
///
/// ```no_run
/// # fn demo() -> Result<(), sprout_guest::TaskError> {
/// use sprout_guest::http;
/// let r = http::request(
///     "POST",
///     "http://127.0.0.1:8080/items",
///     &[("content-type", "application/json")],
///     br#"{"name": "x"}"#,
/// )?;
/// assert_eq!(r.status, 201);
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`get`].
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, TaskError> {
    let mut method = method.trim().to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        return Err(TaskError::new(
            kind::VALUE_ERROR,
            format!("http: invalid method {method:?}"),
        ));
    }
    let first = Url::parse(url)?;
    let mut current = first.clone();
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut body = body.to_vec();
    for hop in 0..=MAX_REDIRECTS {
        let req = Request {
            method: method.clone(),
            url: current.to_string(),
            headers: headers.clone(),
            body: body.clone(),
        };
        let redirected_from = (hop > 0).then_some(&first);
        let response = transport::send(&req, &current)
            .map_err(|e| e.into_task_error(&req, &current, redirected_from))?;
        let location = match response.status {
            301 | 302 | 303 | 307 | 308 => response.header("location"),
            _ => None,
        };
        let Some(location) = location else {
            return Ok(response);
        };
        let next = current.join(location).map_err(|e| {
            TaskError::new(
                kind::HTTP_ERROR,
                format!(
                    "http: {method} {current} redirected to an invalid location {location:?}: {}",
                    e.message
                ),
            )
        })?;
        let to_get = response.status == 303 || (response.status <= 302 && method == "POST");
        if to_get && method != "HEAD" {
            method = "GET".into();
            body.clear();
            headers.retain(|(k, _)| {
                !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("content-type")
            });
        }
        if next.host_port() != current.host_port() {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
        }
        current = next;
    }
    Err(TaskError::new(
        kind::HTTP_ERROR,
        format!("http: {first}: more than {MAX_REDIRECTS} redirects"),
    ))
}

/// Why the transport could not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "the wasm transport builds most variants, the native one only `Task`"
)]
enum SendError {
    /// The host refused the destination (not in `allowed_hosts`).
    Denied,
    /// Connecting took too long.
    ConnectTimeout,
    /// The response (first byte or a later read) took too long.
    ResponseTimeout,
    /// The body is over the host's cap (the cap in bytes, when known).
    TooLarge(Option<u64>),
    /// Refused, reset, DNS.
    Connection(String),
    /// The request itself is malformed (header, URL).
    Invalid(String),
    /// Anything else.
    Other(String),
    /// A ready-made error (from a test fake).
    Task(TaskError),
}

impl SendError {
    fn into_task_error(self, req: &Request, url: &Url, redirected_from: Option<&Url>) -> TaskError {
        let what = format!("http: {} {}", req.method, req.url);
        let (kind, message) = match self {
            SendError::Task(e) => return e,
            SendError::Denied => {
                let mut m = format!("http: host {} is not in allowed_hosts", url.host_port());
                if let Some(from) = redirected_from {
                    m.push_str(&format!(" (redirected from {from})"));
                }
                (kind::PERMISSION_ERROR, m)
            }
            SendError::ConnectTimeout => (
                kind::TIMEOUT_ERROR,
                format!("{what}: connecting to {} timed out", url.host_port()),
            ),
            SendError::ResponseTimeout => (
                kind::TIMEOUT_ERROR,
                format!("{what}: no response within the timeout"),
            ),
            SendError::TooLarge(cap) => (
                kind::RESPONSE_TOO_LARGE,
                match cap {
                    Some(cap) => format!(
                        "{what}: the response is larger than the worker allows ({cap} bytes)"
                    ),
                    None => format!("{what}: the response is larger than the worker allows"),
                },
            ),
            SendError::Connection(m) => (kind::CONNECTION_ERROR, format!("{what}: {m}")),
            SendError::Invalid(m) => (kind::VALUE_ERROR, format!("{what}: {m}")),
            SendError::Other(m) => (kind::HTTP_ERROR, format!("{what}: {m}")),
        };
        TaskError::new(kind, message)
    }

    /// Classifies the text of a body-stream error, which carries no error code: the host
    /// reports a size-cap or timeout error there as text.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    fn from_stream_text(text: &str) -> SendError {
        let lower = text.to_ascii_lowercase();
        if lower.contains("response body size") || lower.contains("responsebodysize") {
            let cap = lower
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .find_map(|s| s.parse::<u64>().ok());
            SendError::TooLarge(cap)
        } else if lower.contains("timeout") || lower.contains("timed out") {
            SendError::ResponseTimeout
        } else {
            SendError::Other(format!("reading the response failed: {text}"))
        }
    }
}

/// An absolute `http` or `https` URL, split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// `http` or `https`.
    scheme: String,
    /// `host[:port]`, as written (IPv6 in brackets).
    authority: String,
    /// `/path?query`, never empty.
    path_and_query: String,
}

impl Url {
    pub(crate) fn parse(text: &str) -> Result<Url, TaskError> {
        let bad = |why: &str| {
            TaskError::new(
                kind::VALUE_ERROR,
                format!("http: invalid URL {text:?}: {why}"),
            )
        };
        let trimmed = text.trim();
        let (scheme, rest) = trimmed
            .split_once("://")
            .ok_or_else(|| bad("expected http://host/path or https://host/path"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("user info (user:password@) is not supported"));
        }
        if authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("whitespace in the host"));
        }
        let path_and_query = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if path_and_query
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("whitespace in the path (percent-encode it)"));
        }
        Ok(Url {
            scheme,
            authority: authority.to_string(),
            path_and_query,
        })
    }

    /// `host:port` with the scheme's default port filled in, lower case: the form the
    /// worker checks against `allowed_hosts` and names in errors.
    pub(crate) fn host_port(&self) -> String {
        let authority = self.authority.to_ascii_lowercase();
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        if has_port {
            authority
        } else {
            let port = if self.scheme == "https" { 443 } else { 80 };
            format!("{authority}:{port}")
        }
    }

    /// Resolves a `Location` value against this URL.
    fn join(&self, location: &str) -> Result<Url, TaskError> {
        let location = location.trim();
        if location.contains("://") {
            return Url::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return Url::parse(&format!("{}://{rest}", self.scheme));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else if location.starts_with('?') {
            let path = self.path_and_query.split('?').next().unwrap_or("/");
            format!("{path}{location}")
        } else {
            let path = self.path_and_query.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Url::parse(&format!("{}://{}{path}", self.scheme, self.authority))
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme, self.authority, self.path_and_query
        )
    }
}

#[cfg(target_arch = "wasm32")]
mod transport {
    //! The real transport: `wasi:http/outgoing-handler`, waiting with `poll.block`
    //! (the host suspends this guest, not a thread).

    use super::{Request, Response, SendError, Url};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
    };
    use wasip2::io::streams::StreamError;

    /// Bytes asked for per body read.
    const READ_CHUNK: u64 = 64 << 10;
    /// Bytes per body write (what `blocking-write-and-flush` accepts at once).
    const WRITE_CHUNK: usize = 4096;

    pub(super) fn send(req: &Request, url: &Url) -> Result<Response, SendError> {
        let fields = Fields::new();
        for (name, value) in &req.headers {
            fields
                .append(name, value.as_bytes())
                .map_err(|e| SendError::Invalid(format!("header {name:?}: {e:?}")))?;
        }
        let has_length = req
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        if !req.body.is_empty() && !has_length {
            fields
                .append("content-length", req.body.len().to_string().as_bytes())
                .map_err(|e| SendError::Invalid(format!("content-length: {e:?}")))?;
        }
        let outgoing = OutgoingRequest::new(fields);
        let method = match req.method.as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "TRACE" => Method::Trace,
            "CONNECT" => Method::Connect,
            other => Method::Other(other.to_string()),
        };
        let invalid = |what: &str| SendError::Invalid(format!("invalid {what}"));
        outgoing
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        let scheme = if url.scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        outgoing
            .set_authority(Some(&url.authority))
            .map_err(|()| invalid("host"))?;
        outgoing
            .set_path_with_query(Some(&url.path_and_query))
            .map_err(|()| invalid("path"))?;
        let body = if req.body.is_empty() {
            None
        } else {
            Some(outgoing.body().map_err(|()| invalid("body"))?)
        };

        let future = outgoing_handler::handle(outgoing, None).map_err(from_code)?;
        if let Some(body) = body {
            {
                let stream = body.write().map_err(|()| invalid("body"))?;
                for chunk in req.body.chunks(WRITE_CHUNK) {
                    // A failed write means the request failed; its reason comes with
                    // the response below.
                    if stream.blocking_write_and_flush(chunk).is_err() {
                        break;
                    }
                }
            }
            OutgoingBody::finish(body, None).map_err(from_code)?;
        }
        let incoming = loop {
            if let Some(result) = future.get() {
                break result;
            }
            future.subscribe().block();
        };
        let response = match incoming {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(from_code(code)),
            Err(()) => return Err(SendError::Other("the response was already taken".into())),
        };
        drop(future);
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let body = response
            .consume()
            .map_err(|()| SendError::Other("the response body was already taken".into()))?;
        let mut bytes = Vec::new();
        {
            let stream = body
                .stream()
                .map_err(|()| SendError::Other("the response body was already taken".into()))?;
            loop {
                match stream.blocking_read(READ_CHUNK) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(match wasip2::http::types::http_error_code(&e) {
                            Some(code) => from_code(code),
                            None => SendError::from_stream_text(&e.to_debug_string()),
                        });
                    }
                }
            }
        }
        drop(IncomingBody::finish(body));
        drop(response);
        Ok(Response {
            status,
            headers,
            body: bytes,
            url: url.to_string(),
        })
    }

    fn from_code(code: ErrorCode) -> SendError {
        match code {
            ErrorCode::HttpRequestDenied => SendError::Denied,
            ErrorCode::ConnectionTimeout => SendError::ConnectTimeout,
            ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
                SendError::ResponseTimeout
            }
            ErrorCode::HttpResponseBodySize(cap) => SendError::TooLarge(cap),
            ErrorCode::ConnectionRefused => SendError::Connection("connection refused".into()),
            ErrorCode::ConnectionTerminated => {
                SendError::Connection("the connection was closed".into())
            }
            ErrorCode::DnsTimeout => SendError::Connection("DNS lookup timed out".into()),
            ErrorCode::DnsError(p) => SendError::Connection(format!(
                "DNS lookup failed{}",
                p.rcode.map(|r| format!(" ({r})")).unwrap_or_default()
            )),
            ErrorCode::DestinationNotFound
            | ErrorCode::DestinationUnavailable
            | ErrorCode::DestinationIpProhibited
            | ErrorCode::DestinationIpUnroutable => {
                SendError::Connection(format!("destination unreachable ({code:?})"))
            }
            ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
                SendError::Invalid(format!("{code:?}"))
            }
            other => SendError::Other(format!("{other:?}")),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod transport {
    //! Natively there is no host: a test's fake server, or an error.

    use super::{Request, Response, SendError, Url};
    use crate::TaskError;
    use crate::error::kind;

    pub(super) fn send(req: &Request, url: &Url) -> Result<Response, SendError> {
        match crate::testing::http_handler() {
            Some(handler) => {
                let mut response = handler(req).map_err(SendError::Task)?;
                if response.url.is_empty() {
                    response.url = url.to_string();
                }
                Ok(response)
            }
            None => Err(SendError::Task(TaskError::new(
                kind::HTTP_ERROR,
                format!(
                    "http: {} {}: HTTP needs a Sprout worker (wasm32-wasip2); in native tests \
                     install a fake with sprout_guest::testing::mock_http",
                    req.method, req.url
                ),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn parses_and_joins_urls() {
        let u = Url::parse("HTTP://127.0.0.1:8080/a/b?x=1#frag").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/a/b?x=1");
        assert_eq!(u.host_port(), "127.0.0.1:8080");
        assert_eq!(
            Url::parse("https://Example.com").unwrap().host_port(),
            "example.com:443"
        );
        assert_eq!(Url::parse("http://[::1]/").unwrap().host_port(), "[::1]:80");
        assert_eq!(Url::parse("http://h?q").unwrap().to_string(), "http://h/?q");
        assert_eq!(u.join("/c").unwrap().to_string(), "http://127.0.0.1:8080/c");
        assert_eq!(
            u.join("c?y").unwrap().to_string(),
            "http://127.0.0.1:8080/a/c?y"
        );
        assert_eq!(
            u.join("?z").unwrap().to_string(),
            "http://127.0.0.1:8080/a/b?z"
        );
        assert_eq!(
            u.join("//other:9/p").unwrap().to_string(),
            "http://other:9/p"
        );
        assert_eq!(u.join("https://x/y").unwrap().to_string(), "https://x/y");
        for bad in [
            "ftp://x/",
            "x/y",
            "http:///p",
            "http://u:p@h/",
            "http://a b/",
        ] {
            let e = Url::parse(bad).unwrap_err();
            assert_eq!(e.kind, "ValueError", "{bad}: {e}");
        }
    }

    #[test]
    fn natively_without_a_fake_it_is_an_error() {
        testing::reset();
        let e = get("http://127.0.0.1:1/").unwrap_err();
        assert_eq!(e.kind, "HTTPError");
        assert!(e.message.contains("mock_http"), "{e}");
    }

    #[test]
    fn follows_redirects_and_rewrites_methods() {
        testing::reset();
        testing::mock_http(|req| {
            Ok(match req.url.as_str() {
                "http://a/start" => redirect(303, "/next"),
                "http://a/next" => redirect(307, "http://b/final"),
                _ => Response {
                    status: 200,
                    body: format!("{} {} {}", req.method, req.url, req.body.len()).into(),
                    headers: req.headers.clone(),
                    ..Response::default()
                },
            })
        });
        let r = request("post", "http://a/start", &[("authorization", "x")], b"data").unwrap();
        assert_eq!(r.text(), "GET http://b/final 0");
        assert_eq!(r.url, "http://b/final");
        // The Authorization header did not follow the redirect to another host.
        assert_eq!(r.header("authorization"), None);
        testing::reset();
    }

    #[test]
    fn redirect_loops_end() {
        testing::reset();
        testing::mock_http(|_| Ok(redirect(302, "/again")));
        let e = get("http://a/").unwrap_err();
        assert_eq!(e.kind, "HTTPError");
        assert!(e.message.contains("more than 10 redirects"), "{e}");
        testing::reset();
    }

    #[test]
    fn errors_name_the_host_and_the_hop() {
        let first = Url::parse("http://127.0.0.1:8080/r").unwrap();
        let hop = Url::parse("http://127.0.0.1:9/x").unwrap();
        let req = Request {
            method: "GET".into(),
            url: hop.to_string(),
            headers: vec![],
            body: vec![],
        };
        let e = SendError::Denied.into_task_error(&req, &hop, None);
        assert_eq!(e.kind, "PermissionError");
        assert_eq!(e.message, "http: host 127.0.0.1:9 is not in allowed_hosts");
        let e = SendError::Denied.into_task_error(&req, &hop, Some(&first));
        assert_eq!(
            e.message,
            "http: host 127.0.0.1:9 is not in allowed_hosts (redirected from http://127.0.0.1:8080/r)"
        );
        let e = SendError::from_stream_text("HTTP response body size exceeds limit: 1024 bytes")
            .into_task_error(&req, &hop, None);
        assert_eq!(e.kind, "ResponseTooLarge");
        assert!(e.message.contains("(1024 bytes)"), "{e}");
        let e = SendError::from_stream_text("connection read timeout")
            .into_task_error(&req, &hop, None);
        assert_eq!(e.kind, "TimeoutError");
    }

    #[test]
    fn status_helpers() {
        let r = Response {
            status: 404,
            url: "http://a/x".into(),
            ..Response::default()
        };
        assert!(!r.is_success());
        let e = r.error_for_status().unwrap_err();
        assert_eq!(
            (e.kind.as_str(), e.message.as_str()),
            ("HTTPError", "http: http://a/x returned 404")
        );
        let ok = Response {
            status: 200,
            body: br#"{"n": 2}"#.to_vec(),
            ..Response::default()
        };
        assert_eq!(ok.json::<serde_json::Value>().unwrap()["n"], 2);
    }

    fn redirect(status: u16, location: &str) -> Response {
        Response {
            status,
            headers: vec![("location".into(), location.into())],
            ..Response::default()
        }
    }
}
