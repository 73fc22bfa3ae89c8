//! Launchers of the shared kernels (hetero-gpu-kernels) on a ROCm device:
//! elementwise reduce / average / scale, the tiled GEMM, the decode-step
//! and Llama-family kernels and the embedding gather. The `Device` impl in
//! `hip.rs` delegates here.
//!
//! Every launcher checks owners, dtypes and shapes with core's helpers
//! before launching, so a bad call is an error and never an access out of
//! bounds. Launch shapes are those of hetero-cuda for the same kernels.
//! Per-call host arrays (positions, lengths, ids) go up as u32 in an `I32`
//! buffer; the launcher waits for the kernel before that buffer is freed
//! (whether `hipFree` waits for queued kernels is not documented the same
//! way across ROCm versions).

use std::ffi::c_void;

use hetero_core::append_attend::{
    AppendAttendSeq, AppendAttendSpec, check_append_attend, seq_shapes,
};
use hetero_core::device::{
    argmax_cols, bias_rows, check_decode_f32, check_dtype, check_same_shape, layer_norm_rows,
};
use hetero_core::transformer::{embedding_width, rms_norm_rows};
use hetero_core::{
    Activation, AttentionSpec, Backend, CausalAttentionSpec, DType, Device, DeviceBuffer, Error,
    GemmSpec, HostSlice, HostSliceMut, ReduceOp, Result, RopeLayout, RopeSpec,
};
use hetero_gpu_kernels as kernels;

use super::{RocmBuffer, RocmDevice};
use crate::module::{Args, Launch, launch};

/// Threads per block of the elementwise (grid-stride) kernels.
const BLOCK: u32 = 256;

/// Static shared memory of the causal attention kernel (its `sh[256]`).
const ATTENTION_STATIC_SHARED: usize = kernels::DECODE_BLOCK as usize * 4;

/// Shared memory (LDS) a block may use: 64 KiB on every AMD GPU since GCN;
/// 48 KiB keeps the same limit as hetero-cuda, so a shape runs on both.
const SHARED_LIMIT: usize = 48 * 1024;

/// Largest grid dimension HIP takes (2^31 - 1 blocks in x; y is limited
/// to 65535 by the CUDA model HIP follows).
const GRID_X_MAX: usize = i32::MAX as usize;
const GRID_Y_MAX: usize = 65_535;

/// Grid-stride launch over `n` elements: enough blocks to fill the GPU.
fn elementwise(n: usize) -> Launch {
    Launch {
        grid: (n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32, 1),
        block: BLOCK,
        shared_bytes: 0,
    }
}

/// One `DECODE_BLOCK`-thread block per item.
fn one_block_each(blocks: usize, shared_bytes: usize, what: &str) -> Result<Launch> {
    if blocks > GRID_X_MAX {
        return Err(Error::unsupported(
            Backend::Rocm,
            format!("{what}: {blocks} blocks, past the grid's 2^31 - 1"),
        ));
    }
    Ok(Launch {
        grid: (blocks as u32, 1),
        block: kernels::DECODE_BLOCK,
        shared_bytes: shared_bytes as u32,
    })
}

fn check_f32(what: &str, b: &dyn DeviceBuffer) -> Result<()> {
    check_decode_f32(Backend::Rocm, what, b)
}

impl RocmBuffer {
    fn arg(&self) -> *const c_void {
        self.ptr.0
    }
}

impl RocmDevice {
    /// Launch kernel `name` on this GPU.
    ///
    /// # Safety
    /// As [`launch`]: `args` match the kernel's parameters and keep its
    /// accesses inside the buffers passed.
    unsafe fn run(&self, name: &str, shape: Launch, mut args: Args) -> Result<()> {
        let module = self.module()?;
        let function = module.function(name).ok_or_else(|| {
            Error::unsupported(
                Backend::Rocm,
                format!("kernel {name} is not in the loaded code object"),
            )
        })?;
        self.select("hipSetDevice")?;
        // SAFETY: forwarded from the caller.
        let status = unsafe { launch(function, shape, &mut args) };
        self.status("hipModuleLaunchKernel", status)
    }

    /// `values` in a new buffer of this device, read by the kernels as
    /// `unsigned int` (stored as `I32`, bit for bit).
    fn upload_u32(&self, values: &[u32]) -> Result<RocmBuffer> {
        let bits: Vec<i32> = values.iter().map(|&v| v as i32).collect();
        let mut buf = self.alloc(DType::I32, bits.len())?;
        self.upload(&mut buf, 0, HostSlice::new(&bits))?;
        Ok(buf)
    }

    pub(super) fn launch_reduce(
        &self,
        op: ReduceOp,
        acc: &mut RocmBuffer,
        src: &RocmBuffer,
    ) -> Result<()> {
        self.check_owned(acc, "reduce accumulator")?;
        self.check_owned(src, "reduce source")?;
        check_same_shape(acc, src, "reduce operands")?;
        if acc.len == 0 {
            return Ok(());
        }
        let args = Args::default()
            .ptr(acc.arg())
            .ptr(src.arg())
            .u64(acc.len as u64);
        // SAFETY: (acc, src, u64 n) of the dtype's storage type; both hold
        // n elements (checked above).
        unsafe {
            self.run(
                &kernels::reduce_name(op, acc.dtype),
                elementwise(acc.len),
                args,
            )
        }
    }

    pub(super) fn launch_finish_reduce(
        &self,
        op: ReduceOp,
        buf: &mut RocmBuffer,
        count: usize,
    ) -> Result<()> {
        self.check_owned(buf, "reduce buffer")?;
        if count == 0 {
            return Err(Error::invalid(
                "count",
                "a reduction needs at least one contribution",
            ));
        }
        if op != ReduceOp::Avg || count == 1 || buf.len == 0 {
            return Ok(());
        }
        let args = Args::default()
            .ptr(buf.arg())
            .u64(buf.len as u64)
            .u64(count as u64);
        // SAFETY: (buf, u64 n, u64 count); buf holds n elements.
        unsafe { self.run(&kernels::avg_name(buf.dtype), elementwise(buf.len), args) }
    }

    pub(super) fn launch_scale(&self, buf: &mut RocmBuffer, alpha: f64) -> Result<()> {
        self.check_owned(buf, "scale buffer")?;
        if buf.len == 0 {
            return Ok(());
        }
        let args = Args::default()
            .ptr(buf.arg())
            .u64(buf.len as u64)
            .f64(alpha);
        // SAFETY: (buf, u64 n, double alpha); buf holds n elements.
        unsafe { self.run(&kernels::scale_name(buf.dtype), elementwise(buf.len), args) }
    }

    pub(super) fn launch_gemm(
        &self,
        spec: &GemmSpec,
        a: &RocmBuffer,
        b: &RocmBuffer,
        c: &mut RocmBuffer,
    ) -> Result<()> {
        self.check_owned(a, "gemm a")?;
        self.check_owned(b, "gemm b")?;
        self.check_owned(c, "gemm c")?;
        check_dtype("gemm a", c.dtype, a.dtype)?;
        check_dtype("gemm b", c.dtype, b.dtype)?;
        spec.validate(a.len, b.len, c.len)?;
        let Some(name) = kernels::gemm_name(c.dtype) else {
            return Err(Error::unsupported(
                Backend::Rocm,
                format!(
                    "gemm on {}; the ROCm backend's tiled gemm takes f32, f64, f16 and bf16",
                    c.dtype
                ),
            ));
        };
        if spec.m == 0 || spec.n == 0 {
            return Ok(());
        }
        let (col_tiles, row_tiles) = (
            spec.n.div_ceil(kernels::GEMM_TILE),
            spec.m.div_ceil(kernels::GEMM_TILE),
        );
        if col_tiles > GRID_X_MAX || row_tiles > GRID_Y_MAX {
            return Err(Error::unsupported(
                Backend::Rocm,
                format!(
                    "gemm of {} x {}: {row_tiles} x {col_tiles} tiles of {}, past the grid's {GRID_Y_MAX} rows of tiles",
                    spec.m,
                    spec.n,
                    kernels::GEMM_TILE
                ),
            ));
        }
        let args = Args::default()
            .ptr(a.arg())
            .ptr(b.arg())
            .ptr(c.arg())
            .u64(spec.m as u64)
            .u64(spec.n as u64)
            .u64(spec.k as u64)
            .i32(spec.trans_a.into())
            .i32(spec.trans_b.into())
            .f64(spec.alpha)
            .f64(spec.beta);
        let shape = Launch {
            grid: (col_tiles as u32, row_tiles as u32),
            block: kernels::GEMM_THREADS,
            shared_bytes: 0,
        };
        // SAFETY: (a, b, c, u64 m, n, k, int trans_a, trans_b, double
        // alpha, beta) as in gemm.cu; validate checked a holds m * k, b
        // k * n and c m * n elements, and the kernel bounds every access by
        // m, n and k.
        unsafe { self.run(&name, shape, args) }
    }

    pub(super) fn launch_layer_norm(
        &self,
        x: &RocmBuffer,
        gamma: &RocmBuffer,
        beta: &RocmBuffer,
        out: &mut RocmBuffer,
        eps: f32,
    ) -> Result<()> {
        for (b, what) in [
            (x, "layer_norm x"),
            (gamma, "layer_norm gamma"),
            (beta, "layer_norm beta"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
        }
        self.check_owned(out, "layer_norm out")?;
        check_f32("layer_norm out", out)?;
        let cols = gamma.len;
        let rows = layer_norm_rows(x.len, cols, beta.len, out.len)?;
        if rows == 0 {
            return Ok(());
        }
        let args = Args::default()
            .ptr(x.arg())
            .ptr(gamma.arg())
            .ptr(beta.arg())
            .ptr(out.arg())
            .u64(cols as u64)
            .f32(eps);
        // SAFETY: (x, g, b, out, u64 cols, float eps) as in decode.cu; one
        // block per row of `cols` floats, shapes checked above.
        unsafe {
            self.run(
                "hetero_layer_norm_f32",
                one_block_each(rows, 0, "layer_norm rows")?,
                args,
            )
        }
    }

    pub(super) fn launch_bias_activation(
        &self,
        x: &mut RocmBuffer,
        bias: &RocmBuffer,
        act: Activation,
    ) -> Result<()> {
        self.check_owned(x, "bias_activation x")?;
        self.check_owned(bias, "bias")?;
        check_f32("bias_activation x", x)?;
        check_f32("bias", bias)?;
        let cols = bias.len;
        bias_rows(x.len, cols)?;
        if x.len == 0 {
            return Ok(());
        }
        let code: i32 = match act {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
        };
        let args = Args::default()
            .ptr(x.arg())
            .ptr(bias.arg())
            .u64(x.len as u64)
            .u64(cols as u64)
            .i32(code);
        // SAFETY: (x, bias, u64 n, u64 cols, int act); x holds n floats,
        // bias cols.
        unsafe { self.run("hetero_bias_act_f32", elementwise(x.len), args) }
    }

    pub(super) fn launch_attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &RocmBuffer,
        k_cache: &RocmBuffer,
        v_cache: &RocmBuffer,
        lens: &[u32],
        out: &mut RocmBuffer,
    ) -> Result<()> {
        for (b, what) in [
            (q, "attention q"),
            (k_cache, "attention k cache"),
            (v_cache, "attention v cache"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
        }
        self.check_owned(out, "attention out")?;
        check_f32("attention out", out)?;
        spec.validate(q.len, k_cache.len, v_cache.len, out.len, lens)?;
        if spec.max_len > kernels::ATTENTION_MAX_LEN {
            return Err(Error::unsupported(
                Backend::Rocm,
                format!(
                    "attention over {} positions; the kernel keeps scores in shared memory, up to {}",
                    spec.max_len,
                    kernels::ATTENTION_MAX_LEN
                ),
            ));
        }
        if spec.batch == 0 || spec.heads == 0 {
            return Ok(());
        }
        let lens_buf = self.upload_u32(lens)?;
        let args = Args::default()
            .ptr(q.arg())
            .ptr(k_cache.arg())
            .ptr(v_cache.arg())
            .ptr(lens_buf.arg())
            .ptr(out.arg())
            .u64(spec.heads as u64)
            .u64(spec.head_dim as u64)
            .u64(spec.max_len as u64);
        let shape = one_block_each(
            spec.batch * spec.heads,
            spec.max_len * 4,
            "attention_decode (sequence, head)",
        )?;
        // SAFETY: (q, k, v, int lens, out, u64 heads, dh, max_len) as in
        // decode.cu; spec.validate checked every buffer and length, the
        // scores fit in the dynamic shared memory requested.
        unsafe { self.run("hetero_attention_decode_f32", shape, args)? };
        self.synchronize()
    }

    pub(super) fn launch_argmax_rows(&self, x: &RocmBuffer, rows: usize) -> Result<Vec<u32>> {
        self.check_owned(x, "argmax x")?;
        check_f32("argmax x", x)?;
        let cols = argmax_cols(x.len, rows)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let ids = self.alloc(DType::I32, rows)?;
        let args = Args::default().ptr(x.arg()).ptr(ids.arg()).u64(cols as u64);
        // SAFETY: (x, unsigned out, u64 cols); one block per row of `cols`
        // floats, `ids` holds `rows` ints.
        unsafe {
            self.run(
                "hetero_argmax_f32",
                one_block_each(rows, 0, "argmax rows")?,
                args,
            )?
        };
        let mut host = vec![0i32; rows];
        self.download(&ids, 0, HostSliceMut::new(&mut host))?;
        Ok(host.into_iter().map(|i| i as u32).collect())
    }

    pub(super) fn launch_rms_norm(
        &self,
        x: &RocmBuffer,
        weight: &RocmBuffer,
        out: &mut RocmBuffer,
        eps: f32,
    ) -> Result<()> {
        for (b, what) in [(x, "rms_norm x"), (weight, "rms_norm weight")] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
        }
        self.check_owned(out, "rms_norm out")?;
        check_f32("rms_norm out", out)?;
        let cols = weight.len;
        let rows = rms_norm_rows(x.len, cols, out.len)?;
        if rows == 0 {
            return Ok(());
        }
        let args = Args::default()
            .ptr(x.arg())
            .ptr(weight.arg())
            .ptr(out.arg())
            .u64(cols as u64)
            .f32(eps);
        // SAFETY: (x, w, out, u64 cols, float eps) as in llama.cu; one block
        // per row, x and out hold rows * cols floats, weight cols.
        unsafe {
            self.run(
                "hetero_rms_norm_f32",
                one_block_each(rows, 0, "rms_norm rows")?,
                args,
            )
        }
    }

    pub(super) fn launch_rope(
        &self,
        spec: &RopeSpec,
        x: &mut RocmBuffer,
        positions: &[u32],
        inv_freq: &RocmBuffer,
    ) -> Result<()> {
        self.check_owned(x, "rope x")?;
        check_f32("rope x", x)?;
        self.check_owned(inv_freq, "rope inv_freq")?;
        check_f32("rope inv_freq", inv_freq)?;
        spec.validate(x.len, inv_freq.len, positions)?;
        let half = spec.head_dim / 2;
        // One thread per rotated pair.
        let pairs = spec.tokens * spec.heads * half;
        if pairs == 0 {
            return Ok(());
        }
        let pos = self.upload_u32(positions)?;
        let halves: i32 = match spec.layout {
            RopeLayout::Adjacent => 0,
            RopeLayout::Halves => 1,
        };
        let args = Args::default()
            .ptr(x.arg())
            .ptr(pos.arg())
            .ptr(inv_freq.arg())
            .u64(pairs as u64)
            .u64(spec.heads as u64)
            .u64(half as u64)
            .i32(halves);
        // SAFETY: (x, unsigned pos, inv_freq, u64 n, heads, half, int
        // halves) as in llama.cu; validate checked x holds tokens * heads *
        // 2 * half floats, inv_freq half, positions tokens.
        unsafe { self.run("hetero_rope_f32", elementwise(pairs), args)? };
        self.synchronize()
    }

    pub(super) fn launch_attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &RocmBuffer,
        k_cache: &RocmBuffer,
        v_cache: &RocmBuffer,
        lens: &[u32],
        out: &mut RocmBuffer,
    ) -> Result<()> {
        for (b, what) in [
            (q, "attention q"),
            (k_cache, "attention k cache"),
            (v_cache, "attention v cache"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
        }
        self.check_owned(out, "attention out")?;
        check_f32("attention out", out)?;
        spec.validate(q.len, k_cache.len, v_cache.len, out.len, lens)?;
        // The query row, its accumulator and one tile of scores, in f32.
        let shared = (2 * spec.head_dim + kernels::ATTENTION_TILE) * 4;
        if shared + ATTENTION_STATIC_SHARED > SHARED_LIMIT {
            return Err(Error::unsupported(
                Backend::Rocm,
                format!(
                    "causal attention with head_dim {}: the kernel keeps the query row and \
                     its accumulator in shared memory, {} bytes past the {} a block has",
                    spec.head_dim,
                    shared + ATTENTION_STATIC_SHARED,
                    SHARED_LIMIT
                ),
            ));
        }
        let items = spec.batch * spec.q_len * spec.heads;
        if items == 0 {
            return Ok(());
        }
        let shape = one_block_each(items, shared, "attention_causal (sequence, token, head)")?;
        let lens_buf = self.upload_u32(lens)?;
        let args = Args::default()
            .ptr(q.arg())
            .ptr(k_cache.arg())
            .ptr(v_cache.arg())
            .ptr(lens_buf.arg())
            .ptr(out.arg())
            .u64(spec.q_len as u64)
            .u64(spec.heads as u64)
            .u64(spec.kv_heads as u64)
            .u64(spec.head_dim as u64)
            .u64(spec.max_len as u64);
        // SAFETY: (q, k, v, unsigned lens, out, u64 q_len, heads, kv_heads,
        // dh, max_len) as in llama.cu; validate checked every buffer against
        // the spec, kv_heads > 0 dividing heads and q_len <= lens[b] <=
        // max_len, so every position read is in the cache.
        unsafe { self.run("hetero_attention_causal_f32", shape, args)? };
        self.synchronize()
    }

    /// `append_and_attend` in two launches whatever the batch, as on CUDA:
    /// the step table (each sequence's cache addresses, positions cached
    /// and first row, then every row's sequence) goes up in one copy, then
    /// `hetero_kv_append_f32` and `hetero_attention_step_f32`. f32 caches
    /// only, as `attention_causal` here.
    pub(super) fn launch_append_and_attend(
        &self,
        spec: &AppendAttendSpec,
        q: &RocmBuffer,
        k_new: &RocmBuffer,
        v_new: &RocmBuffer,
        seqs: &mut [AppendAttendSeq<'_, RocmBuffer>],
        out: &mut RocmBuffer,
    ) -> Result<()> {
        for (b, what) in [
            (q, "append_and_attend q"),
            (k_new, "append_and_attend k_new"),
            (v_new, "append_and_attend v_new"),
            (&*out, "append_and_attend out"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
        }
        for seq in seqs.iter() {
            self.check_owned(seq.k, "append_and_attend k cache")?;
            self.check_owned(seq.v, "append_and_attend v cache")?;
            check_f32("append_and_attend k cache", seq.k)?;
            check_f32("append_and_attend v cache", seq.v)?;
        }
        let shape = check_append_attend(
            spec,
            q.len,
            k_new.len,
            v_new.len,
            out.len,
            &seq_shapes(seqs),
        )?;
        if seqs.is_empty() {
            return Ok(());
        }
        let shared = (2 * spec.head_dim + kernels::ATTENTION_TILE) * 4;
        if shared + ATTENTION_STATIC_SHARED > SHARED_LIMIT {
            return Err(Error::unsupported(
                Backend::Rocm,
                format!(
                    "attention with head_dim {}: {} bytes of shared memory, past the {} a block has",
                    spec.head_dim,
                    shared + ATTENTION_STATIC_SHARED,
                    SHARED_LIMIT
                ),
            ));
        }
        let blocks = one_block_each(
            shape.rows * spec.heads,
            shared,
            "append_and_attend (row, head)",
        )?;
        let entries: Vec<kernels::StepSeq> = seqs
            .iter()
            .map(|seq| kernels::StepSeq {
                k: seq.k.arg() as usize as u64,
                v: seq.v.arg() as usize as u64,
                cached: seq.cached,
                rows: seq.rows.clone(),
            })
            .collect();
        let table = kernels::step_table(&entries);
        let words: Vec<i64> = table.iter().map(|&w| w as i64).collect();
        let mut table_buf = self.alloc(DType::I64, words.len())?;
        self.upload(&mut table_buf, 0, HostSlice::new(&words))?;
        let n = shape.rows * spec.kv_width();
        let args = Args::default()
            .ptr(k_new.arg())
            .ptr(v_new.arg())
            .ptr(table_buf.arg())
            .u64(seqs.len() as u64)
            .u64(n as u64)
            .u64(spec.kv_width() as u64);
        // SAFETY: (k_new, v_new, table, u64 nseq, u64 n, u64 kw) as in
        // llama.cu; check_append_attend checked k_new and v_new hold n
        // floats, the rows are consecutive and cover the step, and each
        // sequence's f32 caches hold cached + rows positions of kw values,
        // so every address the table yields is inside its cache.
        unsafe { self.run("hetero_kv_append_f32", elementwise(n), args)? };
        let args = Args::default()
            .ptr(q.arg())
            .ptr(table_buf.arg())
            .u64(seqs.len() as u64)
            .ptr(out.arg())
            .u64(spec.heads as u64)
            .u64(spec.kv_heads as u64)
            .u64(spec.head_dim as u64);
        // SAFETY: (q, table, u64 nseq, out, u64 heads, kv_heads, dh) as in
        // llama.cu; q and out hold rows * heads * dh floats, one block per
        // (row, head), kv_heads > 0 divides heads (checked); row r reads
        // positions 0..=cached + (r - first row) of its own caches, written
        // by the append kernel before it.
        unsafe { self.run("hetero_attention_step_f32", blocks, args)? };
        self.synchronize()
    }

    pub(super) fn launch_silu_mul(&self, gate: &mut RocmBuffer, up: &RocmBuffer) -> Result<()> {
        self.check_owned(gate, "silu_mul gate")?;
        self.check_owned(up, "silu_mul up")?;
        check_f32("silu_mul gate", gate)?;
        check_same_shape(gate, up, "silu_mul")?;
        if gate.len == 0 {
            return Ok(());
        }
        let args = Args::default()
            .ptr(gate.arg())
            .ptr(up.arg())
            .u64(gate.len as u64);
        // SAFETY: (gate, up, u64 n) as in llama.cu; both hold n floats.
        unsafe { self.run("hetero_silu_mul_f32", elementwise(gate.len), args) }
    }

    /// Embedding gather in one launch, for every dtype (the kernel moves
    /// elements of the dtype's size).
    pub(super) fn launch_embedding(
        &self,
        table: &RocmBuffer,
        ids: &[u32],
        out: &mut RocmBuffer,
    ) -> Result<()> {
        self.check_owned(table, "embedding table")?;
        self.check_owned(out, "embedding out")?;
        check_dtype("embedding out", table.dtype, out.dtype)?;
        let width = embedding_width(table.len, out.len, ids)?;
        if self.kernels_supported().is_err() {
            // No kernels for this GPU: the trait's way, one copy per row
            // (copies need no compiler).
            for (r, &id) in ids.iter().enumerate() {
                let start = id as usize * width;
                self.copy(table, start..start + width, out, r * width)?;
            }
            return Ok(());
        }
        if out.len == 0 {
            return Ok(());
        }
        let ids_buf = self.upload_u32(ids)?;
        let args = Args::default()
            .ptr(table.arg())
            .ptr(ids_buf.arg())
            .ptr(out.arg())
            .u64(out.len as u64)
            .u64(width as u64);
        // SAFETY: (table, unsigned ids, out, u64 n, u64 width), elements of
        // the dtype's size; embedding_width checked out holds ids.len() rows
        // of width and every id names a row of the table.
        unsafe {
            self.run(
                &kernels::gather_name(table.dtype.size_bytes()),
                elementwise(out.len),
                args,
            )?
        };
        self.synchronize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_shared_memory_fits_llama_heads() {
        for head_dim in [64, 128, 256] {
            let shared = (2 * head_dim + kernels::ATTENTION_TILE) * 4;
            assert!(shared + ATTENTION_STATIC_SHARED <= SHARED_LIMIT);
        }
    }

    #[test]
    fn grids_past_the_limit_are_unsupported() {
        assert_eq!(one_block_each(5, 0, "x").unwrap().grid, (5, 1));
        assert!(
            one_block_each(1 << 31, 0, "x")
                .unwrap_err()
                .is_unsupported()
        );
        assert_eq!(elementwise(1).grid.0, 1);
        assert_eq!(elementwise(1 << 40).grid.0, 65_535);
    }
}
