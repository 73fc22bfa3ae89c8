//! Every flat operation x dtype x reduce op x rank count 1..=8 x awkward sizes,
//! against a naive single-process reduction, on the in-process transport.

mod common;

use std::time::Duration;

use common::*;
use hetero_collectives::staging::Staged;
use hetero_collectives::{Algorithm, InProcessTransport};
use hetero_core::{
    Backend, Collective, DType, DynDevice, Error, ReduceOp, Tensor, TensorMut, chunk_range,
};

fn check(what: &str, got: &Staged, want: &Staged) -> hetero_core::Result<()> {
    if got.bytes() == want.bytes() {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("got {:?}, want {:?}", got.host(), want.host()),
        ))
    }
}

#[test]
fn every_op_dtype_reduce_op_rank_count_and_size() {
    for n in 1..=8usize {
        let results = run_group(inproc(n), move |t| async move {
            let rank = t.rank();
            let comms = [
                flat(t.clone(), Algorithm::Ring),
                flat(t.clone(), Algorithm::Tree),
                flat(t.clone(), Algorithm::RecursiveDoubling),
                flat(t.clone(), Algorithm::HalvingDoubling),
                flat(t.clone(), Algorithm::Auto),
            ];
            let mut checked = 0usize;
            for dtype in DType::ALL {
                for op in ReduceOp::ALL {
                    for (si, &len) in SIZES.iter().enumerate() {
                        let want = naive(dtype, op, n, len, si);
                        let ctx = format!("n={n} rank={rank} {dtype} {op} len={len}");
                        for c in &comms {
                            let mut d = data(dtype, rank, len, si);
                            c.all_reduce(TensorMut::Host(d.host_mut()?), op).await?;
                            check(&format!("all_reduce {ctx} {c:?}"), &d, &want)?;
                            checked += 1;
                        }
                        let c = &comms[0];
                        // reduce_scatter
                        let own = chunk_range(len, n, rank);
                        let inp = data(dtype, rank, len, si);
                        let mut out = Staged::zeroed(dtype, own.len());
                        c.reduce_scatter(
                            Tensor::Host(inp.host()?),
                            TensorMut::Host(out.host_mut()?),
                            op,
                        )
                        .await?;
                        let es = dtype.size_bytes();
                        let mut want_chunk = Staged::zeroed(dtype, own.len());
                        want_chunk
                            .bytes_mut()
                            .copy_from_slice(&want.bytes()[own.start * es..own.end * es]);
                        check(&format!("reduce_scatter {ctx}"), &out, &want_chunk)?;
                        // reduce to every root
                        let root = (si + 1) % n;
                        let mut d = data(dtype, rank, len, si);
                        c.reduce(TensorMut::Host(d.host_mut()?), op, root).await?;
                        if rank == root {
                            check(&format!("reduce {ctx}"), &d, &want)?;
                        }
                        checked += 2;
                    }
                }
                for (si, &len) in SIZES.iter().enumerate() {
                    let ctx = format!("n={n} rank={rank} {dtype} len={len}");
                    // all_gather: full[i] from rank owning chunk of i
                    let own = chunk_range(len, n, rank);
                    let mine = data(dtype, rank, len, si);
                    let es = dtype.size_bytes();
                    let mut inp = Staged::zeroed(dtype, own.len());
                    inp.bytes_mut()
                        .copy_from_slice(&mine.bytes()[own.start * es..own.end * es]);
                    let mut out = Staged::zeroed(dtype, len);
                    comms[0]
                        .all_gather(Tensor::Host(inp.host()?), TensorMut::Host(out.host_mut()?))
                        .await?;
                    let mut want = Staged::zeroed(dtype, len);
                    for r in 0..n {
                        let cr = chunk_range(len, n, r);
                        let d = data(dtype, r, len, si);
                        want.bytes_mut()[cr.start * es..cr.end * es]
                            .copy_from_slice(&d.bytes()[cr.start * es..cr.end * es]);
                    }
                    check(&format!("all_gather {ctx}"), &out, &want)?;
                    // broadcast
                    let root = si % n;
                    let mut d = data(dtype, rank, len, si);
                    comms[1]
                        .broadcast(TensorMut::Host(d.host_mut()?), root)
                        .await?;
                    check(&format!("broadcast {ctx}"), &d, &data(dtype, root, len, si))?;
                    checked += 2;
                }
            }
            comms[2].barrier().await?;
            Ok(checked)
        });
        for (rank, r) in results.into_iter().enumerate() {
            let checked = r.unwrap_or_else(|e| panic!("n={n} rank {rank}: {e}"));
            assert!(checked > 0);
        }
    }
}

#[test]
fn device_buffers_are_staged_through_the_host() {
    let n = 3;
    let len = 1001;
    let results = run_group(inproc(n), move |t| async move {
        let rank = t.rank();
        let dev = hetero_host::HostDevice::builder()
            .index(rank as u32)
            .threads(1)
            .build()?;
        let c = flat(t, Algorithm::Auto);
        let d = data(DType::F32, rank, len, 0);
        let mut buf = dev.alloc(DType::F32, len)?;
        dev.upload(&mut *buf, 0, d.host()?)?;
        c.all_reduce(
            TensorMut::Device {
                device: &dev,
                buffer: &mut *buf,
            },
            ReduceOp::Sum,
        )
        .await?;
        let mut out = Staged::zeroed(DType::F32, len);
        dev.download(&*buf, 0, out.host_mut()?)?;
        check(
            "device all_reduce",
            &out,
            &naive(DType::F32, ReduceOp::Sum, n, len, 0),
        )?;
        // all_gather from a device buffer into a device buffer
        let own = chunk_range(len, n, rank);
        let mut inbuf = dev.alloc(DType::F32, own.len())?;
        let mut part = Staged::zeroed(DType::F32, own.len());
        part.bytes_mut()
            .copy_from_slice(&d.bytes()[own.start * 4..own.end * 4]);
        dev.upload(&mut *inbuf, 0, part.host()?)?;
        let mut outbuf = dev.alloc(DType::F32, len)?;
        c.all_gather(
            Tensor::Device {
                device: &dev,
                buffer: &*inbuf,
            },
            TensorMut::Device {
                device: &dev,
                buffer: &mut *outbuf,
            },
        )
        .await?;
        dev.download(&*outbuf, 0, out.host_mut()?)?;
        assert_eq!(out.len(), len);
        Ok(c.explain())
    });
    for r in results {
        let explain = r.expect("rank ok");
        assert!(explain.contains("staged through the host"), "{explain}");
        assert_eq!(Backend::Host.name(), "host");
    }
}

#[test]
fn mismatched_lengths_and_dtypes_name_the_mismatch() {
    let results = run_group(inproc(2), |t| async move {
        let rank = t.rank();
        let c = flat(t, Algorithm::Ring);
        let len = if rank == 0 { 10 } else { 12 };
        let mut d = data(DType::F32, rank, len, 0);
        c.all_reduce(TensorMut::Host(d.host_mut()?), ReduceOp::Sum)
            .await
    });
    for r in results {
        let e = r.expect_err("lengths differ").to_string();
        assert!(e.contains("element count"), "{e}");
    }
    let results = run_group(inproc(2), |t| async move {
        let rank = t.rank();
        let c = flat(t, Algorithm::Tree);
        let dtype = if rank == 0 { DType::F32 } else { DType::I32 };
        let mut d = data(dtype, rank, 8, 0);
        c.all_reduce(TensorMut::Host(d.host_mut()?), ReduceOp::Sum)
            .await
    });
    let errors: Vec<String> = results
        .into_iter()
        .map(|r| r.expect_err("dtypes differ").to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("dtype") && e.contains("f32") && e.contains("i32")),
        "{errors:?}"
    );
}

#[test]
fn a_dropped_rank_is_a_peer_failure_and_a_silent_one_a_timeout() {
    // Rank 2 drops its endpoint without taking part.
    let results = run_group(
        InProcessTransport::group_with_timeout(3, Duration::from_secs(30)),
        |t| async move {
            if t.rank() == 2 {
                drop(t);
                return Ok(());
            }
            let c = flat(t.clone(), Algorithm::Ring);
            let mut d = data(DType::F32, 0, 1000, 0);
            c.all_reduce(TensorMut::Host(d.host_mut()?), ReduceOp::Sum)
                .await
        },
    );
    assert!(results[2].is_ok());
    for r in &results[..2] {
        match r {
            Err(Error::PeerFailure { .. }) => {}
            other => panic!("expected a peer failure, got {other:?}"),
        }
    }
    // Rank 1 stays alive but never calls: rank 0 times out. Rank 1 keeps its
    // endpoint until rank 0 is done, so the outcome does not depend on timing.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let mut group = InProcessTransport::group_with_timeout(2, Duration::from_millis(300));
        let silent = group.pop().expect("rank 1");
        let t: std::sync::Arc<dyn hetero_collectives::Transport> =
            std::sync::Arc::new(group.pop().expect("rank 0"));
        let r = flat(t, Algorithm::Tree).barrier().await;
        drop(silent);
        r
    });
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
}
