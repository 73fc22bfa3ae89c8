//! hetero-models: model files and, later, the models themselves.
//!
//! Today this crate reads GGUF files ([`gguf::GgufFile`]): header,
//! metadata, tensor infos, and tensor data memory-mapped and dequantized
//! to f32 exactly as ggml does (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
//! Q5_K, Q6_K), and builds their byte-level BPE [`Tokenizer`] (on Hugging
//! Face's `tokenizers`) from GGUF metadata or a `tokenizer.json`. It will
//! hold the Llama-family model code and sampling. It depends only on `hetero-core`, never on a backend: the
//! model describes its computation against core's traits, and the caller
//! picks the devices.
//!
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

pub use chat::{ChatTemplate, Message};
pub use checkpoint::Checkpoint;
pub use device_choice::{bytes_needed, choose_device};
pub use error::{ModelError, Result};
pub use generate::{FinishReason, GenerateOptions, Generation, generate};
pub use gguf::GgufFile;
pub use llama::{KvCache, LlamaConfig, LlamaModel, Logits};
pub use prompt::{adds_bos, prompt_ids};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{StreamDecoder, Tokenizer};
