//! Small records kept whole on chosen nodes, outside any file's stripes: a STORE or FWD
//! of one segment on one holder, for what must be found without a manifest (the root
//! of a namespace kept in the pool, `fs::journal`). The caller seals what it stores.

use std::sync::Arc;

use super::{Holder, PoolClient, SegmentError};
use crate::proto::{SegmentRead, SegmentRef};

impl PoolClient {
    /// STOREs `bytes` at `offset` of this client's segment `segment` on `holder`:
    /// durable there when `Ok`. Errors: the holder's refusal or the network's.
    pub async fn store_record(
        &self,
        holder: &Holder,
        segment: SegmentRef,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<(), SegmentError> {
        let to = self.reach(holder).await;
        self.io.store(&to, segment, offset, Arc::new(bytes)).await
    }

    /// FWDs `len` bytes at `offset` of this client's segment `segment` on `holder`.
    /// Errors: `Refused` (`NotFound`) when the holder has no such segment or range.
    pub async fn read_record(
        &self,
        holder: &Holder,
        segment: SegmentRef,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, SegmentError> {
        let to = self.reach(holder).await;
        let what = SegmentRead::Range {
            offset,
            len,
            sealed: false,
        };
        self.io.read(&to, segment, what).await
    }
}
