//! The upstream hop's HTTP/1.1 client: the request future itself writes the request on a
//! pooled keep-alive connection and reads the answer, with no connection task in between.
//!
//! hyper-util's client drives every connection from a task of its own and hands requests and
//! answers to it through channels: two task wake-ups, a pool keyed by a hashed string and about
//! 11,000 instructions per proxied request (callgrind), more than nginx spends on the whole
//! request. Here a connection is a plain `TcpStream` in a per-thread idle list (a request served
//! on a serving thread never leaves it), taken for one exchange and put back only once the
//! answer's body has been read to its end, so a connection is never reused in the middle of a
//! message. A pooled connection the instance has closed meanwhile is detected when it is taken
//! (the reactor has seen it readable; no system call otherwise) or, if the close races the
//! request, by the answer being empty: an idempotent request whose body is in hand is then sent
//! once more on a new connection.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;

use super::CONNECT_TIMEOUT;
use mall_common::wire::{self, BodyError, Chunk, Decoder};

/// An idle connection older than this is closed rather than reused: mall's services (hyper)
/// close a connection that brings no request head for 30 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle connections kept per instance and thread.
const MAX_IDLE: usize = 1024;
/// Largest answer head accepted, and most header fields.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
// `parse_head` marks fields in a `u128`.
const _: () = assert!(MAX_HEADERS <= 128);
/// A request body at most this large that is in hand when the request is sent goes out in the
/// same write as the head, and can be sent again on a fresh connection.
const INLINE_BODY: usize = 64 * 1024;

/// A request on its way to an instance, its head written out once before an instance is
/// picked: the pool's layers move a few words instead of a request with its header map, a
/// retry sends the same bytes again instead of a copy of the map, and the proxy writes the
/// fields it adds (forwarding, identity, trace context) as lines instead of inserting them into
/// a map the client would then write out.
#[derive(Debug)]
pub struct Outbound {
    method: Method,
    /// The request line and the header lines, all but `Host` (the instance's, which the client
    /// writes after the request line) and the body's framing (the client's too).
    head: Bytes,
    /// Where the request line ends in `head`.
    line_end: usize,
    /// Whether the request came with a `Content-Length` (an empty body is then announced).
    length_given: bool,
    /// Whether `head` holds a `Host` line (the client's, passed on); if not, the client writes
    /// the instance's.
    host_given: bool,
    body: Body,
}

impl Outbound {
    /// `req` with every header as it is (but `Host` and the framing, which the client writes).
    pub fn from_request(req: Request<Body>) -> Self {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut head = OutboundHead::new(&parts.method, path, 0);
        for (name, value) in &parts.headers {
            head.header(name, value.as_bytes());
        }
        head.with_body(body)
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// A second copy to send again, for a request without a body (a body is gone once sent).
    pub(super) fn try_clone(&self) -> Option<Self> {
        (self.body.size_hint().exact() == Some(0)).then(|| Self {
            method: self.method.clone(),
            head: self.head.clone(),
            line_end: self.line_end,
            length_given: self.length_given,
            host_given: self.host_given,
            body: Body::empty(),
        })
    }
}

/// An [`Outbound`] being written: the request line, then one header line at a time.
pub struct OutboundHead {
    method: Method,
    buf: Vec<u8>,
    line_end: usize,
    length_given: bool,
    host_given: bool,
}

impl OutboundHead {
    /// Starts `method path_and_query HTTP/1.1`, with room for `headers_len` bytes of header
    /// lines besides.
    pub fn new(method: &Method, path_and_query: &str, headers_len: usize) -> Self {
        let mut buf = Vec::with_capacity(path_and_query.len() + headers_len + 512);
        buf.extend_from_slice(method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(path_and_query.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        Self {
            method: method.clone(),
            line_end: buf.len(),
            buf,
            length_given: false,
            host_given: false,
        }
    }

    /// Passes `value` on as the request's `Host` (once; without it, the client writes the
    /// instance's `host:port`).
    pub fn host(&mut self, value: &[u8]) {
        if !self.host_given {
            self.host_given = true;
            wire::push_header(&mut self.buf, b"host", value);
        }
    }

    /// Adds `name: value`; `Host` (see [`OutboundHead::host`]) and the body's framing are left
    /// to the client.
    pub fn header(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            self.length_given = true;
            return;
        }
        if *name == header::HOST || *name == header::TRANSFER_ENCODING {
            return;
        }
        wire::push_header(&mut self.buf, name.as_str().as_bytes(), value);
    }

    /// The head so far, to append whole header lines to (`name: value\r\n` each).
    pub fn lines(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The request, with `body`.
    pub fn with_body(self, body: Body) -> Outbound {
        Outbound {
            method: self.method,
            head: self.buf.into(),
            line_end: self.line_end,
            length_given: self.length_given,
            host_given: self.host_given,
            body,
        }
    }
}

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made (refused, unreachable, timed out): nothing was sent.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// Reading or writing failed after the connection was made.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The instance closed the connection before answering.
    #[error("connection closed before an answer")]
    Closed,
    /// The answer's head is not HTTP/1.1 the client can use.
    #[error("invalid answer head: {0}")]
    Head(String),
    /// The request body failed while it was being sent.
    #[error("request body: {0}")]
    Body(#[source] axum::Error),
}

impl ClientError {
    /// Whether nothing reached the instance.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// One instance as the client sees it.
#[derive(Debug)]
pub(crate) struct Target {
    /// Unique per instance for the life of the process: the idle lists' key.
    id: u64,
    /// `host:port`.
    authority: Box<str>,
    /// The `Host` header line, written once.
    host_line: Box<[u8]>,
}

impl Target {
    pub(crate) fn new(authority: &str) -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut host_line = Vec::with_capacity(authority.len() + 8);
        wire::push_header(&mut host_line, b"host", authority.as_bytes());
        Self {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            authority: authority.into(),
            host_line: host_line.into(),
        }
    }
}

/// A connection and its read buffer, which stays with it: the buffer's memory is reused from
/// answer to answer (a fresh 8 KiB per request was cold memory every time).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

thread_local! {
    /// Idle connections per instance: a short list scanned by id, no hashing.
    static IDLE: RefCell<Vec<(u64, Vec<Idle>)>> = const { RefCell::new(Vec::new()) };
}

/// A connection taken from the idle list or newly made, returned by [`release`].
fn take_idle(target: &Target) -> Option<Conn> {
    IDLE.with_borrow_mut(|lists| {
        let (_, list) = lists.iter_mut().find(|(id, _)| *id == target.id)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < IDLE_TIMEOUT && still_open(&idle.conn.stream) {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// An idle connection the reactor has seen readable has either been closed by the instance or
/// sent bytes nobody asked for; either way it cannot carry a request. No system call unless so.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(_) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

fn release(id: u64, conn: Conn) {
    IDLE.with_borrow_mut(|lists| {
        let list = match lists.iter().position(|(k, _)| *k == id) {
            Some(i) => &mut lists[i].1,
            None => {
                lists.push((id, Vec::new()));
                &mut lists.last_mut().expect("just pushed").1
            }
        };
        if list.len() < MAX_IDLE {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    });
}

async fn connect(target: &Target) -> Result<Conn, ClientError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*target.authority))
        .await
        .map_err(|_| ClientError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(ClientError::Connect)?;
    stream.set_nodelay(true).map_err(ClientError::Connect)?;
    Ok(Conn::new(stream))
}

/// Sends `req` to `target` and returns the answer, whose body streams from the connection.
pub(crate) async fn send(target: &Target, req: Outbound) -> Result<Response<Body>, ClientError> {
    let Outbound {
        method,
        head: written,
        line_end,
        length_given,
        host_given,
        mut body,
    } = req;
    let head_only = method == Method::HEAD;

    // The body's first frame, if it is already here: a small body that came whole with its head
    // goes out in the head's write and can be sent again.
    let mut inline: Option<Bytes> = None;
    // A frame taken while looking, when it was not the whole body: it goes out first.
    let mut first: Option<Bytes> = None;
    let exact = body.size_hint().exact();
    if exact == Some(0) {
        inline = Some(Bytes::new());
    } else if let Some(len) = exact.filter(|len| *len <= INLINE_BODY as u64) {
        match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if data.len() as u64 == len {
                        inline = Some(data);
                    } else {
                        first = Some(data);
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => return Err(ClientError::Body(e)),
            Poll::Ready(None) => inline = Some(Bytes::new()),
            Poll::Pending => {}
        }
    }

    let inline_len = inline.as_ref().map_or(0, Bytes::len);
    let mut head = Vec::with_capacity(written.len() + target.host_line.len() + 48 + inline_len);
    if host_given {
        head.extend_from_slice(&written);
    } else {
        head.extend_from_slice(&written[..line_end]);
        head.extend_from_slice(&target.host_line);
        head.extend_from_slice(&written[line_end..]);
    }
    let chunked = match (&inline, exact) {
        (Some(data), _) => {
            if !data.is_empty() || length_given || carries_body(&method) {
                let mut n = itoa::Buffer::new();
                wire::push_header(&mut head, b"content-length", n.format(data.len()).as_bytes());
            }
            false
        }
        (None, Some(len)) => {
            let mut n = itoa::Buffer::new();
            wire::push_header(&mut head, b"content-length", n.format(len).as_bytes());
            false
        }
        (None, None) => {
            wire::push_header(&mut head, b"transfer-encoding", b"chunked");
            true
        }
    };
    head.extend_from_slice(b"\r\n");

    // The instance may close a pooled connection just as a request goes out on it (its idle
    // close crossing our write): nothing is answered. An idempotent request whose whole body is
    // in hand then goes once more on a fresh connection; any other could have been acted on
    // before the close, so its failure stands (and the retry policy decides).
    let idempotent = matches!(
        method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    match inline {
        Some(data) => {
            head.extend_from_slice(&data);
            let (conn, reused) = match take_idle(target) {
                Some(conn) => (conn, true),
                None => (connect(target).await?, false),
            };
            match exchange(target, conn, &head, head_only).await {
                Err(ClientError::Closed) if reused && idempotent => {
                    exchange(target, connect(target).await?, &head, head_only).await
                }
                Err(ClientError::Io(e)) if reused && idempotent && closed_under_us(&e) => {
                    exchange(target, connect(target).await?, &head, head_only).await
                }
                answered => answered,
            }
        }
        None => {
            let conn = match take_idle(target) {
                Some(conn) => conn,
                None => connect(target).await?,
            };
            wire::write_all(&conn.stream, &head).await?;
            send_body(&conn.stream, first, body, chunked).await?;
            read_answer(target, conn, head_only).await
        }
    }
}

fn carries_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn closed_under_us(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
    )
}

async fn exchange(
    target: &Target,
    conn: Conn,
    request: &[u8],
    head_only: bool,
) -> Result<Response<Body>, ClientError> {
    wire::write_all(&conn.stream, request).await?;
    read_answer(target, conn, head_only).await
}

/// Streams a body that was not in hand: as its length said, or chunked.
async fn send_body(
    stream: &TcpStream,
    mut first: Option<Bytes>,
    mut body: Body,
    chunked: bool,
) -> Result<(), ClientError> {
    let mut scratch = Vec::new();
    loop {
        let data = match first.take() {
            Some(data) => data,
            None => match body.frame().await {
                None => break,
                Some(frame) => match frame.map_err(ClientError::Body)?.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers are not forwarded
                },
            },
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            wire::write_chunk(stream, &mut scratch, &data).await?;
        } else {
            wire::write_all(stream, &data).await?;
        }
    }
    if chunked {
        wire::write_all(stream, wire::LAST_CHUNK).await?;
    }
    Ok(())
}

/// Reads the answer's head and returns the answer with its body as it comes.
async fn read_answer(
    target: &Target,
    mut conn: Conn,
    head_only: bool,
) -> Result<Response<Body>, ClientError> {
    loop {
        if wire::read(&conn.stream, &mut conn.buf).await? == 0 {
            return Err(if conn.buf.is_empty() {
                ClientError::Closed
            } else {
                ClientError::Head("connection closed inside the head".into())
            });
        }
        let Some((res, decoder, keep_alive)) = parse_head(&mut conn.buf, head_only)? else {
            if conn.buf.len() > MAX_HEAD {
                return Err(ClientError::Head("head too large".into()));
            }
            continue;
        };
        // 1xx: an interim answer (100 Continue), the final one follows on the same connection.
        if res.status().is_informational() {
            continue;
        }
        return Ok(with_body(target, res, conn, decoder, keep_alive));
    }
}

type Head = (Response<()>, Decoder, bool);

/// Parses a complete head off the front of `buf`, if it is there. The fields are kept as the
/// upstream sent them, as lines (`wire::RawHeaders`): making a header map of them (a name and
/// a value per field, each checked again, hashed and stored) only for the edge to write them
/// out again cost about 2,500 instructions per proxied request (callgrind). The framing and
/// the upstream connection's own fields are read and left out (a HEAD answer keeps its length).
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, ClientError> {
    // Parsed where it lies in the connection's buffer, then taken off it: the lines are a copy,
    // so nothing needs to share the head's bytes (an answer's head comes whole in its first
    // read; an incomplete one is parsed again when more has come).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Head(e.to_string())),
    };
    let status =
        StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|e| ClientError::Head(e.to_string()))?;
    // The framing first: a `Connection` field may name fields that came before it.
    let mut framing = wire::Framing::default();
    let mut own = 0u128; // bit i: field i is the connection's own
    for (i, field) in parsed.headers.iter().enumerate() {
        if framing
            .read_raw(field.name.as_bytes(), field.value)
            .map_err(|e| ClientError::Head(e.into()))?
        {
            own |= 1 << i;
        }
    }
    let mut lines = Vec::with_capacity(len);
    let (mut json, mut request_id) = (false, false);
    for (i, field) in parsed.headers.iter().enumerate() {
        let name = field.name.as_bytes();
        let dropped = own & (1 << i) != 0
            || (!head_only && name.eq_ignore_ascii_case(b"content-length"))
            || framing.names(name);
        if dropped {
            continue;
        }
        json |= name.eq_ignore_ascii_case(b"content-type") && field.value.starts_with(b"application/json");
        request_id |= name.eq_ignore_ascii_case(b"x-request-id");
        wire::push_header(&mut lines, name, field.value);
    }
    let version = parsed.version;
    buf.advance(len);
    let mut keep_alive = version == Some(1) && !framing.close;
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let decoder = if bodiless {
        Decoder::Done
    } else if framing.encoded {
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3); one that does not end in
        // chunked is read until close.
        if framing.chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            Decoder::Close
        }
    } else {
        match framing.length {
            Some(n) => Decoder::Length(n),
            None => Decoder::Close,
        }
    };
    if decoder == Decoder::Close {
        keep_alive = false;
    }
    let mut res = Response::new(());
    *res.status_mut() = status;
    res.extensions_mut().insert(wire::RawHeaders {
        lines: Bytes::from(lines),
        json,
        request_id,
    });
    Ok(Some((res, decoder, keep_alive)))
}

/// Attaches the body: read already when it came whole with the head (the connection goes back
/// to the idle list at once), else streamed from the connection.
fn with_body(
    target: &Target,
    res: Response<()>,
    mut conn: Conn,
    decoder: Decoder,
    keep_alive: bool,
) -> Response<Body> {
    if let Some(n) = decoder.remaining()
        && n <= conn.buf.len() as u64
    {
        let data = conn.buf.split_to(n as usize).freeze();
        // Bytes past the answer were never asked for: the connection is out of step.
        if keep_alive && conn.buf.is_empty() {
            release(target.id, conn);
        }
        return res.map(|()| {
            if data.is_empty() {
                Body::empty()
            } else {
                Body::from(data)
            }
        });
    }
    res.map(|()| {
        Body::new(Streaming {
            conn: Some(conn),
            decoder,
            keep_alive,
            target: target.id,
        })
    })
}

/// An answer's body read from its connection as the client takes it.
struct Streaming {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    target: u64,
}

impl HttpBody for Streaming {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match wire::poll_body(&conn.stream, cx, &mut conn.buf, &mut this.decoder) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(None) => {
                let conn = this.conn.take().expect("checked above");
                // Bytes past the answer were never asked for: the connection is out of step.
                if this.keep_alive && conn.buf.is_empty() {
                    release(this.target, conn);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A body that failed mid-way: the client gets a truncated answer, and the
                // connection closes.
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbound_head_leaves_host_and_framing_to_the_client_and_is_copied_only_without_a_body() {
        let mut head = OutboundHead::new(&Method::GET, "/a?b=1", 0);
        head.header(&header::HOST, b"client.example");
        head.header(&header::CONTENT_LENGTH, b"0");
        head.header(&header::TRANSFER_ENCODING, b"chunked");
        head.header(&header::ACCEPT, b"*/*");
        head.lines().extend_from_slice(b"x-extra: 1\r\n");
        let out = head.with_body(Body::empty());
        assert_eq!(
            &out.head[..],
            b"GET /a?b=1 HTTP/1.1\r\naccept: */*\r\nx-extra: 1\r\n"
        );
        assert_eq!(&out.head[..out.line_end], b"GET /a?b=1 HTTP/1.1\r\n");
        assert!(
            out.length_given,
            "an empty body that was announced is announced upstream"
        );
        assert!(!out.host_given, "the client writes the instance's host");
        let copy = out
            .try_clone()
            .expect("a request without a body can be sent again");
        assert_eq!((copy.head, copy.method), (out.head.clone(), Method::GET));

        let mut kept = OutboundHead::new(&Method::GET, "/", 0);
        kept.header(&header::ACCEPT, b"*/*");
        kept.host(b"shop.example");
        kept.host(b"twice.example");
        let kept = kept.with_body(Body::empty());
        assert_eq!(
            &kept.head[..],
            b"GET / HTTP/1.1\r\naccept: */*\r\nhost: shop.example\r\n"
        );
        assert!(kept.host_given && kept.try_clone().is_some_and(|copy| copy.host_given));

        let posted = OutboundHead::new(&Method::POST, "/", 0).with_body(Body::from("x"));
        assert!(posted.try_clone().is_none(), "a body is gone once sent");
    }
}
