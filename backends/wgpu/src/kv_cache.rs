//! f16 KV caches: `convert_copy` between f32 and f16 buffers, launching
//! the kernels of `kv_kernels.rs` (the attention over f16 caches is
//! `llama.rs`'s, with `kv_kernels::attention_causal_f16`).

use std::ops::Range;

use hetero_core::device::{HalfConversion, check_convert_copy, half_conversion};
use hetero_core::{Backend, Device, Result};

use crate::buffer::WgpuBuffer;
use crate::device::WgpuDevice;
use crate::dispatch::words;
use crate::kv_kernels as k;
use crate::llama::as_u32;

impl WgpuDevice {
    /// [`Device::convert_copy`]: a plain copy for equal dtypes, a kernel
    /// for f32 <-> f16, `Unsupported` for the rest.
    pub(crate) fn convert_copy_kv(
        &self,
        src: &WgpuBuffer,
        src_range: Range<usize>,
        dst: &mut WgpuBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "convert_copy source")?;
        self.check_owned(dst, "convert_copy destination")?;
        if src.dtype == dst.dtype {
            return self.copy(src, src_range, dst, dst_offset);
        }
        check_convert_copy(src, &src_range, dst, dst_offset)?;
        let conversion = half_conversion(Backend::Wgpu, src.dtype, dst.dtype)?;
        let (name, source): (&str, fn() -> String) = match conversion {
            HalfConversion::F32ToF16 => ("convert_f32_to_f16", k::convert_f32_to_f16),
            HalfConversion::F16ToF32 => ("convert_f16_to_f32", k::convert_f16_to_f32),
        };
        if src_range.is_empty() {
            return Ok(());
        }
        self.check_binding(src)?;
        self.check_binding(dst)?;
        let n = as_u32("convert_copy length", src_range.len())?;
        let start = as_u32("convert_copy source start", src_range.start)?;
        let off = as_u32("convert_copy destination offset", dst_offset)?;
        // Into f16: one invocation per destination word the range touches
        // (the last word index is at most len / 2: inside the buffer's
        // padded words), its count the kernel's fourth parameter. Into
        // f32: one per element.
        let work = match conversion {
            HalfConversion::F32ToF16 => {
                let end = off as u64 + n as u64;
                as_u32(
                    "convert_copy words",
                    (end.div_ceil(2) - off as u64 / 2) as usize,
                )?
            }
            HalfConversion::F16ToF32 => n,
        };
        self.dispatch_built(
            name,
            source,
            &[&src.buffer, &dst.buffer],
            &words(&[n, start, off, work]),
            (self.stride_groups(work), 1, 1),
        )
    }
}
