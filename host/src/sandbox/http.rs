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

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::http_pool::{self, Timeouts};
use crate::manifest::Capabilities;

/// Default per-phase timeout of an outgoing request (connect, first byte, between bytes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on a response body: 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 << 20;

/// The scheme part of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// `*`: any host.
    Any,
    /// `*.example.com`: one or more labels in front of `.example.com` (stored with the dot).
    Subdomains(String),
    /// A name or IP literal, lowercase; IPv6 in brackets.
    Exact(String),
}

/// One `allowed_hosts` entry: `scheme://host[:port]`.
///
/// Grammar (case-insensitive):
///
/// ```text
/// pattern = scheme "://" host [ ":" port ]
/// scheme  = "http" | "https"
/// host    = "*"                       any host
///         | "*." name                 any name ending in "." name (not name itself)
///         | name                      a DNS name, exactly (a trailing "." is ignored)
///         | ipv4 | "[" ipv6 "]"       an IP literal, exactly
/// port    = "*" | 1..65535            omitted = the scheme's default (80 or 443)
/// ```
///
/// No user info, path, query or fragment. `*` only stands for whole labels at the
/// left of a name, or for the whole host, or for the whole port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Scheme,
    host: HostMatch,
    /// `None` = any port.
    port: Option<u16>,
}

/// Why an `allowed_hosts` entry is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "allowed_hosts entry {pattern:?}: {reason} (expected scheme://host[:port], e.g. \"https://*.example.com:443\" or \"http://127.0.0.1:*\")"
)]
pub struct PatternError {
    /// The entry as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

impl HostPattern {
    /// Parses one `allowed_hosts` entry (see the type's grammar).
    ///
    /// # Errors
    /// [`PatternError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<HostPattern, PatternError> {
        let err = |reason: &str| PatternError {
            pattern: text.to_string(),
            reason: reason.to_string(),
        };
        let lower = text.trim().to_ascii_lowercase();
        let (scheme, rest) = lower
            .split_once("://")
            .ok_or_else(|| err("missing scheme"))?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "*" => return Err(err("the scheme must be http or https, not a wildcard")),
            _ => return Err(err("the scheme must be http or https")),
        };
        if rest.contains(['/', '?', '#']) {
            return Err(err("a pattern has no path, query or fragment"));
        }
        if rest.contains('@') {
            return Err(err("a pattern has no user info"));
        }
        let (host, port) = split_host_port(rest).map_err(|r| err(&r))?;
        let port = match port {
            None => Some(scheme.default_port()),
            Some("*") => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return Err(err("the port must be 1-65535 or *")),
            },
        };
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(err("`*` may only stand for the leftmost label(s)"));
            }
            check_name(suffix).map_err(|r| err(&r))?;
            let numeric_tld = suffix
                .rsplit('.')
                .next()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
            if numeric_tld || !suffix.contains('.') {
                return Err(err(
                    "`*.` must be followed by a domain with at least two labels",
                ));
            }
            HostMatch::Subdomains(format!(".{suffix}"))
        } else if host.contains('*') {
            return Err(err(
                "`*` may only stand for the leftmost label(s) (`*.example.com`) or the whole host",
            ));
        } else if let Some(v6) = host.strip_prefix('[') {
            let addr = v6
                .strip_suffix(']')
                .and_then(|a| a.parse::<std::net::Ipv6Addr>().ok())
                .ok_or_else(|| err("invalid IPv6 literal"))?;
            HostMatch::Exact(format!("[{addr}]"))
        } else {
            check_name(host).map_err(|r| err(&r))?;
            HostMatch::Exact(host.trim_end_matches('.').to_string())
        };
        Ok(HostPattern { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` matches. `host` must be lowercase
    /// without a trailing dot (see [`Destination`]).
    fn matches(&self, dest: &Destination) -> bool {
        if self.scheme.name() != dest.scheme {
            return false;
        }
        if self.port.is_some_and(|p| p != dest.port) {
            return false;
        }
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => *h == dest.host,
            // IP literals never match a name pattern.
            HostMatch::Subdomains(suffix) => {
                !dest.is_ip_literal()
                    && dest.host.len() > suffix.len()
                    && dest.host.ends_with(suffix.as_str())
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.name())?;
        match &self.host {
            HostMatch::Any => f.write_str("*")?,
            HostMatch::Subdomains(s) => write!(f, "*{s}")?,
            HostMatch::Exact(h) => f.write_str(h)?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => f.write_str(":*"),
        }
    }
}

/// Splits `host[:port]`, where an IPv6 host is bracketed.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if text.starts_with('[') {
        let end = text.find(']').ok_or("unclosed `[` in an IPv6 literal")?;
        let (host, rest) = text.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err("unexpected text after the IPv6 literal".into()),
            },
        };
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((host, Some(port))),
        Some(_) => Err("IPv6 literals must be in brackets".into()),
        None => Ok((text, None)),
    }
}

/// Checks a DNS name or IPv4 literal: non-empty labels of letters, digits, `-`, `_`.
fn check_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("the host is empty".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("invalid host label {label:?}"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("invalid character in host label {label:?}"));
        }
    }
    Ok(())
}

/// A manifest's `allowed_hosts`, parsed. Empty = nothing is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<HostPattern>,
}

impl AllowList {
    /// Parses every entry.
    ///
    /// # Errors
    /// The first invalid entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, PatternError> {
        let patterns = entries
            .iter()
            .map(|e| HostPattern::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(AllowList { patterns })
    }

    /// Whether a request to `uri` may be sent. `Err` carries the destination as
    /// `host:port`, for messages.
    ///
    /// # Errors
    /// The destination (`host:port`) when no pattern allows it, or a reason when the
    /// URI has no usable scheme or host.
    pub fn check(&self, uri: &http::Uri) -> Result<(), String> {
        let dest = Destination::of(uri)?;
        if self.patterns.iter().any(|p| p.matches(&dest)) {
            Ok(())
        } else {
            Err(dest.to_string())
        }
    }

    /// True when no host is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Where a request goes: normalised scheme, host and port.
#[derive(Debug)]
struct Destination {
    scheme: String,
    /// Lowercase, no trailing dot; IPv6 in brackets.
    host: String,
    port: u16,
}

impl Destination {
    fn of(uri: &http::Uri) -> Result<Destination, String> {
        let scheme = uri
            .scheme_str()
            .ok_or("the request has no scheme")?
            .to_ascii_lowercase();
        let authority = uri.authority().ok_or("the request has no host")?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{authority} (user info in the authority is not allowed)"
            ));
        }
        let port = match authority.port_u16() {
            Some(p) => p,
            None => match scheme.as_str() {
                "http" => 80,
                "https" => 443,
                _ => return Err(format!("unsupported scheme {scheme}")),
            },
        };
        let mut host = authority.host().to_ascii_lowercase();
        if let Some(stripped) = host.strip_suffix('.') {
            host = stripped.to_string();
        }
        // Normalise IPv6 literals so `[0:0::1]` matches `[::1]`.
        if let Some(addr) = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        {
            host = format!("[{addr}]");
        }
        Ok(Destination { scheme, host, port })
    }

    fn is_ip_literal(&self) -> bool {
        self.host.starts_with('[') || self.host.parse::<std::net::Ipv4Addr>().is_ok()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

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
            AllowList { patterns }
        };
        HttpPolicy {
            allow: Arc::new(allow),
            timeout: capabilities
                .http_timeout
                .filter(|s| s.is_finite() && *s > 0.0)
                .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64),
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

    fn allows(patterns: &[&str], url: &str) -> bool {
        let list = AllowList::parse(patterns).unwrap();
        list.check(&url.parse().unwrap()).is_ok()
    }

    #[test]
    fn exact_hosts_and_default_ports() {
        let p = ["https://api.example.com"];
        assert!(allows(&p, "https://api.example.com/x"));
        assert!(allows(&p, "https://API.example.com:443/x"));
        assert!(allows(&p, "https://api.example.com./"));
        assert!(!allows(&p, "https://api.example.com:8443/"));
        assert!(!allows(&p, "http://api.example.com/"));
        assert!(!allows(&p, "https://example.com/"));
        assert!(!allows(&p, "https://api.example.com.evil.net/"));
        assert!(!allows(&[], "https://api.example.com/"));
    }

    #[test]
    fn wildcards() {
        let p = ["https://*.example.com:*", "http://127.0.0.1:*"];
        assert!(allows(&p, "https://a.example.com/"));
        assert!(allows(&p, "https://a.b.example.com:8443/"));
        assert!(!allows(&p, "https://example.com/"));
        assert!(!allows(&p, "https://badexample.com/"));
        assert!(allows(&p, "http://127.0.0.1:9/"));
        assert!(allows(&p, "http://127.0.0.1/"));
        assert!(!allows(&p, "http://127.0.0.2:80/"));
        assert!(!allows(&p, "http://localhost:80/"));
        assert!(allows(&["http://*:8080"], "http://anything.at.all:8080/"));
        assert!(!allows(&["http://*:8080"], "http://anything:8081/"));
        assert!(allows(&["http://[::1]:*"], "http://[0:0::1]:3000/"));
    }

    #[test]
    fn denied_destination_is_named() {
        let list = AllowList::parse(&["http://127.0.0.1:8080"]).unwrap();
        assert_eq!(
            list.check(&"http://127.0.0.1:9/x".parse().unwrap()),
            Err("127.0.0.1:9".to_string())
        );
        assert_eq!(
            list.check(&"https://Example.COM/".parse().unwrap()),
            Err("example.com:443".to_string())
        );
        assert!(
            list.check(&"http://127.0.0.1:8080@evil.net/".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "*://example.com",
            "https://example.com/path",
            "https://a.*.example.com",
            "https://ex*ample.com",
            "https://*.com",
            "https://*.0.0.1",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:8x",
            "https://user@example.com",
            "https://::1",
            "https://[::1",
            "https://",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
        let e = HostPattern::parse("example.com").unwrap_err();
        assert!(e.to_string().contains("missing scheme"), "{e}");
    }

    #[test]
    fn display_round_trips() {
        for (text, shown) in [
            ("https://*.Example.com", "https://*.example.com:443"),
            ("http://127.0.0.1:*", "http://127.0.0.1:*"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://*:*", "http://*:*"),
        ] {
            let p = HostPattern::parse(text).unwrap();
            assert_eq!(p.to_string(), shown);
            assert_eq!(HostPattern::parse(shown).unwrap(), p);
        }
    }

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
