//! Captured guest stdout/stderr: bounded in-memory buffers, never the host's own stdio.
//!
//! Writes past the cap are dropped (the guest is not trapped: a chatty task should not
//! fail because of its logging) and the overflow is remembered, so a WASI command whose
//! stdout *is* its result can be reported as "output too large".

use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

/// A bounded, shareable output buffer usable as a WASI stdout or stderr.
#[derive(Debug, Clone)]
pub struct CapturedOutput(Arc<Mutex<Buffer>>);

impl CapturedOutput {
    /// A buffer keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        CapturedOutput(Arc::new(Mutex::new(Buffer {
            bytes: Vec::new(),
            cap,
            overflowed: false,
        })))
    }

    /// Empties the buffer for the next job of a reused instance, keeping at most `cap`
    /// bytes from now on (the guest's stdio streams share this buffer, so they write
    /// into the new job's capture).
    pub fn reset(&self, cap: usize) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buf.bytes.clear();
        buf.cap = cap;
        buf.overflowed = false;
    }

    /// Appends `data`, keeping what fits.
    pub fn append(&self, data: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = buf.cap.saturating_sub(buf.bytes.len());
        if data.len() > room {
            buf.overflowed = true;
        }
        let keep = data.len().min(room);
        buf.bytes.extend_from_slice(&data[..keep]);
    }

    /// What was captured.
    pub fn contents(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .clone()
    }

    /// True when something was dropped because the buffer was full.
    pub fn overflowed(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).overflowed
    }

    /// The captured text (lossy UTF-8), with a marker when it was truncated.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::from_utf8_lossy(&buf.bytes).into_owned();
        if buf.overflowed {
            text.push_str("\n[output truncated]\n");
        }
        text
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

/// How much a guest may write in one `write` call (WASI's "check-write" permit).
const WRITE_PERMIT: usize = 64 << 10;

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_fits_and_marks_overflow() {
        let out = CapturedOutput::new(5);
        out.append(b"abc");
        assert!(!out.overflowed());
        out.append(b"defg");
        assert!(out.overflowed());
        assert_eq!(out.contents(), b"abcde");
        assert!(out.text().ends_with("[output truncated]\n"));
    }
}
