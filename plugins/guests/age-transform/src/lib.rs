//! age encryption (https://age-encryption.org/v1) of every replica object.
//!
//! Each object becomes a standard age file for X25519 recipients, so `age -d -i KEY`
//! decrypts any object by hand. Secrets (from the files or environment variables the
//! config names): `recipient` (one or more `age1...` public keys) to encrypt,
//! `identity` (one or more `AGE-SECRET-KEY-1...` keys) to decrypt. No settings.
//!
//! Format, as the age spec defines it: a text header
//! `age-encryption.org/v1`, one `-> X25519 <share>` stanza per recipient wrapping the
//! 16-byte file key, and `--- <MAC>`; then a 16-byte nonce and the payload in 64 KiB
//! chunks, each sealed with ChaCha20-Poly1305 under an 11-byte counter and a last-chunk
//! flag. The decoder returns only authenticated bytes and rejects truncation.

wit_bindgen::generate!({ world: "transform-plugin", path: "../../../wit" });

use std::cell::RefCell;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use exports::sluice::policy::transform::{Decoder, Encoder, Guest, GuestDecoder, GuestEncoder};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

const INTRO: &str = "age-encryption.org/v1\n";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";

struct Age;

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
    Ok(b)
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out).expect("32 bytes is a valid HKDF length");
    out
}

fn parse_recipient(s: &str) -> Result<PublicKey, String> {
    let (hrp, data) = bech32::decode(s.trim()).map_err(|_| format!("invalid age recipient {:?}", s.trim()))?;
    if hrp.as_str() != "age" || data.len() != 32 {
        return Err(format!("{:?} is not an age X25519 recipient (age1...)", s.trim()));
    }
    Ok(PublicKey::from(<[u8; 32]>::try_from(data.as_slice()).unwrap()))
}

fn parse_identity(s: &str) -> Result<StaticSecret, String> {
    let s = s.trim();
    let bad = || "invalid age identity: expected AGE-SECRET-KEY-1...".to_string();
    let (hrp, data) = bech32::decode(&s.to_ascii_lowercase()).map_err(|_| bad())?;
    if hrp.as_str() != "age-secret-key-" || data.len() != 32 {
        return Err(bad());
    }
    Ok(StaticSecret::from(<[u8; 32]>::try_from(data.as_slice()).unwrap()))
}

/// Identity files may hold comments and several keys, one per line.
fn secrets_named<'a>(secrets: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::from(n)
}

struct Sealer {
    header: Option<Vec<u8>>,
    aead: ChaCha20Poly1305,
    counter: u64,
    buf: Vec<u8>,
}

impl Sealer {
    fn seal(&mut self, chunk: &[u8], last: bool) -> Result<Vec<u8>, String> {
        let out = self.aead.encrypt(&chunk_nonce(self.counter, last), chunk).map_err(|_| "encryption failed")?;
        self.counter += 1;
        Ok(out)
    }
}

struct AgeEncoder(RefCell<Sealer>);

impl GuestEncoder for AgeEncoder {
    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut s = self.0.borrow_mut();
        let mut out = s.header.take().unwrap_or_default();
        s.buf.extend_from_slice(&data);
        // Hold back at least one byte: the final chunk must carry the last flag.
        while s.buf.len() > CHUNK {
            let chunk: Vec<u8> = s.buf.drain(..CHUNK).collect();
            out.extend(s.seal(&chunk, false)?);
        }
        Ok(out)
    }

    fn finish(&self) -> Result<Vec<u8>, String> {
        let mut s = self.0.borrow_mut();
        let mut out = s.header.take().unwrap_or_default();
        let rest = std::mem::take(&mut s.buf);
        out.extend(s.seal(&rest, true)?);
        Ok(out)
    }
}

fn open_encoder(secrets: &[(String, String)]) -> Result<Sealer, String> {
    let recipients = secrets_named(secrets, "recipient");
    if recipients.is_empty() {
        return Err("no age recipient: set recipients (a file or variable holding age1... keys) in the plugin config".into());
    }
    let file_key: [u8; 16] = random()?;
    let mut header = INTRO.to_string();
    for r in recipients {
        let recipient = parse_recipient(r)?;
        let eph = StaticSecret::from(random::<32>()?);
        let share = PublicKey::from(&eph);
        let shared = eph.diffie_hellman(&recipient);
        let mut salt = share.as_bytes().to_vec();
        salt.extend_from_slice(recipient.as_bytes());
        let wrap = hkdf(&salt, shared.as_bytes(), X25519_INFO);
        let body = ChaCha20Poly1305::new(Key::from_slice(&wrap))
            .encrypt(&Nonce::default(), &file_key[..])
            .map_err(|_| "wrapping the file key failed")?;
        header.push_str(&format!("-> X25519 {}\n{}\n", B64.encode(share.as_bytes()), B64.encode(&body)));
    }
    header.push_str("---");
    let mac_key = hkdf(&[], &file_key, b"header");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).expect("any key length");
    mac.update(header.as_bytes());
    header.push_str(&format!(" {}\n", B64.encode(mac.finalize().into_bytes())));
    let nonce: [u8; 16] = random()?;
    let payload_key = hkdf(&nonce, &file_key, b"payload");
    let mut bytes = header.into_bytes();
    bytes.extend_from_slice(&nonce);
    Ok(Sealer { header: Some(bytes), aead: ChaCha20Poly1305::new(Key::from_slice(&payload_key)), counter: 0, buf: Vec::new() })
}

enum OpenState {
    /// Collecting the header and the payload nonce.
    Header(Vec<u8>),
    Payload { aead: ChaCha20Poly1305, counter: u64, buf: Vec<u8> },
    Done,
}

struct AgeDecoder {
    identities: Vec<StaticSecret>,
    state: RefCell<OpenState>,
}

/// Splits off the header if `buf` holds all of it and the nonce: returns
/// (header text up to and including "---", MAC, bytes after the header line).
fn split_header(buf: &[u8]) -> Result<Option<(String, Vec<u8>, usize)>, String> {
    if buf.len() >= INTRO.len() && !buf.starts_with(INTRO.as_bytes()) {
        return Err("not an age file (its first line is not age-encryption.org/v1)".into());
    }
    let Some(pos) = buf.windows(4).position(|w| w == b"\n---") else {
        if buf.len() > 64 * 1024 {
            return Err("age header too long".into());
        }
        return Ok(None);
    };
    let Some(nl) = buf[pos + 4..].iter().position(|&c| c == b'\n') else { return Ok(None) };
    let line_end = pos + 4 + nl;
    let header = std::str::from_utf8(&buf[..pos + 4]).map_err(|_| "age header is not text")?.to_string();
    let mac = B64.decode(buf[pos + 4..line_end].strip_prefix(b" ").ok_or("malformed age header MAC line")?)
        .map_err(|_| "malformed age header MAC")?;
    Ok(Some((header, mac, line_end + 1)))
}

impl AgeDecoder {
    fn unwrap_file_key(&self, header: &str) -> Result<[u8; 16], String> {
        let lines: Vec<&str> = header.lines().collect();
        let mut i = 1;
        while i < lines.len() {
            let line = lines[i];
            i += 1;
            let Some(args) = line.strip_prefix("-> ") else { continue };
            let args: Vec<&str> = args.split(' ').collect();
            // The stanza body runs until a line shorter than 64 characters.
            let mut body = String::new();
            while i < lines.len() && !lines[i].starts_with("-> ") && !lines[i].starts_with("---") {
                body.push_str(lines[i]);
                let short = lines[i].len() < 64;
                i += 1;
                if short {
                    break;
                }
            }
            if args.first() != Some(&"X25519") || args.len() != 2 {
                continue;
            }
            let share: [u8; 32] =
                B64.decode(args[1]).ok().and_then(|v| v.try_into().ok()).ok_or("malformed X25519 stanza")?;
            let body = B64.decode(&body).map_err(|_| "malformed X25519 stanza body")?;
            let share = PublicKey::from(share);
            for id in &self.identities {
                let shared = id.diffie_hellman(&share);
                let mut salt = share.as_bytes().to_vec();
                salt.extend_from_slice(PublicKey::from(id).as_bytes());
                let wrap = hkdf(&salt, shared.as_bytes(), X25519_INFO);
                if let Ok(k) = ChaCha20Poly1305::new(Key::from_slice(&wrap)).decrypt(&Nonce::default(), &body[..]) {
                    if let Ok(k) = <[u8; 16]>::try_from(k.as_slice()) {
                        return Ok(k);
                    }
                }
            }
        }
        Err("none of the configured age identities can decrypt this object (wrong identity?)".into())
    }

    fn open(&self, chunk: &[u8], aead: &ChaCha20Poly1305, counter: u64, last: bool) -> Result<Vec<u8>, String> {
        aead.decrypt(&chunk_nonce(counter, last), Payload { msg: chunk, aad: &[] })
            .map_err(|_| "age payload failed authentication: the object was tampered with or truncated".to_string())
    }
}

impl GuestDecoder for AgeDecoder {
    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut state = self.state.borrow_mut();
        let mut out = Vec::new();
        if let OpenState::Header(buf) = &mut *state {
            buf.extend_from_slice(&data);
            let Some((header, mac, body_at)) = split_header(buf)? else { return Ok(out) };
            if buf.len() < body_at + 16 {
                return Ok(out);
            }
            let file_key = self.unwrap_file_key(&header)?;
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&hkdf(&[], &file_key, b"header")).unwrap();
            m.update(header.as_bytes());
            m.verify_slice(&mac).map_err(|_| "age header MAC mismatch: the header was tampered with")?;
            let nonce = &buf[body_at..body_at + 16];
            let aead = ChaCha20Poly1305::new(Key::from_slice(&hkdf(nonce, &file_key, b"payload")));
            let rest = buf[body_at + 16..].to_vec();
            *state = OpenState::Payload { aead, counter: 0, buf: rest };
        } else if let OpenState::Payload { buf, .. } = &mut *state {
            buf.extend_from_slice(&data);
        }
        if let OpenState::Payload { aead, counter, buf } = &mut *state {
            // A full chunk followed by more data cannot be the last one.
            while buf.len() > CHUNK + TAG {
                let sealed: Vec<u8> = buf.drain(..CHUNK + TAG).collect();
                out.extend(self.open(&sealed, aead, *counter, false)?);
                *counter += 1;
            }
        }
        Ok(out)
    }

    fn finish(&self) -> Result<Vec<u8>, String> {
        let mut state = self.state.borrow_mut();
        match std::mem::replace(&mut *state, OpenState::Done) {
            OpenState::Payload { aead, counter, buf } => {
                if buf.len() < TAG {
                    return Err("age payload is truncated".into());
                }
                self.open(&buf, &aead, counter, true)
            }
            OpenState::Header(_) => Err("age file is truncated (incomplete header)".into()),
            OpenState::Done => Err("age decoder already finished".into()),
        }
    }
}

impl Guest for Age {
    type Encoder = AgeEncoder;
    type Decoder = AgeDecoder;

    fn validate(settings: Vec<(String, String)>) -> Result<(), String> {
        match settings.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!("the age plugin takes no settings (got {k:?}); name keys under recipients/identities")),
        }
    }

    fn name() -> String {
        "age".into()
    }

    fn open_encoder(_settings: Vec<(String, String)>, secrets: Vec<(String, String)>) -> Result<Encoder, String> {
        Ok(Encoder::new(AgeEncoder(RefCell::new(open_encoder(&secrets)?))))
    }

    fn open_decoder(_settings: Vec<(String, String)>, secrets: Vec<(String, String)>) -> Result<Decoder, String> {
        let identities =
            secrets_named(&secrets, "identity").into_iter().map(parse_identity).collect::<Result<Vec<_>, _>>()?;
        if identities.is_empty() {
            return Err("no age identity: restoring an age-encrypted replica needs identities (AGE-SECRET-KEY-1...) in the plugin config".into());
        }
        Ok(Decoder::new(AgeDecoder { identities, state: RefCell::new(OpenState::Header(Vec::new())) }))
    }
}

export!(Age);
