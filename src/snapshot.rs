//! The snapshot: one configuration compiled into the immutable structures the
//! request path reads (route table, upstream sets, per-route metric handles).
//! A request takes one `Arc<Snapshot>` when it starts and keeps it until it
//! ends, so a later swap never changes a request mid-way.

use std::sync::Arc;

use crate::tls::{ClientTls, TlsError};

use weir_config::Config;

use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::proxy::{PolicyBuildError, RoutePolicies};
use crate::router::{RouteAction, RouteTable, RouterError};
use crate::store::redis::{RedisLimiter, StoreError};
use crate::upstream::UpstreamSet;

/// A compiled, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// Routes in precedence order.
    pub routes: RouteTable,
    /// Upstreams, in config order (`RouteAction::Forward::upstream_index`).
    pub upstreams: Vec<Arc<UpstreamSet>>,
    /// Metric handles per route, indexed by `CompiledRoute::order`, then by
    /// the side of a split (a single entry for other routes).
    pub route_metrics: Vec<Box<[RouteMetrics]>>,
    /// Metric handles for requests that matched no route.
    pub unrouted_metrics: RouteMetrics,
    /// Governance of each route, indexed by `CompiledRoute::order`.
    pub route_policies: Vec<RoutePolicies>,
    /// The Redis client of `backend: redis` rate limits, when configured.
    pub redis: Option<Arc<RedisLimiter>>,
    /// Hash of the configuration file's text (`crate::reload::config_hash`);
    /// empty when the configuration did not come from a file.
    pub hash: Arc<str>,
}

/// Why a validated configuration could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The route table could not be built.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A route's policies could not be built.
    #[error(transparent)]
    Policy(#[from] PolicyBuildError),
    /// The Redis URL was rejected by the client.
    #[error("redis.url: {0}")]
    Redis(#[from] StoreError),
    /// TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Snapshot {
    /// Compiles a validated configuration. With `previous` (a reload), state
    /// carries over by name: an upstream whose configuration is unchanged is
    /// the same `UpstreamSet` (its pools, health, ejections and breaker
    /// counts), a changed one keeps its targets' drain marks; a route keeps
    /// its rate-limit buckets and retry budget while their settings are
    /// unchanged; the Redis client is kept while `redis` is unchanged.
    pub fn build(
        config: Config,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        let routes = RouteTable::build(&config)?;
        let upstreams: Vec<Arc<UpstreamSet>> = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let old = previous.and_then(|p| {
                    let i = p.config.upstreams.iter().position(|o| o.name == u.name)?;
                    Some((&p.config.upstreams[i], p.upstreams.get(i)?))
                });
                let tls = || match &u.tls {
                    Some(t) => {
                        ClientTls::build(&format!("upstreams[{i}].tls"), t, u.protocol).map(Some)
                    }
                    None => Ok(None),
                };
                Ok(match old {
                    Some((cfg, set)) if cfg == u => set.clone(),
                    Some((_, set)) => {
                        let fresh = UpstreamSet::build(u, metrics, tls()?);
                        fresh.inherit_drains(set);
                        Arc::new(fresh)
                    }
                    None => Arc::new(UpstreamSet::build(u, metrics, tls()?)),
                })
            })
            .collect::<Result<_, TlsError>>()?;
        let mut by_order: Vec<_> = routes.routes().iter().collect();
        by_order.sort_by_key(|r| r.order);
        let route_metrics = by_order
            .iter()
            .map(|r| match &r.action {
                RouteAction::Direct(_) => vec![metrics.route(&r.name, "")].into_boxed_slice(),
                action => action
                    .upstreams()
                    .iter()
                    .map(|(name, _)| metrics.route(&r.name, name))
                    .collect(),
            })
            .collect();
        let kept_redis = previous
            .filter(|p| p.config.redis == config.redis)
            .and_then(|p| p.redis.clone());
        let redis = match (&config.redis, kept_redis) {
            (Some(_), Some(kept)) => Some(kept),
            (Some(r), None) => Some(Arc::new(RedisLimiter::new(&r.url, r.timeout.get())?)),
            (None, _) => None,
        };
        let upstream_index = |name: &str| config.upstreams.iter().position(|u| u.name == name);
        let route_policies = config
            .routes
            .iter()
            .map(|r| {
                let old = previous.and_then(|p| {
                    let i = p.config.routes.iter().position(|o| o.name == r.name)?;
                    Some((&p.config.routes[i], p.route_policies.get(i)?))
                });
                RoutePolicies::build(r, upstream_index, redis.as_ref(), metrics, old)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            config: Arc::new(config),
            routes,
            upstreams,
            route_metrics,
            unrouted_metrics: metrics.route("", ""),
            route_policies,
            redis,
            hash: Arc::from(""),
        })
    }
}
