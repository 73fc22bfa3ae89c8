//! Launchers of the quantized-weight kernels (`matmul_quant`,
//! `embedding_quant`): the weights are a `U8` buffer of a GGUF file's
//! blocks, dequantized inside the kernels (`quant.cu` in
//! hetero-gpu-kernels, checked there against the core's reference by
//! running them as C++ on the CPU). Shapes, dtypes and ids are checked by
//! the core's helpers before any launch.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use hetero_core::device::check_dtype;
use hetero_core::transformer::quant_embedding_width;
use hetero_core::{DType, DeviceBuffer, QuantMatmulSpec, QuantType, Result};

use super::{CudaBuffer, CudaDevice, check_f32, launch_config};
use crate::kernels;

/// Elements per unit the kernels dequantize at once.
const UNIT: usize = 32;

/// Largest grid dimension the launchers use (the kernels stride over it).
const GRID_MAX: usize = 65_535;

impl CudaDevice {
    /// Owners and dtypes: `f32_args` f32, `bytes` the `U8` weights. Without
    /// NVRTC, `function` is the `Unsupported` that says so.
    fn check_quant_args(
        &self,
        f32_args: &[(&CudaBuffer, &str)],
        bytes: (&CudaBuffer, &str),
    ) -> Result<()> {
        for (b, what) in f32_args.iter().copied().chain([bytes]) {
            self.check_owned(b, what)?;
        }
        for (b, what) in f32_args {
            check_f32(what, *b)?;
        }
        check_dtype(bytes.1, DType::U8, bytes.0.dtype())
    }

    pub(super) fn launch_matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &CudaBuffer,
        w: &CudaBuffer,
        y: &mut CudaBuffer,
    ) -> Result<()> {
        self.check_quant_args(
            &[(x, "matmul_quant x"), (&*y, "matmul_quant y")],
            (w, "matmul_quant w"),
        )?;
        spec.validate(x.len(), w.len(), y.len())?;
        if spec.rows == 0 || spec.out == 0 {
            return Ok(());
        }
        let f = self.function(kernels::QUANT_NAMES[0])?;
        let row_bytes = spec.quant.row_bytes(spec.inp)? as u64;
        let (rows, out, inp) = (spec.rows as u64, spec.out as u64, spec.inp as u64);
        let fmt = kernels::quant_format(spec.quant);
        let cfg = LaunchConfig {
            grid_dim: (
                spec.out.div_ceil(kernels::QUANT_WEIGHT_ROWS).min(GRID_MAX) as u32,
                spec.rows.div_ceil(kernels::QUANT_ROWS).min(GRID_MAX) as u32,
                1,
            ),
            block_dim: (kernels::QUANT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&x.data)
            .arg(&w.data)
            .arg(&mut y.data)
            .arg(&rows)
            .arg(&out)
            .arg(&inp)
            .arg(&row_bytes)
            .arg(&fmt);
        // SAFETY: (const float* x, const unsigned char* w, float* y, u64
        // rows, u64 out, u64 inp, u64 row_bytes, int fmt) as in quant.cu;
        // `validate` checked x holds rows x inp floats, w out rows of
        // row_bytes, y rows x out floats; the grid dimensions stride.
        unsafe { launch.launch(cfg) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }

    pub(super) fn launch_embedding_quant(
        &self,
        quant: QuantType,
        table: &CudaBuffer,
        ids: &[u32],
        out: &mut CudaBuffer,
    ) -> Result<()> {
        self.check_quant_args(
            &[(&*out, "embedding_quant out")],
            (table, "embedding_quant table"),
        )?;
        let width = quant_embedding_width(quant, table.len(), out.len(), ids)?;
        let f = self.function(kernels::QUANT_NAMES[1])?;
        let ids_buf = self.upload_u32(ids)?;
        let units = width / UNIT;
        let n = ids.len() * units;
        let (n64, units64) = (n as u64, units as u64);
        let row_bytes = quant.row_bytes(width)? as u64;
        let fmt = kernels::quant_format(quant);
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&table.data)
            .arg(&ids_buf.data)
            .arg(&mut out.data)
            .arg(&n64)
            .arg(&units64)
            .arg(&row_bytes)
            .arg(&fmt);
        // SAFETY: (const unsigned char* w, const unsigned int* ids, float*
        // out, u64 n, u64 units, u64 row_bytes, int fmt) as in quant.cu;
        // quant_embedding_width checked every id names a row of the table
        // and out holds ids.len() rows of width = units x 32 floats.
        unsafe { launch.launch(launch_config(n)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))?;
        // `ids_buf` is freed when dropped; the stream orders the free after the kernel.
        Ok(())
    }
}
