//! Lean clients: what the sidecar's hop costs without a client library's
//! own machinery (pools, buffer layers, connection tasks) on top.
//!
//! - [`RawHttp`]: HTTP/1.1 keep-alive over the Unix socket, one connection
//!   per worker, the request written in one `write`, the reply parsed
//!   from its status line and `content-length`.
//! - [`RawGrpc`]: gRPC straight on the `h2` crate over the Unix socket, one
//!   HTTP/2 connection per worker: a request is one HEADERS and one DATA
//!   frame, the reply read to its trailers. The only task besides the
//!   caller is h2's connection driver, which HTTP/2 needs anyway.
//! - [`RawSse`]: a server-sent events stream read line by line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// Connects to a Unix socket, retrying (for at most 30 s) while its
/// listen backlog is full: the fan-out rows connect thousands at once.
pub async fn connect(socket: &std::path::Path) -> Result<UnixStream> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// One HTTP/1.1 connection per worker, made on its first request.
pub struct RawHttp {
    socket: PathBuf,
    conns: Vec<Mutex<Option<BufReader<UnixStream>>>>,
}

/// A reply: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RawHttp {
    pub fn new(socket: PathBuf, workers: usize) -> RawHttp {
        RawHttp {
            socket,
            conns: (0..workers).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Sends one request on worker `w`'s connection and reads the reply.
    /// `json` says whether `body` is JSON (else it goes as bytes).
    pub async fn call(
        &self,
        w: usize,
        method: &str,
        path: &str,
        json: bool,
        body: &[u8],
    ) -> Result<Reply> {
        let mut request = Vec::with_capacity(128 + body.len());
        request.extend_from_slice(method.as_bytes());
        request.push(b' ');
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nhost: outrigger\r\n");
        if !body.is_empty() || method != "GET" {
            let kind = if json {
                "application/json"
            } else {
                "application/octet-stream"
            };
            request.extend_from_slice(
                format!("content-type: {kind}\r\ncontent-length: {}\r\n", body.len()).as_bytes(),
            );
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);

        let mut slot = self.conns[w].lock().await;
        if slot.is_none() {
            *slot = Some(BufReader::new(connect(&self.socket).await?));
        }
        let conn = slot.as_mut().expect("connected");
        let result = exchange(conn, &request).await;
        if result.is_err() {
            // Never reuse a connection left mid-reply.
            *slot = None;
        }
        result
    }
}

async fn exchange(conn: &mut BufReader<UnixStream>, request: &[u8]) -> Result<Reply> {
    conn.get_mut().write_all(request).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await?;
    Ok(Reply { status, body })
}

/// A server-sent events stream on a connection of its own.
pub struct RawSse {
    conn: BufReader<UnixStream>,
    line: String,
}

impl RawSse {
    pub async fn open(socket: &std::path::Path, path: &str) -> Result<RawSse> {
        let mut conn = BufReader::new(connect(socket).await?);
        conn.get_mut()
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nhost: outrigger\r\naccept: text/event-stream\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        ensure!(line.contains(" 200 "), "subscribe: {line:?}");
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Ok(RawSse { conn, line })
    }

    /// The next `data:` line. Each event is one chunk of the chunked
    /// body, so a chunk's size line is never inside a `data:` line.
    pub async fn next_data(&mut self) -> Result<&str> {
        loop {
            self.line.clear();
            if self.conn.read_line(&mut self.line).await? == 0 {
                bail!("the event stream ended");
            }
            if self.line.starts_with("data:") {
                return Ok(self.line["data:".len()..].trim());
            }
        }
    }
}

/// One HTTP/2 connection per worker for gRPC, made on its first call.
pub struct RawGrpc {
    socket: PathBuf,
    conns: Vec<Mutex<Option<h2::client::SendRequest<Bytes>>>>,
}

impl RawGrpc {
    pub fn new(socket: PathBuf, workers: usize) -> RawGrpc {
        RawGrpc {
            socket,
            conns: (0..workers).map(|_| Mutex::new(None)).collect(),
        }
    }

    async fn sender(&self, w: usize) -> Result<h2::client::SendRequest<Bytes>> {
        let mut slot = self.conns[w].lock().await;
        if let Some(send) = slot.as_ref() {
            return Ok(send.clone());
        }
        let io = connect(&self.socket).await?;
        let (send, connection) = h2::client::handshake(io).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *slot = Some(send.clone());
        Ok(send)
    }

    /// One unary call: `path` is `/package.Service/Method`.
    pub async fn call<Req, Resp>(&self, w: usize, path: &str, req: &Req) -> Result<Resp>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut send = match self.sender(w).await?.ready().await {
            Ok(send) => send,
            Err(err) => {
                *self.conns[w].lock().await = None;
                return Err(err.into());
            }
        };
        let (response, mut stream) = send.send_request(grpc_request(path)?, false)?;
        stream.send_data(grpc_frame(req)?, true)?;
        let response = response.await?;
        let status = grpc_status(response.headers());
        let mut body = response.into_body();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let status = match status {
            Some(status) => status,
            None => body
                .trailers()
                .await?
                .and_then(|t| grpc_status(&t))
                .context("no grpc-status")?,
        };
        ensure!(status == "0", "grpc-status {status}");
        ensure!(data.len() >= 5, "no message");
        Ok(Resp::decode(&data[5..])?)
    }
}

/// A server-streaming call's replies, read frame by frame.
pub struct RawGrpcStream {
    body: h2::RecvStream,
    buf: BytesMut,
}

impl RawGrpcStream {
    /// The next message of the stream.
    pub async fn next<M: prost::Message + Default>(&mut self) -> Result<M> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
                if self.buf.len() >= 5 + len {
                    let frame = self.buf.split_to(5 + len);
                    return Ok(M::decode(&frame[5..])?);
                }
            }
            match self.body.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None => bail!("the stream ended"),
            }
        }
    }
}

impl RawGrpc {
    /// A server-streaming call on a connection of its own.
    pub async fn stream<Req: prost::Message>(
        socket: &std::path::Path,
        path: &str,
        req: &Req,
    ) -> Result<RawGrpcStream> {
        let io = connect(socket).await?;
        let (send, connection) = h2::client::handshake(io).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        RawGrpc::stream_on(send, path, req).await
    }

    /// A server-streaming call as one stream of an HTTP/2 connection.
    pub async fn stream_on<Req: prost::Message>(
        send: h2::client::SendRequest<Bytes>,
        path: &str,
        req: &Req,
    ) -> Result<RawGrpcStream> {
        let mut send = send.ready().await?;
        let (response, mut stream) = send.send_request(grpc_request(path)?, false)?;
        stream.send_data(grpc_frame(req)?, true)?;
        let response = response.await?;
        ensure!(response.status() == 200, "status {}", response.status());
        Ok(RawGrpcStream {
            body: response.into_body(),
            buf: BytesMut::new(),
        })
    }
}

fn grpc_request(path: &str) -> Result<http::Request<()>> {
    Ok(http::Request::post(format!("http://outrigger{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?)
}

/// A message with gRPC's 5-byte prefix (uncompressed, length).
fn grpc_frame<M: prost::Message>(message: &M) -> Result<Bytes> {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(len as u32);
    message.encode(&mut frame)?;
    Ok(frame.freeze())
}

fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
