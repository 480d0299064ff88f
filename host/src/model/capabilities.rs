//! Capabilities: what a task may touch outside its sandbox, as its manifest grants it.
//!
//! Deny by default. The manifest parser reads a [`Capabilities`] from `[capabilities]`;
//! the sandbox enforces it per job (for outgoing HTTP through [`AllowList`]). Both use
//! this module, so the grammar of a grant is defined once. Plain data: no I/O.

use std::collections::BTreeMap;
use std::fmt;

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
    /// Outgoing HTTP destinations (`wasi:http`), as `scheme://host[:port]` patterns.
    /// Nothing is allowed when empty. Every request, and every hop of a redirect, must
    /// match one; the check happens before any DNS lookup or connection.
    ///
    /// ```text
    /// pattern = scheme "://" host [ ":" port ]      (case-insensitive)
    /// scheme  = "http" | "https"
    /// host    = "*"                  any host
    ///         | "*." domain          any name ending in "." domain (not domain itself);
    ///                                domain has at least two labels
    ///         | name                 that DNS name exactly (a trailing "." is ignored)
    ///         | ipv4 | "[" ipv6 "]"  that IP literal exactly (names are not resolved
    ///                                to compare: list the form the task uses)
    /// port    = "*" | 1..65535       omitted = the scheme's default, 80 or 443
    /// ```
    ///
    /// No user info, path, query or fragment. Examples: `"https://api.example.com"`
    /// (port 443 only), `"https://*.example.com:*"`, `"http://127.0.0.1:*"`.
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
        if let Some(secs) = self.http_timeout {
            time::seconds(secs).map_err(|e| format!("[capabilities] http_timeout: {e}"))?;
            if secs == 0.0 {
                return Err(
                    "[capabilities] http_timeout must be a positive number of seconds, not 0"
                        .into(),
                );
            }
        }
        if self.http_max_response_kib == Some(0) {
            return Err("[capabilities] http_max_response_kib must be at least 1".into());
        }
        Ok(())
    }
}

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
}
