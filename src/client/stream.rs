//! Whole files as streams: `put` stores a reader's bytes as a new file, stripes in
//! flight in parallel; `get` writes a file out, prefetching stripes.

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ClientError, Manifest, PoolClient};

impl PoolClient {
    /// Streams `src` into the pool as a new file, with at most `stripes_in_flight`
    /// stripes buffered; `progress` gets the bytes stored so far. A failed put removes
    /// what it had stored (as far as the holders can be reached).
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        src: R,
        progress: impl Fn(u64),
    ) -> Result<Manifest, ClientError> {
        let m = self.new_file().await?;
        let mut stored = m.clone();
        match self.put_stripes(src, &mut stored, progress).await {
            Ok(()) => Ok(stored),
            Err(e) => {
                // Nothing of a file that is not in the catalog may stay on the nodes
                // (it would count against this member's quota for ever).
                if let Err(clean) = self.delete(&m).await {
                    log::warn!("could not remove the segments of a failed put: {clean}");
                }
                Err(e)
            }
        }
    }

    async fn put_stripes<R: AsyncRead + Unpin>(
        &self,
        mut src: R,
        m: &mut Manifest,
        progress: impl Fn(u64),
    ) -> Result<(), ClientError> {
        let stripe_size = m.place.layout.stripe_size() as usize;
        let mut in_flight = FuturesOrdered::new();
        let mut j = 0u64;
        let mut eof = false;
        let mut stored = 0u64;
        let mut failed = None;
        while !eof || !in_flight.is_empty() {
            if !eof && in_flight.len() < self.cfg.stripes_in_flight {
                let mut buf = vec![0u8; stripe_size];
                let n = match read_full(&mut src, &mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        failed = Some(e.into());
                        eof = true;
                        continue;
                    }
                };
                eof = n < stripe_size;
                if n > 0 {
                    buf.truncate(n);
                    m.size += n as u64;
                    let place = m.place.clone();
                    in_flight.push_back(async move {
                        let record = self.write_stripe(&place, (j, 0), &buf).await?;
                        Ok::<_, ClientError>((j, buf.len() as u64, record))
                    });
                    j += 1;
                }
                continue;
            }
            match in_flight.next().await {
                Some(Ok((j, n, record))) => {
                    m.set_stripe(j, record);
                    stored += n;
                    progress(stored);
                }
                Some(Err(e)) => {
                    // Read no further, but let the stores in flight finish: a cleanup
                    // must not race a store that is still on its way.
                    eof = true;
                    failed.get_or_insert(e);
                }
                None => {}
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Streams a whole file out of the pool into `dst`, prefetching stripes ahead.
    pub async fn get<W: AsyncWrite + Unpin>(
        &self,
        m: &Manifest,
        mut dst: W,
        progress: impl Fn(u64),
    ) -> Result<(), ClientError> {
        let mut done = 0u64;
        let mut stripes = futures::stream::iter(0..m.place.layout.stripe_count(m.size))
            .map(|j| self.read_stripe(&m.place, j, m.stripe_len(j), m.stripe(j)))
            .buffered(self.cfg.stripes_in_flight);
        while let Some(data) = stripes.next().await {
            let data = data?.to_vec();
            dst.write_all(&data).await?;
            done += data.len() as u64;
            progress(done);
        }
        dst.flush().await?;
        Ok(())
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(src: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = src.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{bytes, pool, put, SHARD};

    #[tokio::test]
    async fn a_file_put_comes_back_whole_with_get() {
        for sealed in [false, true] {
            let (_, client) = pool(3, sealed);
            let data = bytes(9 * SHARD as usize + 17, 1);
            let m = put(&client, &data).await;
            assert_eq!(m.size, data.len() as u64);
            let mut back = Vec::new();
            client.get(&m, &mut back, |_| {}).await.expect("get");
            assert_eq!(back, data, "sealed {sealed}");
        }
    }

    #[tokio::test]
    async fn a_failed_put_leaves_nothing_on_the_nodes() {
        // Room for one shard per node: the first stripe is stored, a later one is not.
        let (mem, client) = pool(2, false);
        mem.set_capacity(1, SHARD as u64 + SHARD as u64 / 2);
        mem.set_capacity(2, SHARD as u64 + SHARD as u64 / 2);
        client
            .put(&bytes(3 * SHARD as usize, 2)[..], |_| {})
            .await
            .expect_err("a full pool");
        assert_eq!(mem.used(1) + mem.used(2), 0);
    }
}
