//! The server over stdio: one client, one sandbox. Standard output carries nothing but
//! JSON-RPC messages; a line that is not JSON is answered with a JSON-RPC parse error
//! (the SDK alone would ignore it), one over the size cap with an invalid-request error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rmcp::service::ServerInitializeError;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::handler::Connection;
use crate::{Backend, ServeError};

/// Serves one MCP client on this process's stdin and stdout until the client closes
/// stdin (or goes away) or `shutdown` completes; then the client's sandbox is closed
/// (its container removed), even in the middle of a run.
pub async fn serve_stdio(
    backend: Arc<Backend>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let limit = crate::request_limit(&backend.config);
    let connection = Connection::stdio(backend.clone());
    let cell = connection.cell();
    let (to_server, server_in) = tokio::io::duplex(1 << 20);
    let (server_out, from_server) = tokio::io::duplex(1 << 20);
    let (replies, replies_rx) = mpsc::channel::<Vec<u8>>(64);
    let reader = tokio::spawn(pump_in(tokio::io::stdin(), to_server, replies, limit));
    let writer = tokio::spawn(pump_out(from_server, replies_rx, tokio::io::stdout()));
    let transport = AsyncRwTransport::new(server_in, server_out).with_max_line_length(limit + 1);
    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        started = rmcp::serve_server(connection, transport) => match started {
            Ok(running) => {
                let stop = running.cancellation_token();
                tokio::select! {
                    quit = running.waiting() => {
                        tracing::debug!("the MCP client is gone ({quit:?})");
                    }
                    () = &mut shutdown => {
                        tracing::info!("stopping: closing the sandbox");
                        stop.cancel();
                    }
                }
                Ok(())
            }
            Err(ServerInitializeError::ConnectionClosed(_)) => Ok(()),
            Err(e) => Err(ServeError::Transport(e.to_string())),
        },
        () = &mut shutdown => Ok(()),
    };
    cell.close().await;
    backend.shutdown_pool().await;
    // stdin may be blocked in a read that cannot be cancelled: leave it.
    reader.abort();
    // What the server still had to say (its last replies) reaches stdout first.
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        tracing::debug!("stdout did not drain in time");
    }
    outcome
}

/// One JSON-RPC error reply without an id.
pub(crate) fn error_reply(code: i64, message: &str) -> Vec<u8> {
    let mut line = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// JSON-RPC's "Parse error".
pub(crate) const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's "Invalid Request".
pub(crate) const INVALID_REQUEST: i64 = -32600;

/// Copies client lines to the server, answering lines that are not JSON (and lines
/// over `limit` bytes) itself.
async fn pump_in(
    input: impl AsyncRead + Unpin,
    mut to_server: impl AsyncWrite + Unpin,
    replies: mpsc::Sender<Vec<u8>>,
    limit: usize,
) {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut input)
            .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("reading standard input: {e}");
                return;
            }
        }
        if line.len() > limit && line.last() != Some(&b'\n') {
            // Skip the rest of the oversize line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                match (&mut input)
                    .take(1 << 20)
                    .read_until(b'\n', &mut rest)
                    .await
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) if rest.last() == Some(&b'\n') => break,
                    Ok(_) => {}
                }
            }
            let message = format!("Invalid Request: the message is over the {limit}-byte cap");
            if replies
                .send(error_reply(INVALID_REQUEST, &message))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            let message = format!("Parse error: the line is not JSON ({e})");
            if replies
                .send(error_reply(PARSE_ERROR, &message))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        if to_server.write_all(text).await.is_err() || to_server.write_all(b"\n").await.is_err() {
            return;
        }
    }
}

/// Writes the server's lines and the pump's own replies to `out`, whole lines at a
/// time, until both are done.
async fn pump_out(
    from_server: impl AsyncRead + Unpin,
    mut replies: mpsc::Receiver<Vec<u8>>,
    mut out: impl AsyncWrite + Unpin,
) {
    let mut from_server = BufReader::with_capacity(1 << 16, from_server);
    let mut line = Vec::new();
    let mut server_open = true;
    let mut replies_open = true;
    while server_open || replies_open {
        tokio::select! {
            read = from_server.read_until(b'\n', &mut line), if server_open => {
                match read {
                    Ok(0) | Err(_) => server_open = false,
                    Ok(_) => {
                        if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                }
            }
            reply = replies.recv(), if replies_open => match reply {
                Some(reply) => {
                    if out.write_all(&reply).await.is_err() || out.flush().await.is_err() {
                        return;
                    }
                }
                None => replies_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_that_are_not_json_are_answered_and_the_rest_passed_on() {
        let input: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\nnot json\n\n  \n[1,2\n{\"a\":1}\n";
        let (to_server, mut server_in) = tokio::io::duplex(1 << 16);
        let (tx, mut rx) = mpsc::channel(8);
        pump_in(input, to_server, tx, 1 << 20).await;
        let mut passed = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server_in, &mut passed)
            .await
            .unwrap();
        assert_eq!(
            passed,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n{\"a\":1}\n"
        );
        for _ in 0..2 {
            let reply: serde_json::Value =
                serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
            assert_eq!(reply["error"]["code"], PARSE_ERROR);
            assert!(reply["id"].is_null());
        }
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn an_oversize_line_is_refused_and_the_next_one_goes_through() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\n{\"ok\":true}\n");
        let (to_server, mut server_in) = tokio::io::duplex(1 << 16);
        let (tx, mut rx) = mpsc::channel(8);
        pump_in(&input[..], to_server, tx, 1024).await;
        let mut passed = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server_in, &mut passed)
            .await
            .unwrap();
        assert_eq!(passed, "{\"ok\":true}\n");
        let reply: serde_json::Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], INVALID_REQUEST);
    }

    #[tokio::test]
    async fn output_is_whole_lines_from_both_sources() {
        let server: &[u8] = b"{\"id\":1}\n{\"id\":2}\n";
        let (tx, rx) = mpsc::channel(8);
        tx.send(error_reply(PARSE_ERROR, "bad")).await.unwrap();
        drop(tx);
        let mut out = Vec::new();
        pump_out(server, rx, &mut out).await;
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for line in lines {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
}
