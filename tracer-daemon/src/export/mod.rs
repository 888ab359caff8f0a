//! Exporting profiles off the node: every `--otlp-interval` the agent builds its traced
//! containers' profiles as OpenTelemetry profiles (`profiles`) and hands them to a bounded
//! queue; a task of its own sends them over OTLP/gRPC with retries (`exporter`), so that an
//! endpoint that is down or slow never holds up tracing.

pub mod exporter;
pub mod profiles;
