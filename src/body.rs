//! Body types shared by the server and the origin client, and the tee that
//! streams an origin body to the client while collecting it for the store.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response Lacquer sends and every request it forwards.
/// Bytes already in memory (every cache hit) need no allocation and no dynamic
/// dispatch; streams are boxed.
pub enum Body {
    /// A body in memory, sent as one frame (`None` once sent, or empty).
    Full(Option<Bytes>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(b) => write!(f, "Body::Full({} bytes)", b.as_ref().map_or(0, Bytes::len)),
            Body::Boxed(_) => f.write_str("Body::Boxed"),
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    let bytes = bytes.into();
    Body::Full((!bytes.is_empty()).then_some(bytes))
}

pub fn empty() -> Body {
    Body::Full(None)
}

pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body::Boxed(body.map_err(Into::into).boxed_unsync())
}

/// A body fed by a channel: the receiving half of a tee.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    len: Option<u64>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        size_hint(self.len)
    }
}

/// The size hint of a body whose length is known (or not).
pub fn size_hint(len: Option<u64>) -> SizeHint {
    match len {
        Some(n) => SizeHint::with_exact(n),
        None => SizeHint::default(),
    }
}

/// Collects a body for the store, up to a limit: past it, collection stops (the
/// body still streams on; it just will not be stored).
pub struct Collector {
    buf: BytesMut,
    limit: usize,
    too_large: bool,
}

impl Collector {
    pub fn new(len: Option<u64>, limit: usize) -> Collector {
        let capacity = len.map_or(0, |n| n.min(limit as u64) as usize);
        Collector {
            buf: BytesMut::with_capacity(capacity),
            limit,
            too_large: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.too_large {
            return;
        }
        if self.buf.len() + data.len() > self.limit {
            self.too_large = true;
            self.buf = BytesMut::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    pub fn too_large(&self) -> bool {
        self.too_large
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes what was collected, leaving the collector empty.
    pub fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }
}

/// Why a tee did not produce a complete body.
#[derive(Debug, PartialEq, Eq)]
pub enum TeeEnd {
    /// The body grew past the limit: streamed on, not collected.
    TooLarge,
    /// The origin body failed or ended early.
    Incomplete,
}

/// Streams `body` to the returned [`ChannelBody`] and collects it, up to `limit`
/// bytes. `on_complete` gets the complete body *before* the client sees the end
/// of it, so a client that has read a whole response can count on the next
/// request finding it stored. The returned future must be driven (spawned) for
/// the client body to make progress. If the client goes away, collection
/// continues: the store still gets the object.
pub fn tee<B, F>(
    body: B,
    len: Option<u64>,
    limit: usize,
    on_complete: F,
) -> (
    ChannelBody,
    impl std::future::Future<Output = Result<(), TeeEnd>> + Send,
)
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
    F: FnOnce(Bytes) + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let client = ChannelBody { rx, len };
    let fut = async move {
        let mut body = body;
        let mut tx = Some(tx);
        let mut on_complete = Some(on_complete);
        let mut collected = Collector::new(len, limit);
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        collected.push(data);
                        if !collected.too_large() && Some(collected.len() as u64) == len {
                            // Declared length reached: complete.
                            if let Some(f) = on_complete.take() {
                                f(collected.take());
                            }
                        }
                    }
                    if let Some(sender) = &tx {
                        if sender.send(Ok(frame)).await.is_err() {
                            tx = None; // client gone: keep collecting for the store
                        }
                    }
                    if collected.too_large() && tx.is_none() {
                        return Err(TeeEnd::TooLarge);
                    }
                }
                Some(Err(e)) => {
                    if let Some(sender) = &tx {
                        let _ = sender.send(Err(e.into())).await;
                    }
                    return if on_complete.is_none() {
                        Ok(())
                    } else {
                        Err(TeeEnd::Incomplete)
                    };
                }
            }
        }
        if collected.too_large() {
            return Err(TeeEnd::TooLarge);
        }
        match (on_complete.take(), len) {
            (None, _) => Ok(()),
            // An empty body with `Content-Length: 0` never produced a data frame.
            (Some(f), Some(n)) if collected.len() as u64 == n => {
                f(collected.take());
                Ok(())
            }
            // Ended before the declared length.
            (Some(_), Some(_)) => Err(TeeEnd::Incomplete),
            (Some(f), None) => {
                f(collected.take());
                drop(tx); // only now does the client see the end of the body
                Ok(())
            }
        }
    };
    (client, fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    fn sink() -> (
        Arc<Mutex<Option<Bytes>>>,
        impl FnOnce(Bytes) + Send + 'static,
    ) {
        let slot = Arc::new(Mutex::new(None));
        let s = slot.clone();
        (slot, move |b| *s.lock().unwrap() = Some(b))
    }

    #[tokio::test]
    async fn tee_collects_before_the_client_sees_the_end() {
        for len in [Some(5), None] {
            let (slot, f) = sink();
            let (client, fut) = tee(
                http_body_util::Full::new(Bytes::from_static(b"hello")),
                len,
                100,
                f,
            );
            let task = tokio::spawn(fut);
            let got = client.collect().await.unwrap().to_bytes();
            assert_eq!(got, "hello");
            // The client has the whole body: the store already has it too.
            assert_eq!(
                slot.lock().unwrap().as_deref(),
                Some(&b"hello"[..]),
                "len {len:?}"
            );
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn tee_keeps_collecting_after_the_client_leaves() {
        let (slot, f) = sink();
        let (client, fut) = tee(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            None,
            100,
            f,
        );
        drop(client);
        fut.await.unwrap();
        assert_eq!(slot.lock().unwrap().as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn tee_stops_collecting_past_the_limit() {
        let (slot, f) = sink();
        let (client, fut) = tee(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            None,
            3,
            f,
        );
        let task = tokio::spawn(fut);
        assert_eq!(client.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(task.await.unwrap(), Err(TeeEnd::TooLarge));
        assert!(slot.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn tee_reports_a_short_body() {
        let (slot, f) = sink();
        let (client, fut) = tee(
            http_body_util::Full::new(Bytes::from_static(b"hel")),
            Some(5),
            100,
            f,
        );
        drop(client);
        assert_eq!(fut.await, Err(TeeEnd::Incomplete));
        assert!(slot.lock().unwrap().is_none());
    }
}
