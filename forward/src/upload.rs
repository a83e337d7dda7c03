//! The client's request body on its way to the upstream. It says when the client has sent all of
//! it: the upstream is only late once it has the whole request, so the upstream timeout starts
//! then, not while a slow client is still uploading. And for a forward that may be retried (the
//! activator's), it can be taken back whole as long as nothing of it was read.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use tokio::sync::oneshot;

/// A request body passed through frame by frame.
#[derive(Debug)]
pub struct RequestBody {
    inner: Source,
    uploaded: Option<oneshot::Sender<()>>,
}

#[derive(Debug)]
enum Source {
    Plain(Incoming),
    /// Shared with the forward that sent it, which takes it back if the upstream never got it.
    Returnable(Arc<Returnable>),
}

/// A body that can be taken back while no frame of it has been read.
#[derive(Debug)]
pub struct Returnable {
    /// `(body, read from)`.
    slot: Mutex<(Option<Incoming>, bool)>,
}

impl Returnable {
    pub fn new(body: Incoming) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new((Some(body), false)),
        })
    }

    /// The body, unless a frame of it was read (it is then partly sent and cannot be again).
    pub fn take_unread(&self) -> Option<Incoming> {
        let mut slot = self.slot.lock().ok()?;
        if slot.1 {
            return None;
        }
        slot.0.take()
    }
}

/// Resolves when the client has sent its whole body (or the body was
/// dropped unread: then nothing more will be sent either).
pub type Uploaded = oneshot::Receiver<()>;

impl RequestBody {
    /// The body, and, when the caller wants to know, when it has been sent.
    pub fn new(inner: Incoming, watch: bool) -> (Self, Option<Uploaded>) {
        let end = inner.is_end_stream();
        Self::with(Source::Plain(inner), watch && !end)
    }

    /// A body that can be taken back through `returnable` while unread.
    pub fn returnable(returnable: Arc<Returnable>, watch: bool) -> (Self, Option<Uploaded>) {
        let source = Source::Returnable(returnable);
        let end = source.is_end_stream();
        Self::with(source, watch && !end)
    }

    fn with(inner: Source, watch: bool) -> (Self, Option<Uploaded>) {
        if !watch {
            return (
                Self {
                    inner,
                    uploaded: None,
                },
                None,
            );
        }
        let (tx, rx) = oneshot::channel();
        (
            Self {
                inner,
                uploaded: Some(tx),
            },
            Some(rx),
        )
    }

    fn done(&mut self) {
        if let Some(uploaded) = self.uploaded.take() {
            let _ = uploaded.send(());
        }
    }
}

impl Source {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self {
            Source::Plain(body) => Pin::new(body).poll_frame(cx),
            Source::Returnable(r) => match r.slot.lock() {
                Ok(mut slot) => {
                    slot.1 = true;
                    match slot.0.as_mut() {
                        Some(body) => Pin::new(body).poll_frame(cx),
                        // Taken back: this attempt is over.
                        None => Poll::Ready(None),
                    }
                }
                Err(_) => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Plain(body) => body.is_end_stream(),
            Source::Returnable(r) => r
                .slot
                .lock()
                .map(|s| s.0.as_ref().is_none_or(Body::is_end_stream))
                .unwrap_or(true),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Plain(body) => body.size_hint(),
            Source::Returnable(r) => r
                .slot
                .lock()
                .ok()
                .and_then(|s| s.0.as_ref().map(Body::size_hint))
                .unwrap_or_else(|| SizeHint::with_exact(0)),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            // hyper stops polling once `is_end_stream` says so.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.done(),
            Poll::Ready(None | Some(Err(_))) => this.done(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
