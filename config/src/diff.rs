//! `ConfigDiff`: what changed between two configurations, and whether a
//! running gateway can apply the change live (routes, upstreams, policies,
//! Redis) or needs a restart (listeners, the admin listener, the runtime,
//! the access log, the limits, the trusted proxies).

use std::collections::BTreeSet;

use crate::Config;

/// The differences between a running configuration and a new one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Changes a reload applies live, e.g. `routes: added "b"`.
    pub live: Vec<String>,
    /// Changes that need a restart (or a binary upgrade), e.g.
    /// `listeners: changed`.
    pub restart: Vec<String>,
}

impl ConfigDiff {
    /// Compares `old` with `new`.
    pub fn between(old: &Config, new: &Config) -> ConfigDiff {
        let mut d = ConfigDiff::default();
        if old.listeners != new.listeners {
            d.restart.push("listeners: changed".into());
        }
        if old.admin != new.admin {
            d.restart.push("admin: changed".into());
        }
        if old.runtime != new.runtime {
            d.restart.push("runtime: changed".into());
        }
        if old.access_log != new.access_log {
            d.restart.push("access_log: changed".into());
        }
        // Read when the connection builders are made, at start.
        if old.limits != new.limits {
            d.restart.push("limits: changed".into());
        }
        if old.trusted_proxies != new.trusted_proxies {
            d.restart.push("trusted_proxies: changed".into());
        }
        if old.tracing != new.tracing {
            d.restart.push("tracing: changed".into());
        }
        named(
            &mut d.live,
            "routes",
            old.routes.iter().map(|r| (r.name.as_str(), r)),
            new.routes.iter().map(|r| (r.name.as_str(), r)),
        );
        if old
            .routes
            .iter()
            .map(|r| &r.name)
            .ne(new.routes.iter().map(|r| &r.name))
        {
            // File order breaks precedence ties, so a reordering matters.
            d.live.push("routes: order changed".into());
        }
        named(
            &mut d.live,
            "upstreams",
            old.upstreams.iter().map(|u| (u.name.as_str(), u)),
            new.upstreams.iter().map(|u| (u.name.as_str(), u)),
        );
        if old.redis != new.redis {
            d.live.push("redis: changed".into());
        }
        d
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }

    /// True when a running gateway can apply every change.
    pub fn is_live(&self) -> bool {
        self.restart.is_empty()
    }
}

/// Lists added, removed and changed entries of a named section.
fn named<'a, T: PartialEq + 'a>(
    out: &mut Vec<String>,
    section: &str,
    old: impl Iterator<Item = (&'a str, &'a T)> + Clone,
    new: impl Iterator<Item = (&'a str, &'a T)> + Clone,
) {
    let old_names: BTreeSet<&str> = old.clone().map(|(n, _)| n).collect();
    let new_names: BTreeSet<&str> = new.clone().map(|(n, _)| n).collect();
    for name in new_names.difference(&old_names) {
        out.push(format!("{section}: added {name:?}"));
    }
    for name in old_names.difference(&new_names) {
        out.push(format!("{section}: removed {name:?}"));
    }
    for (name, before) in old {
        if let Some((_, after)) = new.clone().find(|(n, _)| *n == name) {
            if before != after {
                out.push(format!("{section}: changed {name:?}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_route: bool, weight: u32, port: u16) -> Config {
        let route_b = if extra_route {
            "  - name: b\n    match: { path: /b }\n    upstream: api\n"
        } else {
            ""
        };
        Config::from_yaml(&format!(
            "listeners: [{{ name: web, address: 127.0.0.1:{port} }}]\n\
             routes:\n  - name: a\n    upstream: api\n{route_b}\
             upstreams:\n  - name: api\n    targets: [{{ address: 127.0.0.1:9000, weight: {weight} }}]\n"
        ))
        .expect("valid")
    }

    #[test]
    fn identical_configs_have_no_diff() {
        assert!(ConfigDiff::between(&config(false, 1, 8080), &config(false, 1, 8080)).is_empty());
    }

    #[test]
    fn route_and_upstream_changes_apply_live() {
        let d = ConfigDiff::between(&config(false, 1, 8080), &config(true, 5, 8080));
        assert!(d.is_live());
        assert_eq!(
            d.live,
            [
                "routes: added \"b\"",
                "routes: order changed",
                "upstreams: changed \"api\""
            ]
        );
    }

    #[test]
    fn websocket_settings_apply_live() {
        let old = config(false, 1, 8080);
        let mut new = old.clone();
        new.routes[0].websocket = false;
        let d = ConfigDiff::between(&old, &new);
        assert!(d.is_live());
        assert_eq!(d.live, ["routes: changed \"a\""]);
        new.routes[0].websocket = true;
        new.routes[0].websocket_idle_timeout = Some(crate::units::Duration::from_secs(60));
        assert_eq!(
            ConfigDiff::between(&old, &new).live,
            ["routes: changed \"a\""]
        );
    }

    #[test]
    fn listener_changes_need_a_restart() {
        let d = ConfigDiff::between(&config(false, 1, 8080), &config(false, 1, 8081));
        assert!(!d.is_live());
        assert_eq!(d.restart, ["listeners: changed"]);
    }
}
