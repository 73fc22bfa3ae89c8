//! Products and gathers with block-quantized weights (`U8` buffers holding
//! a GGUF file's blocks unchanged): the `Device::matmul_quant` and
//! `Device::embedding_quant` of this backend. Each checks its buffers
//! against the core specs, then runs the format's WGSL kernel
//! (`quant_kernels.rs`) through `dispatch`.

use hetero_core::device::check_dtype;
use hetero_core::transformer::quant_embedding_width;
use hetero_core::{Backend, DType, Error, QuantMatmulSpec, QuantType, Result};

use crate::buffer::WgpuBuffer;
use crate::device::WgpuDevice;
use crate::dispatch::words;
use crate::llama::as_u32;
use crate::quant_kernels::{self as k, LANE_GROUP, MATMUL_ROWS_PER_GROUP};

/// Elements per unit the kernels dequantize at once (a block of the
/// 32-element formats, a sub-block of the K-quants).
const UNIT: usize = 32;

impl WgpuDevice {
    /// The formats this adapter's kernels read: every one where it can
    /// convert f16 in shaders (`unpack2x16float`), none otherwise.
    pub(crate) fn quant_types(&self) -> Vec<QuantType> {
        if self.inner.f16_in_f32 {
            QuantType::ALL.to_vec()
        } else {
            Vec::new()
        }
    }

    fn check_quant(&self, quant: QuantType, op: &str) -> Result<()> {
        if self.inner.f16_in_f32 {
            Ok(())
        } else {
            Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "{op} on {quant} weights: this adapter lacks the SHADER_F16_IN_F32 \
                     downlevel capability its block scales need"
                ),
            ))
        }
    }

    /// `what` must be a `U8` buffer of this device that one binding can
    /// hold (the f32 operands go through `check_f32_arg`).
    fn check_bytes_arg(&self, b: &WgpuBuffer, what: &str) -> Result<()> {
        self.check_owned(b, what)?;
        check_dtype(what, DType::U8, b.dtype)?;
        self.check_binding(b)
    }

    pub(crate) fn matmul_quant_blocks(
        &self,
        spec: &QuantMatmulSpec,
        x: &WgpuBuffer,
        w: &WgpuBuffer,
        y: &mut WgpuBuffer,
    ) -> Result<()> {
        self.check_quant(spec.quant, "matmul_quant")?;
        self.check_f32_arg(x, "matmul_quant x")?;
        self.check_bytes_arg(w, "matmul_quant w")?;
        self.check_f32_arg(y, "matmul_quant y")?;
        spec.validate(x.len, w.len, y.len)?;
        if spec.rows == 0 || spec.out == 0 {
            return Ok(());
        }
        let row_bytes = spec.quant.row_bytes(spec.inp)?;
        // The kernel addresses the weights' bytes in u32.
        as_u32("matmul_quant w bytes", w.len)?;
        let params = words(&[
            as_u32("matmul_quant rows", spec.rows)?,
            as_u32("matmul_quant out", spec.out)?,
            as_u32("matmul_quant inp", spec.inp)?,
            as_u32("matmul_quant row bytes", row_bytes)?,
            as_u32("matmul_quant units", spec.inp / UNIT)?,
            0,
            0,
            0,
        ]);
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        let row_groups = spec.rows.div_ceil(MATMUL_ROWS_PER_GROUP as usize);
        // As for the GEMM: no barriers on software adapters.
        let lanes = self.barrier_free_kernels();
        let out_groups = if lanes {
            spec.out.div_ceil(LANE_GROUP as usize)
        } else {
            spec.out
        };
        // Both dimensions stride over the grid, so clamping loses nothing.
        let groups = (
            as_u32("matmul_quant out", out_groups)?.min(max),
            as_u32("matmul_quant rows", row_groups)?.min(max),
            1,
        );
        let quant = spec.quant;
        let name = if lanes { "lanes_" } else { "" };
        self.dispatch_built(
            &format!("matmul_quant_{name}{quant}"),
            || k::matmul_source(quant, lanes),
            &[&x.buffer, &w.buffer, &y.buffer],
            &params,
            groups,
        )
    }

    pub(crate) fn embedding_quant_blocks(
        &self,
        quant: QuantType,
        table: &WgpuBuffer,
        ids: &[u32],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        self.check_quant(quant, "embedding_quant")?;
        self.check_bytes_arg(table, "embedding_quant table")?;
        self.check_f32_arg(out, "embedding_quant out")?;
        let width = quant_embedding_width(quant, table.len, out.len, ids)?;
        as_u32("embedding_quant table bytes", table.len)?;
        let units = width / UNIT;
        let n = as_u32("embedding_quant units", ids.len() * units)?;
        let ids_buf = self.upload_u32(ids)?;
        let params = words(&[
            n,
            as_u32("embedding_quant units", units)?,
            as_u32("embedding_quant row bytes", quant.row_bytes(width)?)?,
            0,
        ]);
        let groups = n
            .div_ceil(LANE_GROUP)
            .clamp(1, self.inner.limits.max_compute_workgroups_per_dimension);
        self.dispatch_built(
            &format!("embedding_quant_{quant}"),
            || k::embedding_source(quant),
            &[&table.buffer, &ids_buf.buffer, &out.buffer],
            &params,
            (groups, 1, 1),
        )
    }
}
