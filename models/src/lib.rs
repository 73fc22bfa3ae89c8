//! hetero-models: real models on hetero's devices.
//!
//! - Files: GGUF ([`gguf::GgufFile`]: header, metadata, tensor infos,
//!   tensor data memory-mapped and dequantized to f32 exactly as ggml does:
//!   F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) and Hugging Face
//!   folders ([`safetensors`]: one file or a sharded index), both behind
//!   [`Checkpoint`].
//! - Text: the byte-level BPE [`Tokenizer`] (Hugging Face's `tokenizers`)
//!   from GGUF metadata or a `tokenizer.json`; chat templates
//!   ([`ChatTemplate`], minijinja); [`prompt_ids`].
//! - The Llama family ([`llama`]: Llama 2/3, TinyLlama, SmolLM, Qwen2):
//!   [`LlamaConfig`] from either format, [`LlamaModel`] computing on any
//!   `DynDevice` with the Llama-family kernels, batched prefill and decode
//!   over per-sequence [`KvCache`]s.
//! - Generation: [`Sampler`] (greedy, temperature, top-k, top-p, seeded),
//!   [`generate()`] (streaming, stop ids and strings, timings), and
//!   [`choose_device`] for the device to hold a model.
//!
//! What this crate must not do: depend on a backend. The model describes
//! its computation against core's traits, and the caller picks the devices.

//! Why a reader of our own: the GGUF crates available either pull in a
//! whole tensor framework (candle-core's `gguf_file` comes with candle's
//! tensors, kernels and their dependencies) or are small and unmaintained,
//! without the bounds checks needed to open untrusted files. The format is
//! small, and owning the parser lets every count and length be bounded by
//! the bytes actually left before anything is allocated, so that no file,
//! however malformed, can make the reader panic or allocate unboundedly.
//!
//! Errors are [`ModelError`], each naming the file and the field, and
//! convert into [`hetero_core::Error`].

pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod device_choice;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod prompt;
pub mod safetensors;
pub mod sampling;
pub mod tokenizer;

pub use bench::{BenchOptions, BenchReport, bench};
pub use chat::{ChatTemplate, Message};
pub use checkpoint::{Checkpoint, StoredWeight};
pub use device_choice::{bytes_needed, choose_device};
pub use error::{ModelError, Result};
pub use generate::{Continuation, FinishReason, GenerateOptions, Generation, Step, generate};
pub use gguf::GgufFile;
pub use llama::{
    KvCache, LlamaConfig, LlamaModel, Logits, RemoteStage, RemoteTail, StageBusy, StageInfo,
    StagePeer, StageSpec, StageStats, WeightFormat,
};
pub use prompt::{adds_bos, prompt_ids};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{StreamDecoder, Tokenizer, Utf8Stream};
