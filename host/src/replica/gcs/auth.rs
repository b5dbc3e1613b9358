//! Google's application default credentials, in the order Google's clients try
//! them: the key file named by `GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's
//! `application_default_credentials.json`, then the metadata server of the VM
//! (GCE, GKE, Cloud Run). A service-account key signs a token request (RS256, by
//! aws-lc-rs); a user's file trades its refresh token. Tokens are kept until a
//! minute before they expire. Nothing here logs a secret.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::replica::http::{agent, body_bytes, error_text};

const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

enum Source {
    ServiceAccount { email: String, key: aws_lc_rs::signature::RsaKeyPair, token_uri: String },
    User { client_id: String, client_secret: String, refresh_token: String },
    Metadata { host: String },
}

pub struct TokenSource {
    source: Source,
    /// Where the credentials came from, for messages.
    origin: String,
    cached: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    /// The application default credentials (see the module comment).
    pub fn application_default() -> Result<TokenSource> {
        if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
            return Self::from_file(&PathBuf::from(p), "GOOGLE_APPLICATION_CREDENTIALS");
        }
        let gcloud = match std::env::var_os("CLOUDSDK_CONFIG") {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config/gcloud"),
        }
        .join("application_default_credentials.json");
        if gcloud.exists() {
            return Self::from_file(&gcloud, "gcloud's application default credentials");
        }
        let host =
            std::env::var("GCE_METADATA_HOST").ok().filter(|h| !h.is_empty()).unwrap_or("169.254.169.254".into());
        Ok(TokenSource {
            source: Source::Metadata { host },
            origin: "the metadata server".into(),
            cached: Mutex::new(None),
        })
    }

    /// Credentials from a key file (a service account's or gcloud's user file).
    pub fn from_file(path: &std::path::Path, named_by: &str) -> Result<TokenSource> {
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read the Google credentials file {} ({named_by})", path.display()))?;
        let f: KeyFile = serde_json::from_slice(&text)
            .with_context(|| format!("{} ({named_by}) is not a Google credentials file", path.display()))?;
        let origin = format!("{} ({named_by})", path.display());
        let missing = |k: &str| anyhow!("the Google credentials file {origin} has no {k}");
        let source = match f.kind.as_str() {
            "service_account" => {
                use rustls_pki_types::PrivatePkcs8KeyDer;
                use rustls_pki_types::pem::PemObject;
                let pem = f.private_key.ok_or_else(|| missing("private_key"))?;
                let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
                    .map_err(|_| anyhow!("the private_key in {origin} is not a PKCS#8 PEM key"))?;
                let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                    .map_err(|_| anyhow!("the private_key in {origin} is not an RSA key"))?;
                Source::ServiceAccount {
                    email: f.client_email.ok_or_else(|| missing("client_email"))?,
                    key,
                    token_uri: f.token_uri.unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
                }
            }
            "authorized_user" => Source::User {
                client_id: f.client_id.ok_or_else(|| missing("client_id"))?,
                client_secret: f.client_secret.ok_or_else(|| missing("client_secret"))?,
                refresh_token: f.refresh_token.ok_or_else(|| missing("refresh_token"))?,
            },
            other => bail!(
                "the Google credentials file {origin} is of type {other:?}; use a service-account key or `gcloud auth application-default login`"
            ),
        };
        Ok(TokenSource { source, origin, cached: Mutex::new(None) })
    }

    /// A current access token.
    pub fn token(&self) -> Result<String> {
        let mut cached = self.cached.lock().unwrap();
        if let Some((t, until)) = &*cached
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let answer = self.fetch().with_context(|| format!("cannot get a Google access token from {}", self.origin))?;
        let life = Duration::from_secs(answer.expires_in.unwrap_or(3600)).saturating_sub(Duration::from_secs(60));
        *cached = Some((answer.access_token.clone(), Instant::now() + life));
        Ok(answer.access_token)
    }

    fn fetch(&self) -> Result<TokenAnswer> {
        let mut resp = match &self.source {
            Source::ServiceAccount { email, key, token_uri } => {
                let assertion = signed_assertion(email, key, token_uri)?;
                let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)];
                agent().post(token_uri).send_form(form).map_err(|e| anyhow!("{token_uri}: {e}"))?
            }
            Source::User { client_id, client_secret, refresh_token } => {
                let form = [
                    ("grant_type", "refresh_token"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.as_str()),
                    ("refresh_token", refresh_token.as_str()),
                ];
                agent().post("https://oauth2.googleapis.com/token").send_form(form).map_err(|e| anyhow!("{e}"))?
            }
            Source::Metadata { host } => {
                let url = format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token");
                agent().get(&url).header("Metadata-Flavor", "Google").call().map_err(|e| {
                    anyhow!(
                        "no Google credentials found (no GOOGLE_APPLICATION_CREDENTIALS, no gcloud login, no metadata server: {e}); set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or set STORAGE_EMULATOR_HOST for an emulator"
                    )
                })?
            }
        };
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            bail!("HTTP {status}: {}", error_text(&mut resp));
        }
        serde_json::from_slice(&body_bytes(&mut resp)?).context("the token answer is not valid JSON")
    }
}

/// A JWT (RS256) asking `token_uri` for a storage token for `email`.
fn signed_assertion(email: &str, key: &aws_lc_rs::signature::RsaKeyPair, token_uri: &str) -> Result<String> {
    let now = chrono::Utc::now().timestamp();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "iss": email, "scope": SCOPE, "aud": token_uri, "iat": now, "exp": now + 3600 });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{header}.{claims}");
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        message.as_bytes(),
        &mut sig,
    )
    .map_err(|_| anyhow!("cannot sign the token request"))?;
    Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};

    use super::*;

    /// A service-account key file signs a token request that its `token_uri`
    /// verifies (RS256 over the claims Google requires); the token is then reused.
    #[test]
    fn service_account_token_request_is_signed() {
        let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<String> = b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        let public = key.public_key().as_ref().to_vec();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let token_uri = format!("http://{}/token", listener.local_addr().unwrap());
        let aud = token_uri.clone();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
            assert_eq!(get("grant_type"), "urn:ietf:params:oauth:grant-type:jwt-bearer");
            let jwt = get("assertion");
            let (signed, sig) = jwt.rsplit_once('.').unwrap();
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
                .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
                .expect("the assertion is signed by the key file's key");
            let claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(signed.split('.').nth(1).unwrap()).unwrap()).unwrap();
            assert_eq!(claims["iss"], "sa@project.iam.gserviceaccount.com");
            assert_eq!(claims["aud"], aud.as_str());
            assert_eq!(claims["scope"], SCOPE);
            let answer = r#"{"access_token":"tok-1","expires_in":3600,"token_type":"Bearer"}"#;
            write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len()).unwrap();
        });

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.json");
        let doc = serde_json::json!({
            "type": "service_account",
            "client_email": "sa@project.iam.gserviceaccount.com",
            "private_key": pem,
            "token_uri": token_uri,
        });
        std::fs::write(&file, doc.to_string()).unwrap();
        let ts = TokenSource::from_file(&file, "test").unwrap();
        assert_eq!(ts.token().unwrap(), "tok-1");
        server.join().unwrap();
        // Cached: the server took one connection only.
        assert_eq!(ts.token().unwrap(), "tok-1");
    }

    #[test]
    fn bad_key_files_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key.json");
        std::fs::write(&file, r#"{"type":"external_account"}"#).unwrap();
        let e = TokenSource::from_file(&file, "GOOGLE_APPLICATION_CREDENTIALS").err().unwrap().to_string();
        assert!(e.contains("external_account") && e.contains("service-account key"), "{e}");
        std::fs::write(&file, r#"{"type":"service_account","client_email":"x","private_key":"nope"}"#).unwrap();
        let e = TokenSource::from_file(&file, "GOOGLE_APPLICATION_CREDENTIALS").err().unwrap().to_string();
        assert!(e.contains("PKCS#8"), "{e}");
    }
}
