//! The Llama family: config ([`LlamaConfig`], from GGUF metadata or a
//! Hugging Face `config.json`), weights by role and their names in each
//! format ([`Weight`]), and the model on a device ([`LlamaModel`]) with its
//! per-sequence [`KvCache`], optionally split by layers over several
//! devices ([`StageSpec`]) and run as a pipeline of micro-batches, or as
//! a standing [`Line`] that whole batches travel down with their caches,
//! one batch per stage in flight.
//!
//! Covers Llama 2/3, TinyLlama, SmolLM/SmolLM2, Mistral without sliding
//! window, and Qwen2 (Q/K/V biases). The rotary layout follows the file:
//! GGUF `llama` rotates adjacent pairs (its converter permuted Q and K),
//! Hugging Face checkpoints and GGUF `qwen2` rotate halves.

mod config;
mod decode_pipeline;
mod forward;
mod kv_dtype;
mod line;
mod model;
mod remote;
mod timing;
mod weights;

pub use config::{Architecture, LlamaConfig, RopeScaling};
pub use decode_pipeline::PickFn;
pub use kv_dtype::KvCacheDtype;
pub use line::{Landed, Line, StageBusy};
pub use model::{KvCache, LlamaModel, LoadProgress, Logits, StageInfo, StageSpec, WeightFormat};
pub use remote::{RemoteStage, RemoteTail, StagePeer, StageStats};
pub use weights::Weight;
