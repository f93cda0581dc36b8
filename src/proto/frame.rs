//! Length-prefixed frames (u32 big-endian length, then the message) with a hard maximum,
//! and bounded raw bodies that follow a header.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{MAX_BODY, MAX_FRAME};

/// Why a frame or body could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    FrameTooLarge(u32),
    #[error("body of {0} bytes exceeds the maximum of {MAX_BODY}")]
    BodyTooLarge(u32),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. A clean end of stream before the length is `Closed`.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame (not flushed: callers batch a header with its body).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(FrameError::FrameTooLarge(u32::MAX))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Reads a raw body of `len` bytes that a header announced, refusing oversized ones
/// before allocating.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> Result<Vec<u8>, FrameError> {
    if len > MAX_BODY {
        return Err(FrameError::BodyTooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        let mut rd = &buf[..];
        assert_eq!(read_frame(&mut rd).await.unwrap(), b"hello");
        assert!(matches!(read_frame(&mut rd).await, Err(FrameError::Closed)));

        let huge = u32::MAX.to_be_bytes(); // a frame claiming 4 GiB
        let mut rd = &huge[..];
        assert!(matches!(
            read_frame(&mut rd).await,
            Err(FrameError::FrameTooLarge(_))
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let bytes = [0u8, 0, 0, 10, 1, 2, 3];
        let mut rd = &bytes[..];
        assert!(matches!(read_frame(&mut rd).await, Err(FrameError::Io(_))));
    }
}
