//! The Llama-family kernels (f32): RMS norm, rotary embedding, causal
//! attention with grouped kv heads, SiLU-gated product, and a one-launch
//! embedding gather. Each checks its buffers against the core specs, uploads
//! host positions / lengths into a small storage buffer, then runs its WGSL
//! kernel (`llama_kernels.rs`) through `dispatch`.

use hetero_core::device::{
    KvElement, check_decode_f32, check_dtype, check_same_shape, kv_cache_element,
};
use hetero_core::transformer::{embedding_width, rms_norm_rows};
use hetero_core::{
    Backend, CausalAttentionSpec, DType, Device, Error, HostSlice, Result, RopeLayout, RopeSpec,
};

use crate::buffer::WgpuBuffer;
use crate::device::WgpuDevice;
use crate::dispatch::words;
use crate::llama_kernels as k;

/// Invocations per workgroup of the elementwise Llama kernels.
const WG: u32 = 256;

impl WgpuDevice {
    /// `what` must be an f32 buffer of this device that one binding can hold.
    pub(crate) fn check_f32_arg(&self, b: &WgpuBuffer, what: &str) -> Result<()> {
        self.check_owned(b, what)?;
        check_decode_f32(Backend::Wgpu, what, b)?;
        self.check_binding(b)
    }

    /// `values` in a new storage buffer (read as `array<u32>` by the kernels).
    pub(crate) fn upload_u32(&self, values: &[u32]) -> Result<WgpuBuffer> {
        let words: Vec<i32> = values.iter().map(|&v| v as i32).collect();
        let mut buf = self.alloc(DType::I32, words.len())?;
        self.upload(&mut buf, 0, HostSlice::new(&words))?;
        Ok(buf)
    }

    /// Workgroups of a grid-stride kernel over `n` items.
    pub(crate) fn stride_groups(&self, n: u32) -> u32 {
        n.div_ceil(WG)
            .clamp(1, self.inner.limits.max_compute_workgroups_per_dimension)
    }

    pub(crate) fn rms_norm_f32(
        &self,
        x: &WgpuBuffer,
        weight: &WgpuBuffer,
        out: &mut WgpuBuffer,
        eps: f32,
    ) -> Result<()> {
        self.check_f32_arg(x, "rms_norm x")?;
        self.check_f32_arg(weight, "rms_norm weight")?;
        self.check_f32_arg(out, "rms_norm out")?;
        let rows = rms_norm_rows(x.len, weight.len, out.len)?;
        if rows == 0 {
            return Ok(());
        }
        let rows = as_u32("rms_norm rows", rows)?;
        let params = words(&[rows, weight.len as u32, eps.to_bits(), 0]);
        let groups = rows.min(self.inner.limits.max_compute_workgroups_per_dimension);
        self.dispatch(
            "rms_norm_f32",
            k::RMS_NORM_F32,
            &[&x.buffer, &weight.buffer, &out.buffer],
            &params,
            (groups, 1, 1),
        )
    }

    pub(crate) fn rope_f32(
        &self,
        spec: &RopeSpec,
        x: &mut WgpuBuffer,
        positions: &[u32],
        inv_freq: &WgpuBuffer,
    ) -> Result<()> {
        self.check_f32_arg(x, "rope x")?;
        self.check_f32_arg(inv_freq, "rope inv_freq")?;
        spec.validate(x.len, inv_freq.len, positions)?;
        if x.len == 0 {
            return Ok(());
        }
        let pairs = as_u32("rope shape", x.len / 2)?;
        let pos = self.upload_u32(positions)?;
        let adjacent = u32::from(spec.layout == RopeLayout::Adjacent);
        let params = words(&[
            pairs,
            as_u32("rope heads", spec.heads)?,
            as_u32("rope head_dim", spec.head_dim / 2)?,
            adjacent,
        ]);
        self.dispatch(
            "rope_f32",
            k::ROPE_F32,
            &[&x.buffer, &inv_freq.buffer, &pos.buffer],
            &params,
            (self.stride_groups(pairs), 1, 1),
        )
    }

    pub(crate) fn attention_causal_f32(
        &self,
        spec: &CausalAttentionSpec,
        q: &WgpuBuffer,
        k_cache: &WgpuBuffer,
        v_cache: &WgpuBuffer,
        lens: &[u32],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        self.check_f32_arg(q, "attention q")?;
        self.check_f32_arg(out, "attention out")?;
        // Key and value caches of f32, or of f16 (widened as read).
        for (b, what) in [
            (k_cache, "attention k cache"),
            (v_cache, "attention v cache"),
        ] {
            self.check_owned(b, what)?;
            self.check_binding(b)?;
        }
        let element = kv_cache_element(Backend::Wgpu, k_cache, v_cache)?;
        spec.validate(q.len, k_cache.len, v_cache.len, out.len, lens)?;
        if spec.head_dim > k::ATTENTION_MAX_HEAD_DIM {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "attention_causal with head_dim {}; the wgpu kernel handles up to {}",
                    spec.head_dim,
                    k::ATTENTION_MAX_HEAD_DIM
                ),
            ));
        }
        if spec.batch == 0 || spec.heads == 0 {
            return Ok(());
        }
        let lens_buf = self.upload_u32(lens)?;
        let scale = 1.0 / (spec.head_dim as f32).sqrt();
        let params = words(&[
            as_u32("attention heads", spec.heads)?,
            as_u32("attention heads", spec.group())?,
            as_u32("attention head_dim", spec.head_dim)?,
            as_u32("attention max_len", spec.max_len)?,
            as_u32("attention q_len", spec.q_len)?,
            scale.to_bits(),
            0,
            0,
        ]);
        // Workgroup (head, token, sequence); `dispatch` refuses a dimension
        // past the adapter's limit.
        let groups = (
            as_u32("attention heads", spec.heads)?,
            as_u32("attention q_len", spec.q_len)?,
            as_u32("attention batch", spec.batch)?,
        );
        let (name, source): (&str, fn() -> String) = match element {
            KvElement::F16 => (
                "attention_causal_f16",
                crate::kv_kernels::attention_causal_f16,
            ),
            KvElement::F32 => ("attention_causal_f32", || {
                k::ATTENTION_CAUSAL_F32.to_string()
            }),
        };
        self.dispatch_built(
            name,
            source,
            &[
                &q.buffer,
                &k_cache.buffer,
                &v_cache.buffer,
                &lens_buf.buffer,
                &out.buffer,
            ],
            &params,
            groups,
        )
    }

    pub(crate) fn silu_mul_f32(&self, gate: &mut WgpuBuffer, up: &WgpuBuffer) -> Result<()> {
        self.check_f32_arg(gate, "silu_mul gate")?;
        self.check_f32_arg(up, "silu_mul up")?;
        check_same_shape(gate, up, "silu_mul")?;
        if gate.len == 0 {
            return Ok(());
        }
        let n = as_u32("silu_mul", gate.len)?;
        self.dispatch(
            "silu_mul_f32",
            k::SILU_MUL_F32,
            &[&gate.buffer, &up.buffer],
            &words(&[n, 0, 0, 0]),
            (self.stride_groups(n), 1, 1),
        )
    }

    /// One launch for 32-bit dtypes; one device copy per row for the others
    /// (the trait's default).
    pub(crate) fn embedding_gather(
        &self,
        table: &WgpuBuffer,
        ids: &[u32],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        self.check_owned(table, "embedding table")?;
        self.check_owned(out, "embedding out")?;
        check_dtype("embedding", table.dtype, out.dtype)?;
        let width = embedding_width(table.len, out.len, ids)?;
        if table.dtype.size_bytes() != 4 {
            for (r, &id) in ids.iter().enumerate() {
                let start = id as usize * width;
                self.copy(table, start..start + width, out, r * width)?;
            }
            return Ok(());
        }
        self.check_binding(table)?;
        self.check_binding(out)?;
        let n = as_u32("embedding out", out.len)?;
        let ids_buf = self.upload_u32(ids)?;
        self.dispatch(
            "embedding_32",
            k::EMBEDDING_32,
            &[&table.buffer, &ids_buf.buffer, &out.buffer],
            &words(&[n, as_u32("embedding width", width)?, 0, 0]),
            (self.stride_groups(n), 1, 1),
        )
    }
}

/// `v` as a kernel's u32 parameter; an error naming `what` past u32.
pub(crate) fn as_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(what, format!("{v} does not fit in a u32")))
}
