//! Launchers of the Llama-family kernels (`rms_norm`, `rope`,
//! `attention_causal`, `append_and_attend`, `silu_mul`) and of the one-launch embedding gather;
//! the kernels are CUDA C in hetero-gpu-kernels (`llama.cu`), the `Device`
//! impl delegates here.
//!
//! Every launcher checks owners, dtypes and shapes (the core's `validate`
//! helpers) before launching, so a bad call is an error and never a read
//! out of bounds. Per-call host arrays (positions, lengths, ids) go up as
//! u32 in an `I32` buffer of this device, freed after the kernel on the
//! stream (as `attention_decode` does).

use cudarc::driver::{DevicePtrMut, LaunchConfig, PushKernelArg};
use hetero_core::append_attend::{
    AppendAttendSeq, AppendAttendSpec, check_append_attend, seq_shapes,
};
use hetero_core::device::{
    HalfConversion, KvElement, check_convert_copy, check_dtype, check_same_shape, half_conversion,
    kv_cache_element,
};
use hetero_core::transformer::{embedding_width, rms_norm_rows};
use hetero_core::{
    Backend, CausalAttentionSpec, DType, Device, Error, HostSlice, Result, RopeLayout, RopeSpec,
};

use super::{CudaBuffer, CudaDevice, check_f32, launch_config};
use crate::kernels;

/// Static shared memory of the attention kernel (its `sh[256]`).
const ATTENTION_STATIC_SHARED: usize = kernels::DECODE_BLOCK as usize * 4;

/// Shared memory a block may use without opting in (48 KiB on every GPU).
const SHARED_LIMIT: usize = 48 * 1024;

/// Dynamic shared memory of one attention block for heads of `head_dim`:
/// the query row, the accumulator and one tile of scores, in f32.
fn attention_shared_bytes(head_dim: usize) -> usize {
    (2 * head_dim + kernels::ATTENTION_TILE) * 4
}

/// One block per item as a grid dimension (at most 2^31 - 1 blocks).
fn grid_blocks(n: usize, what: &str) -> Result<u32> {
    if n > i32::MAX as usize {
        return Err(Error::unsupported(
            Backend::Cuda,
            format!("{what}: {n} blocks, past the grid's 2^31 - 1"),
        ));
    }
    Ok(n as u32)
}

fn one_block_each(blocks: u32, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (kernels::DECODE_BLOCK, 1, 1),
        shared_mem_bytes,
    }
}

impl CudaDevice {
    /// `values` in a new buffer of this device, read by the kernels as
    /// `unsigned int` (stored as `I32`, bit for bit).
    pub(super) fn upload_u32(&self, values: &[u32]) -> Result<CudaBuffer> {
        let bits: Vec<i32> = values.iter().map(|&v| v as i32).collect();
        let mut buf = self.alloc(DType::I32, bits.len())?;
        self.upload(&mut buf, 0, HostSlice::new(&bits))?;
        Ok(buf)
    }

    pub(super) fn launch_rms_norm(
        &self,
        x: &CudaBuffer,
        weight: &CudaBuffer,
        out: &mut CudaBuffer,
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
        let blocks = grid_blocks(rows, "rms_norm rows")?;
        let f = self.function("hetero_rms_norm_f32")?;
        let cols64 = cols as u64;
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&x.data)
            .arg(&weight.data)
            .arg(&mut out.data)
            .arg(&cols64)
            .arg(&eps);
        // SAFETY: (x, w, out, u64 cols, float eps) as in llama.cu; one
        // block per row of `cols` floats, x and out hold rows * cols,
        // weight cols (checked above).
        unsafe { launch.launch(one_block_each(blocks, 0)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }

    pub(super) fn launch_rope(
        &self,
        spec: &RopeSpec,
        x: &mut CudaBuffer,
        positions: &[u32],
        inv_freq: &CudaBuffer,
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
        let f = self.function("hetero_rope_f32")?;
        let (n, heads, half64) = (pairs as u64, spec.heads as u64, half as u64);
        let halves: i32 = match spec.layout {
            RopeLayout::Adjacent => 0,
            RopeLayout::Halves => 1,
        };
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&mut x.data)
            .arg(&pos.data)
            .arg(&inv_freq.data)
            .arg(&n)
            .arg(&heads)
            .arg(&half64)
            .arg(&halves);
        // SAFETY: (x, unsigned pos, inv_freq, u64 n, u64 heads, u64 half,
        // int halves) as in llama.cu; validate checked x holds
        // tokens * heads * 2 * half floats, inv_freq half, positions tokens
        // (uploaded to `pos`). Each thread rotates its own pair.
        unsafe { launch.launch(launch_config(pairs)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))?;
        // `pos` is freed when dropped; the stream orders the free after the kernel.
        Ok(())
    }

    pub(super) fn launch_attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &CudaBuffer,
        k_cache: &CudaBuffer,
        v_cache: &CudaBuffer,
        lens: &[u32],
        out: &mut CudaBuffer,
    ) -> Result<()> {
        self.check_owned(q, "attention q")?;
        check_f32("attention q", q)?;
        self.check_owned(k_cache, "attention k cache")?;
        self.check_owned(v_cache, "attention v cache")?;
        // Caches of f32, or f16 (widened by the kernel as it reads).
        let kernel = match kv_cache_element(Backend::Cuda, k_cache, v_cache)? {
            KvElement::F32 => "hetero_attention_causal_f32",
            KvElement::F16 => "hetero_attention_causal_f16",
        };
        self.check_owned(out, "attention out")?;
        check_f32("attention out", out)?;
        spec.validate(q.len, k_cache.len, v_cache.len, out.len, lens)?;
        let shared = attention_shared_bytes(spec.head_dim);
        if shared + ATTENTION_STATIC_SHARED > SHARED_LIMIT {
            return Err(Error::unsupported(
                Backend::Cuda,
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
        let blocks = grid_blocks(items, "attention_causal (sequence, token, head)")?;
        let lens_buf = self.upload_u32(lens)?;
        let f = self.function(kernel)?;
        let [q_len, heads, kv_heads, dh, max_len] = [
            spec.q_len,
            spec.heads,
            spec.kv_heads,
            spec.head_dim,
            spec.max_len,
        ]
        .map(|v| v as u64);
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&q.data)
            .arg(&k_cache.data)
            .arg(&v_cache.data)
            .arg(&lens_buf.data)
            .arg(&mut out.data)
            .arg(&q_len)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&dh)
            .arg(&max_len);
        // SAFETY: (q, k, v, unsigned lens, out, u64 q_len, heads, kv_heads,
        // dh, max_len) as in llama.cu, k and v of the kernel's dtype; validate checked every buffer
        // against the spec, kv_heads > 0 dividing heads, and
        // q_len <= lens[b] <= max_len, so every position read is in the
        // cache. The dynamic shared memory holds 2 * dh + one tile floats.
        unsafe { launch.launch(one_block_each(blocks, shared as u32)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))?;
        // `lens_buf` is freed when dropped; the stream orders the free after the kernel.
        Ok(())
    }

    /// `append_and_attend` in two launches whatever the batch: the step
    /// table (each sequence's cache addresses, positions cached and first
    /// row, then every row's sequence) goes up in one copy, then
    /// `hetero_kv_append_*` writes every new key and value and
    /// `hetero_attention_step_*` runs one block per (row, head), each row
    /// reading its own sequence's caches. Without NVRTC (no kernels) it is
    /// `Unsupported`, as `attention_causal` is.
    pub(super) fn launch_append_and_attend(
        &self,
        spec: &AppendAttendSpec,
        q: &CudaBuffer,
        k_new: &CudaBuffer,
        v_new: &CudaBuffer,
        seqs: &mut [AppendAttendSeq<'_, CudaBuffer>],
        out: &mut CudaBuffer,
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
        }
        let shape = check_append_attend(
            spec,
            q.len,
            k_new.len,
            v_new.len,
            out.len,
            &seq_shapes(seqs),
        )?;
        let Some(first) = seqs.first() else {
            return Ok(());
        };
        let (append, attend) = match kv_cache_element(Backend::Cuda, first.k, first.v)? {
            KvElement::F32 => ("hetero_kv_append_f32", "hetero_attention_step_f32"),
            KvElement::F16 => ("hetero_kv_append_f16", "hetero_attention_step_f16"),
        };
        let shared = attention_shared_bytes(spec.head_dim);
        if shared + ATTENTION_STATIC_SHARED > SHARED_LIMIT {
            return Err(Error::unsupported(
                Backend::Cuda,
                format!(
                    "attention with head_dim {}: {} bytes of shared memory, past the {} a block has",
                    spec.head_dim,
                    shared + ATTENTION_STATIC_SHARED,
                    SHARED_LIMIT
                ),
            ));
        }
        let blocks = grid_blocks(shape.rows * spec.heads, "append_and_attend (row, head)")?;
        let (fa, ft) = (self.function(append)?, self.function(attend)?);
        let stream = &self.inner.stream;
        // The caches' addresses; each guard orders this stream after the
        // cache's earlier use and records the kernels' use when dropped,
        // after both launches.
        let nseq = seqs.len() as u64;
        let mut guards = Vec::with_capacity(2 * seqs.len());
        let mut entries = Vec::with_capacity(seqs.len());
        for seq in seqs.iter_mut() {
            let (k, gk) = seq.k.data.device_ptr_mut(stream);
            let (v, gv) = seq.v.data.device_ptr_mut(stream);
            guards.push(gk);
            guards.push(gv);
            entries.push(kernels::StepSeq {
                k,
                v,
                cached: seq.cached,
                rows: seq.rows.clone(),
            });
        }
        let table = kernels::step_table(&entries);
        let words: Vec<i64> = table.iter().map(|&w| w as i64).collect();
        let mut table_buf = self.alloc(DType::I64, words.len())?;
        self.upload(&mut table_buf, 0, HostSlice::new(&words))?;
        let kw = spec.kv_width() as u64;
        let n = (shape.rows * spec.kv_width()) as u64;
        let mut launch = stream.launch_builder(&fa);
        launch
            .arg(&k_new.data)
            .arg(&v_new.data)
            .arg(&table_buf.data)
            .arg(&nseq)
            .arg(&n)
            .arg(&kw);
        // SAFETY: (k_new, v_new, table, u64 nseq, u64 n, u64 kw) as in
        // llama.cu. check_append_attend checked k_new and v_new hold rows
        // * kw floats (n), the sequences' rows are consecutive and cover
        // every row, and each sequence's caches (of the kernel's dtype,
        // kv_cache_element) hold cached + rows positions of kw values, so
        // every address the table yields is inside its cache; the table
        // holds 4 words per sequence and one per row.
        unsafe { launch.launch(launch_config(n as usize)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))?;
        let [heads, kv_heads, dh] = [spec.heads, spec.kv_heads, spec.head_dim].map(|v| v as u64);
        let mut launch = stream.launch_builder(&ft);
        launch
            .arg(&q.data)
            .arg(&table_buf.data)
            .arg(&nseq)
            .arg(&mut out.data)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&dh);
        // SAFETY: (q, table, u64 nseq, out, u64 heads, kv_heads, dh) as in
        // llama.cu; q and out hold rows * heads * dh floats, one block per
        // (row, head); kv_heads > 0 divides heads (checked); row r reads
        // positions 0..=cached + (r - first row) of its sequence's caches,
        // all written (the append kernel ran before on this stream). The
        // dynamic shared memory holds 2 * dh + one tile floats.
        unsafe { launch.launch(one_block_each(blocks, shared as u32)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))?;
        drop(guards);
        // `table_buf` is freed when dropped; the stream orders the free after the kernels.
        Ok(())
    }

    /// `convert_copy`: a plain copy for equal dtypes, a kernel for
    /// f32 <-> f16 (`f2h`: round to nearest even), `Unsupported` otherwise.
    pub(super) fn launch_convert_copy(
        &self,
        src: &CudaBuffer,
        src_range: std::ops::Range<usize>,
        dst: &mut CudaBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "convert_copy source")?;
        self.check_owned(dst, "convert_copy destination")?;
        if src.dtype == dst.dtype {
            return self.copy(src, src_range, dst, dst_offset);
        }
        let dst_range = check_convert_copy(src, &src_range, dst, dst_offset)?;
        let kernel = match half_conversion(Backend::Cuda, src.dtype, dst.dtype)? {
            HalfConversion::F32ToF16 => "hetero_convert_f32_f16",
            HalfConversion::F16ToF32 => "hetero_convert_f16_f32",
        };
        if src_range.is_empty() {
            return Ok(());
        }
        let f = self.function(kernel)?;
        let from = src.data.slice(Self::bytes_of(src.dtype, &src_range));
        let mut to = dst.data.slice_mut(Self::bytes_of(dst.dtype, &dst_range));
        let n = src_range.len() as u64;
        let mut launch = self.inner.stream.launch_builder(&f);
        launch.arg(&from).arg(&mut to).arg(&n);
        // SAFETY: (src, dst, u64 n) as in llama.cu, of the kernel's dtypes;
        // both views hold n elements (check_convert_copy checked the ranges).
        unsafe { launch.launch(launch_config(src_range.len())) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }

    pub(super) fn launch_silu_mul(&self, gate: &mut CudaBuffer, up: &CudaBuffer) -> Result<()> {
        self.check_owned(gate, "silu_mul gate")?;
        self.check_owned(up, "silu_mul up")?;
        check_f32("silu_mul gate", gate)?;
        check_same_shape(gate, up, "silu_mul")?;
        if gate.len == 0 {
            return Ok(());
        }
        let f = self.function("hetero_silu_mul_f32")?;
        let n = gate.len as u64;
        let mut launch = self.inner.stream.launch_builder(&f);
        launch.arg(&mut gate.data).arg(&up.data).arg(&n);
        // SAFETY: (gate, up, u64 n) as in llama.cu; both hold n floats.
        unsafe { launch.launch(launch_config(gate.len)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }

    /// Embedding gather in one launch, for every dtype (the kernel moves
    /// elements of the dtype's size).
    pub(super) fn launch_embedding(
        &self,
        table: &CudaBuffer,
        ids: &[u32],
        out: &mut CudaBuffer,
    ) -> Result<()> {
        self.check_owned(table, "embedding table")?;
        self.check_owned(out, "embedding out")?;
        check_dtype("embedding out", table.dtype, out.dtype)?;
        let width = embedding_width(table.len, out.len, ids)?;
        let f = match self.function(&kernels::gather_name(table.dtype.size_bytes())) {
            Ok(f) => f,
            // No kernels (no NVRTC): the trait's default, one copy per row.
            Err(e) if e.is_unsupported() => {
                for (r, &id) in ids.iter().enumerate() {
                    let start = id as usize * width;
                    self.copy(table, start..start + width, out, r * width)?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let ids_buf = self.upload_u32(ids)?;
        let (n, width64) = (out.len as u64, width as u64);
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&table.data)
            .arg(&ids_buf.data)
            .arg(&mut out.data)
            .arg(&n)
            .arg(&width64);
        // SAFETY: (table, unsigned ids, out, u64 n, u64 width) as in
        // hetero-gpu-kernels, elements of the dtype's size; embedding_width checked
        // out holds ids.len() rows of width (n > 0) and every id names a
        // row of the table.
        unsafe { launch.launch(launch_config(out.len)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))?;
        // `ids_buf` is freed when dropped; the stream orders the free after the kernel.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_shared_memory_fits_llama_heads() {
        for head_dim in [64, 128, 256] {
            assert!(attention_shared_bytes(head_dim) + ATTENTION_STATIC_SHARED <= SHARED_LIMIT);
        }
    }

    #[test]
    fn grids_past_the_limit_are_unsupported() {
        assert_eq!(grid_blocks(5, "x").unwrap(), 5);
        assert!(grid_blocks(1 << 31, "x").unwrap_err().is_unsupported());
    }
}
