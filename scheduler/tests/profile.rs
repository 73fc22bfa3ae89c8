//! Profiling on real host devices with small budgets.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use hetero_core::{Device, DynDevice, DynDeviceExt, HostSlice};
use hetero_host::HostDevice;
use hetero_scheduler::profile::{allocate_weights, profile_memory, profile_speed};
use hetero_scheduler::{AllocationPolicy, Balanced, ModelShape, Uniform, profile_device};

fn device(index: u32, threads: usize, budget: u64) -> HostDevice {
    HostDevice::builder()
        .index(index)
        .threads(threads)
        .memory_budget(budget)
        .build()
        .unwrap()
}

/// The largest batch whose weights + KV cache + activations fit the budget.
fn true_limit(model: &ModelShape, len: usize, budget: u64) -> usize {
    (0..100_000)
        .take_while(|&b| model.step_bytes(b, len) <= budget)
        .last()
        .unwrap()
}

#[test]
fn memory_profile_finds_the_true_limit_and_survives_failures() {
    let model = ModelShape::tiny();
    for (len, budget) in [(2048, 8 << 20), (512, 3 << 20), (1024, 20 << 20)] {
        let d = device(0, 1, budget);
        let weights = allocate_weights(&d, &model).unwrap();
        let p = profile_memory(&d, &model, &weights, len, 10_000).unwrap();
        let want = true_limit(&model, len, budget);
        assert!(
            p.max_batch.abs_diff(want) <= 1,
            "len {len}: found {} want {want}",
            p.max_batch
        );
        assert!(p.failed_attempts > 0, "the search must have hit the limit");
        // The device still works after the failed allocations.
        let data = vec![1.0f32; 1000];
        let buf = d.alloc_from(HostSlice::new(&data)).unwrap();
        assert_eq!(d.to_vec::<f32>(buf.as_ref()).unwrap(), data);
        drop(buf);
        drop(weights);
        assert_eq!(
            Device::memory(&d).unwrap().allocated_bytes,
            0,
            "everything freed"
        );
    }
}

#[test]
fn a_model_that_does_not_fit_is_a_clear_error() {
    let d = device(0, 1, 1 << 20);
    let err = allocate_weights(&d, &ModelShape::opt_125m())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("opt-125m") && err.contains("cannot hold"),
        "{err}"
    );
    // Memory profiling caps at the limit it was given.
    let d = device(1, 1, 64 << 20);
    let model = ModelShape::tiny();
    let weights = allocate_weights(&d, &model).unwrap();
    let p = profile_memory(&d, &model, &weights, 16, 5).unwrap();
    assert_eq!(p.max_batch, 5);
}

#[test]
fn speed_profile_fits_a_positive_curve() {
    let d = device(0, 1, 256 << 20);
    let (fit, samples) = profile_speed(&d, &ModelShape::tiny(), &[1, 4, 16], 2).unwrap();
    assert_eq!(samples.len(), 3);
    assert!(samples.iter().all(|s| s.1 > 0.0));
    assert!(fit.model.time_s(16) > 0.0);
}

#[test]
fn two_unequal_host_devices_get_a_valid_plan() {
    let model = ModelShape::tiny();
    let small = device(0, 1, 6 << 20);
    let big = device(1, 2, 64 << 20);
    let devices: Vec<&dyn DynDevice> = vec![&small, &big];
    let profiles: Vec<_> = devices
        .iter()
        .map(|d| {
            profile_device(*d, &model, 1024, 4096, &[1, 8, 32])
                .unwrap()
                .0
        })
        .collect();
    let capacity: usize = profiles.iter().map(|p| p.max_batch).sum();
    let total = capacity * 3 / 4;
    let plan = Balanced.allocate(&profiles, total).unwrap();
    assert_eq!(plan.batches.iter().sum::<usize>(), total);
    for (b, p) in plan.batches.iter().zip(&profiles) {
        assert!(*b <= p.max_batch);
    }
    // A uniform split of that many overflows the small device.
    let uniform = Uniform.allocate(&profiles, total).unwrap();
    assert_eq!(uniform.overflows, vec![0]);
}

#[test]
fn buckets_and_the_json_cache() {
    use hetero_scheduler::profile::{ProfileCache, profile_buckets};
    let model = ModelShape::tiny();
    let d = device(0, 1, 16 << 20);
    let weights = allocate_weights(&d, &model).unwrap();
    let buckets = profile_buckets(&d, &model, &weights, &[512, 1024, 2048], 10_000).unwrap();
    assert!(
        buckets[0].max_batch > buckets[1].max_batch && buckets[1].max_batch > buckets[2].max_batch
    );
    let mut cache = ProfileCache::default();
    for p in &buckets {
        cache.insert(&d, p.clone());
    }
    let path = std::env::temp_dir().join(format!("hetero-profiles-{}.json", std::process::id()));
    cache.save(&path).unwrap();
    let back = ProfileCache::load(&path).unwrap();
    assert_eq!(back.get(&d, "tiny", 1024), Some(&buckets[1]));
    // Another budget is another device as far as the cache knows.
    let other = device(0, 1, 32 << 20);
    assert_eq!(back.get(&other, "tiny", 1024), None);
    std::fs::write(&path, "{ \"entries\": 3 }").unwrap();
    let err = ProfileCache::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("hetero-profiles") && err.contains("expected a sequence"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_16_bit_preset_is_profiled_as_it_runs_and_serves_its_b_star() {
    // The tiny shape stored as f16: the decode step still stores f32, so
    // B* must be the f32 limit, and serving B* sequences must fit.
    let f16 = ModelShape {
        dtype: hetero_core::DType::F16,
        ..ModelShape::tiny()
    };
    let (len, budget) = (24, 3 << 20);
    let d = device(0, 1, budget);
    let (profile, memory, _) = profile_device(&d, &f16, len, 10_000, &[1, 2]).unwrap();
    let f32_limit = true_limit(&f16.executed(), len, budget);
    assert!(
        memory.max_batch.abs_diff(f32_limit) <= 1,
        "found {} want the f32 limit {f32_limit}",
        memory.max_batch
    );
    assert!(
        memory.max_batch < true_limit(&f16, len, budget),
        "the f16 limit would overstate what the decode step can hold"
    );
    let devices: [&dyn DynDevice; 1] = [&d];
    let report = hetero_scheduler::serve(&devices, &f16, &[profile.max_batch], 8, 16).unwrap();
    assert_eq!(report.batches, vec![profile.max_batch]);
}
