//! A transform plugin that misbehaves on purpose. Setting `mode`: `loop`, `panic`,
//! `huge` (returns far more than it was given), `err`, or `identity` (passes bytes
//! through unchanged).

wit_bindgen::generate!({ world: "transform-plugin", path: "../../../wit" });

use std::cell::RefCell;

use exports::sluice::policy::transform::{Decoder, DecoderBorrow, Encoder, Guest, GuestDecoder, GuestEncoder};

struct Misbehave;

struct Codec {
    mode: String,
    seen: RefCell<u64>,
}

impl Codec {
    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        *self.seen.borrow_mut() += data.len() as u64;
        match self.mode.as_str() {
            "loop" => loop {
                std::hint::black_box(0);
            },
            "panic" => panic!("misbehave-transform panics on purpose"),
            "huge" => Ok(vec![7u8; 256 << 20]),
            "err" => Err("misbehave-transform fails on purpose".into()),
            _ => Ok(data),
        }
    }
}

fn mode(settings: &[(String, String)]) -> String {
    settings.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.clone()).unwrap_or_else(|| "identity".into())
}

impl GuestEncoder for Codec {
    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Codec::push(self, data)
    }
    fn finish(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
}

impl GuestDecoder for Codec {
    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Codec::push(self, data)
    }
    fn finish(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
}

impl Guest for Misbehave {
    type Encoder = Codec;
    type Decoder = Codec;

    fn validate(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn name() -> String {
        "misbehave".into()
    }

    fn open_encoder(settings: Vec<(String, String)>, _secrets: Vec<(String, String)>) -> Result<Encoder, String> {
        Ok(Encoder::new(Codec { mode: mode(&settings), seen: RefCell::new(0) }))
    }

    fn open_decoder(settings: Vec<(String, String)>, _secrets: Vec<(String, String)>) -> Result<Decoder, String> {
        Ok(Decoder::new(Codec { mode: mode(&settings), seen: RefCell::new(0) }))
    }
}

#[allow(dead_code)]
fn unused(_: DecoderBorrow<'_>) {}

export!(Misbehave);
