//! The weights of a Llama-family model by role, their names in each file
//! format, and the shape the config says each must have.

use super::config::LlamaConfig;

/// One weight tensor of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weight {
    Embedding,
    OutputNorm,
    /// The output matrix (absent when tied to the embedding).
    Output,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

impl Weight {
    /// The layer a per-layer weight belongs to; `None` for the embedding,
    /// output norm and output.
    pub fn layer(self) -> Option<usize> {
        match self {
            Weight::Embedding | Weight::OutputNorm | Weight::Output => None,
            Weight::AttnNorm(l)
            | Weight::Q(l)
            | Weight::K(l)
            | Weight::V(l)
            | Weight::O(l)
            | Weight::QBias(l)
            | Weight::KBias(l)
            | Weight::VBias(l)
            | Weight::FfnNorm(l)
            | Weight::Gate(l)
            | Weight::Up(l)
            | Weight::Down(l) => Some(l),
        }
    }

    /// Every weight the config's model has, in file order (embedding,
    /// layers, output norm, output).
    pub fn all(config: &LlamaConfig) -> Vec<Weight> {
        let mut all = vec![Weight::Embedding];
        for l in 0..config.layers {
            all.push(Weight::AttnNorm(l));
            all.extend([Weight::Q(l), Weight::K(l), Weight::V(l)]);
            if config.architecture.qkv_bias() {
                all.extend([Weight::QBias(l), Weight::KBias(l), Weight::VBias(l)]);
            }
            all.extend([
                Weight::O(l),
                Weight::FfnNorm(l),
                Weight::Gate(l),
                Weight::Up(l),
                Weight::Down(l),
            ]);
        }
        all.push(Weight::OutputNorm);
        if !config.tied_embeddings {
            all.push(Weight::Output);
        }
        all
    }

    /// Its name in GGUF files.
    pub fn gguf_name(self) -> String {
        let blk = |l: usize, s: &str| format!("blk.{l}.{s}");
        match self {
            Weight::Embedding => "token_embd.weight".into(),
            Weight::OutputNorm => "output_norm.weight".into(),
            Weight::Output => "output.weight".into(),
            Weight::AttnNorm(l) => blk(l, "attn_norm.weight"),
            Weight::Q(l) => blk(l, "attn_q.weight"),
            Weight::K(l) => blk(l, "attn_k.weight"),
            Weight::V(l) => blk(l, "attn_v.weight"),
            Weight::O(l) => blk(l, "attn_output.weight"),
            Weight::QBias(l) => blk(l, "attn_q.bias"),
            Weight::KBias(l) => blk(l, "attn_k.bias"),
            Weight::VBias(l) => blk(l, "attn_v.bias"),
            Weight::FfnNorm(l) => blk(l, "ffn_norm.weight"),
            Weight::Gate(l) => blk(l, "ffn_gate.weight"),
            Weight::Up(l) => blk(l, "ffn_up.weight"),
            Weight::Down(l) => blk(l, "ffn_down.weight"),
        }
    }

    /// Its name in Hugging Face checkpoints.
    pub fn hf_name(self) -> String {
        let layer = |l: usize, s: &str| format!("model.layers.{l}.{s}");
        match self {
            Weight::Embedding => "model.embed_tokens.weight".into(),
            Weight::OutputNorm => "model.norm.weight".into(),
            Weight::Output => "lm_head.weight".into(),
            Weight::AttnNorm(l) => layer(l, "input_layernorm.weight"),
            Weight::Q(l) => layer(l, "self_attn.q_proj.weight"),
            Weight::K(l) => layer(l, "self_attn.k_proj.weight"),
            Weight::V(l) => layer(l, "self_attn.v_proj.weight"),
            Weight::O(l) => layer(l, "self_attn.o_proj.weight"),
            Weight::QBias(l) => layer(l, "self_attn.q_proj.bias"),
            Weight::KBias(l) => layer(l, "self_attn.k_proj.bias"),
            Weight::VBias(l) => layer(l, "self_attn.v_proj.bias"),
            Weight::FfnNorm(l) => layer(l, "post_attention_layernorm.weight"),
            Weight::Gate(l) => layer(l, "mlp.gate_proj.weight"),
            Weight::Up(l) => layer(l, "mlp.up_proj.weight"),
            Weight::Down(l) => layer(l, "mlp.down_proj.weight"),
        }
    }

    /// Its row-major shape (`[out, in]` for matrices, as both formats store them).
    pub fn shape(self, c: &LlamaConfig) -> Vec<usize> {
        let (h, q, kv) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        match self {
            Weight::Embedding | Weight::Output => vec![c.vocab, h],
            Weight::OutputNorm | Weight::AttnNorm(_) | Weight::FfnNorm(_) => vec![h],
            Weight::Q(_) => vec![q, h],
            Weight::K(_) | Weight::V(_) => vec![kv, h],
            Weight::O(_) => vec![h, q],
            Weight::QBias(_) => vec![q],
            Weight::KBias(_) | Weight::VBias(_) => vec![kv],
            Weight::Gate(_) | Weight::Up(_) => vec![c.intermediate, h],
            Weight::Down(_) => vec![h, c.intermediate],
        }
    }
}
