//! How Azure Blob requests are authorized, in Litestream's order: a SAS token
//! (`sas-token`, `LITESTREAM_AZURE_SAS_TOKEN`), else the account's shared key
//! (`account-key`, `LITESTREAM_AZURE_ACCOUNT_KEY`, with the account name), else
//! Azure's default chain: a service principal from `AZURE_CLIENT_ID`,
//! `AZURE_TENANT_ID` and `AZURE_CLIENT_SECRET`, then the VM's managed identity,
//! then the Azure CLI's login. The HMAC is aws-lc-rs's. Nothing here logs a secret.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use crate::replica::http::{agent, body_bytes, error_text};

pub enum Auth {
    /// The query string of a SAS token, without its `?`.
    Sas(String),
    SharedKey {
        account: String,
        key: Vec<u8>,
    },
    Bearer(TokenSource),
}

impl Auth {
    pub fn choose(account: Option<&str>, account_key: Option<&str>, sas: Option<&str>) -> Result<Auth> {
        let env = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        let sas = sas.map(str::to_string).filter(|s| !s.is_empty()).or_else(|| env("LITESTREAM_AZURE_SAS_TOKEN"));
        let key =
            account_key.map(str::to_string).filter(|s| !s.is_empty()).or_else(|| env("LITESTREAM_AZURE_ACCOUNT_KEY"));
        if let Some(s) = sas {
            if key.is_some() {
                tracing::warn!("both a SAS token and an account key are configured for Azure; using the SAS token");
            }
            return Ok(Auth::Sas(s.trim_start_matches('?').to_string()));
        }
        if let (Some(k), Some(a)) = (&key, account) {
            let key = B64.decode(k.trim()).map_err(|_| {
                anyhow!("account-key is not valid base64; copy it whole from the storage account's Access keys page")
            })?;
            return Ok(Auth::SharedKey { account: a.to_string(), key });
        }
        Ok(Auth::Bearer(TokenSource::default_chain()))
    }
}

/// Shared Key: the signature over the request's canonical form.
///
/// `headers` are the request's headers (names in lower case); `path` is the URL
/// path as sent (percent-encoded); `query` the decoded query pairs.
pub fn shared_key(
    account: &str,
    key: &[u8],
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
) -> String {
    let h = |name: &str| headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
    let length = match h("content-length") {
        "0" => "",
        l => l,
    };
    let mut ms: Vec<(&str, &str)> =
        headers.iter().filter(|(k, _)| k.starts_with("x-ms-")).map(|(k, v)| (k.as_str(), v.trim())).collect();
    ms.sort();
    let mut canonical_headers = String::new();
    for (k, v) in ms {
        canonical_headers.push_str(&format!("{k}:{v}\n"));
    }
    let mut resource = format!("/{account}{path}");
    let mut q: Vec<(String, &str)> = query.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_str())).collect();
    q.sort();
    let mut i = 0;
    while i < q.len() {
        let name = q[i].0.clone();
        let mut values = Vec::new();
        while i < q.len() && q[i].0 == name {
            values.push(q[i].1);
            i += 1;
        }
        values.sort();
        resource.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    let to_sign = [
        method,
        h("content-encoding"),
        h("content-language"),
        length,
        h("content-md5"),
        h("content-type"),
        "", // Date: x-ms-date is sent instead.
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
    ]
    .join("\n");
    let to_sign = format!("{to_sign}\n{canonical_headers}{resource}");
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let sig = aws_lc_rs::hmac::sign(&k, to_sign.as_bytes());
    format!("SharedKey {account}:{}", B64.encode(sig.as_ref()))
}

enum Chain {
    ClientSecret { tenant: String, client_id: String, secret: String },
    ManagedIdentity,
    Cli,
}

pub struct TokenSource {
    cached: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(alias = "accessToken")]
    access_token: String,
    /// Seconds (a string from IMDS, a number from Entra ID).
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

const RESOURCE: &str = "https://storage.azure.com/";

impl TokenSource {
    fn default_chain() -> TokenSource {
        TokenSource { cached: Mutex::new(None) }
    }

    fn links() -> Vec<Chain> {
        let env = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        let mut links = Vec::new();
        if let (Some(tenant), Some(client_id), Some(secret)) =
            (env("AZURE_TENANT_ID"), env("AZURE_CLIENT_ID"), env("AZURE_CLIENT_SECRET"))
        {
            links.push(Chain::ClientSecret { tenant, client_id, secret });
        }
        links.push(Chain::ManagedIdentity);
        links.push(Chain::Cli);
        links
    }

    pub fn token(&self) -> Result<String> {
        let mut cached = self.cached.lock().unwrap();
        if let Some((t, until)) = &*cached
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let mut tried = Vec::new();
        for link in Self::links() {
            match fetch(&link) {
                Ok(a) => {
                    let secs = match &a.expires_in {
                        Some(serde_json::Value::Number(n)) => n.as_u64(),
                        Some(serde_json::Value::String(s)) => s.parse().ok(),
                        _ => None,
                    };
                    let life = Duration::from_secs(secs.unwrap_or(3600)).saturating_sub(Duration::from_secs(60));
                    *cached = Some((a.access_token.clone(), Instant::now() + life));
                    return Ok(a.access_token);
                }
                Err(e) => tried.push(format!("{e:#}")),
            }
        }
        bail!(
            "no Azure credentials: {}; set account-key (or LITESTREAM_AZURE_ACCOUNT_KEY) with account-name, or sas-token (or LITESTREAM_AZURE_SAS_TOKEN)",
            tried.join("; ")
        )
    }
}

fn fetch(link: &Chain) -> Result<TokenAnswer> {
    let mut resp = match link {
        Chain::ClientSecret { tenant, client_id, secret } => {
            let url = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token");
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", client_id.as_str()),
                ("client_secret", secret.as_str()),
                ("scope", "https://storage.azure.com/.default"),
            ];
            agent().post(&url).send_form(form).map_err(|e| anyhow!("service principal (AZURE_CLIENT_ID): {e}"))?
        }
        Chain::ManagedIdentity => {
            let url = format!(
                "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource={RESOURCE}"
            );
            let mut req = agent().get(&url).header("Metadata", "true");
            if let Ok(id) = std::env::var("AZURE_CLIENT_ID") {
                req = req.query("client_id", id);
            }
            req.config()
                .timeout_connect(Some(Duration::from_secs(2)))
                .build()
                .call()
                .map_err(|e| anyhow!("managed identity: {e}"))?
        }
        Chain::Cli => {
            let out = std::process::Command::new("az")
                .args(["account", "get-access-token", "--resource", RESOURCE, "--output", "json"])
                .output()
                .map_err(|e| anyhow!("Azure CLI: cannot run az: {e}"))?;
            if !out.status.success() {
                bail!("Azure CLI: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            return serde_json::from_slice(&out.stdout).context("Azure CLI: unreadable token");
        }
    };
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        bail!("HTTP {status}: {}", error_text(&mut resp));
    }
    serde_json::from_slice(&body_bytes(&mut resp)?).context("unreadable token answer")
}
