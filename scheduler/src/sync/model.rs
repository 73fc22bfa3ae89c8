//! What a data-parallel model synchronizes: its trainable variables.
//!
//! Shapes follow PyTorch's layout (output features / channels first), so
//! partitioning "along the first axis" splits output rows or channels.
//! Presets are generated from the public architectures; they carry no
//! weights, only names, shapes and how gradients are produced (dense, or
//! sparse with the rows one replica touches per step).

use std::path::Path;

use hetero_core::{DType, Error, Result};
use serde::{Deserialize, Serialize};

/// A sparse gradient: each replica touches `rows_touched` rows per step
/// (an embedding lookup), the rest of its gradient is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseAccess {
    pub rows_touched: usize,
}

/// One trainable variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(default = "f32_dtype")]
    pub dtype: DType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseAccess>,
}

fn f32_dtype() -> DType {
    DType::F32
}

impl Variable {
    pub fn dense(name: impl Into<String>, shape: &[usize]) -> Self {
        Variable {
            name: name.into(),
            shape: shape.to_vec(),
            dtype: DType::F32,
            sparse: None,
        }
    }

    pub fn embedding(name: impl Into<String>, rows: usize, width: usize, touched: usize) -> Self {
        Variable {
            name: name.into(),
            shape: vec![rows, width],
            dtype: DType::F32,
            sparse: Some(SparseAccess {
                rows_touched: touched.min(rows),
            }),
        }
    }

    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.elements() * self.dtype.size_bytes()
    }

    /// Rows along the first axis (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements of one row (the product of the other axes).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    pub fn is_sparse(&self) -> bool {
        self.sparse.is_some()
    }
}

/// A model: its variables in forward order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub variables: Vec<Variable>,
}

/// Names of the built-in presets.
pub const PRESETS: [&str; 4] = ["bert-large", "vgg16", "resnet50", "ncf"];

impl ModelSpec {
    /// A preset by name, or a JSON file.
    pub fn load(name_or_path: &str) -> Result<Self> {
        if let Some(m) = Self::preset(name_or_path) {
            return Ok(m);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(Error::invalid(
                "model",
                format!(
                    "{name_or_path:?} is neither a preset ({}) nor an existing file",
                    PRESETS.join(", ")
                ),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading model file {}", path.display()), e))?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let m: ModelSpec =
            serde_json::from_str(text).map_err(|e| Error::invalid("model JSON", format!("{e}")))?;
        m.validate()?;
        Ok(m)
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::invalid("model", e.to_string()))
    }

    /// Names unique and non-empty, shapes non-empty with no zero axis,
    /// sparse access only on 2-D variables and within their rows.
    pub fn validate(&self) -> Result<()> {
        if self.variables.is_empty() {
            return Err(Error::invalid(
                "model",
                format!("{:?} has no variables", self.name),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.variables {
            if v.name.is_empty() || !seen.insert(v.name.as_str()) {
                return Err(Error::invalid(
                    "model",
                    format!("variable name {:?} is empty or repeated", v.name),
                ));
            }
            if v.shape.is_empty() || v.shape.contains(&0) {
                return Err(Error::invalid(
                    "model",
                    format!(
                        "variable {:?} has shape {:?}: every axis must be at least 1",
                        v.name, v.shape
                    ),
                ));
            }
            if let Some(s) = v.sparse
                && (v.shape.len() != 2 || s.rows_touched == 0 || s.rows_touched > v.rows())
            {
                return Err(Error::invalid(
                    "model",
                    format!(
                        "sparse variable {:?} (shape {:?}) touches {} rows: sparse variables are 2-D and touch 1..=rows rows",
                        v.name, v.shape, s.rows_touched
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn preset(name: &str) -> Option<Self> {
        let variables = match name {
            "bert-large" => bert_large(),
            "vgg16" => vgg16(),
            "resnet50" => resnet50(),
            "ncf" => ncf(),
            _ => return None,
        };
        Some(ModelSpec {
            name: name.to_string(),
            variables,
        })
    }

    pub fn elements(&self) -> usize {
        self.variables.iter().map(Variable::elements).sum()
    }

    pub fn bytes(&self) -> usize {
        self.variables.iter().map(Variable::bytes).sum()
    }

    /// The same model with every variable's first axis scaled by `factor`
    /// (at least one row; touched rows scaled alike), for runs that must fit
    /// a small machine. The variable count and names stay; sizes shrink.
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        if !(factor > 0.0 && factor <= 1.0) {
            return Err(Error::invalid(
                "scale",
                format!("{factor} is not in (0, 1]"),
            ));
        }
        let mut m = self.clone();
        if factor < 1.0 {
            for v in &mut m.variables {
                let rows = ((v.rows() as f64 * factor).round() as usize).max(1);
                if let Some(first) = v.shape.first_mut() {
                    *first = rows;
                }
                if let Some(s) = &mut v.sparse {
                    s.rows_touched =
                        ((s.rows_touched as f64 * factor).round() as usize).clamp(1, rows);
                }
            }
            m.name = format!("{} x{factor}", self.name);
        }
        Ok(m)
    }
}

fn linear(vars: &mut Vec<Variable>, name: &str, out: usize, inp: usize) {
    vars.push(Variable::dense(format!("{name}.weight"), &[out, inp]));
    vars.push(Variable::dense(format!("{name}.bias"), &[out]));
}

fn norm(vars: &mut Vec<Variable>, name: &str, width: usize) {
    vars.push(Variable::dense(format!("{name}.weight"), &[width]));
    vars.push(Variable::dense(format!("{name}.bias"), &[width]));
}

/// BERT-large (Devlin et al.): 24 layers, hidden 1024, FFN 4096, vocabulary
/// 30,522, 512 positions; pre-training heads (masked LM with tied decoder,
/// next sentence). The word embedding gradient is sparse: a batch of 32
/// sequences of 128 tokens touches at most 4,096 rows.
fn bert_large() -> Vec<Variable> {
    let (h, ffn, vocab) = (1024, 4096, 30_522);
    let mut v = vec![
        Variable::embedding("embeddings.word_embeddings", vocab, h, 4096),
        Variable::dense("embeddings.position_embeddings", &[512, h]),
        Variable::dense("embeddings.token_type_embeddings", &[2, h]),
    ];
    norm(&mut v, "embeddings.LayerNorm", h);
    for l in 0..24 {
        let p = format!("encoder.layer.{l}");
        linear(&mut v, &format!("{p}.attention.self.query"), h, h);
        linear(&mut v, &format!("{p}.attention.self.key"), h, h);
        linear(&mut v, &format!("{p}.attention.self.value"), h, h);
        linear(&mut v, &format!("{p}.attention.output.dense"), h, h);
        norm(&mut v, &format!("{p}.attention.output.LayerNorm"), h);
        linear(&mut v, &format!("{p}.intermediate.dense"), ffn, h);
        linear(&mut v, &format!("{p}.output.dense"), h, ffn);
        norm(&mut v, &format!("{p}.output.LayerNorm"), h);
    }
    linear(&mut v, "pooler.dense", h, h);
    linear(&mut v, "cls.predictions.transform.dense", h, h);
    norm(&mut v, "cls.predictions.transform.LayerNorm", h);
    v.push(Variable::dense("cls.predictions.bias", &[vocab]));
    linear(&mut v, "cls.seq_relationship", 2, h);
    v
}

/// VGG16 (Simonyan and Zisserman), configuration D, 224 x 224 inputs,
/// 1,000 classes.
fn vgg16() -> Vec<Variable> {
    let convs = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ];
    let mut v = Vec::new();
    for (i, (cin, cout)) in convs.into_iter().enumerate() {
        v.push(Variable::dense(
            format!("features.conv{i}.weight"),
            &[cout, cin, 3, 3],
        ));
        v.push(Variable::dense(format!("features.conv{i}.bias"), &[cout]));
    }
    linear(&mut v, "classifier.fc6", 4096, 512 * 7 * 7);
    linear(&mut v, "classifier.fc7", 4096, 4096);
    linear(&mut v, "classifier.fc8", 1000, 4096);
    v
}

/// ResNet-50 (He et al.): bottleneck blocks [3, 4, 6, 3], widths 64..512,
/// expansion 4, batch-norm scale and shift per convolution, 1,000 classes.
fn resnet50() -> Vec<Variable> {
    let mut v = vec![Variable::dense("conv1.weight", &[64, 3, 7, 7])];
    norm(&mut v, "bn1", 64);
    let mut cin = 64;
    for (stage, (blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
        .into_iter()
        .enumerate()
    {
        for b in 0..blocks {
            let p = format!("layer{}.{b}", stage + 1);
            v.push(Variable::dense(
                format!("{p}.conv1.weight"),
                &[width, cin, 1, 1],
            ));
            norm(&mut v, &format!("{p}.bn1"), width);
            v.push(Variable::dense(
                format!("{p}.conv2.weight"),
                &[width, width, 3, 3],
            ));
            norm(&mut v, &format!("{p}.bn2"), width);
            v.push(Variable::dense(
                format!("{p}.conv3.weight"),
                &[width * 4, width, 1, 1],
            ));
            norm(&mut v, &format!("{p}.bn3"), width * 4);
            if b == 0 {
                v.push(Variable::dense(
                    format!("{p}.downsample.0.weight"),
                    &[width * 4, cin, 1, 1],
                ));
                norm(&mut v, &format!("{p}.downsample.1"), width * 4);
            }
            cin = width * 4;
        }
    }
    linear(&mut v, "fc", 1000, 2048);
    v
}

/// NCF / NeuMF (He et al., as in MLPerf) on MovieLens-20M: 138,493 users,
/// 26,744 items, GMF factors 64, MLP embeddings 128 and layers
/// 256-256-128-64. A batch of 4,096 samples touches about 4,096 users and
/// 3,000 items: the embeddings' gradients are sparse.
fn ncf() -> Vec<Variable> {
    let (users, items) = (138_493, 26_744);
    let mut v = vec![
        Variable::embedding("mf_user_embed", users, 64, 4096),
        Variable::embedding("mf_item_embed", items, 64, 3000),
        Variable::embedding("mlp_user_embed", users, 128, 4096),
        Variable::embedding("mlp_item_embed", items, 128, 3000),
    ];
    linear(&mut v, "mlp.0", 256, 256);
    linear(&mut v, "mlp.1", 128, 256);
    linear(&mut v, "mlp.2", 64, 128);
    linear(&mut v, "final", 1, 128);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_parameter_counts() {
        let count = |n: &str| ModelSpec::preset(n).expect("preset").elements();
        // BERT-large ~335 M (with pre-training heads), VGG16 138.4 M,
        // ResNet-50 25.5 M, NCF (MovieLens-20M) 31.8 M.
        let bert = count("bert-large");
        assert!((330_000_000..340_000_000).contains(&bert), "{bert}");
        assert_eq!(count("vgg16"), 138_357_544);
        assert_eq!(count("resnet50"), 25_557_032);
        let ncf = count("ncf");
        assert!((31_000_000..32_500_000).contains(&ncf), "{ncf}");
        for p in PRESETS {
            ModelSpec::preset(p)
                .expect("preset")
                .validate()
                .expect("valid");
        }
    }

    #[test]
    fn json_round_trip_and_bad_input() {
        let m = ModelSpec::preset("ncf").expect("preset");
        let back = ModelSpec::from_json(&m.to_json().expect("json")).expect("parse");
        assert_eq!(m, back);
        let e = ModelSpec::from_json(r#"{"name":"x","variables":[{"name":"a","shape":[0]}]}"#)
            .expect_err("zero axis");
        assert!(e.to_string().contains("every axis"), "{e}");
        let e = ModelSpec::load("no-such-model").expect_err("unknown");
        assert!(e.to_string().contains("neither a preset"), "{e}");
        let small = m.scaled(0.01).expect("scale");
        assert_eq!(small.variables.len(), m.variables.len());
        assert!(small.elements() < m.elements() / 50);
        small.validate().expect("scaled model stays valid");
    }
}
