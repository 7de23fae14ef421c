//! What an operator sets for a processor's `/metrics` and `/health` endpoint (the `metrics`
//! section of the configuration).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Settings of the metrics and health endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address the endpoint listens on: `GET /metrics`, `/health/live`, `/health/ready`. Port
    /// 0 takes any free port.
    pub listen: SocketAddr,
}

/// 9464 is the port of OpenTelemetry's Prometheus exporter; loopback only, so that a local run
/// exposes nothing. A deployment sets `0.0.0.0:9464` for Prometheus to scrape the pod.
const fn default_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464)
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_listen(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_address_defaults_to_loopback_and_refuses_unknown_keys() {
        let config: MetricsConfig =
            serde_json::from_str(r#"{"listen": "0.0.0.0:9100"}"#).expect("parses");
        assert_eq!(config.listen, "0.0.0.0:9100".parse().expect("address"));
        let default: MetricsConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(default.listen.to_string(), "127.0.0.1:9464");
        assert!(serde_json::from_str::<MetricsConfig>(r#"{"port": 9100}"#).is_err());
        assert!(serde_json::from_str::<MetricsConfig>(r#"{"listen": "9100"}"#).is_err());
    }
}
