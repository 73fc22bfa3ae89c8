//! Byte all-gather: every rank contributes a byte string of any length and
//! every rank receives all of them, in rank order.
//!
//! The one helper for the small exchanges of start-up and set-up: host
//! names in topology sensing, the shared-memory transport's host keys and
//! status reports, the serving ranks' device profiles. Two all-gathers of
//! the communicator: the lengths first, then every contribution padded to
//! the longest (an all-gather moves equal chunks), cut back to its length on
//! receipt. Padding makes it a poor fit for bulk data of very unequal sizes;
//! it is meant for messages of a few kilobytes.

use hetero_core::{Collective, Error, HostSlice, HostSliceMut, Result, Tensor, TensorMut};

use crate::error::CollectiveError;

/// Every rank's `mine`, indexed by rank (this rank's own included).
/// Collective: every rank of `comm` calls it, in the same order as its
/// other collectives. A peer that announces a negative length is a
/// [`CollectiveError::Protocol`] error; lengths whose padded total does not
/// fit in memory addresses are [`Error::InvalidInput`].
pub async fn all_gather_bytes(comm: &dyn Collective, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
    let n = comm.size();
    let my_len = i64::try_from(mine.len()).map_err(|_| {
        Error::invalid(
            "all_gather_bytes",
            format!("{} bytes do not fit a 64-bit length", mine.len()),
        )
    })?;
    let mut lens = vec![0i64; n];
    comm.all_gather(
        Tensor::Host(HostSlice::new(std::slice::from_ref(&my_len))),
        TensorMut::Host(HostSliceMut::new(&mut lens)),
    )
    .await?;
    let lens = lens
        .iter()
        .enumerate()
        .map(|(peer, &len)| {
            usize::try_from(len).map_err(|_| {
                Error::from(CollectiveError::Protocol {
                    peer,
                    reason: format!("announced a byte length of {len}"),
                })
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let width = lens.iter().copied().max().unwrap_or(0);
    // Every rank holds the same lengths, so every rank skips the second
    // all-gather alike when there is nothing to move.
    if width == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    let total = width.checked_mul(n).ok_or_else(|| {
        Error::invalid(
            "all_gather_bytes",
            format!("{n} contributions of {width} bytes overflow the address space"),
        )
    })?;
    let mut padded = mine.to_vec();
    padded.resize(width, 0);
    let mut all = vec![0u8; total];
    comm.all_gather(
        Tensor::Host(HostSlice::new(&padded)),
        TensorMut::Host(HostSliceMut::new(&mut all)),
    )
    .await?;
    Ok(all
        .chunks(width)
        .zip(&lens)
        .map(|(chunk, &len)| chunk[..len].to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cost::Algorithm;
    use crate::flat::FlatCollective;
    use crate::transport::{InProcessTransport, Transport};

    /// Run `f(comm)` on every rank of an in-process group of `n`.
    fn on_ranks<F, Fut>(n: usize, f: F) -> Vec<Result<Vec<Vec<u8>>>>
    where
        F: Fn(FlatCollective) -> Fut + Send + Sync + 'static + Clone,
        Fut: Future<Output = Result<Vec<Vec<u8>>>> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let handles: Vec<_> = InProcessTransport::group(n)
                .into_iter()
                .map(|t| {
                    let t: Arc<dyn Transport> = Arc::new(t);
                    let f = f.clone();
                    tokio::spawn(f(FlatCollective::unmeasured(t, Algorithm::Ring)))
                })
                .collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("rank task"));
            }
            out
        })
    }

    fn contribution(rank: usize) -> Vec<u8> {
        // Unequal lengths, rank 1's empty, bytes that say whose they are.
        let len = [6, 0, 3, 17, 1][rank];
        (0..len).map(|i| (rank * 31 + i) as u8).collect()
    }

    #[test]
    fn every_rank_receives_every_contribution_unequal_lengths() {
        let n = 5;
        let results = on_ranks(n, |comm| async move {
            let mine = contribution(comm.rank());
            all_gather_bytes(&comm, &mine).await
        });
        let want: Vec<Vec<u8>> = (0..n).map(contribution).collect();
        assert_eq!(want[1].len(), 0, "the test covers an empty contribution");
        for (rank, got) in results.into_iter().enumerate() {
            let got = got.expect("all_gather_bytes");
            assert_eq!(got, want, "rank {rank}");
        }
    }

    #[test]
    fn all_empty_contributions_give_empty_vectors() {
        for got in on_ranks(3, |comm| async move { all_gather_bytes(&comm, &[]).await }) {
            assert_eq!(got.expect("all_gather_bytes"), vec![Vec::<u8>::new(); 3]);
        }
    }

    #[test]
    fn one_rank_gets_its_own_bytes() {
        let got = on_ranks(
            1,
            |comm| async move { all_gather_bytes(&comm, b"alone").await },
        );
        assert_eq!(got.len(), 1);
        assert_eq!(
            got.into_iter().next().map(|r| r.expect("all_gather_bytes")),
            Some(vec![b"alone".to_vec()])
        );
    }

    #[test]
    fn repeated_exchanges_stay_in_order() {
        let results = on_ranks(4, |comm| async move {
            let r = comm.rank();
            let first = all_gather_bytes(&comm, &vec![r as u8; r + 1]).await?;
            let second = all_gather_bytes(&comm, format!("rank {r}").as_bytes()).await?;
            Ok(first.into_iter().chain(second).collect())
        });
        for got in results {
            let got = got.expect("all_gather_bytes");
            assert_eq!(
                got[..4],
                [vec![0], vec![1, 1], vec![2, 2, 2], vec![3, 3, 3, 3]]
            );
            assert_eq!(
                got[4..],
                [
                    b"rank 0".to_vec(),
                    b"rank 1".to_vec(),
                    b"rank 2".to_vec(),
                    b"rank 3".to_vec()
                ]
            );
        }
    }
}
