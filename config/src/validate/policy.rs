//! Validation of the governance blocks (`retry`, `rate_limit`, `fault`,
//! `mirror`, weighted `upstreams`, `health_check`, `outlier_detection`,
//! `circuit_breaker`, `redis`): ranges, cross-references and combinations
//! the types cannot express.

use std::collections::HashMap;

use super::syntax::{did_you_mean, is_token, quoted};
use super::Validator;
use crate::policy::{HealthCheckKind, Number, RateBackend, RateKey, RetryOn, Sticky};
use crate::route::Route;
use crate::upstream::Upstream;
use crate::Config;

const MAX_ATTEMPTS: u32 = 10;
const MAX_SPLIT_WEIGHT: u32 = 10_000;

impl Validator<'_> {
    /// Route-level policies of `routes[i]`.
    pub(super) fn route_policies(&mut self, config: &Config, base: &str, route: &Route) {
        let upstream_names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        self.split(base, route, &upstream_names);
        let forwards = route.upstream.is_some() || route.upstreams.is_some();
        let timeouts = &route.timeouts;
        for (field, value) in [("per_try", timeouts.per_try), ("idle", timeouts.idle)] {
            if value.is_some_and(|d| d.is_zero()) {
                self.error(
                    format!("{base}.timeouts.{field}"),
                    "must be greater than 0 (omit it for no limit)",
                );
            }
        }
        let only_forwarding = |v: &mut Self, field: &str| {
            if !forwards {
                v.error(
                    format!("{base}.{field}"),
                    format!("`{field}` only applies to routes that forward to an upstream"),
                );
            }
        };
        if let Some(idle) = route.websocket_idle_timeout {
            only_forwarding(self, "websocket_idle_timeout");
            if idle.is_zero() {
                self.error(
                    format!("{base}.websocket_idle_timeout"),
                    "must be greater than 0 (omit it for no limit)",
                );
            } else if !route.websocket {
                self.error(
                    format!("{base}.websocket_idle_timeout"),
                    "has no effect with `websocket: false`",
                );
            }
        }
        if route.retry.is_some() {
            only_forwarding(self, "retry");
            self.retry(base, route);
        }
        if let Some(rl) = &route.rate_limit {
            let base = format!("{base}.rate_limit");
            if rl.requests == 0 {
                self.error(format!("{base}.requests"), "must be at least 1");
            }
            if rl.per.is_zero() {
                self.error(format!("{base}.per"), "must be greater than 0");
            }
            if let RateKey::Header(name) = &rl.key {
                if !is_token(name) {
                    self.error(
                        format!("{base}.key"),
                        format!("invalid header name {} (not an HTTP token)", quoted(name)),
                    );
                }
            }
            if rl.backend == RateBackend::Redis && config.redis.is_none() {
                self.error(
                    format!("{base}.backend"),
                    "`backend: redis` needs a top-level `redis: { url: redis://host:port }` block",
                );
            }
        }
        if let Some(fault) = &route.fault {
            let base = format!("{base}.fault");
            if fault.delay.is_none() && fault.abort.is_none() {
                self.error(&*base, "a fault needs `delay`, `abort` or both");
            }
            if let Some(delay) = &fault.delay {
                if delay.duration.is_zero() {
                    self.error(format!("{base}.delay.duration"), "must be greater than 0");
                }
                self.percent(&format!("{base}.delay.percent"), delay.percent);
            }
            if let Some(abort) = &fault.abort {
                if !(400..=599).contains(&abort.status) {
                    self.error(
                        format!("{base}.abort.status"),
                        format!("must be between 400 and 599 (got {})", abort.status),
                    );
                }
                self.percent(&format!("{base}.abort.percent"), abort.percent);
            }
            if let Some(name) = &fault.header {
                self.header_name(&format!("{base}.header"), name);
            }
        }
        if let Some(mirror) = &route.mirror {
            only_forwarding(self, "mirror");
            let base = format!("{base}.mirror");
            self.upstream_ref(
                &format!("{base}.upstream"),
                &mirror.upstream,
                &upstream_names,
            );
            self.percent(&format!("{base}.percent"), mirror.percent);
            if mirror.max_in_flight == 0 {
                self.error(
                    format!("{base}.max_in_flight"),
                    "must be at least 1 (set percent: 0 to stop mirroring)",
                );
            }
            if mirror.timeout.is_zero() {
                self.error(format!("{base}.timeout"), "must be greater than 0");
            }
        }
    }

    fn split(&mut self, base: &str, route: &Route, upstream_names: &[&str]) {
        if let Some(split) = &route.upstreams {
            let path = format!("{base}.upstreams");
            if route.upstream.is_some() {
                self.error(
                    &*path,
                    "`upstream` and `upstreams` are mutually exclusive: use `upstreams` for a weighted split",
                );
            }
            if split.is_empty() {
                self.error(&*path, "must list at least one upstream");
            }
            let mut seen: HashMap<&str, usize> = HashMap::new();
            let mut total = 0u64;
            for (j, side) in split.iter().enumerate() {
                let p = format!("{path}[{j}]");
                self.upstream_ref(&format!("{p}.name"), &side.name, upstream_names);
                if let Some(first) = seen.insert(side.name.as_str(), j) {
                    self.error(
                        format!("{p}.name"),
                        format!(
                            "upstream {} is already listed as upstreams[{first}]",
                            quoted(&side.name)
                        ),
                    );
                }
                if side.weight > MAX_SPLIT_WEIGHT {
                    self.error(
                        format!("{p}.weight"),
                        format!(
                            "must be between 0 and {MAX_SPLIT_WEIGHT} (got {})",
                            side.weight
                        ),
                    );
                }
                total += u64::from(side.weight);
            }
            if !split.is_empty() && total == 0 {
                self.error(&*path, "at least one weight must be greater than 0");
            }
        }
        if let Some(sticky) = &route.sticky {
            if route.upstreams.is_none() {
                self.error(
                    format!("{base}.sticky"),
                    "`sticky` only applies to a weighted split (`upstreams`)",
                );
            }
            let (Sticky::Header(name) | Sticky::Cookie(name)) = sticky;
            if !is_token(name) {
                self.error(
                    format!("{base}.sticky"),
                    format!("invalid name {} (not an HTTP token)", quoted(name)),
                );
            }
        }
    }

    fn retry(&mut self, base: &str, route: &Route) {
        let Some(retry) = &route.retry else { return };
        let base = format!("{base}.retry");
        if !(1..=MAX_ATTEMPTS).contains(&retry.attempts) {
            self.error(
                format!("{base}.attempts"),
                format!(
                    "must be between 1 and {MAX_ATTEMPTS} (got {}); it counts the first try",
                    retry.attempts
                ),
            );
        }
        if retry.on.is_empty() {
            self.error(
                format!("{base}.on"),
                "must list at least one condition (connect_failure, reset, timeout, 5xx or a status)",
            );
        }
        for (j, on) in retry.on.iter().enumerate() {
            if let RetryOn::Status(code) = on {
                if !(400..=599).contains(code) {
                    self.error(
                        format!("{base}.on[{j}]"),
                        format!("only 4xx and 5xx statuses can be retried (got {code})"),
                    );
                }
            }
            if retry.on[..j].contains(on) {
                self.error(
                    format!("{base}.on[{j}]"),
                    format!("duplicate condition {on}"),
                );
            }
        }
        if retry.per_try_timeout.is_some_and(|d| d.is_zero()) {
            self.error(format!("{base}.per_try_timeout"), "must be greater than 0");
        }
        if retry.on.contains(&RetryOn::Timeout)
            && retry.per_try_timeout.is_none()
            && route.timeouts.per_try.is_none()
        {
            self.error(
                format!("{base}.on"),
                "retrying on `timeout` needs `per_try_timeout` (or `timeouts.per_try`): without it the first try uses the whole deadline",
            );
        }
        if retry.backoff.base.is_zero() {
            self.error(format!("{base}.backoff.base"), "must be greater than 0");
        }
        if retry.backoff.max < retry.backoff.base {
            self.error(
                format!("{base}.backoff.max"),
                format!(
                    "must not be less than backoff.base ({})",
                    retry.backoff.base
                ),
            );
        }
        let ratio = retry.budget.ratio.get();
        if !(0.0..=1.0).contains(&ratio) {
            self.error(
                format!("{base}.budget.ratio"),
                format!("must be between 0 and 1 (got {ratio})"),
            );
        }
    }

    /// Upstream-level policies of `upstreams[i]`.
    pub(super) fn upstream_policies(&mut self, base: &str, up: &Upstream) {
        if let Some(hc) = &up.health_check {
            let base = format!("{base}.health_check");
            for (field, d) in [("interval", hc.interval), ("timeout", hc.timeout)] {
                if d.is_zero() {
                    self.error(format!("{base}.{field}"), "must be greater than 0");
                }
            }
            for (field, n) in [
                ("healthy_threshold", hc.healthy_threshold),
                ("unhealthy_threshold", hc.unhealthy_threshold),
            ] {
                if n == 0 {
                    self.error(format!("{base}.{field}"), "must be at least 1");
                }
            }
            match hc.kind {
                HealthCheckKind::Http => {
                    if let Some(path) = &hc.path {
                        if !path.starts_with('/') {
                            self.error(
                                format!("{base}.path"),
                                format!("must start with `/` (got {})", quoted(path)),
                            );
                        } else if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                            self.error(
                                format!("{base}.path"),
                                "must not contain spaces or control characters",
                            );
                        }
                    }
                    if let Some(host) = &hc.host {
                        self.header_value(&format!("{base}.host"), host);
                    }
                    if hc.expected_status.is_empty() {
                        self.error(format!("{base}.expected_status"), "must not be empty");
                    }
                    for (j, r) in hc.expected_status.iter().enumerate() {
                        if !(100..=599).contains(&r.low)
                            || !(100..=599).contains(&r.high)
                            || r.low > r.high
                        {
                            self.error(
                                format!("{base}.expected_status[{j}]"),
                                format!("invalid status range {r} (codes 100-599, low first)"),
                            );
                        }
                    }
                }
                HealthCheckKind::Tcp => {
                    for (field, set) in [("path", hc.path.is_some()), ("host", hc.host.is_some())] {
                        if set {
                            self.error(
                                format!("{base}.{field}"),
                                format!("`{field}` only applies to `type: http` checks"),
                            );
                        }
                    }
                }
                HealthCheckKind::Grpc => self.grpc_health_check(&base, hc, up),
            }
            if hc.service.is_some() && hc.kind != HealthCheckKind::Grpc {
                self.error(
                    format!("{base}.service"),
                    "`service` only applies to `type: grpc` checks",
                );
            }
        }
        if let Some(od) = &up.outlier_detection {
            let base = format!("{base}.outlier_detection");
            if od.base_ejection.is_zero() {
                self.error(format!("{base}.base_ejection"), "must be greater than 0");
            }
            if od.max_ejection_percent > 100 {
                self.error(
                    format!("{base}.max_ejection_percent"),
                    format!(
                        "must be between 0 and 100 (got {})",
                        od.max_ejection_percent
                    ),
                );
            }
            if od.consecutive_5xx == 0 && od.consecutive_connect_failures == 0 {
                self.error(
                    &*base,
                    "both rules are off (consecutive_5xx and consecutive_connect_failures are 0): remove the block instead",
                );
            }
        }
        if let Some(cb) = &up.circuit_breaker {
            let base = format!("{base}.circuit_breaker");
            for (field, n) in [
                ("max_connections", cb.max_connections),
                ("max_pending", cb.max_pending),
                ("max_requests", cb.max_requests),
            ] {
                if n == 0 {
                    self.error(format!("{base}.{field}"), "must be at least 1");
                }
            }
        }
    }

    /// The top-level `redis` block.
    pub(super) fn redis(&mut self, config: &Config) {
        let Some(redis) = &config.redis else { return };
        let url = redis.url.as_str();
        match url.strip_prefix("redis://") {
            None => self.error(
                "redis.url",
                format!(
                    "must start with redis:// (got {}); e.g. redis://127.0.0.1:6379",
                    quoted(url)
                ),
            ),
            Some(rest) => {
                let authority = rest.split('/').next().unwrap_or("");
                let host_port = authority.rsplit('@').next().unwrap_or("");
                if host_port.is_empty() {
                    self.error("redis.url", "names no host (e.g. redis://127.0.0.1:6379)");
                }
            }
        }
        if redis.timeout.is_zero() {
            self.error("redis.timeout", "must be greater than 0");
        }
    }

    fn percent(&mut self, path: &str, value: Number) {
        let v = value.get();
        if !(0.0..=100.0).contains(&v) {
            self.error(path, format!("must be between 0 and 100 (got {v})"));
        }
    }

    fn upstream_ref(&mut self, path: &str, name: &str, upstream_names: &[&str]) {
        if !upstream_names.contains(&name) {
            let mut msg = format!("no upstream named {}", quoted(name));
            if let Some(s) = did_you_mean(name, upstream_names) {
                msg.push_str(&format!(" (did you mean {}?)", quoted(s)));
            }
            self.error(path, msg);
        }
    }
}
