//! An upload body read from local [`Pieces`] as it is sent, a window at a time,
//! and read again from the start when the SDK retries the request.

use std::pin::Pin;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::ltx::pieces::Pieces;

/// Bytes read per poll. The pieces are files just written or read, so each read
/// comes from the page cache and is done in place, without a hand-off to the
/// blocking pool.
const WINDOW: u64 = 256 * 1024;

/// `len` bytes of `data` from `start`.
pub(super) fn pieces(data: &Pieces, start: u64, len: u64) -> ByteStream {
    let data = data.clone();
    ByteStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(PiecesBody { data: data.clone(), at: start, end: start + len, buf: BytesMut::new() })
    }))
}

struct PiecesBody {
    data: Pieces,
    at: u64,
    end: u64,
    /// The window: once the connection has sent (and dropped) the bytes handed
    /// out, the next window reuses its memory instead of faulting in fresh pages.
    buf: BytesMut,
}

impl http_body::Body for PiecesBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let n = (self.end - self.at).min(WINDOW) as usize;
        if n == 0 {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        this.buf.reserve(n);
        this.buf.resize(n, 0);
        if let Err(e) = this.data.read_exact_at(this.at, &mut this.buf[..n]) {
            return Poll::Ready(Some(Err(e)));
        }
        this.at += n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(n).freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.at == self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.at)
    }
}
