//! `TestGateway`: weir started in-process from a YAML string.

use std::fmt::Display;
use std::net::SocketAddr;

use weir::config::Config;
use weir::Gateway;

use super::client;

/// Listener (HTTP/1.1 only) and admin on ephemeral ports; append `routes:` and
/// `upstreams:` to it.
pub const BASE: &str = "\
listeners:
  - name: main
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
";

/// Replaces each `{name}` in `template` with its value.
pub fn fill(template: &str, vars: &[(&str, &dyn Display)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), &value.to_string());
    }
    assert!(
        !out.contains("{up"),
        "unfilled placeholder left in config:\n{out}"
    );
    out
}

/// A running weir.
pub struct TestGateway {
    gateway: Option<Gateway>,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
}

impl TestGateway {
    /// Starts weir from a complete YAML configuration (listeners on `:0`).
    pub async fn start(yaml: &str) -> TestGateway {
        super::init_tracing();
        let config =
            Config::from_yaml(yaml).unwrap_or_else(|e| panic!("invalid test config: {e}\n{yaml}"));
        let gateway = Gateway::start(config)
            .await
            .unwrap_or_else(|e| panic!("weir did not start: {e}"));
        Self::from_gateway(gateway)
    }

    /// Starts weir from the configuration file at `path`, as `weir run`
    /// does: the file is then reloadable (watched, `POST /config/reload`).
    pub async fn start_file(path: &std::path::Path) -> TestGateway {
        super::init_tracing();
        let text = std::fs::read_to_string(path).expect("read test config");
        let config = Config::from_yaml_in(&text, &path.display().to_string())
            .unwrap_or_else(|e| panic!("invalid test config: {e}\n{text}"));
        let source = weir::server::Source {
            path: path.to_owned(),
            hash: weir::reload::config_hash(&text),
        };
        let gateway = Gateway::start_with(config, Some(source))
            .await
            .unwrap_or_else(|e| panic!("weir did not start: {e}"));
        Self::from_gateway(gateway)
    }

    fn from_gateway(gateway: Gateway) -> TestGateway {
        let addr = gateway
            .listener_addrs()
            .first()
            .expect("at least one listener")
            .1;
        let admin = gateway.admin_addr();
        TestGateway {
            gateway: Some(gateway),
            addr,
            admin,
        }
    }

    /// Starts weir from `BASE` followed by `rest`, with `{name}` placeholders
    /// filled from `vars`.
    pub async fn with(rest: &str, vars: &[(&str, &dyn Display)]) -> TestGateway {
        Self::start(&fill(&format!("{BASE}{rest}"), vars)).await
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.gateway
            .as_ref()
            .and_then(|g| g.listener_addr(name))
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    /// The admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("the config has no admin listener")
    }

    /// POST to an admin path (operator actions).
    pub async fn admin_post(&self, path: &str) -> client::TestResponse {
        client::send(
            self.admin(),
            client::req(http::Method::POST, path)
                .body(client::empty())
                .expect("request"),
        )
        .await
    }

    /// GET an admin path.
    pub async fn admin_get(&self, path: &str) -> client::TestResponse {
        client::get(self.admin(), path).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self.admin_get("/metrics").await;
        assert_eq!(resp.status, 200);
        resp.text()
    }

    /// Waits until `/metrics` has `name{labels}` equal to `want`.
    pub async fn metric_reaches(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = std::time::Instant::now() + super::IO_TIMEOUT;
        loop {
            let text = self.metrics().await;
            let got = super::metric(&text, name, labels);
            if got == Some(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}{labels:?} is {got:?}, expected {want}:\n{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Takes the gateway out, e.g. to shut it down from another task.
    pub fn take(&mut self) -> Gateway {
        self.gateway.take().expect("gateway already taken")
    }

    /// Graceful shutdown; true when everything drained in time.
    pub async fn shutdown(mut self) -> bool {
        self.take().shutdown().await
    }
}
