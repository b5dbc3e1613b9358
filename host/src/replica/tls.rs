//! `skip-verify`: an HTTPS client for the S3 SDK that encrypts but does not check
//! the server's certificate chain or name, for test servers with self-signed
//! certificates (Litestream's `skip-verify`, Go's `InsecureSkipVerify`).
//!
//! The handshake signature is still verified against the certificate the server
//! presents, so the connection is encrypted to whoever holds that key; only the
//! question "is this key really the endpoint's" is skipped. The SDK's own client
//! offers no such switch, so this is a small hyper + rustls connector of our own.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

type HttpsClient = Client<hyper_rustls::HttpsConnector<TcpConnector>, SdkBody>;

/// An SDK HTTP client whose connections skip certificate verification.
pub fn http_client() -> SharedHttpClient {
    http_client_fn(|settings, _components| SharedHttpConnector::new(Insecure::new(settings)))
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug, Clone)]
struct Insecure {
    client: HttpsClient,
    read_timeout: Option<Duration>,
}

impl Insecure {
    fn new(settings: &HttpConnectorSettings) -> Insecure {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the default TLS versions are supported by the default provider")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(settings.connect_timeout());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Insecure { client: Client::builder(TokioExecutor::new()).build(https), read_timeout: settings.read_timeout() }
    }
}

impl HttpConnector for Insecure {
    fn call(&self, request: aws_smithy_runtime_api::client::orchestrator::HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                Some(t) => match tokio::time::timeout(t, response).await {
                    Ok(r) => r,
                    Err(_) => return Err(ConnectorError::timeout(format!("no response within {t:?}").into())),
                },
                None => response.await,
            };
            match response {
                Ok(r) => HttpResponse::try_from(r.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                Err(e) => Err(classify(e)),
            }
        })
    }
}

/// Connection failures and resets are I/O errors, which the SDK retries; the rest are not.
fn classify(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    let mut io = e.is_connect();
    while let Some(s) = source {
        io |= s.is::<std::io::Error>()
            || s.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_closed() || h.is_incomplete_message());
        source = s.source();
    }
    if io { ConnectorError::io(e.into()) } else { ConnectorError::other(e.into(), None) }
}
