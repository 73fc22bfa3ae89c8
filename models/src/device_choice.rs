//! Which device should hold a model: among those with the Llama kernels
//! and the memory for the f32 weights plus a KV cache, the one most likely
//! fastest by kind (a discrete GPU, an integrated GPU, the CPU, then
//! software adapters such as lavapipe, which are slower than the host's
//! own kernels), the most memory first within a kind. The order is a
//! heuristic on what the backends report, not a measurement: `--device`
//! chooses explicitly.

use hetero_core::{DType, DeviceKind, DynDevice, Error, Result};

fn rank(kind: DeviceKind) -> u8 {
    match kind {
        DeviceKind::DiscreteGpu => 0,
        DeviceKind::IntegratedGpu => 1,
        DeviceKind::Cpu => 2,
        DeviceKind::Virtual => 3,
    }
}

/// Memory a device must have free (or in total, when it cannot tell) for
/// `weight_bytes` of weights and `cache_bytes` of KV cache, with an eighth
/// more for activations.
pub fn bytes_needed(weight_bytes: u64, cache_bytes: u64) -> u64 {
    let total = weight_bytes.saturating_add(cache_bytes);
    total.saturating_add(total / 8)
}

/// The index of the device to use, or an error naming every device and
/// why it cannot hold the model. `need_bytes` is what a device must have
/// free for the model (it differs by device: one with kernels for the
/// file's block formats holds the weights as stored, others in f32).
pub fn choose_device(
    devices: &[&dyn DynDevice],
    need_bytes: &dyn Fn(&dyn DynDevice) -> u64,
) -> Result<usize> {
    let mut reasons = Vec::new();
    let mut best: Option<(u8, u64, usize)> = None;
    for (i, d) in devices.iter().enumerate() {
        let info = d.info();
        if !d.capabilities().llama_dtypes.contains(&DType::F32) {
            reasons.push(format!(
                "{} ({}): no Llama-family kernels",
                info.id, info.name
            ));
            continue;
        }
        let memory = d
            .memory()
            .map(|m| {
                m.free_bytes
                    .unwrap_or(m.total_bytes.saturating_sub(m.allocated_bytes))
            })
            .unwrap_or(info.memory_total_bytes);
        let need_bytes = need_bytes(*d);
        if memory < need_bytes {
            reasons.push(format!(
                "{} ({}): {:.2} GiB free, the model needs {:.2} GiB",
                info.id,
                info.name,
                memory as f64 / (1u64 << 30) as f64,
                need_bytes as f64 / (1u64 << 30) as f64
            ));
            continue;
        }
        let key = (rank(info.kind), u64::MAX - memory, i);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map(|(_, _, i)| i).ok_or_else(|| {
        Error::invalid(
            "device",
            format!("no device can hold the model: {}", reasons.join("; ")),
        )
    })
}
