//! Capabilities: what a task may touch outside its sandbox, as its manifest grants it.
//!
//! Deny by default. The manifest parser reads a [`Capabilities`] from `[capabilities]`;
//! the sandbox enforces it per job (for outgoing HTTP through [`AllowList`]). Both use
//! this module, so the grammar of a grant is defined once. Plain data: no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::time;

/// Prefix of the environment variables that carry `[capabilities] config` values to the
/// guest: `config = { api_url = "…" }` is `SPROUT_CONFIG_api_url`.
pub const CONFIG_ENV_PREFIX: &str = "SPROUT_CONFIG_";

/// `[capabilities]`: the only ways a task may touch the outside world. Everything is
/// denied unless listed here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Outgoing HTTP destinations (`wasi:http`), as `scheme://host[:port]` patterns,
    /// and raw TCP destinations (`wasi:sockets`), as `tcp://host:port` patterns.
    /// Nothing is allowed when empty. Every HTTP request, and every hop of a redirect,
    /// must match an `http`/`https` pattern; the check happens before any DNS lookup or
    /// connection. Every TCP connection must match a `tcp` pattern (see
    /// `docs/sockets.md`): DNS is allowed only for the names in `tcp` patterns, and the
    /// address connected to must be an IP literal of a pattern or an address one of its
    /// names resolved to in this job.
    ///
    /// ```text
    /// pattern = scheme "://" host [ ":" port ]      (case-insensitive)
    /// scheme  = "http" | "https" | "tcp"
    /// host    = "*"                  any host
    ///         | "*." domain          any name ending in "." domain (not domain itself);
    ///                                domain has at least two labels
    ///         | name                 that DNS name exactly (a trailing "." is ignored)
    ///         | ipv4 | "[" ipv6 "]"  that IP literal exactly (names are not resolved
    ///                                to compare: list the form the task uses)
    /// port    = "*" | n | n "-" m     1..65535; omitted = the scheme's default, 80 or
    ///                                443 (a tcp pattern must name its port)
    /// ```
    ///
    /// No user info, path, query or fragment; `tcp` patterns may not use `*` as the whole
    /// host. Examples: `"https://api.example.com"` (port 443 only),
    /// `"https://*.example.com:*"`, `"http://127.0.0.1:*"`, `"tcp://127.0.0.1:6379"`,
    /// `"tcp://db.internal:5432-5433"`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Longest wait, in seconds, for each phase of an outgoing HTTP request: connecting,
    /// the first response byte, and each later read of the body. A guest may ask for
    /// less, never more. Default: 30.
    #[serde(default)]
    pub http_timeout: Option<f64>,
    /// Largest HTTP response body a task may receive, in KiB; a larger one fails with a
    /// clear error (at once when `content-length` announces it). Default: 10240 (10 MiB).
    #[serde(default)]
    pub http_max_response_kib: Option<u64>,
    /// Most TCP sockets a job may have open at once; one more fails to open with
    /// `new-socket-limit`. Default 16, at most the worker's ceiling (1024).
    #[serde(default)]
    pub tcp_max_sockets: Option<u32>,
    /// Longest wait, in seconds, for a TCP connection to be established; then the
    /// guest's connect fails with `timeout`. Default 10.
    #[serde(default)]
    pub tcp_connect_timeout: Option<f64>,
    /// Most bytes, in KiB, a job may read from all its TCP sockets together; the read
    /// that would cross it fails. Default 1048576 (1 GiB), at most the worker's ceiling
    /// (16 GiB).
    #[serde(default)]
    pub tcp_max_read_kib: Option<u64>,
    /// Most bytes, in KiB, a job may write to all its TCP sockets together; the write
    /// that would cross it fails. Default 1048576 (1 GiB), at most the worker's ceiling
    /// (16 GiB).
    #[serde(default)]
    pub tcp_max_write_kib: Option<u64>,
    /// Host directories mounted read-only: guest path → host path
    /// (`"/data" = "/srv/feeds"`). Relative host paths are relative to the manifest.
    #[serde(default)]
    pub dirs: BTreeMap<String, String>,
    /// Environment variables the guest sees (name → value). Nothing is inherited.
    #[serde(default, deserialize_with = "env_map")]
    pub env: BTreeMap<String, String>,
    /// Configuration values for the task (key → value). The guest reads them as
    /// environment variables named [`CONFIG_ENV_PREFIX`] + key (`SPROUT_CONFIG_api_url`);
    /// keys are letters, digits, `_`, `.` and `-`.
    #[serde(default, deserialize_with = "config_map")]
    pub config: BTreeMap<String, String>,
}

/// `[capabilities] env`: names must not be empty, contain `=` or NUL, or use the
/// prefix reserved for `config` values.
fn env_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(d)?;
    for name in map.keys() {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(serde::de::Error::custom(format!(
                "env name {name:?} is not a valid environment variable name"
            )));
        }
        if name.starts_with(CONFIG_ENV_PREFIX) {
            return Err(serde::de::Error::custom(format!(
                "env name {name:?} uses the prefix {CONFIG_ENV_PREFIX} reserved for `config` \
                 values: put it in `config` instead"
            )));
        }
    }
    Ok(map)
}

/// `[capabilities] config`: keys are letters, digits, `_`, `.` and `-`.
fn config_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(d)?;
    for key in map.keys() {
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(serde::de::Error::custom(format!(
                "config key {key:?} must be letters, digits, '_', '.' or '-'"
            )));
        }
    }
    Ok(map)
}

/// `[capabilities] key`, a timeout in seconds, when given: valid seconds
/// ([`time::seconds`]) that are not zero once read as a duration (`1e-300` would be, and
/// then the default would apply instead of what the manifest says).
fn check_timeout(key: &str, secs: Option<f64>) -> Result<(), String> {
    let Some(secs) = secs else {
        return Ok(());
    };
    let duration = time::seconds(secs).map_err(|e| format!("[capabilities] {key}: {e}"))?;
    if duration.is_zero() {
        return Err(format!(
            "[capabilities] {key} must be a positive number of seconds (at least 1 ns), \
             not {secs}"
        ));
    }
    Ok(())
}

impl Capabilities {
    /// True when nothing is granted.
    pub fn is_empty(&self) -> bool {
        *self == Capabilities::default()
    }

    /// Checks the values serde cannot: `allowed_hosts` patterns and HTTP limits.
    ///
    /// # Errors
    /// A message naming the key and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        AllowList::parse(&self.allowed_hosts).map_err(|e| format!("[capabilities] {e}"))?;
        check_timeout("http_timeout", self.http_timeout)?;
        if self.http_max_response_kib == Some(0) {
            return Err("[capabilities] http_max_response_kib must be at least 1".into());
        }
        if let Some(n) = self.tcp_max_sockets
            && !(1..=TCP_MAX_SOCKETS_CEILING).contains(&n)
        {
            return Err(format!(
                "[capabilities] tcp_max_sockets must be 1..={TCP_MAX_SOCKETS_CEILING}, not {n}"
            ));
        }
        check_timeout("tcp_connect_timeout", self.tcp_connect_timeout)?;
        for (key, value) in [
            ("tcp_max_read_kib", self.tcp_max_read_kib),
            ("tcp_max_write_kib", self.tcp_max_write_kib),
        ] {
            if let Some(kib) = value
                && !(1..=TCP_MAX_BYTES_CEILING_KIB).contains(&kib)
            {
                return Err(format!(
                    "[capabilities] {key} must be 1..={TCP_MAX_BYTES_CEILING_KIB} (16 GiB), not {kib}"
                ));
            }
        }
        Ok(())
    }

    /// True when `allowed_hosts` has at least one `tcp://` pattern.
    pub fn grants_tcp(&self) -> bool {
        self.allowed_hosts
            .iter()
            .any(|p| p.trim().to_ascii_lowercase().starts_with("tcp://"))
    }
}

/// The default of `[capabilities] tcp_max_sockets`.
pub const TCP_DEFAULT_MAX_SOCKETS: u32 = 16;
/// The most `[capabilities] tcp_max_sockets` may raise it to (the worker's ceiling).
pub const TCP_MAX_SOCKETS_CEILING: u32 = 1024;
/// The default of `tcp_max_read_kib` and `tcp_max_write_kib`: 1 GiB.
pub const TCP_DEFAULT_MAX_BYTES_KIB: u64 = 1 << 20;
/// The most `tcp_max_read_kib` and `tcp_max_write_kib` may raise it to: 16 GiB.
pub const TCP_MAX_BYTES_CEILING_KIB: u64 = 16 << 20;
/// The default of `[capabilities] tcp_connect_timeout`, in seconds.
pub const TCP_DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 10.0;

/// The scheme part of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    /// A raw TCP connection (`wasi:sockets`).
    Tcp,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Tcp => "tcp",
        }
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
            Scheme::Tcp => None,
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
/// scheme  = "http" | "https" | "tcp"
/// host    = "*"                       any host (not for tcp)
///         | "*." name                 any name ending in "." name (not name itself)
///         | name                      a DNS name, exactly (a trailing "." is ignored)
///         | ipv4 | "[" ipv6 "]"       an IP literal, exactly
/// port    = "*" | n | n "-" m         1..65535, a range n..=m (n <= m);
///                                     omitted = 80 or 443; tcp must name its port
/// ```
///
/// No user info, path, query or fragment. `*` only stands for whole labels at the
/// left of a name, or for the whole host, or for the whole port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Scheme,
    host: HostMatch,
    /// `None` = any port; else the inclusive range.
    port: Option<(u16, u16)>,
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
            "tcp" => Scheme::Tcp,
            "*" => return Err(err("the scheme must be http, https or tcp, not a wildcard")),
            _ => return Err(err("the scheme must be http, https or tcp")),
        };
        if rest.contains(['/', '?', '#']) {
            return Err(err("a pattern has no path, query or fragment"));
        }
        if rest.contains('@') {
            return Err(err("a pattern has no user info"));
        }
        let (host, port) = split_host_port(rest).map_err(|r| err(&r))?;
        let port = match port {
            None => match scheme.default_port() {
                Some(p) => Some((p, p)),
                None => return Err(err("a tcp pattern must name its port (tcp://host:port)")),
            },
            Some("*") => None,
            Some(p) => Some(parse_ports(p).ok_or_else(|| {
                err("the port must be 1-65535, a range n-m of those (n <= m), or *")
            })?),
        };
        if scheme == Scheme::Tcp && host == "*" {
            return Err(err(
                "a tcp pattern must name its host (a name, `*.domain` or an IP literal), not `*`",
            ));
        }
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
        self.scheme.name() == dest.scheme
            && self.port_matches(dest.port)
            && self.host_matches(&dest.host, dest.is_ip_literal())
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }

    /// `host`: lowercase, no trailing dot, IPv6 in brackets.
    fn host_matches(&self, host: &str, ip_literal: bool) -> bool {
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host,
            // IP literals never match a name pattern.
            HostMatch::Subdomains(suffix) => {
                !ip_literal && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }

    /// True for a `tcp://` pattern.
    pub fn is_tcp(&self) -> bool {
        self.scheme == Scheme::Tcp
    }

    /// The IP address this pattern names, when its host is an IP literal.
    fn ip_literal(&self) -> Option<IpAddr> {
        match &self.host {
            HostMatch::Exact(h) => parse_ip(h),
            _ => None,
        }
    }
}

/// Parses `n` or `n-m` (1..=65535, n <= m).
fn parse_ports(text: &str) -> Option<(u16, u16)> {
    let one = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| p.parse::<u16>().ok())
            .flatten()
            .filter(|n| *n > 0)
    };
    match text.split_once('-') {
        None => one(text).map(|n| (n, n)),
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            (lo <= hi).then_some((lo, hi))
        }
    }
}

/// An IP literal as patterns and destinations write it: `1.2.3.4` or `[::1]`.
fn parse_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// Lowercases a host name and drops a trailing dot; IP literals are normalised
/// (`[0:0::1]` is `[::1]`, a bare IPv6 address gets brackets).
pub fn normalise_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return format!("[{v6}]");
    }
    match parse_ip(host) {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => host.to_string(),
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
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}"),
            Some((lo, hi)) => write!(f, ":{lo}-{hi}"),
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
    /// An allow-list of already parsed patterns.
    pub fn from_patterns(patterns: Vec<HostPattern>) -> AllowList {
        AllowList { patterns }
    }

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

    /// True when at least one `tcp://` pattern is listed.
    pub fn grants_tcp(&self) -> bool {
        self.patterns.iter().any(HostPattern::is_tcp)
    }

    /// Whether a guest may resolve `name` (DNS) for a TCP connection: some `tcp://`
    /// pattern names it (exactly, or as a subdomain of a `*.` pattern). `name` is
    /// normalised first ([`normalise_host`]).
    pub fn tcp_may_resolve(&self, name: &str) -> bool {
        let name = normalise_host(name);
        let literal = parse_ip(&name).is_some();
        self.patterns
            .iter()
            .any(|p| p.is_tcp() && p.host_matches(&name, literal))
    }

    /// Whether a guest may connect a TCP socket to `addr`. `resolved` says which names
    /// (normalised) resolved to `addr`'s IP in this job: a pattern whose host is an IP
    /// literal matches that address; a name pattern matches an address one of its
    /// names resolved to. The port must be in the pattern's range either way.
    pub fn tcp_allows(&self, addr: SocketAddr, resolved: &[String]) -> bool {
        let ip = addr.ip().to_canonical();
        self.patterns.iter().any(|p| {
            p.is_tcp()
                && p.port_matches(addr.port())
                && match p.ip_literal() {
                    Some(literal) => literal.to_canonical() == ip,
                    None => resolved.iter().any(|name| p.host_matches(name, false)),
                }
        })
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
    fn tcp_patterns() {
        let list = AllowList::parse(&[
            "tcp://127.0.0.1:6379",
            "tcp://LocalHost.:5432-5433",
            "tcp://*.db.internal:*",
            "tcp://[::1]:7000",
            "https://api.example.com",
        ])
        .unwrap();
        assert!(list.grants_tcp());
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(list.tcp_allows(addr("127.0.0.1:6379"), &[]));
        assert!(!list.tcp_allows(addr("127.0.0.1:6380"), &[]));
        assert!(!list.tcp_allows(addr("127.0.0.2:6379"), &[]));
        // An IPv4-mapped IPv6 address is the same host.
        assert!(list.tcp_allows(addr("[::ffff:127.0.0.1]:6379"), &[]));
        assert!(list.tcp_allows(addr("[::1]:7000"), &[]));
        // Name patterns match only addresses their names resolved to.
        assert!(!list.tcp_allows(addr("127.0.0.1:5432"), &[]));
        assert!(list.tcp_allows(addr("127.0.0.1:5432"), &["localhost".into()]));
        assert!(list.tcp_allows(addr("127.0.0.1:5433"), &["localhost".into()]));
        assert!(!list.tcp_allows(addr("127.0.0.1:5434"), &["localhost".into()]));
        assert!(!list.tcp_allows(addr("127.0.0.1:5432"), &["example.com".into()]));
        assert!(list.tcp_allows(addr("10.0.0.9:1"), &["pg.db.internal".into()]));
        assert!(!list.tcp_allows(addr("10.0.0.9:1"), &["db.internal".into()]));
        // DNS only for names in tcp patterns.
        assert!(list.tcp_may_resolve("localhost"));
        assert!(list.tcp_may_resolve("LOCALHOST."));
        assert!(list.tcp_may_resolve("a.b.db.internal"));
        assert!(!list.tcp_may_resolve("db.internal"));
        assert!(!list.tcp_may_resolve("api.example.com"));
        assert!(list.tcp_may_resolve("127.0.0.1"));
        assert!(list.tcp_may_resolve("::1"));
        assert!(!list.tcp_may_resolve("127.0.0.2"));
        // tcp patterns never allow HTTP, and HTTP patterns never allow TCP.
        assert!(
            list.check(&"http://127.0.0.1:6379/".parse().unwrap())
                .is_err()
        );
        let http_only = AllowList::parse(&["http://127.0.0.1:*"]).unwrap();
        assert!(!http_only.grants_tcp());
        assert!(!http_only.tcp_allows(addr("127.0.0.1:6379"), &[]));
        assert!(!http_only.tcp_may_resolve("127.0.0.1"));
    }

    #[test]
    fn invalid_tcp_patterns_are_rejected() {
        for (bad, why) in [
            ("tcp://127.0.0.1", "must name its port"),
            ("tcp://*:6379", "must name its host"),
            ("tcp://*:*", "must name its host"),
            ("tcp://h:6380-6379", "range"),
            ("tcp://h:0-10", "range"),
            ("tcp://h:1-70000", "range"),
            ("tcp://h:1-", "range"),
            ("tcp://h:6379/0", "path"),
            ("udp://h:53", "http, https or tcp"),
        ] {
            let e = HostPattern::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn tcp_bounds_are_validated() {
        let ok = Capabilities {
            allowed_hosts: vec!["tcp://127.0.0.1:6379".into()],
            tcp_max_sockets: Some(TCP_MAX_SOCKETS_CEILING),
            tcp_connect_timeout: Some(0.5),
            tcp_max_read_kib: Some(TCP_MAX_BYTES_CEILING_KIB),
            tcp_max_write_kib: Some(1),
            ..Capabilities::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.grants_tcp());
        for (bad, key) in [
            (
                Capabilities {
                    tcp_max_sockets: Some(0),
                    ..ok.clone()
                },
                "tcp_max_sockets",
            ),
            (
                Capabilities {
                    tcp_max_sockets: Some(TCP_MAX_SOCKETS_CEILING + 1),
                    ..ok.clone()
                },
                "tcp_max_sockets",
            ),
            (
                Capabilities {
                    tcp_connect_timeout: Some(0.0),
                    ..ok.clone()
                },
                "tcp_connect_timeout",
            ),
            (
                Capabilities {
                    tcp_connect_timeout: Some(f64::NAN),
                    ..ok.clone()
                },
                "tcp_connect_timeout",
            ),
            (
                Capabilities {
                    tcp_max_read_kib: Some(0),
                    ..ok.clone()
                },
                "tcp_max_read_kib",
            ),
            (
                Capabilities {
                    tcp_max_write_kib: Some(TCP_MAX_BYTES_CEILING_KIB + 1),
                    ..ok.clone()
                },
                "tcp_max_write_kib",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for (text, shown) in [
            ("https://*.Example.com", "https://*.example.com:443"),
            ("http://127.0.0.1:*", "http://127.0.0.1:*"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://*:*", "http://*:*"),
            ("tcp://LOCALHOST:6379", "tcp://localhost:6379"),
            (
                "tcp://*.db.internal:5432-5440",
                "tcp://*.db.internal:5432-5440",
            ),
            ("https://h:8000-8000", "https://h:8000"),
        ] {
            let p = HostPattern::parse(text).unwrap();
            assert_eq!(p.to_string(), shown);
            assert_eq!(HostPattern::parse(shown).unwrap(), p);
        }
    }
}
