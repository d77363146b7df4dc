//! `weir-config` is the YAML contract of the weir gateway: the serde model of
//! the configuration file, its defaults, and validation that reports every
//! problem at once with its YAML path and line.
//!
//! It owns the *shape and meaning* of a configuration, and must not depend on
//! any runtime crate (no tokio, no hyper): the CLI's `check` command, the admin
//! API, reload and tests all use it without starting a server.
//!
//! ```
//! let config = weir_config::Config::from_yaml(
//!     "listeners: [{ name: web, address: 127.0.0.1:8080 }]\n\
//!      routes: [{ name: hi, direct_response: { status: 200, body: hi } }]\n",
//! ).unwrap();
//! assert_eq!(config.routes[0].name, "hi");
//! ```
#![warn(missing_docs)]

mod diff;
mod error;
mod grpc;
mod limits;
mod lines;
mod listener;
mod observability;
mod policy;
mod route;
mod tls;
mod units;
mod upstream;
mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use diff::ConfigDiff;
pub use error::{ConfigError, ConfigErrors};
pub use grpc::{Cors, GrpcMatch};
pub use limits::Limits;
pub use listener::{Listener, ListenerProtocol};
pub use observability::{OtlpEndpoint, Tracing};
pub use policy::{
    Backoff, CircuitBreaker, Fault, FaultAbort, FaultDelay, HealthCheck, HealthCheckKind, Mirror,
    Number, OnBackendError, OutlierDetection, RateBackend, RateKey, RateLimit, Redis, Retry,
    RetryBudget, RetryOn, StatusRange, Sticky, WeightedUpstream,
};
pub use route::{DirectResponse, HeaderOps, Rewrite, Route, RouteMatch, Timeouts};
pub use tls::{
    Alpn, CertificateFiles, ClientAuth, ClientAuthMode, ClientCertMatch, ListenerTls, TlsVersion,
    UpstreamTls,
};
pub use units::{ByteSize, Duration, UnitError};
pub use upstream::{HashOn, Keepalive, LoadBalancing, Target, Upstream, UpstreamProtocol};
pub use validate::{parse_cidr, parse_target_address};

/// A whole weir configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: Runtime,
    /// Where client connections are accepted. At least one.
    pub listeners: Vec<Listener>,
    /// The operator API listener. Absent = no admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// One JSON line per request.
    #[serde(default)]
    pub access_log: AccessLog,
    /// Request routing rules.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Named groups of targets.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// The Redis server used by `backend: redis` rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
    /// Distributed tracing. Absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Bounds on client requests and connections.
    #[serde(default)]
    pub limits: Limits,
    /// Networks (CIDR, e.g. `10.0.0.0/8`, `fd00::/8`, or single addresses)
    /// of proxies in front of weir whose `X-Forwarded-For` is believed.
    /// Empty: every client's `X-Forwarded-For` is replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

/// Process-wide settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads. Default: the number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// How long in-flight requests may run after SIGTERM/SIGINT. Default `10s`.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
}

// Written out rather than derived: a derived Default would give a zero
// grace when the whole `runtime:` block is absent.
impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            threads: None,
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

/// The admin (operator) listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ip:port` to bind; keep it on loopback or a private network.
    pub address: String,
    /// A file holding a bearer token: when set, every admin request but
    /// `/healthz` and `/ready` needs `Authorization: Bearer <token>`.
    /// Read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token_file: Option<String>,
}

/// Access log settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Write one JSON line per request. Default `false`.
    #[serde(default)]
    pub enabled: bool,
    /// Append to this file instead of standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Config {
    /// Parses and validates a configuration. On failure, every problem found is
    /// returned, each with its YAML path and line.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse(text, None)
    }

    /// Reads, parses and validates a configuration file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::single(Some(file.clone()), format!("cannot read: {e}")))?;
        Self::parse(&text, Some(file))
    }

    /// Parses and validates configuration text read from `file` (named in
    /// errors).
    pub fn from_yaml_in(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        Self::parse(text, Some(file.to_owned()))
    }

    fn parse(text: &str, file: Option<String>) -> Result<Config, ConfigErrors> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![lines::serde_error(&e)],
        })?;
        let index = lines::LineIndex::build(text);
        let errors = validate::validate(&config, &index);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors { file, errors })
        }
    }

    /// Looks up an upstream by name.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
