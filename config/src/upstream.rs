//! Upstreams: named sets of targets (service instances), how a target is
//! chosen for each request, and how connections to them are kept.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::{CircuitBreaker, HealthCheck, OutlierDetection};
use crate::units::Duration;

/// A named group of targets that routes forward to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Unique name referenced by `routes[].upstream`.
    pub name: String,
    /// Service instances.
    pub targets: Vec<Target>,
    /// How a target is chosen. Default `round_robin`.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Request property hashed by `consistent_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Protocol spoken to the targets. Default `http1`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Connection reuse.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// Active health checks of the targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of targets that fail real requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Caps on connections and requests; excess fails fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// TLS (and mutual TLS) to the targets. Absent: cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::UpstreamTls>,
}

/// One service instance.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `host:port`. Hostnames are resolved at load and re-resolved periodically.
    pub address: String,
    /// Relative share of traffic (1-10000). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Target selection algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on in-flight requests, weighted.
    LeastRequest,
    /// Ring hash on `hash_on`; the same key goes to the same target while it is up.
    ConsistentHash,
}

/// What `consistent_hash` hashes: `header:NAME`, `cookie:NAME`, `client_ip` or `path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashOn {
    /// The value of a request header (lower-cased name).
    Header(String),
    /// The value of a cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
}

impl FromStr for HashOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            format!("invalid hash_on {s:?} (expected header:NAME, cookie:NAME, client_ip or path)")
        };
        match s {
            "client_ip" => Ok(HashOn::ClientIp),
            "path" => Ok(HashOn::Path),
            _ => match s.split_once(':') {
                Some(("header", name)) if !name.is_empty() => {
                    Ok(HashOn::Header(name.to_ascii_lowercase()))
                }
                Some(("cookie", name)) if !name.is_empty() => Ok(HashOn::Cookie(name.to_owned())),
                _ => Err(err()),
            },
        }
    }
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::Header(n) => write!(f, "header:{n}"),
            HashOn::Cookie(n) => write!(f, "cookie:{n}"),
            HashOn::ClientIp => f.write_str("client_ip"),
            HashOn::Path => f.write_str("path"),
        }
    }
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HashOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Protocol towards targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive: one request per connection at a time.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge: requests multiplexed.
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN: requests multiplexed. Needs
    /// `tls`.
    H2,
}

impl UpstreamProtocol {
    /// True for the HTTP/2 protocols.
    pub fn is_http2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }
}

/// Idle connection pool settings, per target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// Most idle connections kept per target. `0` disables reuse. Default 128.
    #[serde(default = "default_max_idle")]
    pub max_idle: usize,
    /// An idle connection unused this long is closed. Default `60s`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            max_idle: default_max_idle(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_max_idle() -> usize {
    128
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl LoadBalancing {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancing::RoundRobin => "round_robin",
            LoadBalancing::Random => "random",
            LoadBalancing::LeastRequest => "least_request",
            LoadBalancing::ConsistentHash => "consistent_hash",
        }
    }
}

impl fmt::Display for LoadBalancing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl UpstreamProtocol {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
