//! `--device wgpu:N,memory=SIZE` end to end: discovered adapters, the spec
//! resolved by `select_devices`, the budget the device then reports and
//! enforces. One trial per adapter; with no adapter (or without the `wgpu`
//! feature) the trial is listed as ignored with the reason.

use libtest_mimic::{Arguments, Trial};

fn main() {
    let args = Arguments::from_args();
    let trials = trials();
    let failed = libtest_mimic::run(&args, trials).has_failed();
    // Mesa's exit-time teardown can abort after every result is printed.
    hetero_backends::exit_after_tests(failed);
}

#[cfg(feature = "wgpu")]
fn trials() -> Vec<Trial> {
    use hetero_backends::AnyDevice;
    let mut notes = Vec::new();
    let mut keep_wgpu_notes = |n: &str| {
        if n.starts_with("wgpu") {
            notes.push(n.to_string());
        }
    };
    let found = match hetero_backends::discover(1, &mut keep_wgpu_notes) {
        Ok(found) => found,
        Err(e) => {
            return vec![
                Trial::test("wgpu[none]::memory_spec_sets_the_budget", || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind(format!("skipped: discovery failed: {e}")),
            ];
        }
    };
    let adapters: Vec<u32> = found
        .iter()
        .filter(|d| matches!(d, AnyDevice::Wgpu(_)))
        .map(|d| d.as_dyn().id().index)
        .collect();
    if adapters.is_empty() {
        return vec![
            Trial::test("wgpu[none]::memory_spec_sets_the_budget", || Ok(()))
                .with_ignored_flag(true)
                .with_kind(format!("skipped: no wgpu adapter ({})", notes.join("; "))),
        ];
    }
    adapters
        .into_iter()
        .map(|index| {
            let found = found.clone();
            Trial::test(
                format!("wgpu[{index}]::memory_spec_sets_the_budget"),
                move || memory_spec(&found, index),
            )
        })
        .collect()
}

#[cfg(not(feature = "wgpu"))]
fn trials() -> Vec<Trial> {
    vec![
        Trial::test("wgpu[none]::memory_spec_sets_the_budget", || Ok(()))
            .with_ignored_flag(true)
            .with_kind("skipped: hetero-backends built without the wgpu feature"),
    ]
}

#[cfg(feature = "wgpu")]
fn memory_spec(
    found: &[hetero_backends::AnyDevice],
    index: u32,
) -> Result<(), libtest_mimic::Failed> {
    use hetero_core::{DType, DynDevice, MemoryUsage};
    const BUDGET: u64 = 5 << 20;
    let specs = [format!("wgpu:{index},memory=5MiB"), format!("wgpu:{index}")];
    let picked = hetero_backends::select_devices(&specs, found)?;
    let [with, without] = picked.as_slice() else {
        return Err(format!("{} devices for two specs", picked.len()).into());
    };
    let d: &dyn DynDevice = with.as_dyn();
    if d.id().index != index {
        return Err(format!("asked for wgpu:{index}, got {}", d.id()).into());
    }
    let source = with
        .memory_source()
        .ok_or("a wgpu device without a memory source")?;
    if !source.contains("set explicitly") {
        return Err(format!("source {source:?}").into());
    }
    let info = d.info();
    if info.memory_total_bytes != BUDGET {
        return Err(format!("info() total {}", info.memory_total_bytes).into());
    }
    let held = d.alloc(DType::F32, 1 << 20)?; // 4 MiB
    match d.alloc(DType::F32, 1 << 19) {
        Err(e) if e.is_out_of_memory() => {}
        Err(e) => return Err(format!("2 MiB past the budget: {e}").into()),
        Ok(_) => return Err("2 MiB past a 5 MiB budget was allocated".into()),
    }
    drop(held);
    let MemoryUsage { total_bytes, .. } = d.memory()?;
    if total_bytes != BUDGET {
        return Err(format!("memory() total {total_bytes}").into());
    }
    // The plain spec is the discovered device, with its own budget.
    if without.as_dyn().info().memory_total_bytes == BUDGET
        || without
            .memory_source()
            .is_some_and(|s| s.contains("set explicitly"))
    {
        return Err("the plain spec took the override".into());
    }
    Ok(())
}
