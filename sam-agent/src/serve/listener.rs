//! [`JsonErrorListener`]: a TCP listener whose connections answer hyper's own
//! refusals with a JSON [`ErrorBody`](crate::wire::ErrorBody), as every other
//! failure of the SDK's servers is.
//!
//! hyper answers a request it cannot parse before any route or middleware sees it:
//! a URL longer than 64 KiB gets `414`, headers over its buffer `431`, a malformed
//! request line `400`, each with an empty body. The connections of this listener
//! watch what hyper writes and replace such a response head (a `4xx` or `5xx`
//! status, `content-length: 0`, no content type) with the same status and headers
//! and an `ErrorBody`. Responses of the router always carry a body and a content
//! type (the [`json_errors`](crate::serve::json_errors) middleware sees to that), so
//! nothing else is touched.
//!
//! ```no_run
//! # async fn serve() -> std::io::Result<()> {
//! use sam_agent::serve::JsonErrorListener;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let router = axum::Router::new();
//! axum::serve(JsonErrorListener::new(listener), router).await
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{ApiError, classify_status};

/// A [`TcpListener`] for [`axum::serve()`] whose connections answer hyper's own
/// refusals as JSON; see the [module docs](self).
#[derive(Debug)]
pub struct JsonErrorListener {
    inner: TcpListener,
}

impl JsonErrorListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl axum::serve::Listener for JsonErrorListener {
    type Io = JsonErrorStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (
            JsonErrorStream {
                inner: stream,
                pending: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A replacement being written in place of `reported` bytes hyper asked to write.
#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    written: usize,
    reported: usize,
}

/// A connection of a [`JsonErrorListener`].
#[derive(Debug)]
pub struct JsonErrorStream {
    inner: TcpStream,
    pending: Option<Pending>,
}

/// The length of a response head at the start of `buf` that hyper wrote for a
/// request it refused by itself, if it is one.
fn refusal_head(buf: &[u8]) -> Option<(usize, u16)> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let empty = head.contains("\r\ncontent-length: 0\r\n");
    let typed = head.contains("\r\ncontent-type:");
    (empty && !typed).then_some((end, status))
}

/// The message of a refusal hyper made by itself.
fn refusal_message(status: u16) -> &'static str {
    match status {
        414 => "the request's URL is too long (at most 64 KiB)",
        431 => "the request's headers are too large",
        400 => "the request is not valid HTTP",
        _ => "the request was refused before it could be read",
    }
}

/// The response head `head` (hyper's, with an empty body) with a JSON error body.
fn with_json_body(head: &[u8], status: u16) -> Vec<u8> {
    let error = ApiError::new(classify_status(status), refusal_message(status));
    let body = serde_json::to_vec(error.body()).unwrap_or_else(|_| b"{}".to_vec());
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            !lower.starts_with("content-length:") && !lower.starts_with("content-type:")
        })
        .collect();
    let length = format!("content-length: {}", body.len());
    lines.push("content-type: application/json");
    lines.push(&length);
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

impl JsonErrorStream {
    /// Writes the pending replacement; `Ready` with the length hyper asked to write
    /// once all of it is out.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some(pending) = &mut self.pending {
            if pending.written == pending.bytes.len() {
                let reported = pending.reported;
                self.pending = None;
                return Poll::Ready(Ok(reported));
            }
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &pending.bytes[pending.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            pending.written += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl AsyncRead for JsonErrorStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonErrorStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // hyper writes the same buffer again until it is accepted, so a replacement
        // under way stands for it.
        if self.pending.is_none()
            && let Some((end, status)) = refusal_head(buf)
        {
            self.pending = Some(Pending {
                bytes: with_json_body(&buf[..end], status),
                written: 0,
                reported: end,
            });
        }
        if self.pending.is_some() {
            return self.drive(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Whole buffers, so a response head arrives in one `poll_write`.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_untyped_failures_are_rewritten() {
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(refusal_head(head), Some((head.len(), 414)));
        let mut with_more = head.to_vec();
        with_more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(refusal_head(&with_more), Some((head.len(), 414)));
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"not http",
        ] {
            assert_eq!(refusal_head(other), None, "{}", String::from_utf8_lossy(other));
        }
        let rewritten = with_json_body(head, 414);
        let text = String::from_utf8(rewritten).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("date: x"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["category"], "invalid_config");
    }
}
