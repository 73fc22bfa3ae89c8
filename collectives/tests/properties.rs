//! Property test: every flat all-reduce algorithm, on random rank counts
//! (powers of two and not, so the fold of the recursive algorithms runs),
//! lengths, dtypes and reduce ops, equals the naive single-process result on
//! every rank.

mod common;

use common::*;
use hetero_collectives::Algorithm;
use hetero_core::{Collective, DType, ReduceOp, TensorMut};
use proptest::prelude::*;

const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::Ring,
    Algorithm::Tree,
    Algorithm::RecursiveDoubling,
    Algorithm::HalvingDoubling,
    Algorithm::Auto,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_algorithm_equals_the_naive_reduction(
        n in 1usize..=9,
        len in 0usize..=257,
        dtype in 0usize..DType::ALL.len(),
        op in 0usize..ReduceOp::ALL.len(),
        algorithm in 0usize..ALGORITHMS.len(),
        seed in 0usize..1000,
    ) {
        let (dtype, op, algorithm) = (DType::ALL[dtype], ReduceOp::ALL[op], ALGORITHMS[algorithm]);
        let want = naive(dtype, op, n, len, seed);
        let results = run_group(inproc(n), move |t| async move {
            let rank = t.rank();
            let mut d = data(dtype, rank, len, seed);
            flat(t, algorithm)
                .all_reduce(TensorMut::Host(d.host_mut()?), op)
                .await?;
            Ok(d)
        });
        for (rank, r) in results.into_iter().enumerate() {
            let got = r.map_err(|e| TestCaseError::fail(format!("rank {rank}: {e}")))?;
            prop_assert_eq!(got.bytes(), want.bytes(), "rank {} of {} {} {} len {} {:?}",
                rank, n, dtype, op, len, algorithm);
        }
    }
}
