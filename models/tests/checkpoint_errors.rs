//! Broken checkpoints fail with an error naming the file and the field,
//! never a panic and never an allocation of a size a header claims.
//!
//! Each case copies a valid tiny fixture (`tests/fixtures/llama`) into its
//! own folder under the system temp dir, breaks one thing, and runs
//! `Checkpoint::open` then `LlamaModel::load` on a small host device. The
//! error's `file()`, `field()` and Display must name what was broken, and
//! it must convert into `hetero_core::Error` keeping both. A counting
//! allocator records the largest single allocation of each test's thread,
//! so that a config claiming 2^40 layers (or a safetensors header claiming
//! 2^60 bytes) is seen to be refused before anything is sized from it.
//! Last, a proptest mutates the real fixture bytes (truncation, bit flips,
//! overwritten header bytes, inflated lengths and numbers) and requires
//! open + load to return, `Ok` or an error, without panicking.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hetero_backends::host::HostDevice;
use hetero_core::SharedDevice;
use hetero_models::gguf::Value as GgufValue;
use hetero_models::{Checkpoint, GgufFile, LlamaConfig, LlamaModel, ModelError};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Largest allocation per thread.

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping
// touches only a const-initialized thread-local `Cell`, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded; `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the largest single allocation made on
/// this thread meanwhile.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

/// No allocation while opening a broken checkpoint may exceed this: the
/// fixtures are under 100 KB a file, so anything near it was sized from a
/// claim rather than from the bytes.
const ALLOCATION_BOUND: usize = 4 << 20;

// ---------------------------------------------------------------------------
// Scratch copies of the fixtures.

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// A folder of its own under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hetero-checkpoint-errors-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch folder");
        Scratch(dir)
    }

    /// A copy of Hugging Face fixture folder `name`.
    fn hf(name: &str) -> Scratch {
        let s = Scratch::new(name);
        for entry in std::fs::read_dir(fixtures().join(name)).expect("read the fixture folder") {
            let entry = entry.expect("a fixture file");
            std::fs::copy(entry.path(), s.0.join(entry.file_name())).expect("copy a fixture");
        }
        s
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).expect("read a scratch file")
    }

    fn write(&self, file: &str, bytes: &[u8]) {
        std::fs::write(self.path(file), bytes).expect("write a scratch file");
    }

    fn json(&self, file: &str) -> Value {
        serde_json::from_slice(&self.read(file)).expect("a fixture's JSON")
    }

    fn write_json(&self, file: &str, v: &Value) {
        self.write(file, &serde_json::to_vec_pretty(v).expect("JSON"));
    }

    /// Edits `config.json` (indexing a missing key of the object inserts it).
    fn edit_config(&self, f: impl FnOnce(&mut Value)) {
        let mut v = self.json("config.json");
        f(&mut v);
        self.write_json("config.json", &v);
    }

    /// Edits the JSON header of safetensors file `file`, keeping its data.
    fn edit_header(&self, file: &str, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let bytes = self.read(file);
        let (mut header, data) = split_safetensors(&bytes);
        f(header.as_object_mut().expect("the header is an object"));
        self.write(file, &join_safetensors(&header, data));
    }
}

fn split_safetensors(bytes: &[u8]) -> (Value, &[u8]) {
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("a fixture's header");
    (header, &bytes[8 + n..])
}

fn join_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("JSON");
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// A GGUF fixture rewritten through the test writer, with `edit` applied to
/// its metadata (key, value) list and its tensors (name, dims, ggml type,
/// data).
fn rewrite_gguf(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, GgufValue)>, &mut Vec<(String, Vec<u64>, u32, Vec<u8>)>),
) -> (Scratch, PathBuf) {
    let f = GgufFile::open(fixtures().join(name)).expect("open the GGUF fixture");
    let mut kvs: Vec<(String, GgufValue)> = f
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = f
        .tensors()
        .iter()
        .map(|t| {
            let data = f.tensor_bytes(&t.name).expect("tensor bytes").to_vec();
            (t.name.clone(), t.dims.clone(), t.ggml_type.id(), data)
        })
        .collect();
    edit(&mut kvs, &mut tensors);
    let mut w = common::Writer::new(f.version());
    for (k, v) in kvs {
        w = w.kv(&k, v);
    }
    for (n, dims, ty, data) in tensors {
        w = w.tensor(&n, &dims, ty, data);
    }
    let s = Scratch::new(name);
    let path = s.path(name);
    std::fs::write(&path, w.bytes()).expect("write the GGUF");
    (s, path)
}

fn set_kv(kvs: &mut [(String, GgufValue)], key: &str, value: GgufValue) {
    let kv = kvs
        .iter_mut()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("the fixture has no {key}"));
    kv.1 = value;
}

// ---------------------------------------------------------------------------
// Opening, loading and checking the error.

fn device() -> SharedDevice {
    Arc::new(
        HostDevice::builder()
            .threads(1)
            .memory_budget(64 << 20)
            .build()
            .expect("a host device"),
    )
}

/// Where a checkpoint failed.
#[derive(Debug)]
enum Failure {
    Open(ModelError),
    Load(hetero_core::Error),
}

fn open_and_load(path: &Path) -> Result<(), Failure> {
    let ckpt = Checkpoint::open(path).map_err(Failure::Open)?;
    LlamaModel::load(&ckpt, device(), &mut |_| {}).map_err(Failure::Load)?;
    Ok(())
}

/// `path` must fail to open (not only to load), without an allocation
/// sized by a claim; the error's file must be `file`, its field must
/// contain `field`, its Display every string of `says`, and the
/// `hetero_core::Error` it converts into must keep the file and the field.
fn refused(path: &Path, file: &Path, field: &str, says: &[&str]) -> ModelError {
    let (result, largest) = largest_allocation(|| open_and_load(path));
    let e = match result {
        Err(Failure::Open(e)) => e,
        Err(Failure::Load(e)) => panic!("{}: opened, then failed to load: {e}", path.display()),
        Ok(()) => panic!("{}: opened and loaded; expected {field:?}", path.display()),
    };
    let shown = e.to_string();
    assert!(
        largest < ALLOCATION_BOUND,
        "{shown}: an allocation of {largest} bytes on the way"
    );
    assert_eq!(e.file(), file, "{shown}");
    assert!(
        e.field().contains(field),
        "field {:?} should contain {field:?}: {shown}",
        e.field()
    );
    assert!(
        shown.starts_with(&format!("{}: ", file.display())),
        "{shown}"
    );
    for s in says {
        assert!(shown.contains(s), "{shown:?} should say {s:?}");
    }
    // The conversion consumes the error: convert the same error read again.
    let again = Checkpoint::open(path).expect_err("fails the same way twice");
    assert_eq!(again.to_string(), shown);
    let core: hetero_core::Error = again.into();
    let core_shown = core.to_string();
    assert!(
        core_shown.contains(&file.display().to_string()) && core_shown.contains(field),
        "core error {core_shown:?} lost the file or the field"
    );
    e
}

fn assert_loads(path: &Path) {
    if let Err(e) = open_and_load(path) {
        panic!("{}: {e:?}", path.display());
    }
}

// ---------------------------------------------------------------------------
// The untouched copies load.

#[test]
fn untouched_copies_load() {
    for name in ["tiny_llama_hf", "tiny_qwen2_hf"] {
        let s = Scratch::hf(name);
        assert_loads(&s.0);
    }
    for name in ["tiny_llama.gguf", "tiny_qwen2.gguf"] {
        let (_s, path) = rewrite_gguf(name, |_, _| {});
        assert_loads(&path);
    }
}

// ---------------------------------------------------------------------------
// safetensors files.

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

#[test]
fn truncated_shard_names_the_shard_and_what_it_cut() {
    let whole = std::fs::read(fixtures().join("tiny_llama_hf").join(SHARD1)).expect("fixture");
    let data_start = whole.len() - split_safetensors(&whole).1.len();
    let cuts = [
        (0, "safetensors header length"),
        (5, "safetensors header length"),
        (7, "safetensors header length"),
        (8, "safetensors header length"),
        (100, "safetensors header length"),
        (data_start - 1, "safetensors header length"),
        // Into the data: the first tensor that runs past the new end.
        (data_start, "tensor model.embed_tokens.weight"),
        (data_start + 1000, "tensor model.embed_tokens.weight"),
        (
            whole.len() / 2,
            "tensor model.layers.0.self_attn.o_proj.weight",
        ),
        (
            whole.len() - 1,
            "tensor model.layers.0.mlp.down_proj.weight",
        ),
    ];
    for (cut, field) in cuts {
        let s = Scratch::hf("tiny_llama_hf");
        s.write(SHARD1, &whole[..cut]);
        let e = refused(&s.0, &s.path(SHARD1), field, &[]);
        if cut >= data_start {
            assert!(
                matches!(e, ModelError::DataOutOfBounds { .. }),
                "cut at {cut}: {e}"
            );
            assert!(e.to_string().contains("runs past the end"), "{e}");
        }
    }
}

#[test]
fn header_length_beyond_the_file_is_refused_before_allocating() {
    let whole = std::fs::read(fixtures().join("tiny_qwen2_hf").join(SINGLE)).expect("fixture");
    for claim in [
        1u64 << 60,
        u64::MAX,
        1 << 32,
        100_000_000,
        whole.len() as u64 - 7,
    ] {
        let s = Scratch::hf("tiny_qwen2_hf");
        let mut bytes = whole.clone();
        bytes[..8].copy_from_slice(&claim.to_le_bytes());
        s.write(SINGLE, &bytes);
        let e = refused(
            &s.0,
            &s.path(SINGLE),
            "safetensors header length",
            &[&claim.to_string()],
        );
        assert!(matches!(e, ModelError::CountTooLarge { .. }), "{e}");
    }
    // A length short of the header: the JSON is cut.
    let s = Scratch::hf("tiny_qwen2_hf");
    let mut bytes = whole.clone();
    bytes[..8].copy_from_slice(&100u64.to_le_bytes());
    s.write(SINGLE, &bytes);
    refused(&s.0, &s.path(SINGLE), "safetensors header", &["JSON"]);
}

#[test]
fn tensor_offsets_past_the_data_or_overlapping_name_the_tensor() {
    // The last tensor of the file ends past the data (its size still
    // matches dtype x shape: a bigger tensor than the file holds).
    let s = Scratch::hf("tiny_qwen2_hf");
    s.edit_header(SINGLE, |h| {
        let t = &mut h["model.norm.weight"];
        t["shape"] = json!([48 * 4]);
        t["data_offsets"] = json!([80960, 80960 + 48 * 4 * 2]);
    });
    let e = refused(
        &s.0,
        &s.path(SINGLE),
        "tensor model.norm.weight",
        &["runs past the end"],
    );
    assert!(matches!(e, ModelError::DataOutOfBounds { .. }), "{e}");

    // Offsets far past the data, a size disagreeing with dtype x shape.
    let s = Scratch::hf("tiny_qwen2_hf");
    s.edit_header(SINGLE, |h| {
        h["model.norm.weight"]["data_offsets"] = json!([80960, 1u64 << 60]);
    });
    refused(
        &s.0,
        &s.path(SINGLE),
        "tensor model.norm.weight",
        &["runs past the end"],
    );

    // A tensor whose data overlaps the previous one's.
    let s = Scratch::hf("tiny_qwen2_hf");
    s.edit_header(SINGLE, |h| {
        h["model.layers.0.input_layernorm.weight"]["data_offsets"] = json!([9600 - 96, 9600]);
    });
    let e = refused(&s.0, &s.path(SINGLE), "tensor model.", &["data_offsets"]);
    assert!(
        e.field().contains("model.embed_tokens.weight")
            || e.field().contains("model.layers.0.input_layernorm.weight"),
        "{e}"
    );

    // Offsets whose size disagrees with dtype x shape, inside the data.
    let s = Scratch::hf("tiny_qwen2_hf");
    s.edit_header(SINGLE, |h| {
        h["model.layers.1.mlp.up_proj.weight"]["shape"] = json!([81, 48]);
    });
    refused(
        &s.0,
        &s.path(SINGLE),
        "tensor model.layers.1.mlp.up_proj.weight",
        &["[81, 48]", "F16"],
    );

    // A shape whose element count overflows.
    let s = Scratch::hf("tiny_qwen2_hf");
    s.edit_header(SINGLE, |h| {
        h["model.norm.weight"]["shape"] = json!([1u64 << 40, 1u64 << 40]);
    });
    refused(&s.0, &s.path(SINGLE), "tensor model.norm.weight", &[]);
}

#[test]
fn unsupported_dtype_names_the_tensor_and_the_dtype() {
    // Dtypes safetensors knows but this loader does not widen: the
    // tensor's bytes reinterpreted as a 1-D tensor of that dtype.
    for (dtype, size) in [("F8_E4M3", 1u64), ("I64", 8), ("F64", 8), ("I8", 1)] {
        let s = Scratch::hf("tiny_llama_hf");
        s.edit_header(SHARD1, |h| {
            let t = &mut h["model.layers.0.self_attn.q_proj.weight"];
            t["dtype"] = json!(dtype);
            t["shape"] = json!([(24832 - 16640) / size]);
        });
        refused(
            &s.0,
            &s.path(SHARD1),
            "tensor model.layers.0.self_attn.q_proj.weight",
            &[dtype, "not supported"],
        );
    }
    // A dtype safetensors does not know at all.
    let s = Scratch::hf("tiny_llama_hf");
    s.edit_header(SHARD1, |h| {
        h["model.layers.0.self_attn.k_proj.weight"]["dtype"] = json!("Q4_K");
    });
    refused(
        &s.0,
        &s.path(SHARD1),
        "tensor model.layers.0.self_attn.k_proj.weight",
        &["Q4_K"],
    );
}

#[test]
fn missing_tensor_is_no_such_tensor_naming_it() {
    // Renamed in its shard and in the index: the model's name is missing.
    let s = Scratch::hf("tiny_llama_hf");
    let gone = "model.layers.1.mlp.up_proj.weight";
    s.edit_header(SHARD2, |h| {
        let t = h.remove(gone).expect("the fixture has the tensor");
        h.insert("model.layers.1.mlp.up_proj.weight_renamed".into(), t);
    });
    let mut index = s.json(INDEX);
    let map = index["weight_map"]
        .as_object_mut()
        .expect("weight_map is an object");
    let shard = map.remove(gone).expect("indexed");
    map.insert(format!("{gone}_renamed"), shard);
    s.write_json(INDEX, &index);
    let e = refused(&s.0, &s.path(INDEX), &format!("tensor {gone}"), &[gone]);
    assert!(matches!(e, ModelError::NoSuchTensor { .. }), "{e}");

    // Dropped from a single-file checkpoint.
    let s = Scratch::hf("tiny_qwen2_hf");
    let gone = "model.layers.0.self_attn.v_proj.bias";
    s.edit_header(SINGLE, |h| {
        let t = h.remove(gone).expect("the fixture has the tensor");
        h.insert("unused.bias".into(), t);
    });
    let e = refused(&s.0, &s.path(SINGLE), &format!("tensor {gone}"), &[gone]);
    assert!(matches!(e, ModelError::NoSuchTensor { .. }), "{e}");

    // The index names a tensor its shard does not hold.
    let s = Scratch::hf("tiny_llama_hf");
    let mut index = s.json(INDEX);
    index["weight_map"]["model.layers.7.extra.weight"] = json!(SHARD1);
    s.write_json(INDEX, &index);
    refused(
        &s.0,
        &s.path(INDEX),
        "weight_map.model.layers.7.extra.weight",
        &[SHARD1],
    );

    // The index puts a tensor in the wrong shard.
    let s = Scratch::hf("tiny_llama_hf");
    let mut index = s.json(INDEX);
    index["weight_map"]["model.norm.weight"] = json!(SHARD1);
    s.write_json(INDEX, &index);
    refused(
        &s.0,
        &s.path(INDEX),
        "weight_map.model.norm.weight",
        &[SHARD1, SHARD2],
    );
}

#[test]
fn shape_disagreeing_with_config_names_the_tensor_and_both_shapes() {
    let s = Scratch::hf("tiny_llama_hf");
    s.edit_config(|c| {
        c["hidden_size"] = json!(32);
    });
    let e = refused(
        &s.0,
        &s.path(SHARD1),
        "tensor model.embed_tokens.weight",
        &["[128, 64]", "[128, 32]"],
    );
    assert!(matches!(e, ModelError::Invalid { .. }), "{e}");

    let s = Scratch::hf("tiny_qwen2_hf");
    s.edit_config(|c| {
        c["intermediate_size"] = json!(96);
    });
    refused(
        &s.0,
        &s.path(SINGLE),
        "tensor model.layers.0.mlp.gate_proj.weight",
        &["[80, 48]", "[96, 48]"],
    );

    // The header's shape transposed (same size): the file's side.
    let s = Scratch::hf("tiny_llama_hf");
    s.edit_header(SHARD1, |h| {
        h["model.layers.0.self_attn.k_proj.weight"]["shape"] = json!([64, 32]);
    });
    refused(
        &s.0,
        &s.path(SHARD1),
        "tensor model.layers.0.self_attn.k_proj.weight",
        &["[64, 32]", "[32, 64]"],
    );

    // Tied embeddings switched off on a model without an output matrix.
    let s = Scratch::hf("tiny_qwen2_hf");
    s.edit_config(|c| {
        c["tie_word_embeddings"] = json!(false);
    });
    refused(&s.0, &s.path(SINGLE), "tensor lm_head.weight", &[]);
}

#[test]
fn index_naming_missing_or_outside_shards() {
    // A shard that does not exist.
    let s = Scratch::hf("tiny_llama_hf");
    let mut index = s.json(INDEX);
    index["weight_map"]["model.norm.weight"] = json!("model-00003-of-00002.safetensors");
    s.write_json(INDEX, &index);
    let e = refused(
        &s.0,
        &s.path("model-00003-of-00002.safetensors"),
        "open",
        &[],
    );
    assert!(matches!(e, ModelError::Io { .. }), "{e}");

    // Paths out of the folder, or no file name at all.
    for bad in [
        "../model-00002-of-00002.safetensors",
        "sub/../../x.safetensors",
        "/etc/passwd",
        "..",
        ".",
        "",
        "..\\x.safetensors",
    ] {
        let s = Scratch::hf("tiny_llama_hf");
        let mut index = s.json(INDEX);
        index["weight_map"]["model.norm.weight"] = json!(bad);
        s.write_json(INDEX, &index);
        refused(
            &s.0,
            &s.path(INDEX),
            "weight_map.model.norm.weight",
            &["not a file name in the folder"],
        );
    }

    // An index that is not JSON, without a weight_map, or an empty one.
    for (bytes, field) in [
        (&b"{\"weight_map\": "[..], "index"),
        (&b"{\"metadata\": {}}"[..], "weight_map"),
        (&b"{\"weight_map\": []}"[..], "weight_map"),
        (&b"{\"weight_map\": {}}"[..], "weight_map"),
        (
            &b"{\"weight_map\": {\"model.norm.weight\": 7}}"[..],
            "weight_map.model.norm.weight",
        ),
    ] {
        let s = Scratch::hf("tiny_llama_hf");
        s.write(INDEX, bytes);
        refused(&s.0, &s.path(INDEX), field, &[]);
    }

    // No weights at all.
    let s = Scratch::hf("tiny_qwen2_hf");
    std::fs::remove_file(s.path(SINGLE)).expect("remove");
    refused(&s.0, &s.path(SINGLE), "open", &[]);
}

// ---------------------------------------------------------------------------
// config.json.

/// A copy of tiny_llama_hf with `edit` applied to its config.json; the
/// error must name config.json and `field`.
fn config_refused(edit: impl FnOnce(&mut Value), field: &str, says: &[&str]) -> ModelError {
    let s = Scratch::hf("tiny_llama_hf");
    s.edit_config(edit);
    refused(&s.0, &s.path("config.json"), field, says)
}

fn remove(config: &mut Value, key: &str) {
    config
        .as_object_mut()
        .expect("config.json is an object")
        .remove(key);
}

#[test]
fn config_json_that_is_not_json_or_not_an_object() {
    for bytes in [
        &b""[..],
        b"{\"model_type\": \"llama\",",
        b"\xff\xfe",
        b"[1, 2]",
        b"null",
    ] {
        let s = Scratch::hf("tiny_llama_hf");
        s.write("config.json", bytes);
        refused(&s.0, &s.path("config.json"), "config.json", &[]);
    }
    let s = Scratch::hf("tiny_llama_hf");
    std::fs::remove_file(s.path("config.json")).expect("remove");
    refused(&s.0, &s.path("config.json"), "read", &[]);
}

#[test]
fn config_missing_keys() {
    for key in [
        "hidden_size",
        "num_attention_heads",
        "intermediate_size",
        "num_hidden_layers",
        "vocab_size",
        "model_type",
    ] {
        let e = config_refused(
            |c| {
                remove(c, key);
            },
            key,
            &[key],
        );
        assert!(matches!(e, ModelError::MissingKey { .. }), "{e}");
    }
}

#[test]
fn config_unsupported_architecture() {
    for name in ["gpt2", "mamba", "qwen3"] {
        let e = config_refused(
            |c| {
                c["model_type"] = json!(name);
            },
            "model_type",
            &[name, "not supported"],
        );
        assert!(
            matches!(&e, ModelError::UnsupportedArchitecture { name: n, .. } if n == name),
            "{e}"
        );
        let core: hetero_core::Error = e.into();
        assert!(core.to_string().contains(name), "{core}");
    }
    config_refused(
        |c| {
            c["model_type"] = json!(7);
        },
        "model_type",
        &["not a string"],
    );
    config_refused(
        |c| {
            c["hidden_act"] = json!("gelu");
        },
        "hidden_act",
        &["gelu"],
    );
    config_refused(
        |c| {
            c["sliding_window"] = json!(4096);
            c["use_sliding_window"] = json!(true);
        },
        "sliding_window",
        &["4096"],
    );
}

#[test]
fn config_heads_that_do_not_group() {
    config_refused(
        |c| {
            c["num_key_value_heads"] = json!(3);
        },
        "num_key_value_heads",
        &["4 query heads", "3 kv heads"],
    );
    config_refused(
        |c| {
            c["num_key_value_heads"] = json!(8);
        },
        "num_key_value_heads",
        &["8 kv heads"],
    );
    // No head_dim: heads must divide hidden.
    config_refused(
        |c| {
            remove(c, "head_dim");
            c["num_attention_heads"] = json!(6);
            c["num_key_value_heads"] = json!(3);
        },
        "num_attention_heads",
        &["6 heads", "64"],
    );
    config_refused(
        |c| {
            c["head_dim"] = json!(15);
        },
        "head_dim",
        &["odd"],
    );
}

#[test]
fn config_absurd_values_are_refused_before_anything_is_allocated() {
    for (key, value) in [
        ("num_hidden_layers", json!(1u64 << 40)),
        ("num_hidden_layers", json!(u64::MAX)),
        ("num_hidden_layers", json!(0)),
        ("num_hidden_layers", json!(-2)),
        ("num_hidden_layers", json!(2.5)),
        ("num_hidden_layers", json!(1e300)),
        ("num_hidden_layers", json!("2")),
        ("num_hidden_layers", json!(null)),
        ("vocab_size", json!(0)),
        ("vocab_size", json!(-1)),
        ("vocab_size", json!(128.5)),
        ("vocab_size", json!([128])),
        ("hidden_size", json!(1u64 << 33)),
        ("hidden_size", json!(-64)),
        ("intermediate_size", json!(0)),
        ("num_attention_heads", json!(0)),
        ("num_key_value_heads", json!(0)),
        ("head_dim", json!(-16)),
        ("max_position_embeddings", json!(1u64 << 40)),
        ("rms_norm_eps", json!(-1e-5)),
        ("rms_norm_eps", json!(0)),
        ("rope_theta", json!("big")),
        ("tie_word_embeddings", json!("yes")),
    ] {
        config_refused(
            |c| {
                c[key] = value.clone();
            },
            key,
            &[],
        );
    }
    // Below 2^32 but beyond the loader's bounds (see LlamaConfig::MAX_*):
    // refused by name, before a per-layer list or weight shape is sized.
    for (key, value) in [
        ("num_hidden_layers", LlamaConfig::MAX_LAYERS + 1),
        ("num_hidden_layers", (1 << 32) - 1),
        ("hidden_size", LlamaConfig::MAX_HIDDEN + 1),
        ("intermediate_size", LlamaConfig::MAX_INTERMEDIATE + 1),
        ("vocab_size", LlamaConfig::MAX_VOCAB + 1),
        ("vocab_size", (1 << 32) - 1),
        ("num_attention_heads", LlamaConfig::MAX_HEADS * 2),
        ("max_position_embeddings", LlamaConfig::MAX_CONTEXT + 1),
        ("head_dim", LlamaConfig::MAX_HEAD_DIM + 2),
    ] {
        config_refused(
            |c| {
                c[key] = json!(value);
                if key == "num_attention_heads" {
                    c["num_key_value_heads"] = json!(value);
                }
            },
            key,
            &[&value.to_string()],
        );
    }
    // Wide heads: each within bounds, their product not.
    config_refused(
        |c| {
            c["num_attention_heads"] = json!(1 << 12);
            c["num_key_value_heads"] = json!(1 << 12);
            c["head_dim"] = json!(1 << 12);
        },
        "num_attention_heads",
        &["wider"],
    );
    // Within bounds, more than the files hold: the first missing tensor.
    let s = Scratch::hf("tiny_llama_hf");
    s.edit_config(|c| {
        c["num_hidden_layers"] = json!(LlamaConfig::MAX_LAYERS);
    });
    let e = refused(
        &s.0,
        &s.path(INDEX),
        "tensor model.layers.2.input_layernorm.weight",
        &[],
    );
    assert!(matches!(e, ModelError::NoSuchTensor { .. }), "{e}");
}

#[test]
fn config_rope_scaling_of_unknown_type() {
    for kind in ["yarn", "dynamic", "longrope"] {
        config_refused(
            |c| {
                c["rope_scaling"] = json!({"rope_type": kind, "factor": 4.0});
            },
            "rope_scaling.rope_type",
            &[kind, "not supported"],
        );
        config_refused(
            |c| {
                c["rope_scaling"] = json!({"type": kind, "factor": 4.0});
            },
            "rope_scaling.type",
            &[kind],
        );
    }
    config_refused(
        |c| {
            c["rope_scaling"] = json!("llama3");
        },
        "rope_scaling",
        &["not an object"],
    );
    config_refused(
        |c| {
            c["rope_scaling"] = json!({"rope_type": 3});
        },
        "rope_scaling.rope_type",
        &["not a string"],
    );
    config_refused(
        |c| {
            c["rope_scaling"] = json!({"rope_type": "linear"});
        },
        "rope_scaling.factor",
        &[],
    );
    config_refused(
        |c| {
            c["rope_scaling"]["factor"] = json!(-8.0);
        },
        "rope_scaling.factor",
        &[],
    );
    // Equal frequency factors would divide by zero.
    config_refused(
        |c| {
            c["rope_scaling"]["high_freq_factor"] = json!(1.0);
        },
        "rope_scaling",
        &["high_freq_factor"],
    );
}

// ---------------------------------------------------------------------------
// GGUF.

fn gguf_refused(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, GgufValue)>, &mut Vec<(String, Vec<u64>, u32, Vec<u8>)>),
    field: &str,
    says: &[&str],
) -> ModelError {
    let (_s, path) = rewrite_gguf(name, edit);
    refused(&path, &path, field, says)
}

#[test]
fn gguf_unsupported_architecture() {
    for arch in ["mamba", "gpt2", ""] {
        let e = gguf_refused(
            "tiny_llama.gguf",
            |kvs, _| set_kv(kvs, "general.architecture", GgufValue::String(arch.into())),
            "general.architecture",
            &[&format!("{arch:?}")],
        );
        assert!(
            matches!(e, ModelError::UnsupportedArchitecture { .. }),
            "{e}"
        );
    }
    gguf_refused(
        "tiny_llama.gguf",
        |kvs, _| kvs.retain(|(k, _)| k != "general.architecture"),
        "general.architecture",
        &[],
    );
}

#[test]
fn gguf_absurd_block_count_fails_at_config_time() {
    for (value, says) in [
        (GgufValue::U64(1 << 40), "1099511627776"),
        (GgufValue::U64(u64::MAX), "18446744073709551615"),
        (GgufValue::U32(u32::MAX), "4294967295"),
        (GgufValue::U32(LlamaConfig::MAX_LAYERS as u32 + 1), "4097"),
        (GgufValue::U32(0), "0"),
        (GgufValue::I32(-1), ""),
        (GgufValue::F32(2.0), ""),
    ] {
        gguf_refused(
            "tiny_llama.gguf",
            |kvs, _| set_kv(kvs, "llama.block_count", value),
            "llama.block_count",
            &[says],
        );
    }
    // More layers than tensors: the first missing one, by name.
    let e = gguf_refused(
        "tiny_llama.gguf",
        |kvs, _| set_kv(kvs, "llama.block_count", GgufValue::U32(3)),
        "tensor blk.2.",
        &[],
    );
    assert!(matches!(e, ModelError::NoSuchTensor { .. }), "{e}");
    for key in [
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.context_length",
    ] {
        gguf_refused(
            "tiny_llama.gguf",
            |kvs, _| set_kv(kvs, key, GgufValue::U64(1 << 40)),
            key,
            &["1099511627776"],
        );
    }
}

#[test]
fn gguf_tensor_shape_disagreeing_with_metadata() {
    // The metadata's side: a wider feed-forward than the tensors.
    gguf_refused(
        "tiny_llama.gguf",
        |kvs, _| set_kv(kvs, "llama.feed_forward_length", GgufValue::U32(128)),
        "tensor blk.0.ffn_",
        &["[96, 64]", "[128, 64]"],
    );
    // The tensor's side: attn_k's dims swapped (same size and blocks).
    gguf_refused(
        "tiny_llama.gguf",
        |_, tensors| {
            let t = tensors
                .iter_mut()
                .find(|t| t.0 == "blk.1.attn_k.weight")
                .expect("the fixture has blk.1.attn_k.weight");
            t.1.reverse();
        },
        "tensor blk.1.attn_k.weight",
        &["[64, 32]", "[32, 64]"],
    );
    // The qwen2 fixture: a bias of the wrong length.
    gguf_refused(
        "tiny_qwen2.gguf",
        |kvs, _| set_kv(kvs, "qwen2.attention.head_count_kv", GgufValue::U32(4)),
        "qwen2.attention.head_count_kv",
        &["4 kv heads"],
    );
    gguf_refused(
        "tiny_qwen2.gguf",
        |_, tensors| tensors.retain(|t| t.0 != "blk.0.attn_v.bias"),
        "tensor blk.0.attn_v.bias",
        &[],
    );
    gguf_refused(
        "tiny_qwen2.gguf",
        |kvs, _| set_kv(kvs, "qwen2.rope.freq_base", GgufValue::F32(f32::NAN)),
        "qwen2.rope.freq_base",
        &[],
    );
}

// ---------------------------------------------------------------------------
// Random mutations of the real bytes.

mod mutations {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    use super::*;

    /// The fixture files mutated, with their folder.
    const TARGETS: [(&str, &str); 7] = [
        ("tiny_qwen2_hf", SINGLE),
        ("tiny_qwen2_hf", "config.json"),
        ("tiny_llama_hf", SHARD1),
        ("tiny_llama_hf", SHARD2),
        ("tiny_llama_hf", INDEX),
        ("tiny_llama_hf", "config.json"),
        ("tiny_llama.gguf", ""),
    ];

    #[derive(Debug, Clone)]
    enum Mutation {
        Truncate(prop::sample::Index),
        BitFlips(Vec<(prop::sample::Index, u8)>),
        /// Bytes overwritten in the first `8 + header` bytes (the whole file for JSON).
        OverwriteHeader(prop::sample::Index, Vec<u8>),
        /// A little-endian u64 written in the header region.
        Inflate(prop::sample::Index, u64),
        /// A run of digits in the header / JSON replaced by this text.
        Number(prop::sample::Index, &'static str),
    }

    fn nasty_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(u64::MAX),
            Just(1u64 << 60),
            Just(1u64 << 40),
            Just(1u64 << 32),
            Just(u64::MAX - 7),
            0u64..64,
            any::<u64>(),
        ]
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8)
                .prop_map(Mutation::BitFlips),
            (
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<u8>(), 1..16)
            )
                .prop_map(|(i, b)| Mutation::OverwriteHeader(i, b)),
            (any::<prop::sample::Index>(), nasty_u64()).prop_map(|(i, v)| Mutation::Inflate(i, v)),
            (
                any::<prop::sample::Index>(),
                prop::sample::select(vec![
                    "1099511627776",
                    "18446744073709551615",
                    "18446744073709551616",
                    "4294967295",
                    "0",
                    "-1",
                    "1e300",
                    "2.5",
                    "null",
                    "\"x\"",
                    "4097",
                    "1152921504606846976",
                ])
            )
                .prop_map(|(i, s)| Mutation::Number(i, s)),
        ]
    }

    /// The bytes that count as header: 8 + the JSON for safetensors, the
    /// whole file for JSON, the part before the tensor data for GGUF.
    fn header_len(file: &str, bytes: &[u8]) -> usize {
        if file.ends_with(".safetensors") {
            let mut len = [0u8; 8];
            len.copy_from_slice(&bytes[..8]);
            8 + u64::from_le_bytes(len) as usize
        } else if file.is_empty() {
            GgufFile::from_bytes("x.gguf", bytes.to_vec())
                .map(|f| f.data_offset() as usize)
                .unwrap_or(bytes.len())
        } else {
            bytes.len()
        }
    }

    fn apply(m: &Mutation, file: &str, mut bytes: Vec<u8>) -> Vec<u8> {
        let header = header_len(file, &bytes).min(bytes.len());
        match m {
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Mutation::BitFlips(flips) => {
                for (i, bit) in flips {
                    let n = bytes.len();
                    bytes[i.index(n)] ^= 1 << bit;
                }
            }
            Mutation::OverwriteHeader(i, new) => {
                let at = i.index(header);
                let end = (at + new.len()).min(bytes.len());
                bytes[at..end].copy_from_slice(&new[..end - at]);
            }
            Mutation::Inflate(i, v) => {
                let at = i.index(header.saturating_sub(7).max(1));
                let end = (at + 8).min(bytes.len());
                bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            Mutation::Number(i, text) => {
                // The i-th run of digits in the header region.
                let region = &bytes[..header];
                let mut runs = Vec::new();
                let mut k = 0;
                while k < region.len() {
                    if region[k].is_ascii_digit() {
                        let s = k;
                        while k < region.len() && region[k].is_ascii_digit() {
                            k += 1;
                        }
                        runs.push((s, k));
                    } else {
                        k += 1;
                    }
                }
                if !runs.is_empty() {
                    let (s, e) = runs[i.index(runs.len())];
                    let mut out = bytes[..s].to_vec();
                    out.extend_from_slice(text.as_bytes());
                    out.extend_from_slice(&bytes[e..]);
                    // Keep a safetensors header's length true to the new
                    // text, so the JSON itself is what is tested.
                    if file.ends_with(".safetensors") && s >= 8 {
                        let grown = header - 8 + text.len() - (e - s);
                        out[..8].copy_from_slice(&(grown as u64).to_le_bytes());
                    }
                    bytes = out;
                }
            }
        }
        bytes
    }

    #[test]
    fn mutated_fixtures_never_panic() {
        let config = Config {
            cases: 128,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[0x5e; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let strategy = (0..TARGETS.len(), mutation());
        let originals: Vec<Vec<u8>> = TARGETS
            .iter()
            .map(|(dir, file)| {
                let path = if file.is_empty() {
                    fixtures().join(dir)
                } else {
                    fixtures().join(dir).join(file)
                };
                std::fs::read(path).expect("read a fixture")
            })
            .collect();
        let started = std::time::Instant::now();
        let (oks, errs) = (Cell::new(0usize), Cell::new(0usize));
        runner
            .run(&strategy, |(t, m)| {
                let (dir, file) = TARGETS[t];
                let bytes = apply(&m, file, originals[t].clone());
                let (s, path) = if file.is_empty() {
                    let s = Scratch::new("mutated-gguf");
                    let path = s.path(dir);
                    s.write(dir, &bytes);
                    (s, path)
                } else {
                    let s = Scratch::hf(dir);
                    s.write(file, &bytes);
                    let p = s.0.clone();
                    (s, p)
                };
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    largest_allocation(|| match open_and_load(&path) {
                        Ok(()) => None,
                        Err(Failure::Open(e)) => {
                            // Every error still converts, keeping its file.
                            let shown = e.to_string();
                            let core: hetero_core::Error = e.into();
                            assert!(!shown.is_empty() && !core.to_string().is_empty());
                            Some(shown)
                        }
                        Err(Failure::Load(e)) => Some(e.to_string()),
                    })
                }));
                drop(s);
                let (result, largest) = match outcome {
                    Ok(r) => r,
                    Err(panic) => {
                        let msg = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        return Err(TestCaseError::fail(format!(
                            "{dir}/{file} with {m:?}: panicked: {msg}"
                        )));
                    }
                };
                prop_assert!(
                    largest < ALLOCATION_BOUND,
                    "{dir}/{file} with {m:?}: an allocation of {largest} bytes ({result:?})"
                );
                let count = if result.is_none() { &oks } else { &errs };
                count.set(count.get() + 1);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let (oks, errs) = (oks.get(), errs.get());
        eprintln!(
            "{} mutations: {oks} opened and loaded, {errs} refused, in {:?}",
            oks + errs,
            started.elapsed()
        );
        assert!(
            errs > 0,
            "no mutation was refused: the mutations do nothing"
        );
    }
}
