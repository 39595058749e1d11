//! The Prometheus endpoint (`--metrics-addr ADDR`): `GET /metrics` answers
//! with the latest tick's numbers in the OpenMetrics text format, which
//! Prometheus, Grafana Agent and the like scrape as they do any exporter.
//!
//! The session publishes a [`MetricsSnapshot`] at every tick (and once more
//! after the final drain); a scrape renders the latest one, so the endpoint
//! never touches the ledger and a slow scraper never slows tracing. Encoding
//! is prometheus-client's (it ends help texts with a period and counters
//! with `_total`) and HTTP is hyper's; this module only says what is exposed.
//!
//! What it exposes (stack frames, process names) tells whoever can reach it
//! about the target's code, so a bare port binds to 127.0.0.1 only.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{analysis::AgeBuckets, report::Totals};

/// What one scrape shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub pid: u32,
    pub comm: String,
    pub totals: Totals,
    /// Events read from the kernel.
    pub events: u64,
    pub age_bytes: AgeBuckets,
    /// Most suspicious first.
    pub suspects: Vec<SuspectMetric>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SuspectMetric {
    /// Label of the stack's first frame (the allocator's caller).
    pub frame: String,
    pub bytes: u64,
    pub growth_bytes_per_s: f64,
}

/// The snapshot scrapes read; cloned into the server.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<MetricsSnapshot>>);

impl Metrics {
    /// Binds `addr` now (so a taken port fails before anything is
    /// attached) and serves scrapes on the current runtime from then on.
    pub async fn serve(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        let metrics = Self::default();
        tokio::spawn(accept_scrapes(listener, metrics.clone()));
        Ok(metrics)
    }

    pub fn publish(&self, snapshot: MetricsSnapshot) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
    }

    fn render(&self) -> String {
        let snapshot = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        render(&snapshot)
    }
}

/// `--metrics-addr`: `HOST:PORT`, or a bare port for 127.0.0.1.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("'{text}' is not an address (try 9464 or 127.0.0.1:9464)"))
}

async fn accept_scrapes(listener: TcpListener, metrics: Metrics) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                log::debug!("metrics: accept: {error}");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                log::debug!("metrics: connection: {error}");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "alloctrace serves GET /metrics\n".to_owned(),
            )
        };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

type Labels = Vec<(String, String)>;

/// The OpenMetrics text of `snapshot`.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    let process: Labels = vec![
        ("pid".to_owned(), snapshot.pid.to_string()),
        ("comm".to_owned(), snapshot.comm.clone()),
    ];
    let totals = &snapshot.totals;
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let family = Family::<Labels, Gauge>::default();
        family.get_or_create(&process).set(value as i64);
        registry.register(name, help, family);
    };
    gauge(
        &mut registry,
        "alloctrace_outstanding_bytes",
        "Bytes allocated and not freed",
        totals.outstanding_bytes,
    );
    gauge(
        &mut registry,
        "alloctrace_outstanding_allocations",
        "Blocks allocated and not freed",
        totals.outstanding_count,
    );
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let family = Family::<Labels, Counter>::default();
        family.get_or_create(&process).inc_by(value);
        registry.register(name, help, family);
    };
    counter(
        &mut registry,
        "alloctrace_events",
        "Events read from the kernel",
        snapshot.events,
    );
    counter(
        &mut registry,
        "alloctrace_lost_events",
        "Events the kernel dropped (ring buffer full)",
        totals.lost_events,
    );
    counter(
        &mut registry,
        "alloctrace_allocations",
        "Allocations seen",
        totals.allocs,
    );
    counter(
        &mut registry,
        "alloctrace_frees",
        "Frees of blocks allocated while tracing",
        totals.frees,
    );

    let by_age = Family::<Labels, Gauge>::default();
    for (age, bytes) in [
        ("under_10s", snapshot.age_bytes.under_10s),
        ("under_1m", snapshot.age_bytes.under_1m),
        ("under_10m", snapshot.age_bytes.under_10m),
        ("older", snapshot.age_bytes.older),
    ] {
        let mut labels = process.clone();
        labels.push(("age".to_owned(), age.to_owned()));
        by_age.get_or_create(&labels).set(bytes as i64);
    }
    registry.register(
        "alloctrace_outstanding_bytes_by_age",
        "Outstanding bytes by allocation age",
        by_age,
    );

    let suspect_bytes = Family::<Labels, Gauge>::default();
    let suspect_growth = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (rank, suspect) in snapshot.suspects.iter().enumerate() {
        let mut labels = process.clone();
        labels.push(("rank".to_owned(), (rank + 1).to_string()));
        labels.push(("frame".to_owned(), suspect.frame.clone()));
        suspect_bytes
            .get_or_create(&labels)
            .set(suspect.bytes as i64);
        suspect_growth
            .get_or_create(&labels)
            .set(suspect.growth_bytes_per_s);
    }
    registry.register(
        "alloctrace_suspect_outstanding_bytes",
        "Outstanding bytes of each leak suspect",
        suspect_bytes,
    );
    registry.register(
        "alloctrace_suspect_growth_bytes_per_second",
        "Growth rate of each leak suspect (Theil-Sen slope)",
        suspect_growth,
    );

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_binds_to_localhost_only() {
        assert_eq!(parse_addr("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_addr("0.0.0.0:80"), Ok("0.0.0.0:80".parse().unwrap()));
        assert!(parse_addr("not an address").is_err());
    }

    #[test]
    fn renders_process_totals_ages_and_suspects() {
        let snapshot = MetricsSnapshot {
            pid: 7,
            comm: "app".to_owned(),
            totals: Totals {
                outstanding_bytes: 4096,
                outstanding_count: 2,
                lost_events: 1,
                ..Totals::default()
            },
            events: 10,
            age_bytes: AgeBuckets {
                older: 4096,
                ..AgeBuckets::default()
            },
            suspects: vec![SuspectMetric {
                frame: "leak_site".to_owned(),
                bytes: 4000,
                growth_bytes_per_s: 80.5,
            }],
        };
        let text = render(&snapshot);
        for line in [
            r#"alloctrace_outstanding_bytes{pid="7",comm="app"} 4096"#,
            r#"alloctrace_outstanding_allocations{pid="7",comm="app"} 2"#,
            r#"alloctrace_events_total{pid="7",comm="app"} 10"#,
            r#"alloctrace_lost_events_total{pid="7",comm="app"} 1"#,
            r#"alloctrace_outstanding_bytes_by_age{pid="7",comm="app",age="older"} 4096"#,
            r#"alloctrace_suspect_outstanding_bytes{pid="7",comm="app",rank="1",frame="leak_site"} 4000"#,
            r#"alloctrace_suspect_growth_bytes_per_second{pid="7",comm="app",rank="1",frame="leak_site"} 80.5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
