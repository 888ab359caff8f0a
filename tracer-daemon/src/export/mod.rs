//! Exporting profiles off the node: every `--otlp-interval` the agent builds its traced
//! containers' profiles as OpenTelemetry profiles (`profiles`).

pub mod profiles;
