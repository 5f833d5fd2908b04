//! HTTP/1.1 message framing on the edge's data path (`edge.rs`) and the gateway's upstream
//! client: the body decoder (length, chunked, until close) and the few writers a head needs.
//!
//! Separate from the code that uses it because framing is where a proxy goes wrong quietly
//! (a body cut short, a chunk boundary passed through as data, a keep-alive connection reused
//! in the middle of a message), so it is kept small and tested on its own.

use std::io;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use tokio::net::TcpStream;

/// Longest chunk-size or trailer line accepted; a longer one is a broken or hostile peer.
const MAX_LINE: usize = 4096;

/// How a message body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoder {
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// Neither: the body ends when the peer closes the connection.
    Close,
    /// The body has ended.
    Done,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last chunk, reading trailer lines until the empty one.
    Trailer,
}

/// What one decoding step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no more of the body; read more.
    More,
    /// The body is complete (whatever follows in the buffer is the next message).
    End,
}

/// A body the peer framed wrongly.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// A chunk-size line that is not hexadecimal, or too long.
    #[error("invalid chunk size line")]
    ChunkSize,
    /// A chunk's data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    /// The connection closed before the body was complete.
    #[error("connection closed before the body was complete")]
    Truncated,
}

impl Decoder {
    /// Takes the next piece of the body out of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, FramingError> {
        match self {
            Self::Done | Self::Length(0) => {
                *self = Self::Done;
                Ok(Step::End)
            }
            Self::Length(rest) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*rest).min(buf.len() as u64) as usize;
                *rest -= n as u64;
                Ok(Step::Data(buf.split_to(n).freeze()))
            }
            Self::Close if buf.is_empty() => Ok(Step::More),
            Self::Close => Ok(Step::Data(buf.split().freeze())),
            Self::Chunked(state) => {
                loop {
                    match state {
                        Chunk::Size => {
                            let Some(eol) = line_end(buf)? else {
                                return Ok(Step::More);
                            };
                            let size = chunk_size(&buf[..eol])?;
                            buf.advance(eol + 2);
                            *state = if size == 0 {
                                Chunk::Trailer
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Chunk::Data(rest) => {
                            if buf.is_empty() {
                                return Ok(Step::More);
                            }
                            let n = (*rest).min(buf.len() as u64) as usize;
                            *rest -= n as u64;
                            if *rest == 0 {
                                *state = Chunk::DataEnd;
                            }
                            return Ok(Step::Data(buf.split_to(n).freeze()));
                        }
                        Chunk::DataEnd => {
                            if buf.len() < 2 {
                                return Ok(Step::More);
                            }
                            if &buf[..2] != b"\r\n" {
                                return Err(FramingError::ChunkEnd);
                            }
                            buf.advance(2);
                            *state = Chunk::Size;
                        }
                        Chunk::Trailer => {
                            let Some(eol) = line_end(buf)? else {
                                return Ok(Step::More);
                            };
                            // Trailer fields are dropped: nothing upstream of mall sends any that a
                            // client needs, and forwarding them needs trailers on both hops.
                            buf.advance(eol + 2);
                            if eol == 0 {
                                break;
                            }
                        }
                    }
                }
                *self = Self::Done;
                Ok(Step::End)
            }
        }
    }

    /// What the peer closing the connection means here: the end of a body read until close,
    /// a truncated body otherwise.
    pub fn at_eof(&mut self) -> Result<Step, FramingError> {
        match self {
            Self::Close | Self::Done | Self::Length(0) => {
                *self = Self::Done;
                Ok(Step::End)
            }
            _ => Err(FramingError::Truncated),
        }
    }

    /// Bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length(n) => Some(*n),
            Self::Done => Some(0),
            _ => None,
        }
    }
}

/// A body read off a connection failed: the connection, or the peer's framing.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading failed.
    #[error("reading the body: {0}")]
    Io(#[from] io::Error),
    /// The peer framed it wrongly or closed early.
    #[error("reading the body: {0}")]
    Framing(#[from] FramingError),
}

/// The next piece of a body from `buf`, reading from `stream` when `buf` runs dry:
/// `Ready(None)` once the decoder has seen its end.
pub fn poll_body(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Poll<Option<Result<Bytes, BodyError>>> {
    loop {
        let step = match decoder.step(buf) {
            Ok(Step::More) => {
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(16 * 1024);
                }
                match poll_read(stream, cx, buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(Ok(0)) => decoder.at_eof(),
                    Poll::Ready(Ok(_)) => continue,
                }
            }
            step => step,
        };
        return match step {
            Ok(Step::Data(data)) => Poll::Ready(Some(Ok(data))),
            Ok(Step::More) => continue,
            Ok(Step::End) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        };
    }
}

/// One read into `buf`'s spare capacity, once the socket has bytes (0: the peer closed).
///
/// A read that leaves room in `buf` has drained the socket, so the socket's readiness is
/// cleared there and then, as nginx does: otherwise the next wait on this socket (the next
/// request on a client connection, the next answer on an upstream one) would start with a read
/// that finds nothing, one system call per socket per request. This is safe against bytes
/// arriving meanwhile: the readiness is cleared only if the reactor has reported nothing new
/// since it was read before the read (tokio's readiness tick), and a report still to come sets
/// it again.
pub fn poll_read(stream: &TcpStream, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    loop {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let room = buf.capacity() - buf.len();
        let mut got = 0;
        let read = stream.try_io(tokio::io::Interest::READABLE, || {
            got = stream.try_read_buf(&mut *buf)?;
            if got > 0 && got < room {
                // Drained: clear the readiness (the bytes are in `buf`, see below).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => return Poll::Ready(Ok(got)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            read => return Poll::Ready(read),
        }
    }
}

/// Reads once into `buf` (0: the peer closed).
pub async fn read(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.is_empty() {
        // Everything read before has been taken off: read to the start of the allocation
        // again, if nothing still holds a piece of it (no allocation either way). Otherwise
        // each read lands further into the buffer until it is spent, and a connection's hot
        // memory is its whole 8 KiB rather than the few hundred bytes of one request: at 256
        // connections, client and upstream, megabytes that no cache holds.
        let _rewound = buf.try_reclaim(buf.capacity() + 1);
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
    std::future::poll_fn(|cx| poll_read(stream, cx, buf)).await
}

/// Writes all of `data`, trying at once and waiting for the socket only when it is full.
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The offset of the CRLF ending the line at the start of `buf`, if it is there.
fn line_end(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    match memchr::memmem::find(&buf[..buf.len().min(MAX_LINE + 2)], b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if buf.len() > MAX_LINE => Err(FramingError::ChunkSize),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, then optional whitespace and extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    if digits == 0 || digits > 15 || !(rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t')) {
        return Err(FramingError::ChunkSize);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        size = size * 16 + u64::from((b as char).to_digit(16).expect("a hex digit"));
    }
    Ok(size)
}

/// Appends a chunk's size line (`<hex>\r\n`).
fn push_chunk_head(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A `Content-Length` value: digits only (no sign, no spaces inside, not empty).
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Writes one chunk of a chunked body (`scratch` holds its size line).
pub async fn write_chunk(stream: &TcpStream, scratch: &mut Vec<u8>, data: &[u8]) -> io::Result<()> {
    scratch.clear();
    push_chunk_head(scratch, data.len());
    write_all(stream, scratch).await?;
    write_all(stream, data).await?;
    write_all(stream, b"\r\n").await
}

/// Appends one header field line.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Where the head at the front of `buf` ends (after its empty line), if it is all there. Lines
/// may end in CRLF or, as httparse also takes, a bare LF.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    for i in memchr::memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
    }
    None
}

/// What a head's framing and connection fields say, gathered as its fields are read (the same
/// for a request and an answer).
#[derive(Debug, Default)]
pub struct Framing {
    /// `Content-Length`, when given.
    pub length: Option<u64>,
    /// A `Transfer-Encoding` was given.
    pub encoded: bool,
    /// ... and it ends in chunked.
    pub chunked: bool,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// A `Connection` value naming further headers to drop.
    names: Option<Bytes>,
}

impl Framing {
    /// Reads one field; `Ok(true)` when it is the connection's own (hop-by-hop, never
    /// forwarded). `Content-Length` is read and forwarded; a malformed or conflicting one is
    /// refused.
    pub fn read(&mut self, name: &HeaderName, value: &[u8]) -> Result<bool, &'static str> {
        self.apply(field_of(name), value)
    }

    /// [`Framing::read`] for a field name as it came (any case), for a reader that does not
    /// make a `HeaderName` of every field.
    pub fn read_raw(&mut self, name: &[u8], value: &[u8]) -> Result<bool, &'static str> {
        self.apply(field(name), value)
    }

    fn apply(&mut self, field: Field, value: &[u8]) -> Result<bool, &'static str> {
        match field {
            Field::ContentLength => {
                let n = content_length(value).ok_or("invalid content-length")?;
                if self.length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length");
                }
                self.length = Some(n);
                Ok(false)
            }
            Field::TransferEncoding => {
                self.encoded = true;
                self.chunked = is_chunked(value);
                Ok(true)
            }
            Field::Connection => {
                self.close |= connection_has(value, "close");
                self.keep_alive |= connection_has(value, "keep-alive");
                if connection_names_headers(value) {
                    self.names = Some(Bytes::copy_from_slice(value));
                }
                Ok(true)
            }
            Field::HopByHop => Ok(true),
            Field::Other => Ok(false),
        }
    }

    /// Drops from `headers` the ones a `Connection` field named.
    pub fn drop_named(&self, headers: &mut HeaderMap) {
        if let Some(connection) = &self.names {
            drop_named_by_connection(headers, connection);
        }
    }

    /// Whether a `Connection` field named `name` (any case) as a header to drop, as
    /// [`Framing::drop_named`] drops it from a map.
    pub fn names(&self, name: &[u8]) -> bool {
        self.names.as_ref().is_some_and(|connection| {
            connection
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
        })
    }
}

/// What a field is to the framing.
#[derive(Debug, PartialEq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    /// Another of the connection's own (RFC 9110 7.6.1), never forwarded: each hop's parser
    /// drops them as it reads a head (and the ones `Connection` names).
    HopByHop,
    Other,
}

/// `name` (any case), told apart by its length first: most fields are none of these.
fn field(name: &[u8]) -> Field {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match name.len() {
        14 if is(b"content-length") => Field::ContentLength,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::HopByHop,
        2 if is(b"te") => Field::HopByHop,
        7 if is(b"trailer") || is(b"upgrade") => Field::HopByHop,
        18 if is(b"proxy-authenticate") => Field::HopByHop,
        19 if is(b"proxy-authorization") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// [`field`] of a parsed name: the standard ones compare as the constants they are, cheaper
/// than their text (the edge reads every request field through this).
fn field_of(name: &HeaderName) -> Field {
    if *name == header::CONTENT_LENGTH {
        Field::ContentLength
    } else if *name == header::TRANSFER_ENCODING {
        Field::TransferEncoding
    } else if *name == header::CONNECTION {
        Field::Connection
    } else if *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::UPGRADE
        || name.as_str() == "keep-alive"
    {
        Field::HopByHop
    } else {
        Field::Other
    }
}

/// Whether `name` is one of the connection's own fields (never forwarded).
#[cfg(test)]
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let by_name = !matches!(field_of(name), Field::ContentLength | Field::Other);
    let by_text = !matches!(
        field(name.as_str().as_bytes()),
        Field::ContentLength | Field::Other
    );
    assert_eq!(by_name, by_text, "{name}: the two readings of a name agree");
    by_name
}

/// Removes the headers a `Connection` value names, other than its own `close` and
/// `keep-alive` tokens (which name headers dropped anyway).
fn drop_named_by_connection(headers: &mut HeaderMap, connection: &[u8]) {
    for token in connection.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            headers.remove(name);
        }
    }
}

/// A response's header lines as an upstream sent them (`name: value\r\n` each, valid field
/// names and values), without the framing and the upstream connection's own fields: what a
/// proxy passes on without making a header map of an answer only to write it out again.
/// Carried in the response's extensions; the edge writes the lines after the map's fields.
#[derive(Debug, Clone)]
pub struct RawHeaders {
    /// The lines.
    pub lines: Bytes,
    /// One of them is `Content-Type: application/json...`.
    pub json: bool,
    /// One of them is `x-request-id`.
    pub request_id: bool,
}

impl RawHeaders {
    /// The fields as `(name, value)` pairs, for a reader that needs them one by one.
    pub fn fields(&self) -> impl Iterator<Item = (HeaderName, header::HeaderValue)> + '_ {
        self.lines.split(|b| *b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = self.lines.slice_ref(line[colon + 1..].trim_ascii());
            Some((name, header::HeaderValue::from_maybe_shared(value).ok()?))
        })
    }
}

/// Whether a `Connection` header value names a header besides `close` and `keep-alive`.
fn connection_names_headers(value: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| {
        let t = t.trim_ascii();
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// Whether a `Connection` header value lists `token` (case-insensitive).
fn connection_has(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a `Transfer-Encoding` value ends in `chunked`, the only coding a message can end
/// with and still be delimited without closing the connection.
fn is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_emptied_buffer_is_read_into_from_its_start_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let start = buf.as_ptr();
        for round in 0..3 {
            tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read(&server, &mut buf).await.unwrap(), 18);
            assert_eq!(buf.as_ptr(), start, "round {round} read into the start");
            let head = buf.split_to(18).freeze();
            drop(head);
        }
        // A piece still held keeps its bytes: the next read goes after them.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"abc")
            .await
            .unwrap();
        read(&server, &mut buf).await.unwrap();
        let held = buf.split_to(3).freeze();
        tokio::io::AsyncWriteExt::write_all(&mut client, b"def")
            .await
            .unwrap();
        read(&server, &mut buf).await.unwrap();
        assert_eq!((&held[..], &buf[..]), (&b"abc"[..], &b"def"[..]));
    }

    /// Decodes `wire` fed in pieces of `piece` bytes; returns the body and what is left over.
    fn decode(mut decoder: Decoder, wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), FramingError> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.step(&mut buf)? {
                Step::Data(b) => body.extend_from_slice(&b),
                Step::End => return Ok((body, buf.to_vec())),
                Step::More if fed < wire.len() => {
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Step::More => match decoder.at_eof()? {
                    Step::End => return Ok((body, buf.to_vec())),
                    _ => unreachable!("at_eof ends or fails"),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split_and_leave_the_next_message() {
        let wire =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, wire.len()] {
            let (body, rest) = decode(Decoder::Chunked(Chunk::Size), wire, piece).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.", "piece {piece}");
            // Whatever came after the message is left where the next reader finds it (all of
            // it once fed whole; the feeder stops at the end when fed in pieces).
            assert!(b"NEXT".starts_with(&rest), "piece {piece}: {rest:?}");
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length_and_close_bodies_at_eof() {
        let (body, rest) = decode(Decoder::Length(5), b"helloNEXT", 100).unwrap();
        assert_eq!((body.as_slice(), rest.as_slice()), (&b"hello"[..], &b"NEXT"[..]));
        let (body, _) = decode(Decoder::Close, b"until the end", 4).unwrap();
        assert_eq!(body, b"until the end");
        assert!(matches!(
            decode(Decoder::Length(10), b"short", 2),
            Err(FramingError::Truncated)
        ));
        assert!(matches!(
            decode(Decoder::Chunked(Chunk::Size), b"5\r\nhel", 2),
            Err(FramingError::Truncated)
        ));
    }

    #[test]
    fn broken_chunk_framing_is_refused() {
        for wire in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5x\r\nhello\r\n",
            b"3\r\nabcXY0\r\n\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            assert!(
                decode(Decoder::Chunked(Chunk::Size), wire, 64).is_err(),
                "{wire:?}"
            );
        }
        let endless = vec![b'1'; MAX_LINE + 10];
        assert!(matches!(
            decode(Decoder::Chunked(Chunk::Size), &endless, 512),
            Err(FramingError::ChunkSize)
        ));
    }

    #[test]
    fn heads_end_at_their_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nBODY"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
    }

    #[test]
    fn content_lengths_are_plain_digits() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"1048576"), Some(1_048_576));
        for bad in [&b""[..], b"-1", b"+1", b"1 2", b"0x10", b"99999999999999999999"] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_heads_are_lowercase_hex() {
        for (len, text) in [(0, "0\r\n"), (10, "a\r\n"), (4096, "1000\r\n"), (255, "ff\r\n")] {
            let mut out = Vec::new();
            push_chunk_head(&mut out, len);
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_told_apart() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
        ] {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!is_hop_by_hop(&header::CONTENT_LENGTH));
        let mut h = HeaderMap::new();
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        assert!(connection_names_headers(b"keep-alive, X-Secret-Hop"));
        assert!(!connection_names_headers(b"Keep-Alive, close"));
        drop_named_by_connection(&mut h, b"keep-alive, X-Secret-Hop");
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_and_transfer_encoding_tokens() {
        assert!(connection_has(b"keep-alive, Close", "close"));
        assert!(!connection_has(b"closed", "close"));
        assert!(is_chunked(b"gzip, Chunked"));
        assert!(!is_chunked(b"chunked, gzip"));
    }

    #[test]
    fn fields_are_told_apart_in_any_case_and_raw_lines_read_back() {
        let mut framing = Framing::default();
        let v = |s: &'static str| s.as_bytes();
        assert_eq!(framing.read_raw(b"Content-Length", v("12")), Ok(false));
        assert_eq!(framing.length, Some(12));
        assert_eq!(
            framing.read_raw(b"CONTENT-LENGTH", v("13")),
            Err("conflicting content-length")
        );
        assert_eq!(
            framing.read_raw(b"Transfer-Encoding", v("gzip, chunked")),
            Ok(true)
        );
        assert!(framing.encoded && framing.chunked);
        assert_eq!(framing.read_raw(b"Connection", v("close, X-Hop")), Ok(true));
        assert!(framing.close);
        assert!(framing.names(b"x-hop") && framing.names(b"X-HOP") && !framing.names(b"x-kept"));
        for own in [
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Authenticate",
            "Proxy-Authorization",
        ] {
            assert_eq!(framing.read_raw(own.as_bytes(), v("x")), Ok(true), "{own}");
        }
        assert_eq!(framing.read_raw(b"Content-Type", v("text/plain")), Ok(false));
        // A parsed name and its text, in any case, are the same field.
        for name in [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
            "content-type",
            "x-custom",
            "tes",
        ] {
            let parsed = field_of(&HeaderName::from_static(name));
            assert_eq!(parsed, field(name.as_bytes()), "{name}");
            assert_eq!(parsed, field(name.to_ascii_uppercase().as_bytes()), "{name}");
        }

        let raw = RawHeaders {
            lines: Bytes::from_static(b"Content-Type: text/plain\r\nx-a:  1 \r\nSet-Cookie: b=2\r\n"),
            json: false,
            request_id: false,
        };
        let fields: Vec<(String, String)> = raw
            .fields()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            fields,
            [
                ("content-type", "text/plain"),
                ("x-a", "1"),
                ("set-cookie", "b=2")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
