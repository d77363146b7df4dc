//! The snapshot: one configuration compiled into the immutable structures the
//! request path reads (route table, upstream sets, per-route metric handles).
//! A request takes one `Arc<Snapshot>` when it starts and keeps it until it
//! ends, so a later swap never changes a request mid-way.

use std::sync::Arc;

use weir_config::Config;

use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::router::{RouteAction, RouteTable, RouterError};
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
    /// Metric handles per route, indexed by `CompiledRoute::order`.
    pub route_metrics: Vec<RouteMetrics>,
    /// Metric handles for requests that matched no route.
    pub unrouted_metrics: RouteMetrics,
}

/// Why a validated configuration could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The route table could not be built.
    #[error(transparent)]
    Router(#[from] RouterError),
}

impl Snapshot {
    /// Compiles a validated configuration.
    pub fn build(config: Config, metrics: &Metrics) -> Result<Snapshot, BuildError> {
        let routes = RouteTable::build(&config)?;
        let upstreams: Vec<Arc<UpstreamSet>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(UpstreamSet::build(u, metrics)))
            .collect();
        let mut by_order: Vec<_> = routes.routes().iter().collect();
        by_order.sort_by_key(|r| r.order);
        let route_metrics = by_order
            .iter()
            .map(|r| {
                let upstream = match &r.action {
                    RouteAction::Forward { upstream, .. } => upstream.as_ref(),
                    RouteAction::Direct(_) => "",
                };
                metrics.route(&r.name, upstream)
            })
            .collect();
        Ok(Snapshot {
            config: Arc::new(config),
            routes,
            upstreams,
            route_metrics,
            unrouted_metrics: metrics.route("", ""),
        })
    }
}
