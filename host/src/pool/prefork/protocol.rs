//! The wire format between the prefork parent and a child: frames over the child's
//! stdin (parent → child) and stdout (child → parent).
//!
//! A frame is a `u32` little-endian length, then that many bytes of JSON: one
//! [`ToChild`] or [`FromChild`] value. JSON keeps the format readable in a hex dump and
//! reuses the serde forms `RunRequest` and `Execution` already have; it costs a few µs per
//! job (measured in `benches/prefork.rs`), small next to instantiating a guest. Module
//! bytes travel base64-encoded, once per child and module version.
//!
//! The conversation:
//! ```text
//! child:  Ready { pid, version }                   (once, when its engine is built)
//! parent: Load { hash, bytes }                     (first time this child needs `hash`)
//! parent: Run { seq, hash, request }               (one per job)
//! parent: Cancel { seq }                           (stop that job; its Done follows)
//! child:  Done { seq, execution, peak_rss_bytes } (one per Run, in completion order)
//! ```
//! The parent closes the child's stdin to stop it; the child exits at once on EOF.

use std::io;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::model::Execution;
use crate::sandbox::RunRequest;

/// Bumped when frames change incompatibly; the child refuses another version (a binary
/// replaced on disk while the worker runs would otherwise speak a different protocol).
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest frame either side accepts (a task file of up to ~750 MiB, base64-encoded).
pub const MAX_FRAME: usize = 1 << 30;

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum ToChild {
    /// Load a module version. Sent before the first `Run` that needs it; frames are
    /// ordered, so the child has it (or the reason it failed) when that `Run` arrives.
    Load {
        /// The module's content hash (`TaskModule::hash`).
        hash: String,
        /// The wasm bytes.
        #[serde(with = "base64_bytes")]
        bytes: Arc<[u8]>,
    },
    /// Run one job.
    Run {
        /// The parent's job number, echoed in `Done`.
        seq: u64,
        /// Which loaded module.
        hash: String,
        /// The job (boxed: it is most of the frame's size; same wire form).
        request: Box<RunRequest>,
    },
    /// Stop one running job (remote control's terminate, or the parent no longer waits
    /// for it) at its next fuel slice; its `Done` (`WorkerLost`, "cancelled") follows.
    /// The child's other jobs are untouched. Unknown or finished `seq`s are ignored.
    Cancel {
        /// The `seq` of its `Run`.
        seq: u64,
    },
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum FromChild {
    /// The child's engine is built; it is ready for jobs.
    Ready {
        /// Its process id.
        pid: u32,
        /// Its `sprout` version.
        version: String,
    },
    /// A job ended.
    Done {
        /// The `seq` of its `Run`.
        seq: u64,
        /// How it ended.
        execution: Execution,
        /// The child's peak resident memory so far (`VmHWM`), when the parent asked for
        /// it (`sprout child --report-memory`): the pooling allocator returns a job's
        /// linear memory when it ends, so the peak is what shows that a job grew the
        /// child.
        peak_rss_bytes: Option<u64>,
    },
}

/// Encodes one frame: length prefix and JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message).expect("frames serialise to JSON");
    let len = u32::try_from(frame.len() - 4).expect("frame under 4 GiB");
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame
}

/// Reads one frame. `Ok(None)` on end of stream at a frame boundary (the other side
/// closed the pipe).
///
/// # Errors
/// An I/O error, a truncated or oversized frame, or JSON that is not a `T`.
///
/// # Cancel safety
/// Not cancel safe: a frame half read when the future is dropped is lost, and the
/// stream is out of step. Each side reads in one dedicated loop.
pub async fn read_frame<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `Arc<[u8]>` as a base64 string (a third larger than the bytes; a JSON array of
/// numbers would be about four times larger).
mod base64_bytes {
    use std::sync::Arc;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(bytes: &Arc<[u8]>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[u8]>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Into::into)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, TimeLimitKind};
    use std::time::Duration;

    async fn roundtrip<T: Serialize + DeserializeOwned>(message: &T) -> T {
        let frame = encode(message);
        assert_eq!(
            u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        let mut reader = &frame[..];
        let mut buf = Vec::new();
        let back = read_frame(&mut reader, &mut buf).await.unwrap().unwrap();
        assert!(
            read_frame::<T>(&mut reader, &mut buf)
                .await
                .unwrap()
                .is_none()
        );
        back
    }

    #[tokio::test]
    async fn frames_roundtrip() {
        let bytes: Arc<[u8]> = (0..=255u8).collect::<Vec<_>>().into();
        match roundtrip(&ToChild::Load {
            hash: "h".into(),
            bytes: bytes.clone(),
        })
        .await
        {
            ToChild::Load { hash, bytes: back } => {
                assert_eq!(hash, "h");
                assert_eq!(back, bytes);
            }
            other => panic!("{other:?}"),
        }
        let request = RunRequest::new("fib", vec![serde_json::json!(30)]);
        match roundtrip(&ToChild::Run {
            seq: 7,
            hash: "h".into(),
            request: Box::new(request.clone()),
        })
        .await
        {
            ToChild::Run {
                seq, request: back, ..
            } => {
                assert_eq!(seq, 7);
                assert_eq!(back.limits, request.limits);
                assert_eq!(back.args, request.args);
            }
            other => panic!("{other:?}"),
        }
        let execution = Execution {
            outcome: Outcome::TimeLimit {
                kind: TimeLimitKind::Hard,
                limit: Duration::from_millis(300),
            },
            fuel_used: 12,
            duration: Duration::from_millis(301),
            logs: "log".into(),
            peak_memory_bytes: 65536,
        };
        match roundtrip(&FromChild::Done {
            seq: 1,
            execution: execution.clone(),
            peak_rss_bytes: Some(6),
        })
        .await
        {
            FromChild::Done {
                execution: back, ..
            } => assert_eq!(back, execution),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_are_errors() {
        let frame = encode(&FromChild::Ready {
            pid: 1,
            version: "x".into(),
        });
        let mut reader = &frame[..frame.len() - 1];
        let err = read_frame::<FromChild>(&mut reader, &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let huge = (u32::MAX).to_le_bytes();
        let err = read_frame::<FromChild>(&mut &huge[..], &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
