//! Running WGSL kernels: the per-device pipeline cache, uniform parameter
//! buffers, binding-size and workgroup-count limits, and the dispatch of the
//! elementwise (reduce / average / scale) and decode-step kernels.

use std::sync::Arc;

use hetero_core::{Backend, DType, Error, Result};
use wgpu::util::DeviceExt;

use crate::buffer::WgpuBuffer;
use crate::device::WgpuDevice;
use crate::kernels::{self, Elementwise};

impl WgpuDevice {
    /// Kernel `name`, compiled from `source` on first use and cached.
    pub(crate) fn pipeline(
        &self,
        name: &str,
        source: impl FnOnce() -> String,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut cache = self.inner.pipelines.lock().map_err(|_| Error::DeviceLost {
            device: self.inner.id,
            reason: "pipeline cache poisoned by a panic".into(),
        })?;
        if let Some(p) = cache.get(name) {
            return Ok(Arc::clone(p));
        }
        let device = &self.inner.device;
        let pipeline = self.scoped("compiling a kernel", || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source().into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        })?;
        let pipeline = Arc::new(pipeline);
        cache.insert(name.to_string(), Arc::clone(&pipeline));
        Ok(pipeline)
    }

    /// A uniform buffer holding `bytes` (a kernel's parameters).
    pub(crate) fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.inner
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("hetero params"),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Run kernel `name` (compiled from `source` once) with `buffers` bound
    /// at 0.., the uniform `params` after them, over `groups` workgroups.
    pub(crate) fn dispatch(
        &self,
        name: &str,
        source: &'static str,
        buffers: &[&wgpu::Buffer],
        params: &[u8],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        self.dispatch_built(name, || source.to_string(), buffers, params, groups)
    }

    /// [`Self::dispatch`] for a kernel whose source is assembled at run
    /// time (built only when `name` is not cached yet).
    pub(crate) fn dispatch_built(
        &self,
        name: &str,
        source: impl FnOnce() -> String,
        buffers: &[&wgpu::Buffer],
        params: &[u8],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        if groups.0 > max || groups.1 > max || groups.2 > max {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "{name} over {groups:?} workgroups; this adapter allows {max} per dimension"
                ),
            ));
        }
        let pipeline = self.pipeline(name, source)?;
        let device = &self.inner.device;
        self.scoped("running a kernel", || {
            let uniform = self.uniform(params);
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: buffers.len() as u32,
                resource: uniform.as_entire_binding(),
            });
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            self.encode(|encoder| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, groups.2);
            });
        })
    }

    /// `Unsupported` when `buf` is larger than one storage binding may be.
    pub(crate) fn check_binding(&self, buf: &WgpuBuffer) -> Result<()> {
        if buf.buffer.size() > self.inner.limits.max_storage_buffer_binding_size {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "a kernel over {} bytes; this adapter binds at most {} bytes per storage buffer",
                    buf.buffer.size(),
                    self.inner.limits.max_storage_buffer_binding_size
                ),
            ));
        }
        Ok(())
    }

    /// Run elementwise kernel `kind` on `acc` (with `src` for a combine),
    /// `count` contributions for an average, `alpha` for a scale.
    pub(crate) fn elementwise(
        &self,
        kind: Elementwise,
        acc: &mut WgpuBuffer,
        src: Option<&WgpuBuffer>,
        count: u32,
        alpha: f32,
    ) -> Result<()> {
        let dtype = acc.dtype;
        let supported = match kind {
            Elementwise::Scale => kernels::SCALE_DTYPES.contains(&dtype),
            _ => kernels::REDUCE_DTYPES.contains(&dtype),
        };
        if dtype == DType::F16 && !self.inner.f16_in_f32 {
            return Err(Error::unsupported(
                Backend::Wgpu,
                "f16 kernels: this adapter lacks the SHADER_F16_IN_F32 downlevel capability",
            ));
        }
        if !supported {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "{} on {dtype}: WGSL has no 64-bit types, and integer scaling needs f64",
                    match kind {
                        Elementwise::Scale => "scale",
                        _ => "reduce",
                    }
                ),
            ));
        }
        if acc.len == 0 {
            return Ok(());
        }
        self.check_binding(acc)?;
        let name = kind.name(dtype);
        let pipeline = self.pipeline(&name, || kernels::elementwise_source(kind, dtype))?;
        let words = acc.words();
        let mut params = [0u8; 16];
        params[0..4].copy_from_slice(&words.to_ne_bytes());
        params[4..8].copy_from_slice(&count.to_ne_bytes());
        params[8..12].copy_from_slice(&alpha.to_ne_bytes());
        let device = &self.inner.device;
        self.scoped("running a kernel", || {
            let uniform = self.uniform(&params);
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: acc.buffer.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: uniform.as_entire_binding(),
                },
            ];
            if let Some(src) = src {
                entries.push(wgpu::BindGroupEntry {
                    binding: 2,
                    resource: src.buffer.as_entire_binding(),
                });
            }
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            self.encode(|encoder| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                let groups = words
                    .div_ceil(kernels::WORKGROUP)
                    .clamp(1, self.inner.limits.max_compute_workgroups_per_dimension);
                pass.dispatch_workgroups(groups, 1, 1);
            });
        })
    }
}

/// Uniform bytes from 32-bit words.
pub(crate) fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_ne_bytes()).collect()
}
