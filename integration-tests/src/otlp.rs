//! A real OTLP/gRPC trace receiver for tests: opentelemetry-proto's generated tonic service on a
//! port-0 socket, keeping every span it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::Notify;

/// A received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Span name.
    pub name: String,
    /// Span kind (OTLP enum value: 2 = server, 3 = client).
    pub kind: i32,
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex (empty for a root).
    pub parent_span_id: String,
    /// Attributes as text.
    pub attributes: HashMap<String, String>,
    /// `service.name` of the resource it came with.
    pub service: String,
    /// Every attribute of that resource, as text.
    pub resource: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// A received metric data point, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedPoint {
    /// Metric name.
    pub name: String,
    /// Point attributes as text.
    pub attributes: HashMap<String, String>,
    /// The value.
    pub value: f64,
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    points: Arc<Mutex<Vec<ReceivedPoint>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut points = self.points.lock().unwrap();
        for rm in &request.get_ref().resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let data_points = match &m.data {
                        Some(Data::Sum(sum)) => &sum.data_points,
                        Some(Data::Gauge(gauge)) => &gauge.data_points,
                        _ => continue,
                    };
                    for p in data_points {
                        let value = match p.value {
                            Some(number_data_point::Value::AsInt(i)) => i as f64,
                            Some(number_data_point::Value::AsDouble(d)) => d,
                            None => continue,
                        };
                        points.push(ReceivedPoint {
                            name: m.name.clone(),
                            attributes: p
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(&kv.value)))
                                .collect(),
                            value,
                        });
                    }
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in &request.get_ref().resource_spans {
            let resource: HashMap<String, String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), text(&kv.value)))
                .collect();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    spans.push(flatten(s, &resource));
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn flatten(s: &Span, resource: &HashMap<String, String>) -> ReceivedSpan {
    ReceivedSpan {
        name: s.name.clone(),
        kind: s.kind,
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent_span_id: hex(&s.parent_span_id),
        attributes: s
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), text(&kv.value)))
            .collect(),
        service: resource.get("service.name").cloned().unwrap_or_default(),
        resource: resource.clone(),
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// Where to send OTLP/gRPC (`http://` + this).
    pub addr: SocketAddr,
    sink: Sink,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let traces = TraceServiceServer::new(sink.clone());
        let metrics = MetricsServiceServer::new(sink.clone());
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(traces)
                .add_service(metrics)
                .serve_with_incoming(incoming)
                .await;
        });
        Receiver { addr, sink, task }
    }

    /// The endpoint URL for the sidecar's config.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.sink.spans.lock().unwrap().clone()
    }

    /// Waits until a data point of metric `name` satisfying `filter` has arrived.
    pub async fn wait_for_point(
        &self,
        name: &str,
        filter: impl Fn(&ReceivedPoint) -> bool,
    ) -> ReceivedPoint {
        loop {
            let notified = self.sink.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self
                .sink
                .points
                .lock()
                .unwrap()
                .iter()
                .find(|p| p.name == name && filter(p))
                .cloned()
            {
                return p;
            }
            notified.await;
        }
    }

    /// Waits until a span named `name` (and matching `filter`) has arrived, and returns it.
    pub async fn wait_for(
        &self,
        name: &str,
        filter: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        loop {
            let notified = self.sink.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(s) = self
                .spans()
                .into_iter()
                .find(|s| s.name == name && filter(s))
            {
                return s;
            }
            notified.await;
        }
    }
}
