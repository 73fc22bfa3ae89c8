//! The decode-step kernels (f32): layer norm, bias + activation, attention
//! over a KV cache, and row-wise argmax. Each checks its buffers, then runs
//! its WGSL kernel through `dispatch`.

use hetero_core::device::{argmax_cols, bias_rows, check_decode_f32, layer_norm_rows};
use hetero_core::{
    Activation, AttentionSpec, Backend, DType, Device, DeviceBuffer, Error, HostSlice,
    HostSliceMut, Result,
};

use crate::buffer::WgpuBuffer;
use crate::device::WgpuDevice;
use crate::dispatch::words;
use crate::kernels;

impl WgpuDevice {
    pub(crate) fn layer_norm_f32(
        &self,
        x: &WgpuBuffer,
        gamma: &WgpuBuffer,
        beta: &WgpuBuffer,
        out: &mut WgpuBuffer,
        eps: f32,
    ) -> Result<()> {
        for (b, what) in [
            (x, "layer_norm x"),
            (gamma, "layer_norm gamma"),
            (beta, "layer_norm beta"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
            self.check_binding(b)?;
        }
        self.check_owned(out, "layer_norm out")?;
        check_f32("layer_norm out", out)?;
        let cols = gamma.len;
        let rows = u32::try_from(layer_norm_rows(x.len, cols, beta.len, out.len)?)
            .map_err(|_| Error::invalid("layer_norm", "too many rows"))?;
        if rows == 0 {
            return Ok(());
        }
        let params = words(&[cols as u32, eps.to_bits(), 0, 0]);
        self.dispatch(
            "layer_norm_f32",
            kernels::LAYER_NORM_F32,
            &[&x.buffer, &gamma.buffer, &beta.buffer, &out.buffer],
            &params,
            (rows, 1, 1),
        )
    }

    pub(crate) fn bias_activation_f32(
        &self,
        x: &mut WgpuBuffer,
        bias: &WgpuBuffer,
        act: Activation,
    ) -> Result<()> {
        self.check_owned(x, "bias_activation x")?;
        self.check_owned(bias, "bias")?;
        check_f32("bias_activation x", x)?;
        check_f32("bias", bias)?;
        self.check_binding(x)?;
        let cols = bias.len;
        bias_rows(x.len, cols)?;
        if x.len == 0 {
            return Ok(());
        }
        let code = match act {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
        };
        let n = x.len as u32;
        let params = words(&[n, cols as u32, code, 0]);
        let groups = n
            .div_ceil(kernels::WORKGROUP)
            .clamp(1, self.inner.limits.max_compute_workgroups_per_dimension);
        self.dispatch(
            "bias_act_f32",
            kernels::BIAS_ACT_F32,
            &[&x.buffer, &bias.buffer],
            &params,
            (groups, 1, 1),
        )
    }

    pub(crate) fn attention_decode_f32(
        &self,
        spec: &AttentionSpec,
        q: &WgpuBuffer,
        k_cache: &WgpuBuffer,
        v_cache: &WgpuBuffer,
        lens: &[u32],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        for (b, what) in [
            (q, "attention q"),
            (k_cache, "attention k cache"),
            (v_cache, "attention v cache"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
            self.check_binding(b)?;
        }
        self.check_owned(out, "attention out")?;
        check_f32("attention out", out)?;
        spec.validate(q.len, k_cache.len, v_cache.len, out.len, lens)?;
        let blocks = spec.batch * spec.heads;
        if blocks == 0 {
            return Ok(());
        }
        let as_u32 =
            |v: usize| u32::try_from(v).map_err(|_| Error::invalid("attention shape", "too large"));
        let lens_i32: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let mut lens_buf = self.alloc(DType::I32, lens.len())?;
        self.upload(&mut lens_buf, 0, HostSlice::new(&lens_i32))?;
        // Scores live in a scratch buffer: workgroup memory is too small for long contexts.
        let scratch = self.alloc(DType::F32, blocks * spec.max_len)?;
        let params = words(&[
            as_u32(spec.heads)?,
            as_u32(spec.head_dim)?,
            as_u32(spec.max_len)?,
            0,
        ]);
        self.dispatch(
            "attention_f32",
            kernels::ATTENTION_F32,
            &[
                &q.buffer,
                &k_cache.buffer,
                &v_cache.buffer,
                &lens_buf.buffer,
                &out.buffer,
                &scratch.buffer,
            ],
            &params,
            (as_u32(blocks)?, 1, 1),
        )
    }

    pub(crate) fn argmax_rows_f32(&self, x: &WgpuBuffer, rows: usize) -> Result<Vec<u32>> {
        self.check_owned(x, "argmax x")?;
        check_f32("argmax x", x)?;
        self.check_binding(x)?;
        let cols = u32::try_from(argmax_cols(x.len, rows)?)
            .map_err(|_| Error::invalid("argmax", "rows too long"))?;
        let ids = self.alloc(DType::I32, rows)?;
        let params = words(&[cols, 0, 0, 0]);
        let groups = u32::try_from(rows).map_err(|_| Error::invalid("argmax", "too many rows"))?;
        self.dispatch(
            "argmax_f32",
            kernels::ARGMAX_F32,
            &[&x.buffer, &ids.buffer],
            &params,
            (groups, 1, 1),
        )?;
        let mut host = vec![0i32; rows];
        self.download(&ids, 0, HostSliceMut::new(&mut host))?;
        Ok(host.into_iter().map(|i| i as u32).collect())
    }
}

fn check_f32(what: &str, b: &dyn DeviceBuffer) -> Result<()> {
    check_decode_f32(Backend::Wgpu, what, b)
}
