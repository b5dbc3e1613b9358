//! `heartbeat-url`: a dead man's switch. Every `heartbeat-interval` (default 5m,
//! at least 1m) Sluice sends `GET heartbeat-url`, but only while every database is
//! healthy: its last capture succeeded within the interval and its replica is not
//! failing. A monitor such as healthchecks.io or Dead Man's Snitch raises the alarm
//! when the pings stop. Checked every 15 s; each request times out after 30 s.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, info, warn};

use crate::health::all_healthy;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
const CHECK_EVERY: Duration = Duration::from_secs(15);
const TIMEOUT: Duration = Duration::from_secs(30);

/// Checks `heartbeat-url` and `heartbeat-interval` as Litestream does.
pub fn validate(url: &str, interval: Option<Duration>) -> Result<Duration> {
    let uri: hyper::Uri = url.parse().map_err(|e| anyhow!("invalid heartbeat-url {url:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
        bail!("invalid heartbeat-url {url:?}: use an http:// or https:// URL");
    }
    let interval = interval.unwrap_or(DEFAULT_INTERVAL);
    if interval < MIN_INTERVAL {
        bail!("heartbeat-interval must be at least 1m (got {interval:?})");
    }
    Ok(interval)
}

/// Starts the heartbeat thread; it runs until the process exits.
pub fn start(url: String, interval: Duration) -> Result<()> {
    let uri: hyper::Uri = url.parse().map_err(|e| anyhow!("invalid heartbeat-url {url:?}: {e}"))?;
    crate::background::spawn("heartbeat", move || run(uri, interval))?;
    info!(interval = ?interval, "heartbeat enabled");
    Ok(())
}

async fn run(uri: hyper::Uri, interval: Duration) {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let https = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider) {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => return warn!("heartbeat disabled: cannot load the system's CA certificates: {e}"),
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    // The URL may hold a token: log only its host.
    let host = uri.host().unwrap_or("").to_string();
    let mut last_ping: Option<Instant> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let now = Instant::now();
        if last_ping.is_some_and(|t| now.duration_since(t) < interval) {
            continue;
        }
        if let Err(why) = all_healthy(chrono::Utc::now(), interval) {
            debug!(host = %host, "heartbeat withheld: {why}");
            continue;
        }
        match tokio::time::timeout(TIMEOUT, client.get(uri.clone())).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                debug!(host = %host, "heartbeat sent");
                last_ping = Some(now);
            }
            Ok(Ok(resp)) => warn!(host = %host, status = resp.status().as_u16(), "heartbeat refused"),
            Ok(Err(e)) => warn!(host = %host, "heartbeat failed: {e}"),
            Err(_) => warn!(host = %host, "heartbeat timed out after 30s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(validate("https://hc-ping.com/abc", None).is_ok());
        assert_eq!(validate("http://x/p", Some(Duration::from_secs(120))).unwrap(), Duration::from_secs(120));
        assert!(format!("{:#}", validate("ftp://x", None).unwrap_err()).contains("http"));
        assert!(format!("{:#}", validate("http://x", Some(Duration::from_secs(5))).unwrap_err()).contains("1m"));
    }
}
