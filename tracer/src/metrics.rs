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

use crate::{
    analysis::AgeBuckets,
    container::Container,
    report::{StackReport, SuspectReport, Totals},
};

/// What one scrape shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Events read from the kernel, when no single process owns them
    /// (host-wide mode); one-process mode counts them on the process.
    pub events: Option<u64>,
    /// One-process mode: the target; host-wide: every live process.
    pub processes: Vec<ProcessMetrics>,
}

/// The series of one process, all labelled with its `pid` and `comm`, and
/// `container_id` and `pod_uid` when its cgroup names them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessMetrics {
    pub pid: u32,
    pub comm: String,
    pub container: Option<Container>,
    pub totals: Totals,
    /// Events read from the kernel (one-process mode).
    pub events: Option<u64>,
    pub age_bytes: AgeBuckets,
    /// Most suspicious first.
    pub suspects: Vec<SuspectMetric>,
    /// The largest stacks, largest first, then the rest summed: a bounded
    /// set of series per process however many stacks it has.
    pub stacks: Vec<StackMetric>,
    /// Mapped memory, when it is traced (`--trace-memory both|mapped`).
    pub mapped: Option<MappedMetrics>,
}

/// The mapped-memory series of one process: series of their own, beside
/// the heap's (whose names and labels stay as they were), so a dashboard
/// that sums `alloctrace_outstanding_bytes` keeps meaning the heap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MappedMetrics {
    /// Committed bytes outstanding.
    pub bytes: u64,
    /// Pieces of mappings holding them.
    pub count: u64,
    /// The largest mapped stacks, then the rest summed, as for the heap.
    pub stacks: Vec<StackMetric>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SuspectMetric {
    /// Label of the stack's first frame (the allocator's caller).
    pub frame: String,
    pub bytes: u64,
    pub growth_bytes_per_s: f64,
}

impl From<&SuspectReport> for SuspectMetric {
    fn from(suspect: &SuspectReport) -> Self {
        Self {
            frame: first_frame_label(&suspect.stack),
            bytes: suspect.stack.bytes,
            growth_bytes_per_s: suspect.growth_bytes_per_s,
        }
    }
}

/// One `alloctrace_stack_outstanding_bytes` series.
#[derive(Clone, Debug, PartialEq)]
pub struct StackMetric {
    /// The stack's identity for as long as the process lives (a hash of its
    /// return addresses, 16 hex digits), or `other` for the stacks beyond
    /// the largest. Not a rank: a stack keeps its series when another
    /// overtakes it, so `deriv()` over it means something.
    pub stack: String,
    /// Label of the stack's first frame, or `[other]`.
    pub frame: String,
    pub bytes: u64,
}

/// The largest `top` of `stacks` (largest first) as series, and the
/// outstanding bytes of the rest (`total` minus theirs) as one `other`.
pub fn bounded_stacks(stacks: &[StackReport], top: usize, total: u64) -> Vec<StackMetric> {
    let mut series: Vec<StackMetric> = stacks
        .iter()
        .take(top)
        .map(|stack| StackMetric {
            stack: stack_key(stack),
            frame: first_frame_label(stack),
            bytes: stack.bytes,
        })
        .collect();
    let shown: u64 = series.iter().map(|stack| stack.bytes).sum();
    series.push(StackMetric {
        stack: "other".to_owned(),
        frame: "[other]".to_owned(),
        bytes: total.saturating_sub(shown),
    });
    series
}

/// A stack's return addresses, hashed: the same stack of the same process
/// gets the same key at every scrape (SipHash with fixed keys).
fn stack_key(stack: &StackReport) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    for frame in &stack.frames {
        frame.address.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// The label of a stack's first frame, the allocator's caller.
pub fn first_frame_label(stack: &StackReport) -> String {
    stack
        .frames
        .first()
        .map_or_else(|| "[no stack]".to_owned(), |frame| frame.label())
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

/// Families of one snapshot, filled process by process.
#[derive(Default)]
struct Families {
    outstanding_bytes: Family<Labels, Gauge>,
    outstanding_allocations: Family<Labels, Gauge>,
    events: Family<Labels, Counter>,
    lost_events: Family<Labels, Counter>,
    allocations: Family<Labels, Counter>,
    frees: Family<Labels, Counter>,
    by_age: Family<Labels, Gauge>,
    suspect_bytes: Family<Labels, Gauge>,
    suspect_growth: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    stack_bytes: Family<Labels, Gauge>,
    mapped_bytes: Family<Labels, Gauge>,
    mapped_count: Family<Labels, Gauge>,
    mapped_stack_bytes: Family<Labels, Gauge>,
}

/// The OpenMetrics text of `snapshot`.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let families = Families::default();
    if let Some(events) = snapshot.events {
        families.events.get_or_create(&Vec::new()).inc_by(events);
    }
    for process in &snapshot.processes {
        families.add(process);
    }
    let mut text = String::new();
    encode(&mut text, &families.register()).expect("writing to a String cannot fail");
    text
}

impl Families {
    fn add(&self, process: &ProcessMetrics) {
        let labels = process_labels(process);
        let with = |key: &str, value: &str| {
            let mut labels = labels.clone();
            labels.push((key.to_owned(), value.to_owned()));
            labels
        };
        let totals = &process.totals;
        let gauge = |family: &Family<Labels, Gauge>, value: u64| {
            family.get_or_create(&labels).set(value as i64);
        };
        gauge(&self.outstanding_bytes, totals.outstanding_bytes);
        gauge(&self.outstanding_allocations, totals.outstanding_count);
        let counter = |family: &Family<Labels, Counter>, value: u64| {
            family.get_or_create(&labels).inc_by(value);
        };
        if let Some(events) = process.events {
            counter(&self.events, events);
        }
        counter(&self.lost_events, totals.lost_events);
        counter(&self.allocations, totals.allocs);
        counter(&self.frees, totals.frees);
        for (age, bytes) in [
            ("under_10s", process.age_bytes.under_10s),
            ("under_1m", process.age_bytes.under_1m),
            ("under_10m", process.age_bytes.under_10m),
            ("older", process.age_bytes.older),
        ] {
            self.by_age
                .get_or_create(&with("age", age))
                .set(bytes as i64);
        }
        for (rank, suspect) in process.suspects.iter().enumerate() {
            let mut labels = with("rank", &(rank + 1).to_string());
            labels.push(("frame".to_owned(), suspect.frame.clone()));
            self.suspect_bytes
                .get_or_create(&labels)
                .set(suspect.bytes as i64);
            self.suspect_growth
                .get_or_create(&labels)
                .set(suspect.growth_bytes_per_s);
        }
        let stacks = |family: &Family<Labels, Gauge>, stacks: &[StackMetric]| {
            for stack in stacks {
                let mut labels = with("stack", &stack.stack);
                labels.push(("frame".to_owned(), stack.frame.clone()));
                family.get_or_create(&labels).set(stack.bytes as i64);
            }
        };
        stacks(&self.stack_bytes, &process.stacks);
        if let Some(mapped) = &process.mapped {
            gauge(&self.mapped_bytes, mapped.bytes);
            gauge(&self.mapped_count, mapped.count);
            stacks(&self.mapped_stack_bytes, &mapped.stacks);
        }
    }

    fn register(self) -> Registry {
        let mut registry = Registry::default();
        let r = &mut registry;
        r.register(
            "alloctrace_outstanding_bytes",
            "Bytes allocated and not freed",
            self.outstanding_bytes,
        );
        r.register(
            "alloctrace_outstanding_allocations",
            "Blocks allocated and not freed",
            self.outstanding_allocations,
        );
        r.register(
            "alloctrace_events",
            "Events read from the kernel",
            self.events,
        );
        r.register(
            "alloctrace_lost_events",
            "Events the kernel dropped (ring buffer full)",
            self.lost_events,
        );
        r.register(
            "alloctrace_allocations",
            "Allocations seen",
            self.allocations,
        );
        r.register(
            "alloctrace_frees",
            "Frees of blocks allocated while tracing",
            self.frees,
        );
        r.register(
            "alloctrace_outstanding_bytes_by_age",
            "Outstanding bytes by allocation age",
            self.by_age,
        );
        r.register(
            "alloctrace_suspect_outstanding_bytes",
            "Outstanding bytes of each leak suspect",
            self.suspect_bytes,
        );
        r.register(
            "alloctrace_suspect_growth_bytes_per_second",
            "Growth rate of each leak suspect (Theil-Sen slope)",
            self.suspect_growth,
        );
        r.register(
            "alloctrace_stack_outstanding_bytes",
            "Outstanding bytes of the largest stacks of each process, and of the rest summed (stack other)",
            self.stack_bytes,
        );
        r.register(
            "alloctrace_mapped_outstanding_bytes",
            "Committed bytes of the anonymous mappings and break growth the process made itself and still holds (--trace-memory both|mapped)",
            self.mapped_bytes,
        );
        r.register(
            "alloctrace_mapped_outstanding_mappings",
            "Pieces of mappings holding those bytes (a mapping split by a partial munmap is two)",
            self.mapped_count,
        );
        r.register(
            "alloctrace_mapped_stack_outstanding_bytes",
            "Committed mapped bytes of the largest mapping stacks of each process, and of the rest summed (stack other)",
            self.mapped_stack_bytes,
        );
        registry
    }
}

/// `pid` and `comm`, and the container's id and pod UID when known.
fn process_labels(process: &ProcessMetrics) -> Labels {
    let mut labels = vec![
        ("pid".to_owned(), process.pid.to_string()),
        ("comm".to_owned(), process.comm.clone()),
    ];
    let container = process.container.as_ref();
    if let Some(id) = container.and_then(|container| container.id.as_ref()) {
        labels.push(("container_id".to_owned(), id.clone()));
    }
    if let Some(pod) = container.and_then(|container| container.pod_uid.as_ref()) {
        labels.push(("pod_uid".to_owned(), pod.clone()));
    }
    labels
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
    fn renders_process_totals_ages_suspects_and_bounded_stacks() {
        let stacks = [
            crate::report::test_stack(4000, &["leak_site", "main"]),
            crate::report::test_stack(96, &["other_site", "main"]),
            crate::report::test_stack(60, &["third_site", "main"]),
        ];
        let mapped_stacks = [
            crate::report::test_stack(8192, &["pool_grow", "main"]),
            crate::report::test_stack(4096, &["ring_map", "main"]),
        ];
        let container = crate::container::parse(
            "/kubepods/burstable/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/\
             4c2e5a9b1f3d8e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716f5e4d3c2b1a0",
        );
        let snapshot = MetricsSnapshot {
            events: None,
            processes: vec![ProcessMetrics {
                pid: 7,
                comm: "app".to_owned(),
                container: Some(container),
                totals: Totals {
                    outstanding_bytes: 4156,
                    outstanding_count: 3,
                    lost_events: 1,
                    ..Totals::default()
                },
                events: Some(10),
                age_bytes: AgeBuckets {
                    older: 4156,
                    ..AgeBuckets::default()
                },
                suspects: vec![SuspectMetric {
                    frame: "leak_site".to_owned(),
                    bytes: 4000,
                    growth_bytes_per_s: 80.5,
                }],
                stacks: bounded_stacks(&stacks, 1, 4156),
                mapped: Some(MappedMetrics {
                    bytes: 12288,
                    count: 2,
                    stacks: bounded_stacks(&mapped_stacks, 1, 12288),
                }),
            }],
        };
        let text = render(&snapshot);
        let labels = r#"pid="7",comm="app",container_id="4c2e5a9b1f3d8e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716f5e4d3c2b1a0",pod_uid="0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b""#;
        for line in [
            format!("alloctrace_outstanding_bytes{{{labels}}} 4156"),
            format!("alloctrace_outstanding_allocations{{{labels}}} 3"),
            format!("alloctrace_events_total{{{labels}}} 10"),
            format!("alloctrace_lost_events_total{{{labels}}} 1"),
            format!(r#"alloctrace_outstanding_bytes_by_age{{{labels},age="older"}} 4156"#),
            format!(
                r#"alloctrace_suspect_outstanding_bytes{{{labels},rank="1",frame="leak_site"}} 4000"#
            ),
            format!(
                r#"alloctrace_suspect_growth_bytes_per_second{{{labels},rank="1",frame="leak_site"}} 80.5"#
            ),
            format!(
                r#"alloctrace_stack_outstanding_bytes{{{labels},stack="{}",frame="leak_site"}} 4000"#,
                stack_key(&stacks[0])
            ),
            format!(
                r#"alloctrace_stack_outstanding_bytes{{{labels},stack="other",frame="[other]"}} 156"#
            ),
            format!("alloctrace_mapped_outstanding_bytes{{{labels}}} 12288"),
            format!("alloctrace_mapped_outstanding_mappings{{{labels}}} 2"),
            format!(
                r#"alloctrace_mapped_stack_outstanding_bytes{{{labels},stack="{}",frame="pool_grow"}} 8192"#,
                stack_key(&mapped_stacks[0])
            ),
            format!(
                r#"alloctrace_mapped_stack_outstanding_bytes{{{labels},stack="other",frame="[other]"}} 4096"#
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("alloctrace_stack_outstanding_bytes{"))
                .count(),
            2,
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_process_without_mapped_memory_traced_has_no_mapped_series() {
        let snapshot = MetricsSnapshot {
            events: None,
            processes: vec![ProcessMetrics {
                pid: 7,
                comm: "app".to_owned(),
                ..ProcessMetrics::default()
            }],
        };
        let text = render(&snapshot);
        assert!(text.contains("alloctrace_outstanding_bytes{"), "{text}");
        assert!(
            !text.contains("alloctrace_mapped_outstanding_bytes{"),
            "{text}"
        );
    }

    #[test]
    fn a_stack_keeps_its_key_and_another_stack_gets_another() {
        let leak = crate::report::test_stack(4000, &["leak_site", "main"]);
        let mut grown = leak.clone();
        grown.bytes = 8000;
        let mut elsewhere = leak.clone();
        elsewhere.frames[1].address = 0x2000;
        assert_eq!(stack_key(&leak), stack_key(&grown));
        assert_ne!(stack_key(&leak), stack_key(&elsewhere));
        assert_eq!(stack_key(&leak).len(), 16);
    }

    #[test]
    fn host_wide_events_carry_no_process_labels() {
        let snapshot = MetricsSnapshot {
            events: Some(99),
            processes: Vec::new(),
        };
        assert!(
            render(&snapshot)
                .lines()
                .any(|l| l == "alloctrace_events_total 99")
        );
    }
}
