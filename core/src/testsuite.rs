//! The backend-neutral device test suite (feature `testsuite`).
//!
//! Every backend instantiates it once per device it finds, in a
//! `harness = false` test binary (see `hetero-host`'s `tests/device_suite.rs`),
//! so each test's name names the device. Results are compared with naive
//! single-threaded references written here, independent of any backend.
//! A test that needs a kernel the device lacks carries a skip reason, which
//! the harness reports as ignored, never as passed.
//!
//! [`device_trials`] and [`skipped_trials`] turn the suite into
//! libtest-mimic trials, so every backend's harness names and skips tests
//! the same way and only adds its own backend-specific trials.

use std::fmt;
use std::sync::Arc;

use crate::device::{Activation, AttentionSpec, Capabilities, GemmSpec};
use crate::dtype::{DType, HostSlice, HostSliceMut, ReduceOp};
use crate::dyn_device::{DynDevice, DynDeviceExt};
use crate::error::Error;
use crate::host_kernels::Arith;
use crate::rng::SplitMix64;
use crate::with_dtype;
use libtest_mimic::{Failed, Trial};

mod append_attend;
mod llama;
pub mod quant;

type TestFn = Arc<dyn Fn(&dyn DynDevice) -> Result<(), String> + Send + Sync>;

/// One test of the suite.
#[derive(Clone)]
pub struct DeviceTest {
    pub name: String,
    /// Why this test cannot run on the device it was generated for, if it cannot.
    pub skip: Option<String>,
    /// Runs alone (other tests of the process wait), for tests that read
    /// device-wide figures such as allocated bytes.
    exclusive: bool,
    run: TestFn,
}

/// Ordinary tests hold this for reading, exclusive ones for writing, so a
/// test that measures device-wide memory never sees another test's buffers.
static EXCLUSIVE: std::sync::RwLock<()> = std::sync::RwLock::new(());

impl fmt::Debug for DeviceTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTest")
            .field("name", &self.name)
            .field("skip", &self.skip)
            .finish()
    }
}

impl DeviceTest {
    fn new(
        name: impl Into<String>,
        run: impl Fn(&dyn DynDevice) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        DeviceTest {
            name: name.into(),
            skip: None,
            exclusive: false,
            run: Arc::new(run),
        }
    }

    fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    fn skip_unless(mut self, supported: bool, reason: impl FnOnce() -> String) -> Self {
        if !supported {
            self.skip = Some(reason());
        }
        self
    }

    /// Run the test on `device`.
    pub fn run(&self, device: &dyn DynDevice) -> Result<(), String> {
        if self.exclusive {
            let _alone = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
            (self.run)(device)
        } else {
            let _shared = EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
            (self.run)(device)
        }
    }
}

/// Run `f` while no other suite test of this process runs (for backend
/// tests that time the device, such as link probes, next to the suite).
pub fn run_exclusive<R>(f: impl FnOnce() -> R) -> R {
    let _alone = EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner());
    f()
}

/// The suite on `device` as libtest-mimic trials named `{label}::{test}`
/// (e.g. `wgpu[0-vulkan-llvmpipe]::reduce_sum_f16`): one per test, and a
/// test that needs a kernel the device lacks is ignored with the reason, so
/// the summary counts it as not run instead of passed.
pub fn device_trials<D>(label: &str, device: &D) -> Vec<Trial>
where
    D: DynDevice + Clone + 'static,
{
    device_tests(&device.capabilities())
        .into_iter()
        .map(|test| {
            let skip = test.skip.clone();
            let dev = device.clone();
            let trial = Trial::test(format!("{label}::{}", test.name), move || {
                test.run(&dev).map_err(Failed::from)
            });
            match skip {
                Some(reason) => trial.with_ignored_flag(true).with_kind(reason),
                None => trial,
            }
        })
        .collect()
}

/// For a harness with no device to run on (no driver, no adapter, built
/// without the backend): every test of the suite, as it would be for a
/// device with every kernel, then the backend's own `extra` test names,
/// each listed as `{label}::{name}` and ignored with `reason`, so the
/// summary shows what did not run and why.
pub fn skipped_trials(label: &str, reason: &str, extra: &[&str]) -> Vec<Trial> {
    device_tests(&Capabilities::all())
        .into_iter()
        .map(|t| t.name)
        .chain(extra.iter().map(|name| name.to_string()))
        .map(|name| {
            Trial::test(format!("{label}::{name}"), || Ok(()))
                .with_ignored_flag(true)
                .with_kind(reason)
        })
        .collect()
}

/// The suite for a device with capabilities `caps`.
pub fn device_tests(caps: &Capabilities) -> Vec<DeviceTest> {
    let mut tests = Vec::new();
    for dtype in DType::ALL {
        tests.push(DeviceTest::new(format!("roundtrip_{dtype}"), move |d| {
            roundtrip(d, dtype)
        }));
    }
    tests.push(DeviceTest::new("copy_region", copy_region));
    tests.push(DeviceTest::new("memory_accounting", memory_accounting).exclusive());
    tests.push(
        DeviceTest::new(
            "alloc_past_budget_is_oom_and_device_keeps_working",
            oom_then_working,
        )
        .exclusive(),
    );
    tests.push(DeviceTest::new("bad_arguments_are_errors", bad_arguments));
    for dtype in DType::ALL {
        let supported = caps.reduce_dtypes.contains(&dtype);
        for op in ReduceOp::ALL {
            tests.push(
                DeviceTest::new(format!("reduce_{op}_{dtype}"), move |d| {
                    reduce_matches_reference(d, op, dtype)
                })
                .skip_unless(supported, || {
                    format!("device has no reduce kernel for {dtype}")
                }),
            );
        }
        tests.push(
            DeviceTest::new(format!("scale_{dtype}"), move |d| {
                scale_matches_reference(d, dtype)
            })
            .skip_unless(caps.scale_dtypes.contains(&dtype), || {
                format!("device has no scale kernel for {dtype}")
            }),
        );
    }
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        tests.push(
            DeviceTest::new(format!("gemm_{dtype}"), move |d| {
                gemm_matches_reference(d, dtype)
            })
            .skip_unless(caps.gemm_dtypes.contains(&dtype), || {
                format!("device has no gemm kernel for {dtype}")
            }),
        );
    }
    let decode = caps.decode_dtypes.contains(&DType::F32);
    let no_decode = || "device has no decode-step kernels for f32".to_string();
    tests.push(
        DeviceTest::new("layer_norm_f32", layer_norm_matches_reference)
            .skip_unless(decode, no_decode),
    );
    for act in [Activation::Identity, Activation::Relu, Activation::Gelu] {
        tests.push(
            DeviceTest::new(format!("bias_{act:?}_f32").to_lowercase(), move |d| {
                bias_activation_matches_reference(d, act)
            })
            .skip_unless(decode, no_decode),
        );
    }
    tests.push(
        DeviceTest::new("attention_decode_f32", attention_matches_reference)
            .skip_unless(decode, no_decode),
    );
    tests.push(
        DeviceTest::new("argmax_rows_f32", argmax_matches_reference).skip_unless(decode, no_decode),
    );
    tests.extend(llama::tests(caps));
    tests.extend(append_attend::tests(caps));
    tests.extend(quant::tests(caps));
    let unsupported: Vec<DType> = DType::ALL
        .into_iter()
        .filter(|d| !caps.reduce_dtypes.contains(d) || !caps.gemm_dtypes.contains(d))
        .collect();
    if !unsupported.is_empty() {
        let caps = caps.clone();
        tests.push(DeviceTest::new(
            "missing_kernels_are_unsupported_errors",
            move |d| missing_kernels_are_unsupported(d, &caps),
        ));
    }
    tests
}

/// Values that are exact in every dtype (quarters in [-4, 4] for floats,
/// the full range for integers so wrapping is exercised); seeded, so a
/// failure reproduces.
pub fn test_values<T: Arith>(dtype: DType, len: usize, seed: u64) -> Vec<T> {
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| match dtype {
            DType::U8 => T::from_f64(rng.range(0, 256) as f64),
            DType::I32 => T::from_f64(rng.range(i32::MIN as i64, i32::MAX as i64) as f64),
            DType::I64 => T::from_f64(rng.range(-(1 << 52), 1 << 52) as f64),
            _ => T::from_f64(rng.range(-16, 17) as f64 / 4.0),
        })
        .collect()
}

/// Naive per-element reference of a reduction over `inputs` in order.
fn reference_reduce<T: Arith>(op: ReduceOp, inputs: &[Vec<T>]) -> Vec<T> {
    let len = inputs[0].len();
    (0..len)
        .map(|i| {
            let mut acc = inputs[0][i];
            for input in &inputs[1..] {
                let x = input[i];
                acc = match op {
                    ReduceOp::Sum | ReduceOp::Avg => acc.add(x),
                    ReduceOp::Prod => acc.mul(x),
                    ReduceOp::Max => acc.max_of(x),
                    ReduceOp::Min => acc.min_of(x),
                };
            }
            if op == ReduceOp::Avg {
                acc = acc.div_count(inputs.len());
            }
            acc
        })
        .collect()
}

/// Relative tolerance per dtype for results that a device may round differently.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-6,
        DType::F64 => 1e-12,
        DType::F16 => 2e-3,
        DType::BF16 => 1e-2,
        DType::I32 | DType::I64 | DType::U8 => 0.0,
    }
}

/// Compare element by element; the message names the first mismatch.
pub fn compare<T: Arith>(what: &str, got: &[T], want: &[T], rel_tol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: got {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if rel_tol == 0.0 {
            g == w
        } else {
            let (g, w) = (g.to_f64(), w.to_f64());
            (g - w).abs() <= rel_tol * w.abs().max(1.0) || (g.is_nan() && w.is_nan())
        };
        if !ok {
            return Err(format!("{what}: element {i} is {g:?}, want {w:?}"));
        }
    }
    Ok(())
}

fn err(context: &str) -> impl Fn(Error) -> String + '_ {
    move |e| format!("{context}: {e}")
}

/// Lengths that are not multiples of any vector width, plus one large enough
/// to be split over threads or workgroups.
const LENGTHS: [usize; 6] = [1, 3, 17, 1023, 4099, 300_007];

fn roundtrip(d: &dyn DynDevice, dtype: DType) -> Result<(), String> {
    with_dtype!(dtype, T => {
        let len = 1029;
        let buf = d.alloc(dtype, len).map_err(err("alloc"))?;
        let zeros: Vec<T> = d.to_vec(buf.as_ref()).map_err(err("download"))?;
        compare("fresh buffer is zeroed", &zeros, &vec![T::from_f64(0.0); len], 0.0)?;
        let mut buf = buf;
        let data: Vec<T> = test_values(dtype, len, 7);
        d.upload(buf.as_mut(), 0, HostSlice::new(&data)).map_err(err("upload"))?;
        let back: Vec<T> = d.to_vec(buf.as_ref()).map_err(err("download"))?;
        compare("round trip", &back, &data, 0.0)?;
        // Partial upload and download at an offset.
        let patch: Vec<T> = test_values(dtype, 10, 8);
        d.upload(buf.as_mut(), 500, HostSlice::new(&patch)).map_err(err("upload at offset"))?;
        let mut window = vec![T::from_f64(0.0); 12];
        d.download(buf.as_ref(), 499, HostSliceMut::new(&mut window)).map_err(err("download at offset"))?;
        let mut want = vec![data[499]];
        want.extend_from_slice(&patch);
        want.push(data[510]);
        compare("offset round trip", &window, &want, 0.0)
    })
}

fn copy_region(d: &dyn DynDevice) -> Result<(), String> {
    let data: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let src = d
        .alloc_from(HostSlice::new(&data))
        .map_err(err("alloc src"))?;
    let mut dst = d.alloc(DType::F32, 50).map_err(err("alloc dst"))?;
    d.copy(src.as_ref(), 20..45, dst.as_mut(), 5)
        .map_err(err("copy"))?;
    let got: Vec<f32> = d.to_vec(dst.as_ref()).map_err(err("download"))?;
    let mut want = vec![0.0f32; 50];
    want[5..30].copy_from_slice(&data[20..45]);
    compare("copy", &got, &want, 0.0)
}

fn memory_accounting(d: &dyn DynDevice) -> Result<(), String> {
    let before = d.memory().map_err(err("memory"))?.allocated_bytes;
    let buf = d.alloc(DType::F64, 1000).map_err(err("alloc"))?;
    let during = d.memory().map_err(err("memory"))?.allocated_bytes;
    if during < before + 8000 {
        return Err(format!(
            "allocated bytes went from {before} to {during} for an 8000-byte buffer"
        ));
    }
    drop(buf);
    let after = d.memory().map_err(err("memory"))?.allocated_bytes;
    if after != before {
        return Err(format!(
            "allocated bytes {after} after freeing, {before} before allocating"
        ));
    }
    Ok(())
}

fn oom_then_working(d: &dyn DynDevice) -> Result<(), String> {
    let total = d.memory().map_err(err("memory"))?.total_bytes;
    let too_much = usize::try_from(total.saturating_add(1)).unwrap_or(usize::MAX);
    match d.alloc(DType::U8, too_much) {
        Err(e) if e.is_out_of_memory() => {}
        Err(e) => return Err(format!("alloc past the budget gave {e}, want OutOfMemory")),
        Ok(_) => {
            return Err(format!(
                "alloc of {too_much} bytes on a device of {total} bytes succeeded"
            ));
        }
    }
    // Past the address space entirely: still an error, not an abort.
    match d.alloc(DType::F64, usize::MAX / 4) {
        Err(e) if e.is_out_of_memory() || matches!(e, Error::InvalidInput { .. }) => {}
        Err(e) => return Err(format!("absurd alloc gave {e}")),
        Ok(_) => return Err("alloc of usize::MAX/4 f64 succeeded".into()),
    }
    // The device keeps working.
    let a = vec![1.5f32; 4099];
    let mut acc = d
        .alloc_from(HostSlice::new(&a))
        .map_err(err("alloc after OOM"))?;
    let src = d
        .alloc_from(HostSlice::new(&a))
        .map_err(err("alloc after OOM"))?;
    d.reduce(ReduceOp::Sum, acc.as_mut(), src.as_ref())
        .map_err(err("reduce after OOM"))?;
    let got: Vec<f32> = d.to_vec(acc.as_ref()).map_err(err("download after OOM"))?;
    compare("reduce after OOM", &got, &vec![3.0; 4099], 0.0)
}

fn bad_arguments(d: &dyn DynDevice) -> Result<(), String> {
    let mut a = d.alloc(DType::F32, 10).map_err(err("alloc"))?;
    let b = d.alloc(DType::F32, 11).map_err(err("alloc"))?;
    let c = d.alloc(DType::I32, 10).map_err(err("alloc"))?;
    let expect_invalid = |what: &str, r: crate::Result<()>| match r {
        Err(Error::InvalidInput { .. }) => Ok(()),
        Err(e) => Err(format!("{what}: gave {e}, want InvalidInput")),
        Ok(()) => Err(format!("{what}: succeeded, want InvalidInput")),
    };
    expect_invalid(
        "reduce of different lengths",
        d.reduce(ReduceOp::Sum, a.as_mut(), b.as_ref()),
    )?;
    expect_invalid(
        "reduce of different dtypes",
        d.reduce(ReduceOp::Sum, a.as_mut(), c.as_ref()),
    )?;
    expect_invalid(
        "upload past the end",
        d.upload(a.as_mut(), 5, HostSlice::new(&[1.0f32; 6])),
    )?;
    expect_invalid(
        "upload of another dtype",
        d.upload(a.as_mut(), 0, HostSlice::new(&[1i32; 2])),
    )?;
    let mut out = [0.0f32; 4];
    expect_invalid(
        "download past the end",
        d.download(a.as_ref(), 8, HostSliceMut::new(&mut out)),
    )?;
    expect_invalid(
        "copy past the end",
        d.copy(b.as_ref(), 0..11, a.as_mut(), 0),
    )?;
    expect_invalid(
        "gemm with wrong lengths",
        d.gemm(
            &GemmSpec::new(3, 3, 3),
            a.as_ref(),
            a.as_ref(),
            &mut *d.alloc(DType::F32, 9).map_err(err("alloc"))?,
        ),
    )
}

fn reduce_matches_reference(d: &dyn DynDevice, op: ReduceOp, dtype: DType) -> Result<(), String> {
    with_dtype!(dtype, T => {
        for (case, &len) in LENGTHS.iter().enumerate() {
            let inputs: Vec<Vec<T>> = (0..3)
                .map(|k| test_values::<T>(dtype, len, (case * 10 + k) as u64))
                .collect();
            let want = reference_reduce(op, &inputs);
            let mut acc = d.alloc_from(HostSlice::new(&inputs[0])).map_err(err("alloc"))?;
            for input in &inputs[1..] {
                let src = d.alloc_from(HostSlice::new(input)).map_err(err("alloc"))?;
                d.reduce(op, acc.as_mut(), src.as_ref()).map_err(err("reduce"))?;
            }
            d.finish_reduce(op, acc.as_mut(), inputs.len()).map_err(err("finish_reduce"))?;
            let got: Vec<T> = d.to_vec(acc.as_ref()).map_err(err("download"))?;
            compare(&format!("{op} of 3 x {len} {dtype}"), &got, &want, tolerance(dtype))?;
        }
        Ok(())
    })
}

fn scale_matches_reference(d: &dyn DynDevice, dtype: DType) -> Result<(), String> {
    with_dtype!(dtype, T => {
        for (case, &len) in LENGTHS.iter().enumerate() {
            let data: Vec<T> = test_values(dtype, len, 100 + case as u64);
            let alpha = if dtype.is_float() { -0.75 } else { 0.5 };
            let want: Vec<T> = data.iter().map(|x| x.scale_by(alpha)).collect();
            let mut buf = d.alloc_from(HostSlice::new(&data)).map_err(err("alloc"))?;
            d.scale(buf.as_mut(), alpha).map_err(err("scale"))?;
            let got: Vec<T> = d.to_vec(buf.as_ref()).map_err(err("download"))?;
            compare(&format!("scale of {len} {dtype}"), &got, &want, tolerance(dtype))?;
        }
        Ok(())
    })
}

/// Naive triple loop in f64, row-major, honouring transposes, alpha and beta.
pub fn reference_gemm(spec: &GemmSpec, a: &[f64], b: &[f64], c: &[f64]) -> Vec<f64> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let at = |i: usize, p: usize| {
        if spec.trans_a {
            a[p * m + i]
        } else {
            a[i * k + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if spec.trans_b {
            b[j * k + p]
        } else {
            b[p * n + j]
        }
    };
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            out[i * n + j] = spec.alpha * dot + spec.beta * c[i * n + j];
        }
    }
    out
}

fn gemm_matches_reference(d: &dyn DynDevice, dtype: DType) -> Result<(), String> {
    let shapes = [
        (1, 1, 1, false, false, 1.0, 0.0),
        (7, 5, 3, false, false, 1.0, 0.0),
        (64, 33, 17, false, false, 0.5, 2.0),
        (16, 9, 40, true, false, 1.0, 1.0),
        (31, 64, 8, false, true, -1.0, 0.0),
        (130, 70, 129, true, true, 1.0, -0.5),
        // Decode-step shapes: a few rows against [out, in] weights.
        (1, 4099, 576, false, true, 1.0, 0.0),
        (3, 257, 130, false, true, 0.5, 1.5),
        (4, 64, 1536, false, true, 1.0, 0.0),
    ];
    with_dtype!(dtype, T => {
        for (case, &(m, n, k, ta, tb, alpha, beta)) in shapes.iter().enumerate() {
            let spec = GemmSpec { m, n, k, trans_a: ta, trans_b: tb, alpha, beta };
            let a: Vec<T> = test_values(dtype, m * k, 200 + case as u64);
            let b: Vec<T> = test_values(dtype, k * n, 300 + case as u64);
            let c: Vec<T> = test_values(dtype, m * n, 400 + case as u64);
            let f = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
            let want: Vec<T> = reference_gemm(&spec, &f(&a), &f(&b), &f(&c))
                .into_iter()
                .map(T::from_f64)
                .collect();
            let ab = d.alloc_from(HostSlice::new(&a)).map_err(err("alloc a"))?;
            let bb = d.alloc_from(HostSlice::new(&b)).map_err(err("alloc b"))?;
            let mut cb = d.alloc_from(HostSlice::new(&c)).map_err(err("alloc c"))?;
            d.gemm(&spec, ab.as_ref(), bb.as_ref(), cb.as_mut()).map_err(err("gemm"))?;
            let got: Vec<T> = d.to_vec(cb.as_ref()).map_err(err("download"))?;
            // Sums of k products reorder freely on a device: allow k roundings.
            let tol = tolerance(dtype) * (k as f64).max(4.0) * 4.0;
            compare(&format!("gemm {m}x{n}x{k} ta={ta} tb={tb}"), &got, &want, tol)?;
        }
        Ok(())
    })
}

fn missing_kernels_are_unsupported(d: &dyn DynDevice, caps: &Capabilities) -> Result<(), String> {
    for dtype in DType::ALL {
        if !caps.reduce_dtypes.contains(&dtype) {
            let mut a = d.alloc(dtype, 4).map_err(err("alloc"))?;
            let b = d.alloc(dtype, 4).map_err(err("alloc"))?;
            match d.reduce(ReduceOp::Sum, a.as_mut(), b.as_ref()) {
                Err(e) if e.is_unsupported() => {}
                other => return Err(format!("reduce on {dtype}: {other:?}, want Unsupported")),
            }
        }
        if !caps.gemm_dtypes.contains(&dtype) {
            let a = d.alloc(dtype, 4).map_err(err("alloc"))?;
            let mut c = d.alloc(dtype, 4).map_err(err("alloc"))?;
            match d.gemm(&GemmSpec::new(2, 2, 2), a.as_ref(), a.as_ref(), c.as_mut()) {
                Err(e) if e.is_unsupported() => {}
                other => return Err(format!("gemm on {dtype}: {other:?}, want Unsupported")),
            }
        }
    }
    Ok(())
}

/// Pseudo-random f32 values in [-2, 2) (not exactly representable sums:
/// these kernels are compared with a tolerance).
fn random_f32(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len)
        .map(|_| (rng.next_u64() % 4096) as f32 / 1024.0 - 2.0)
        .collect()
}

const DECODE_TOL: f64 = 1e-4;

fn layer_norm_matches_reference(d: &dyn DynDevice) -> Result<(), String> {
    for (rows, cols) in [(1, 1), (3, 64), (5, 127), (2, 1000)] {
        let x = random_f32(rows * cols, 500 + cols as u64);
        let gamma = random_f32(cols, 501);
        let beta = random_f32(cols, 502);
        let eps = 1e-5f32;
        let mut want = vec![0.0f32; rows * cols];
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            for c in 0..cols {
                let norm = (row[c] as f64 - mean) / (var + eps as f64).sqrt();
                want[r * cols + c] = (norm * gamma[c] as f64 + beta[c] as f64) as f32;
            }
        }
        let xb = d.alloc_from(HostSlice::new(&x)).map_err(err("alloc"))?;
        let gb = d.alloc_from(HostSlice::new(&gamma)).map_err(err("alloc"))?;
        let bb = d.alloc_from(HostSlice::new(&beta)).map_err(err("alloc"))?;
        let mut out = d.alloc(DType::F32, rows * cols).map_err(err("alloc"))?;
        d.layer_norm(xb.as_ref(), gb.as_ref(), bb.as_ref(), out.as_mut(), eps)
            .map_err(err("layer_norm"))?;
        let got: Vec<f32> = d.to_vec(out.as_ref()).map_err(err("download"))?;
        compare(
            &format!("layer_norm {rows}x{cols}"),
            &got,
            &want,
            DECODE_TOL,
        )?;
    }
    // A wrong output length is an error.
    let x = d.alloc(DType::F32, 8).map_err(err("alloc"))?;
    let g = d.alloc(DType::F32, 4).map_err(err("alloc"))?;
    let mut out = d.alloc(DType::F32, 7).map_err(err("alloc"))?;
    match d.layer_norm(x.as_ref(), g.as_ref(), g.as_ref(), out.as_mut(), 1e-5) {
        Err(Error::InvalidInput { .. }) => Ok(()),
        other => Err(format!("layer_norm with a short output gave {other:?}")),
    }
}

fn bias_activation_matches_reference(d: &dyn DynDevice, act: Activation) -> Result<(), String> {
    for (rows, cols) in [(1, 1), (4, 33), (7, 300)] {
        let x = random_f32(rows * cols, 600 + cols as u64);
        let bias = random_f32(cols, 601);
        let want: Vec<f32> = (0..rows * cols)
            .map(|i| act.apply(x[i] as f64 + bias[i % cols] as f64) as f32)
            .collect();
        let mut xb = d.alloc_from(HostSlice::new(&x)).map_err(err("alloc"))?;
        let bb = d.alloc_from(HostSlice::new(&bias)).map_err(err("alloc"))?;
        d.bias_activation(xb.as_mut(), bb.as_ref(), act)
            .map_err(err("bias_activation"))?;
        let got: Vec<f32> = d.to_vec(xb.as_ref()).map_err(err("download"))?;
        compare(
            &format!("bias {act:?} {rows}x{cols}"),
            &got,
            &want,
            DECODE_TOL,
        )?;
    }
    Ok(())
}

/// Naive attention in f64.
fn reference_attention(
    spec: &AttentionSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: &[u32],
) -> Vec<f32> {
    let (w, dh) = (spec.width(), spec.head_dim);
    let mut out = vec![0.0f32; spec.batch * w];
    for b in 0..spec.batch {
        for h in 0..spec.heads {
            let qv = &q[b * w + h * dh..b * w + (h + 1) * dh];
            let len = lens[b] as usize;
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    let kv = &k[(b * spec.max_len + t) * w + h * dh..][..dh];
                    qv.iter()
                        .zip(kv)
                        .map(|(&a, &c)| a as f64 * c as f64)
                        .sum::<f64>()
                        / (dh as f64).sqrt()
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for i in 0..dh {
                let acc: f64 = (0..len)
                    .map(|t| e[t] / z * v[(b * spec.max_len + t) * w + h * dh + i] as f64)
                    .sum();
                out[b * w + h * dh + i] = acc as f32;
            }
        }
    }
    out
}

fn attention_matches_reference(d: &dyn DynDevice) -> Result<(), String> {
    let cases = [
        (
            AttentionSpec {
                batch: 1,
                heads: 1,
                head_dim: 4,
                max_len: 1,
            },
            vec![1u32],
        ),
        (
            AttentionSpec {
                batch: 3,
                heads: 2,
                head_dim: 8,
                max_len: 17,
            },
            vec![1, 17, 9],
        ),
        (
            AttentionSpec {
                batch: 2,
                heads: 4,
                head_dim: 16,
                max_len: 300,
            },
            vec![300, 123],
        ),
    ];
    for (case, (spec, lens)) in cases.iter().enumerate() {
        let w = spec.width();
        let q = random_f32(spec.batch * w, 700 + case as u64);
        let k = random_f32(spec.batch * spec.max_len * w, 710 + case as u64);
        let v = random_f32(spec.batch * spec.max_len * w, 720 + case as u64);
        let want = reference_attention(spec, &q, &k, &v, lens);
        let qb = d.alloc_from(HostSlice::new(&q)).map_err(err("alloc"))?;
        let kb = d.alloc_from(HostSlice::new(&k)).map_err(err("alloc"))?;
        let vb = d.alloc_from(HostSlice::new(&v)).map_err(err("alloc"))?;
        let mut out = d.alloc(DType::F32, spec.batch * w).map_err(err("alloc"))?;
        d.attention_decode(
            spec,
            qb.as_ref(),
            kb.as_ref(),
            vb.as_ref(),
            lens,
            out.as_mut(),
        )
        .map_err(err("attention_decode"))?;
        let got: Vec<f32> = d.to_vec(out.as_ref()).map_err(err("download"))?;
        compare(&format!("attention case {case}"), &got, &want, DECODE_TOL)?;
        // A length past the cache is an error, not a read out of bounds.
        let mut bad = lens.clone();
        bad[0] = spec.max_len as u32 + 1;
        match d.attention_decode(
            spec,
            qb.as_ref(),
            kb.as_ref(),
            vb.as_ref(),
            &bad,
            out.as_mut(),
        ) {
            Err(Error::InvalidInput { .. }) => {}
            other => {
                return Err(format!(
                    "attention with a length past the cache gave {other:?}"
                ));
            }
        }
    }
    Ok(())
}

fn argmax_matches_reference(d: &dyn DynDevice) -> Result<(), String> {
    for (rows, cols) in [(1, 1), (3, 50), (4, 50272)] {
        let mut x = random_f32(rows * cols, 800 + cols as u64);
        if cols > 2 {
            // A tie in row 0: the lower index wins.
            x[1] = 9.0;
            x[2] = 9.0;
        }
        let want: Vec<u32> = (0..rows)
            .map(|r| {
                let row = &x[r * cols..(r + 1) * cols];
                let mut best = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = i;
                    }
                }
                best as u32
            })
            .collect();
        let xb = d.alloc_from(HostSlice::new(&x)).map_err(err("alloc"))?;
        let got = d
            .argmax_rows(xb.as_ref(), rows)
            .map_err(err("argmax_rows"))?;
        if got != want {
            return Err(format!("argmax {rows}x{cols}: got {got:?}, want {want:?}"));
        }
    }
    Ok(())
}
