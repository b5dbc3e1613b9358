//! The blocking HTTP client the REST backends (GCS, Azure Blob) share: one agent
//! per process, TLS through rustls with the system's roots, bounded waits, and
//! status codes handled by the caller (never turned into errors by the client).

use std::io::Read;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Result, anyhow};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// An answer read whole: status, headers we care about, and the body.
pub type Response = ureq::http::Response<ureq::Body>;

/// The largest body read whole (listings, lease objects, error documents).
const MAX_SMALL_BODY: u64 = 64 << 20;

static AGENT: LazyLock<ureq::Agent> = LazyLock::new(|| {
    let roots: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .into_iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let roots = if roots.is_empty() { RootCerts::WebPki } else { RootCerts::Specific(Arc::new(roots)) };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        // A server that accepts a request and then says nothing (a stalled
        // emulator, a black-holed link) fails the request instead of hanging it.
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .timeout_send_body(Some(Duration::from_secs(120)))
        .max_idle_connections_per_host(16)
        // GCS answers a resumable chunk with 308 (Resume Incomplete): an answer, not a redirect.
        .max_redirects(0)
        // WebDAV: PROPFIND, MKCOL, MOVE.
        .allow_non_standard_methods(true)
        .tls_config(tls)
        .build()
        .into()
});

/// The process's agent (connections are pooled per host).
pub fn agent() -> &'static ureq::Agent {
    &AGENT
}

/// A body read whole, up to 64 MiB.
pub fn body_bytes(resp: &mut Response) -> Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(MAX_SMALL_BODY)
        .read_to_vec()
        .map_err(|e| anyhow!("cannot read the server's answer: {e}"))
}

/// A body as text (for error messages: cut to one line of at most 300 bytes).
pub fn error_text(resp: &mut Response) -> String {
    let text = body_bytes(resp).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut = one_line.chars().take(300).collect::<String>();
    if cut.len() < one_line.len() {
        cut.push_str("...");
    }
    cut
}

/// A header's value as text.
pub fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The body as a reader that owns the connection.
pub fn into_reader(resp: Response) -> Box<dyn Read + Send> {
    Box::new(resp.into_body().into_reader())
}

/// What a transport error means, for a message ("connection refused", "timed out").
pub fn transport(e: ureq::Error, what: &str) -> anyhow::Error {
    anyhow!("cannot reach {what}: {e}")
}
