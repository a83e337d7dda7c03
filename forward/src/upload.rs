//! The client's request body on its way to the app, which says when the
//! client has sent all of it: the app is only late once it has the whole
//! request, so the upstream timeout starts then, not while a slow client is
//! still uploading.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use tokio::sync::oneshot;

/// A request body passed through frame by frame.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
    uploaded: Option<oneshot::Sender<()>>,
}

/// Resolves when the client has sent its whole body (or the body was
/// dropped unread: then nothing more will be sent either).
pub type Uploaded = oneshot::Receiver<()>;

impl RequestBody {
    /// The body, and, when the caller wants to know, when it has been sent.
    pub fn new(inner: Incoming, watch: bool) -> (Self, Option<Uploaded>) {
        if !watch || inner.is_end_stream() {
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

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
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
