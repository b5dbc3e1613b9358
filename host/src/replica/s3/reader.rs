//! Reading one object: the first part streams as it arrives, and the rest of a
//! large object is fetched as several ranged GETs at once, a few parts ahead of the
//! reader, then handed over in order. A part cut off mid-way resumes from the byte
//! it reached.
//!
//! Memory is bounded without any reader ever waiting on another. Each reader may
//! always have one part of its own on the way (the part it needs next), outside
//! any shared bound; parts fetched further ahead take a slot from a process-wide
//! pool of `PARTS_AHEAD`, and only when one is free at once (`try_acquire`). So a
//! process holds at most `(open readers + PARTS_AHEAD) × PART_BYTES`, and a thread
//! that reads several objects in turn (a compaction merging 21 inputs, a restore
//! at `-parallelism 8`) can never block on a slot held by a part of another reader
//! it will only read later. That wait was a deadlock: compaction of many
//! multi-part inputs hung for good.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::warn;

use super::{READ_RESUMES, SseC, explain, root_cause, runtime};

/// The size of each ranged GET.
pub(super) const PART_BYTES: u64 = 2 << 20;

/// Parts fetched or being fetched ahead of the readers, in the whole process.
const PARTS_AHEAD: usize = 4;

static PARTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(PARTS_AHEAD)));

/// What a reader needs to issue its own GETs.
pub(super) struct ReadHandle {
    pub inner: aws_sdk_s3::Client,
    pub bucket: String,
    pub sse_c: Option<SseC>,
    pub endpoint: String,
}

impl ReadHandle {
    fn what(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key)
    }

    /// GETs bytes `start..=end` (`end` None: to the object's end).
    async fn get(&self, key: &str, start: u64, end: Option<u64>) -> io::Result<ByteStream> {
        let range = match end {
            Some(end) => format!("bytes={start}-{end}"),
            None => format!("bytes={start}-"),
        };
        let mut req = self.inner.get_object().bucket(&self.bucket).key(key).range(range);
        req = with_sse_c!(req, self.sse_c);
        let r = req
            .send()
            .await
            .map_err(|e| io::Error::other(explain(e, "s3:GetObject", &self.what(key), &self.endpoint).to_string()))?;
        Ok(r.body)
    }
}

/// The object's size, from a ranged response's `Content-Range: bytes a-b/SIZE`.
pub(super) fn total_size(content_range: Option<&str>) -> Option<u64> {
    content_range?.rsplit_once('/')?.1.parse().ok()
}

/// A fetched part: the chunks as received, and its place under the process's
/// bound (None: the reader's own part, which takes no shared slot).
type Part = (VecDeque<Bytes>, Option<OwnedSemaphorePermit>);

/// Streams an object from its first response on; see the module's description.
pub(super) struct ObjectReader {
    client: Arc<ReadHandle>,
    key: String,
    /// The first response's body, holding bytes up to `first_end`.
    body: Option<ByteStream>,
    first_end: u64,
    chunk: Bytes,
    /// The rest of the part `chunk` comes from, as received.
    rest: VecDeque<Bytes>,
    /// Keeps the part in `chunk` and `rest` counted against the process's bound.
    _part: Option<OwnedSemaphorePermit>,
    offset: u64,
    len: u64,
    ahead: VecDeque<JoinHandle<io::Result<Part>>>,
    /// The first byte no part has been asked for yet.
    requested: u64,
}

impl ObjectReader {
    /// `body` is the response to a GET of bytes `0..first_end` of an object of
    /// `len` bytes; the rest is fetched in parts.
    pub fn new(client: ReadHandle, key: String, body: ByteStream, first_end: u64, len: u64) -> Self {
        let mut r = ObjectReader {
            client: Arc::new(client),
            key,
            body: Some(body),
            first_end,
            chunk: Bytes::new(),
            rest: VecDeque::new(),
            _part: None,
            offset: 0,
            len,
            ahead: VecDeque::new(),
            requested: first_end,
        };
        r.ask_ahead();
        r
    }

    /// Starts fetching parts, while slots are free, until `PARTS_AHEAD` are queued
    /// or the object is covered.
    fn ask_ahead(&mut self) {
        while self.ahead.len() < PARTS_AHEAD && self.requested < self.len {
            let Ok(slot) = PARTS.clone().try_acquire_owned() else { break };
            self.fetch_next(Some(slot));
        }
    }

    /// Starts fetching the next part, in the shared slot given (None: as the
    /// reader's own part).
    fn fetch_next(&mut self, slot: Option<OwnedSemaphorePermit>) {
        let (start, end) = (self.requested, (self.requested + PART_BYTES).min(self.len) - 1);
        self.requested = end + 1;
        let (client, key) = (self.client.clone(), self.key.clone());
        self.ahead.push_back(runtime().spawn(fetch_part(client, key, start, end, slot)));
    }

    /// Resumes the first response from the byte reached.
    fn reopen(&mut self) -> io::Result<()> {
        let end = self.first_end - 1;
        self.body = Some(runtime().block_on(self.client.get(&self.key, self.offset, Some(end)))?);
        Ok(())
    }

    /// The next bytes of the first response, resuming if it breaks.
    fn next_of_first(&mut self) -> io::Result<Bytes> {
        let mut resumes = 0;
        loop {
            let failure = match self.body.as_mut() {
                None => match self.reopen() {
                    Ok(()) => continue,
                    Err(e) => e.to_string(),
                },
                Some(b) => match runtime().block_on(b.try_next()) {
                    Ok(Some(c)) if !c.is_empty() => return Ok(c),
                    Ok(Some(_)) => continue,
                    Ok(None) => "the object ended early".to_string(),
                    Err(e) => root_cause(&e),
                },
            };
            resumes += 1;
            if resumes > READ_RESUMES {
                return Err(io::Error::other(format!(
                    "download of {} failed: {failure}; check the endpoint and the network",
                    self.key
                )));
            }
            warn!(key = %self.key, offset = self.offset, "download interrupted, resuming: {failure}");
            self.body = None;
            std::thread::sleep(Duration::from_millis(200 * resumes as u64));
        }
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.offset >= self.len {
                return Ok(0);
            }
            if let Some(c) = self.rest.pop_front() {
                self.chunk = c;
            } else if self.offset < self.first_end {
                self.chunk = self.next_of_first()?;
            } else {
                self.body = None;
                // The part read so far is finished: its slot is free for any reader.
                self._part = None;
                if self.ahead.is_empty() && self.requested < self.len {
                    // Nothing on the way: fetch the next part as this reader's own,
                    // never waiting for a shared slot (see the module's description).
                    self.fetch_next(None);
                }
                self.ask_ahead();
                let Some(part) = self.ahead.pop_front() else {
                    return Err(io::Error::other(format!(
                        "download of {}: no part covers byte {}",
                        self.key, self.offset
                    )));
                };
                let (chunks, permit) = runtime().block_on(part).map_err(io::Error::other)??;
                self.rest = chunks;
                self._part = permit;
                self.ask_ahead();
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        self.offset += n as u64;
        Ok(n)
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        for part in &self.ahead {
            part.abort();
        }
    }
}

/// Fetches bytes `start..=end` whole, in the slot under the process's bound it
/// was given, resuming from the byte reached if the response breaks. The part is
/// kept as the chunks the connection delivered: gathering them into one buffer
/// would copy every byte once more, into memory fresh for each part.
async fn fetch_part(
    client: Arc<ReadHandle>,
    key: String,
    start: u64,
    end: u64,
    permit: Option<OwnedSemaphorePermit>,
) -> io::Result<Part> {
    let want = end + 1 - start;
    let mut chunks = VecDeque::new();
    let mut got = 0u64;
    let mut resumes = 0;
    loop {
        let from = start + got;
        if from > end {
            return Ok((chunks, permit));
        }
        let failure = match client.get(&key, from, Some(end)).await {
            Ok(mut body) => loop {
                match body.try_next().await {
                    Ok(Some(c)) => {
                        if got + c.len() as u64 > want {
                            break "the server sent more than the range asked for".to_string();
                        }
                        got += c.len() as u64;
                        if !c.is_empty() {
                            chunks.push_back(c);
                        }
                    }
                    Ok(None) if start + got > end => break String::new(),
                    Ok(None) => break "the object ended early".to_string(),
                    Err(e) => break root_cause(&e),
                }
            },
            Err(e) => e.to_string(),
        };
        if failure.is_empty() {
            continue;
        }
        resumes += 1;
        if resumes > READ_RESUMES {
            return Err(io::Error::other(format!(
                "download of {key} (bytes {start}-{end}) failed: {failure}; check the endpoint and the network"
            )));
        }
        warn!(key = %key, offset = from, "download interrupted, resuming: {failure}");
        tokio::time::sleep(Duration::from_millis(200 * resumes as u64)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_size_from_content_range() {
        assert_eq!(total_size(Some("bytes 0-4194303/549845476")), Some(549_845_476));
        assert_eq!(total_size(Some("bytes 0-9/10")), Some(10));
        assert_eq!(total_size(Some("bytes */10")), Some(10));
        assert_eq!(total_size(Some("bytes 0-9/*")), None);
        assert_eq!(total_size(None), None);
    }
}
