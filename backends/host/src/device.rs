//! The host `Device`.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hetero_core::append_attend::{
    AppendAttendSeq, AppendAttendSpec, check_append_attend, seq_shapes,
};
use hetero_core::device::{
    HalfConversion, KvElement, argmax_cols, bias_rows, check_convert_copy, check_copy,
    check_download, check_dtype, check_owner, check_same_shape, check_upload, half_conversion,
    kv_cache_element, layer_norm_rows,
};
use hetero_core::half::{bf16, f16};
use hetero_core::host_kernels::{self, Arith};
use hetero_core::transformer::rms_norm_rows;
use hetero_core::{
    Activation, AttentionSpec, Backend, Capabilities, CausalAttentionSpec, DType, Device, DeviceId,
    DeviceInfo, DeviceKind, Error, GemmSpec, HostSlice, HostSliceMut, MemoryUsage, QuantMatmulSpec,
    QuantType, ReduceOp, Result, RopeSpec, with_dtype,
};

use crate::attention_step::{self, StepCache};
use crate::buffer::{HostBuffer, Ledger};
use crate::gemv;
use crate::llama;
use crate::quant;
use crate::system;
use crate::workers::Workers;

/// Below this many bytes per operand a kernel runs on the calling thread:
/// spawning threads costs more than it saves.
const PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// q, k cache, v cache (read) and out (written) of an attention kernel, as f32.
type AttentionViews<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a mut [f32]);

/// A CPU device with a memory budget and a thread count. Cheap to clone
/// (clones share the budget).
#[derive(Debug, Clone)]
pub struct HostDevice {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ledger: Arc<Ledger>,
    threads: usize,
    /// Persistent workers of the kernels (a decode step's kernels are too
    /// short to spawn threads for).
    workers: Workers,
    /// How quantized products run: this CPU's kernels (detected once),
    /// batch invariance, the AMX tile unit.
    quant_paths: quant::Paths,
    name: String,
    vendor: String,
}

/// Builder for [`HostDevice`].
#[derive(Debug, Clone, Default)]
pub struct HostDeviceBuilder {
    index: u32,
    threads: Option<usize>,
    memory_budget: Option<u64>,
    batch_invariant: bool,
    /// `None`: the default (on).
    amx: Option<bool>,
}

impl HostDeviceBuilder {
    /// Index within the host backend (ids must be unique among devices used together).
    pub fn index(mut self, index: u32) -> Self {
        self.index = index;
        self
    }

    /// Threads the kernels of this device use (default: all hardware threads).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Memory budget in bytes (default: what the OS reports available).
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Compute every row of a quantized product exactly as it would be
    /// computed alone (default: off). The products then take the
    /// register-blocked f32 path for any number of rows: no 16-bit
    /// activations for a single row, no dequantized tiles or packed GEMM
    /// for many. A sequence's logits then do not depend on what else is
    /// in its batch or on how its prompt was chunked (or found in a prefix
    /// cache), so seeded sampling is reproducible under continuous
    /// batching, at the cost of speed (prefill most). Products with f32
    /// weights keep their row-count-dependent paths.
    pub fn batch_invariant(mut self, on: bool) -> Self {
        self.batch_invariant = on;
        self
    }

    /// Run quantized products of many rows (prefill, decode of 32 or
    /// more sequences) on Intel AMX's tile unit where the CPU has
    /// AMX-BF16 and the OS grants it (default: on; `HETERO_HOST_AMX=off`
    /// turns it off for the whole process). Each f32 operand is split
    /// into two bf16, so a product keeps about 16 bits of each operand
    /// instead of f32's 24 (the error bound is in the crate README).
    /// Ignored on other CPUs and with [`batch_invariant`](Self::batch_invariant).
    pub fn amx(mut self, on: bool) -> Self {
        self.amx = Some(on);
        self
    }

    pub fn build(self) -> Result<HostDevice> {
        let threads = self.threads.unwrap_or_else(system::hardware_threads);
        if threads == 0 {
            return Err(Error::invalid(
                "threads",
                "a host device needs at least 1 thread",
            ));
        }
        let budget = match self.memory_budget {
            Some(b) => b,
            None => system::available_memory_bytes()?,
        };
        let (cpu, vendor) = system::cpu_description();
        let workers = Workers::new(threads, self.index)?;
        Ok(HostDevice {
            inner: Arc::new(Inner {
                ledger: Arc::new(Ledger {
                    device: DeviceId::new(Backend::Host, self.index),
                    budget,
                    allocated: Default::default(),
                }),
                threads,
                workers,
                quant_paths: quant::Paths::detect(self.batch_invariant, self.amx.unwrap_or(true)),
                name: format!(
                    "{cpu} ({threads} thread{})",
                    if threads == 1 { "" } else { "s" }
                ),
                vendor,
            }),
        })
    }
}

impl HostDevice {
    pub fn builder() -> HostDeviceBuilder {
        HostDeviceBuilder::default()
    }

    /// Index 0, all hardware threads, budget = available memory.
    pub fn system() -> Result<Self> {
        Self::builder().build()
    }

    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Whether quantized products of many rows run on the AMX tile unit
    /// (see [`HostDeviceBuilder::amx`]).
    pub fn uses_amx(&self) -> bool {
        self.inner.quant_paths.amx
    }

    pub fn memory_budget(&self) -> u64 {
        self.inner.ledger.budget
    }

    /// Split `len` elements into per-thread ranges and run `f` on each
    /// (on the calling thread when the data is small).
    fn parallel_chunks(&self, len: usize, elem_bytes: usize) -> usize {
        if len * elem_bytes < PARALLEL_MIN_BYTES || self.inner.threads == 1 {
            len.max(1)
        } else {
            len.div_ceil(self.inner.threads).max(1)
        }
    }

    fn check_owned(&self, buf: &HostBuffer, what: &str) -> Result<()> {
        check_owner(buf, self.id(), what)
    }

    /// The f32 views of an attention kernel's operands, each checked to be
    /// this device's.
    /// Every operand of an attention kernel belongs to this device.
    fn check_attention_owners(
        &self,
        q: &HostBuffer,
        k_cache: &HostBuffer,
        v_cache: &HostBuffer,
        out: &HostBuffer,
    ) -> Result<()> {
        for (b, what) in [
            (q, "attention q"),
            (k_cache, "attention k cache"),
            (v_cache, "attention v cache"),
            (out, "attention out"),
        ] {
            self.check_owned(b, what)?;
        }
        Ok(())
    }

    fn attention_operands<'a>(
        &self,
        q: &'a HostBuffer,
        k_cache: &'a HostBuffer,
        v_cache: &'a HostBuffer,
        out: &'a mut HostBuffer,
    ) -> Result<AttentionViews<'a>> {
        self.check_attention_owners(q, k_cache, v_cache, out)?;
        Ok((
            q.typed::<f32>()?,
            k_cache.typed::<f32>()?,
            v_cache.typed::<f32>()?,
            out.typed_mut::<f32>()?,
        ))
    }

    fn combine_typed<T: Arith>(&self, op: ReduceOp, acc: &mut [T], src: &[T]) -> Result<()> {
        let chunk = self.parallel_chunks(acc.len(), size_of::<T>());
        if chunk >= acc.len() {
            return host_kernels::combine(op, acc, src);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = acc
                .chunks_mut(chunk)
                .zip(src.chunks(chunk))
                .map(|(a, b)| s.spawn(move || host_kernels::combine(op, a, b)))
                .collect();
            join_all(self.id(), handles)
        })
    }

    fn map_typed<T: Arith>(&self, buf: &mut [T], f: impl Fn(&mut [T]) + Sync) -> Result<()> {
        let chunk = self.parallel_chunks(buf.len(), size_of::<T>());
        if chunk >= buf.len() {
            f(buf);
            return Ok(());
        }
        std::thread::scope(|s| {
            let f = &f;
            let handles: Vec<_> = buf
                .chunks_mut(chunk)
                .map(|part| {
                    s.spawn(move || {
                        f(part);
                        Ok(())
                    })
                })
                .collect();
            join_all(self.id(), handles)
        })
    }

    /// Row-major sgemm/dgemm, rows of C split over the device's threads.
    fn gemm_native<T: NativeGemm>(&self, spec: &GemmSpec, a: &[T], b: &[T], c: &mut [T]) {
        let (m, n, k) = (spec.m, spec.n, spec.k);
        let (rsa, csa) = if spec.trans_a { (1, m) } else { (k, 1) };
        let (rsb, csb) = if spec.trans_b { (1, k) } else { (n, 1) };
        // Splitting pays once each thread gets a few dozen rows of real work.
        let threads = if spec.flops() < 4e6 {
            1
        } else {
            self.inner.threads.min(m.div_ceil(16)).max(1)
        };
        let rows = m.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (t, c_rows) in c.chunks_mut(rows * n).enumerate() {
                let r0 = t * rows;
                let mr = c_rows.len() / n;
                let a_off = r0 * rsa;
                let mut work = move || {
                    // SAFETY: lengths were validated against the spec, so A
                    // (from row r0), B and this chunk of C are in bounds for
                    // the strides given; chunks of C are disjoint.
                    unsafe {
                        T::gemm(
                            mr,
                            k,
                            n,
                            spec.alpha,
                            a.as_ptr().add(a_off),
                            rsa as isize,
                            csa as isize,
                            b.as_ptr(),
                            rsb as isize,
                            csb as isize,
                            spec.beta,
                            c_rows.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    }
                };
                if threads == 1 {
                    work();
                } else {
                    s.spawn(work);
                }
            }
        });
    }
}

fn join_all(
    device: DeviceId,
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<()>>>,
) -> Result<()> {
    for h in handles {
        h.join().map_err(|_| Error::DeviceLost {
            device,
            reason: "a host kernel thread panicked".into(),
        })??;
    }
    Ok(())
}

/// The element types matrixmultiply has kernels for.
trait NativeGemm: Arith {
    /// # Safety
    /// As `matrixmultiply::sgemm`: pointers valid for the given shapes and strides.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl NativeGemm for f32 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha as f32,
                a,
                rsa,
                csa,
                b,
                rsb,
                csb,
                beta as f32,
                c,
                rsc,
                csc,
            )
        }
    }
}

impl NativeGemm for f64 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

fn widen<T: Arith>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f64() as f32).collect()
}

impl Device for HostDevice {
    type Buffer = HostBuffer;

    fn id(&self) -> DeviceId {
        self.inner.ledger.device
    }

    fn info(&self) -> DeviceInfo {
        let used = self.inner.ledger.allocated.load(Ordering::Acquire);
        DeviceInfo {
            id: self.id(),
            name: self.inner.name.clone(),
            kind: DeviceKind::Cpu,
            vendor: self.inner.vendor.clone(),
            memory_total_bytes: self.inner.ledger.budget,
            memory_free_bytes: Some(self.inner.ledger.budget.saturating_sub(used)),
            driver: None,
            compute_units: u32::try_from(self.inner.threads).ok(),
            host_threads: u32::try_from(self.inner.threads).ok(),
        }
    }

    fn memory(&self) -> Result<MemoryUsage> {
        let used = self.inner.ledger.allocated.load(Ordering::Acquire);
        Ok(MemoryUsage {
            total_bytes: self.inner.ledger.budget,
            free_bytes: Some(self.inner.ledger.budget.saturating_sub(used)),
            allocated_bytes: used,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            reduce_dtypes: DType::ALL.to_vec(),
            scale_dtypes: DType::ALL.to_vec(),
            gemm_dtypes: vec![DType::F32, DType::F64, DType::F16, DType::BF16],
            decode_dtypes: vec![DType::F32],
            llama_dtypes: vec![DType::F32],
            quant_types: QuantType::ALL.to_vec(),
            kv_cache_dtypes: vec![DType::F16],
        }
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<HostBuffer> {
        HostBuffer::zeroed(&self.inner.ledger, dtype, len)
    }

    fn upload(&self, dst: &mut HostBuffer, offset: usize, src: HostSlice<'_>) -> Result<()> {
        self.check_owned(dst, "upload destination")?;
        let range = check_upload(dst, offset, &src)?;
        let s = src.dtype().size_bytes();
        dst.as_bytes_mut()[range.start * s..range.end * s].copy_from_slice(src.as_bytes());
        Ok(())
    }

    fn download(&self, src: &HostBuffer, offset: usize, mut dst: HostSliceMut<'_>) -> Result<()> {
        self.check_owned(src, "download source")?;
        let range = check_download(src, offset, &dst)?;
        let s = dst.dtype().size_bytes();
        dst.as_bytes_mut()
            .copy_from_slice(&src.as_bytes()[range.start * s..range.end * s]);
        Ok(())
    }

    fn copy(
        &self,
        src: &HostBuffer,
        src_range: Range<usize>,
        dst: &mut HostBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "copy source")?;
        self.check_owned(dst, "copy destination")?;
        let dst_range = check_copy(src, &src_range, dst, dst_offset)?;
        let s = hetero_core::DeviceBuffer::dtype(src).size_bytes();
        dst.as_bytes_mut()[dst_range.start * s..dst_range.end * s]
            .copy_from_slice(&src.as_bytes()[src_range.start * s..src_range.end * s]);
        Ok(())
    }

    fn convert_copy(
        &self,
        src: &HostBuffer,
        src_range: Range<usize>,
        dst: &mut HostBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "convert_copy source")?;
        self.check_owned(dst, "convert_copy destination")?;
        let dst_range = check_convert_copy(src, &src_range, dst, dst_offset)?;
        let (from, to) = (
            hetero_core::DeviceBuffer::dtype(src),
            hetero_core::DeviceBuffer::dtype(dst),
        );
        if from == to {
            return self.copy(src, src_range, dst, dst_offset);
        }
        // half's slice conversions round to nearest even, with F16C where
        // the CPU has it.
        use hetero_core::half::slice::HalfFloatSliceExt;
        match half_conversion(self.id().backend, from, to)? {
            HalfConversion::F32ToF16 => dst.typed_mut::<f16>()?[dst_range]
                .convert_from_f32_slice(&src.typed::<f32>()?[src_range]),
            HalfConversion::F16ToF32 => src.typed::<f16>()?[src_range]
                .convert_to_f32_slice(&mut dst.typed_mut::<f32>()?[dst_range]),
        }
        Ok(())
    }

    fn reduce(&self, op: ReduceOp, acc: &mut HostBuffer, src: &HostBuffer) -> Result<()> {
        self.check_owned(acc, "reduce accumulator")?;
        self.check_owned(src, "reduce source")?;
        check_same_shape(acc, src, "reduce operands")?;
        with_dtype!(hetero_core::DeviceBuffer::dtype(acc), T => {
            self.combine_typed::<T>(op, acc.typed_mut::<T>()?, src.typed::<T>()?)
        })
    }

    fn finish_reduce(&self, op: ReduceOp, buf: &mut HostBuffer, count: usize) -> Result<()> {
        self.check_owned(buf, "reduce buffer")?;
        if count == 0 {
            return Err(Error::invalid(
                "count",
                "a reduction needs at least one contribution",
            ));
        }
        if op != ReduceOp::Avg || count == 1 {
            return Ok(());
        }
        with_dtype!(hetero_core::DeviceBuffer::dtype(buf), T => {
            self.map_typed::<T>(buf.typed_mut::<T>()?, |part| {
                part.iter_mut().for_each(|x| *x = x.div_count(count))
            })
        })
    }

    fn scale(&self, buf: &mut HostBuffer, alpha: f64) -> Result<()> {
        self.check_owned(buf, "scale buffer")?;
        with_dtype!(hetero_core::DeviceBuffer::dtype(buf), T => {
            self.map_typed::<T>(buf.typed_mut::<T>()?, |part| host_kernels::scale(part, alpha))
        })
    }

    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &HostBuffer,
        b: &HostBuffer,
        c: &mut HostBuffer,
    ) -> Result<()> {
        for (buf, what) in [(a, "gemm a"), (b, "gemm b")] {
            self.check_owned(buf, what)?;
        }
        self.check_owned(c, "gemm c")?;
        let dtype = hetero_core::DeviceBuffer::dtype(c);
        for (buf, what) in [(a, "gemm a"), (b, "gemm b")] {
            check_dtype(what, dtype, hetero_core::DeviceBuffer::dtype(buf))?;
        }
        spec.validate(
            hetero_core::DeviceBuffer::len(a),
            hetero_core::DeviceBuffer::len(b),
            hetero_core::DeviceBuffer::len(c),
        )?;
        if spec.m == 0 || spec.n == 0 {
            return Ok(());
        }
        match dtype {
            DType::F32 if spec.trans_b && !spec.trans_a && spec.m <= gemv::MAX_ROWS => {
                gemv::gemm_bt(
                    spec.m,
                    spec.n,
                    spec.k,
                    spec.alpha as f32,
                    a.typed()?,
                    b.typed()?,
                    spec.beta as f32,
                    c.typed_mut()?,
                    self.inner.threads,
                )
            }
            DType::F32 => self.gemm_native::<f32>(spec, a.typed()?, b.typed()?, c.typed_mut()?),
            DType::F64 => self.gemm_native::<f64>(spec, a.typed()?, b.typed()?, c.typed_mut()?),
            DType::F16 => self.gemm_widened::<f16>(spec, a, b, c)?,
            DType::BF16 => self.gemm_widened::<bf16>(spec, a, b, c)?,
            other => {
                return Err(Error::unsupported(
                    Backend::Host,
                    format!("gemm on {other}; the host has gemm for f32, f64, f16 and bf16"),
                ));
            }
        }
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &HostBuffer,
        gamma: &HostBuffer,
        beta: &HostBuffer,
        out: &mut HostBuffer,
        eps: f32,
    ) -> Result<()> {
        for (b, what) in [
            (x, "layer_norm x"),
            (gamma, "layer_norm gamma"),
            (beta, "layer_norm beta"),
        ] {
            self.check_owned(b, what)?;
        }
        self.check_owned(out, "layer_norm out")?;
        let (x, g, bt) = (
            x.typed::<f32>()?,
            gamma.typed::<f32>()?,
            beta.typed::<f32>()?,
        );
        let cols = g.len();
        layer_norm_rows(x.len(), cols, bt.len(), x.len())?;
        let out = out.typed_mut::<f32>()?;
        if out.len() != x.len() {
            return Err(Error::invalid(
                "layer_norm out",
                format!("holds {} elements, x holds {}", out.len(), x.len()),
            ));
        }
        for (row, o) in x.chunks(cols).zip(out.chunks_mut(cols)) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for c in 0..cols {
                o[c] = ((row[c] as f64 - mean) * inv) as f32 * g[c] + bt[c];
            }
        }
        Ok(())
    }

    fn bias_activation(
        &self,
        x: &mut HostBuffer,
        bias: &HostBuffer,
        act: Activation,
    ) -> Result<()> {
        self.check_owned(x, "bias_activation x")?;
        self.check_owned(bias, "bias")?;
        let b = bias.typed::<f32>()?;
        let x = x.typed_mut::<f32>()?;
        bias_rows(x.len(), b.len())?;
        for row in x.chunks_mut(b.len()) {
            for (v, &c) in row.iter_mut().zip(b) {
                *v = act.apply(f64::from(*v + c)) as f32;
            }
        }
        Ok(())
    }

    fn attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &HostBuffer,
        k_cache: &HostBuffer,
        v_cache: &HostBuffer,
        lens: &[u32],
        out: &mut HostBuffer,
    ) -> Result<()> {
        let (q, k, v, out) = self.attention_operands(q, k_cache, v_cache, out)?;
        spec.validate(q.len(), k.len(), v.len(), out.len(), lens)?;
        let (w, dh) = (spec.width(), spec.head_dim);
        let scale = 1.0 / (dh as f32).sqrt();
        let mut scores = vec![0.0f32; spec.max_len];
        for b in 0..spec.batch {
            let len = lens[b] as usize;
            for h in 0..spec.heads {
                let qv = &q[b * w + h * dh..][..dh];
                let mut max = f32::NEG_INFINITY;
                for (t, s) in scores[..len].iter_mut().enumerate() {
                    let kv = &k[(b * spec.max_len + t) * w + h * dh..][..dh];
                    *s = qv.iter().zip(kv).map(|(a, c)| a * c).sum::<f32>() * scale;
                    max = max.max(*s);
                }
                let mut z = 0.0f32;
                for s in &mut scores[..len] {
                    *s = (*s - max).exp();
                    z += *s;
                }
                let o = &mut out[b * w + h * dh..][..dh];
                o.iter_mut().for_each(|x| *x = 0.0);
                for (t, &p) in scores[..len].iter().enumerate() {
                    let vv = &v[(b * spec.max_len + t) * w + h * dh..][..dh];
                    for (x, &y) in o.iter_mut().zip(vv) {
                        *x += p / z * y;
                    }
                }
            }
        }
        Ok(())
    }

    fn argmax_rows(&self, x: &HostBuffer, rows: usize) -> Result<Vec<u32>> {
        self.check_owned(x, "argmax x")?;
        let x = x.typed::<f32>()?;
        let cols = argmax_cols(x.len(), rows)?;
        Ok(x.chunks(cols)
            .map(|row| {
                let mut best = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = i;
                    }
                }
                best as u32
            })
            .collect())
    }

    fn rms_norm(
        &self,
        x: &HostBuffer,
        weight: &HostBuffer,
        out: &mut HostBuffer,
        eps: f32,
    ) -> Result<()> {
        self.check_owned(x, "rms_norm x")?;
        self.check_owned(weight, "rms_norm weight")?;
        self.check_owned(out, "rms_norm out")?;
        let (x, w) = (x.typed::<f32>()?, weight.typed::<f32>()?);
        let out = out.typed_mut::<f32>()?;
        rms_norm_rows(x.len(), w.len(), out.len())?;
        llama::rms_norm(x, w, out, eps);
        Ok(())
    }

    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut HostBuffer,
        positions: &[u32],
        inv_freq: &HostBuffer,
    ) -> Result<()> {
        self.check_owned(x, "rope x")?;
        self.check_owned(inv_freq, "rope inv_freq")?;
        let f = inv_freq.typed::<f32>()?;
        let x = x.typed_mut::<f32>()?;
        spec.validate(x.len(), f.len(), positions)?;
        llama::rope(spec, x, positions, f);
        Ok(())
    }

    fn attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &HostBuffer,
        k_cache: &HostBuffer,
        v_cache: &HostBuffer,
        lens: &[u32],
        out: &mut HostBuffer,
    ) -> Result<()> {
        self.check_attention_owners(q, k_cache, v_cache, out)?;
        let element = kv_cache_element(self.id().backend, k_cache, v_cache)?;
        let (q, out) = (q.typed::<f32>()?, out.typed_mut::<f32>()?);
        let workers = &self.inner.workers;
        match element {
            KvElement::F32 => {
                let (k, v) = (k_cache.typed::<f32>()?, v_cache.typed::<f32>()?);
                spec.validate(q.len(), k.len(), v.len(), out.len(), lens)?;
                llama::attention_causal(spec, q, k, v, lens, out, workers);
            }
            KvElement::F16 => {
                let (k, v) = (k_cache.typed::<f16>()?, v_cache.typed::<f16>()?);
                spec.validate(q.len(), k.len(), v.len(), out.len(), lens)?;
                llama::attention_causal(spec, q, k, v, lens, out, workers);
            }
        }
        Ok(())
    }

    fn append_and_attend(
        &self,
        spec: &AppendAttendSpec,
        q: &HostBuffer,
        k_new: &HostBuffer,
        v_new: &HostBuffer,
        seqs: &mut [AppendAttendSeq<'_, HostBuffer>],
        out: &mut HostBuffer,
    ) -> Result<()> {
        for (b, what) in [
            (q, "append_and_attend q"),
            (k_new, "append_and_attend k_new"),
            (v_new, "append_and_attend v_new"),
            (&*out, "append_and_attend out"),
        ] {
            self.check_owned(b, what)?;
        }
        for seq in seqs.iter() {
            self.check_owned(seq.k, "append_and_attend k cache")?;
            self.check_owned(seq.v, "append_and_attend v cache")?;
        }
        let shape = check_append_attend(
            spec,
            hetero_core::DeviceBuffer::len(q),
            hetero_core::DeviceBuffer::len(k_new),
            hetero_core::DeviceBuffer::len(v_new),
            hetero_core::DeviceBuffer::len(out),
            &seq_shapes(seqs),
        )?;
        let Some(first) = seqs.first() else {
            return Ok(());
        };
        let element = kv_cache_element(self.id().backend, first.k, first.v)?;
        let (q, out) = (q.typed::<f32>()?, out.typed_mut::<f32>()?);
        k_new.typed::<f32>()?;
        v_new.typed::<f32>()?;
        let kw = spec.kv_width();
        for seq in seqs.iter_mut() {
            let new = seq.rows.start * kw..seq.rows.end * kw;
            self.convert_copy(k_new, new.clone(), seq.k, seq.cached * kw)?;
            self.convert_copy(v_new, new, seq.v, seq.cached * kw)?;
        }
        debug_assert_eq!(shape.rows * spec.q_width(), q.len());
        let workers = &self.inner.workers;
        match element {
            KvElement::F32 => {
                let caches = step_caches::<f32>(seqs)?;
                attention_step::attention_step(spec, q, &caches, out, workers);
            }
            KvElement::F16 => {
                let caches = step_caches::<f16>(seqs)?;
                attention_step::attention_step(spec, q, &caches, out, workers);
            }
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut HostBuffer, up: &HostBuffer) -> Result<()> {
        self.check_owned(gate, "silu_mul gate")?;
        self.check_owned(up, "silu_mul up")?;
        check_same_shape(gate, up, "silu_mul")?;
        let u = up.typed::<f32>()?;
        let g = gate.typed_mut::<f32>()?;
        llama::silu_mul(g, u, &self.inner.workers);
        Ok(())
    }

    fn matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &HostBuffer,
        w: &HostBuffer,
        y: &mut HostBuffer,
    ) -> Result<()> {
        self.check_owned(x, "matmul_quant x")?;
        self.check_owned(w, "matmul_quant w")?;
        self.check_owned(y, "matmul_quant y")?;
        let (xs, ws) = (x.typed::<f32>()?, w.typed::<u8>()?);
        let ys = y.typed_mut::<f32>()?;
        spec.validate(xs.len(), ws.len(), ys.len())?;
        quant::matmul(
            spec,
            xs,
            ws,
            ys,
            &self.inner.workers,
            self.inner.quant_paths,
        );
        Ok(())
    }

    fn embedding_quant(
        &self,
        quant: QuantType,
        table: &HostBuffer,
        ids: &[u32],
        out: &mut HostBuffer,
    ) -> Result<()> {
        self.check_owned(table, "embedding_quant table")?;
        self.check_owned(out, "embedding_quant out")?;
        let t = table.typed::<u8>()?;
        let o = out.typed_mut::<f32>()?;
        let width = hetero_core::transformer::quant_embedding_width(quant, t.len(), o.len(), ids)?;
        quant::embedding(quant, t, width, ids, o);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        // Host kernels complete before they return.
        Ok(())
    }
}

impl HostDevice {
    /// 16-bit GEMM: computed in f32, rounded once at the end.
    fn gemm_widened<T: Arith>(
        &self,
        spec: &GemmSpec,
        a: &HostBuffer,
        b: &HostBuffer,
        c: &mut HostBuffer,
    ) -> Result<()> {
        let (aw, bw) = (widen(a.typed::<T>()?), widen(b.typed::<T>()?));
        let mut cw = widen(c.typed::<T>()?);
        self.gemm_native::<f32>(spec, &aw, &bw, &mut cw);
        for (dst, v) in c.typed_mut::<T>()?.iter_mut().zip(cw) {
            *dst = T::from_f64(f64::from(v));
        }
        Ok(())
    }
}

/// The step's caches as typed slices (every cache of `T`, checked).
fn step_caches<'a, T: hetero_core::Element>(
    seqs: &'a [AppendAttendSeq<'_, HostBuffer>],
) -> Result<Vec<StepCache<'a, T>>> {
    seqs.iter()
        .map(|s| {
            Ok(StepCache {
                k: s.k.typed::<T>()?,
                v: s.v.typed::<T>()?,
                cached: s.cached,
                rows: s.rows.clone(),
            })
        })
        .collect()
}
