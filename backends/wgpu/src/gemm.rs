//! The f32 GEMM: which WGSL kernel runs (shared-memory tiles or register
//! blocks), its workgroup grid and its parameters. The `Device::gemm` entry
//! in `device.rs` checks ownership, dtypes and shapes before calling here.

use hetero_core::{Backend, Error, GemmSpec, Result};

use crate::buffer::WgpuBuffer;
use crate::device::WgpuDevice;
use crate::kernels;

/// Which WGSL GEMM kernel a device uses; the quantized product
/// (`matmul_quant`) follows the same choice (a workgroup per weight row
/// with a tree sum, or one invocation per weight row without barriers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmKernel {
    /// Register blocks on software (CPU) adapters, shared-memory tiles elsewhere.
    #[default]
    Auto,
    /// 16 x 16 shared-memory tiles with workgroup barriers.
    Tiled,
    /// 4 x 4 register blocks per invocation, no barriers.
    Blocked,
}

impl WgpuDevice {
    /// Whether the kernels that come in two forms (the GEMM, the quantized
    /// product) run their form without workgroup barriers: on software
    /// adapters unless [`Self::set_gemm_kernel`] chose otherwise.
    pub(crate) fn barrier_free_kernels(&self) -> bool {
        let chosen = self
            .inner
            .gemm_kernel
            .lock()
            .map(|k| *k)
            .unwrap_or_default();
        match chosen {
            GemmKernel::Auto => self.inner.info.device_type == wgpu::DeviceType::Cpu,
            GemmKernel::Tiled => false,
            GemmKernel::Blocked => true,
        }
    }

    /// `c = alpha * op(a) * op(b) + beta * c` in f32; `spec` already
    /// validated against the buffers' lengths.
    pub(crate) fn gemm_f32(
        &self,
        spec: &GemmSpec,
        a: &WgpuBuffer,
        b: &WgpuBuffer,
        c: &mut WgpuBuffer,
    ) -> Result<()> {
        if spec.m == 0 || spec.n == 0 {
            return Ok(());
        }
        let dims: Vec<u32> = [spec.m, spec.n, spec.k]
            .iter()
            .map(|&d| u32::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::invalid("gemm shape", "dimensions must fit in a u32"))?;
        // Hardware GPUs: shared-memory tiles. Software adapters: register
        // blocks (their workgroup barriers are slow; measured in the README).
        let blocked = self.barrier_free_kernels();
        let (per_group_x, per_group_y) = if blocked {
            (
                kernels::BLOCK * kernels::BLOCKED_WG,
                kernels::BLOCK * kernels::BLOCKED_WG,
            )
        } else {
            (kernels::TILE, kernels::TILE)
        };
        let groups_x = dims[1].div_ceil(per_group_x);
        let groups_y = dims[0].div_ceil(per_group_y);
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        if groups_x > max || groups_y > max {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "gemm of {} x {}: more than {max} workgroups per dimension",
                    spec.m, spec.n
                ),
            ));
        }
        for buf in [a, b, &*c] {
            self.check_binding(buf)?;
        }
        let pipeline = if blocked {
            self.pipeline("gemm_f32_blocked", || kernels::GEMM_F32_BLOCKED.to_string())?
        } else {
            self.pipeline("gemm_f32", || kernels::GEMM_F32.to_string())?
        };
        let mut params = Vec::with_capacity(32);
        for v in [
            dims[0],
            dims[1],
            dims[2],
            u32::from(spec.trans_a),
            u32::from(spec.trans_b),
        ] {
            params.extend_from_slice(&v.to_ne_bytes());
        }
        params.extend_from_slice(&(spec.alpha as f32).to_ne_bytes());
        params.extend_from_slice(&(spec.beta as f32).to_ne_bytes());
        params.extend_from_slice(&0u32.to_ne_bytes());
        let device = &self.inner.device;
        self.scoped("running gemm", || {
            let uniform = self.uniform(&params);
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("gemm"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: a.buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: b.buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: c.buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: uniform.as_entire_binding(),
                    },
                ],
            });
            self.encode(|encoder| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(groups_x, groups_y, 1);
            });
        })
    }
}
