//! `cargo xtask bench-llm`: hetero's real-model benchmark
//! (`hetero-generate --bench --json`) on each device asked for, and, when
//! `LLAMA_CPP_BIN` names the `bin/` folder of a llama.cpp build (built
//! from its public source outside this repository; never committed),
//! llama.cpp's own `llama-bench` and `llama-batched-bench` on the same file
//! with the same thread count in the same run, then one table with the
//! ratios (the machines are shared and noisy: only same-run ratios mean
//! anything).
//!
//! The shapes are the same on both sides: prefill of a 128-token prompt
//! (`llama-bench -p 128`), decode of one sequence (`llama-bench -n 128`),
//! and the generation rate of 1, 8 and 32 sequences after a 32-token
//! prompt for 64 tokens (`llama-batched-bench -npp 32 -ntg 64 -npl
//! 1,8,32`, its `speed_tg`); resident weights are llama.cpp's
//! `model_size` and hetero's `resident_weight_bytes`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The variable naming llama.cpp's `bin/` folder.
pub const LLAMA_CPP_ENV: &str = "LLAMA_CPP_BIN";

/// One side's figures.
#[derive(Debug, Default, Clone)]
struct Figures {
    prefill: Option<f64>,
    decode: [Option<f64>; 3],
    weight_bytes: Option<f64>,
}

const BATCHES: [usize; 3] = [1, 8, 32];

/// Run the benchmark; `model` defaults to the test model, `devices` to the host.
pub fn run(model: Option<&str>, devices: &[String], repeats: usize) -> Result<(), String> {
    let model = model.map_or_else(crate::test_model::path, PathBuf::from);
    if !model.is_file() {
        return Err(format!(
            "{} is not a file (run `cargo xtask setup` for the test model, or pass --model)",
            model.display()
        ));
    }
    let devices: Vec<String> = if devices.is_empty() {
        vec!["host".into()]
    } else {
        devices.to_vec()
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut columns: Vec<(String, Figures)> = Vec::new();
    let llama = std::env::var_os(LLAMA_CPP_ENV).map(PathBuf::from);
    match &llama {
        Some(bin) => {
            eprintln!(
                "xtask: bench-llm: llama.cpp from {} ({threads} threads)",
                bin.display()
            );
            columns.push((
                format!("llama.cpp ({threads} threads)"),
                llama_cpp(bin, &model, threads, repeats)?,
            ));
        }
        None => eprintln!(
            "xtask: bench-llm: {LLAMA_CPP_ENV} is not set: hetero's figures only (set it to the bin/ \
             folder of a llama.cpp build for the side-by-side ratios)"
        ),
    }
    for device in &devices {
        eprintln!("xtask: bench-llm: hetero on {device}");
        columns.push((format!("hetero {device}"), hetero(&model, device, repeats)?));
    }
    print_table(&model, &columns, llama.is_some());
    Ok(())
}

fn hetero(model: &Path, device: &str, repeats: usize) -> Result<Figures, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let repeats = repeats.to_string();
    let model = model.to_string_lossy();
    let out = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "hetero-examples",
            "--bin",
            "hetero-generate",
            "--",
            "--model",
            &model,
            "--bench",
            "--json",
            "--device",
            device,
            "--bench-repeats",
            &repeats,
        ])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "hetero-generate --bench on {device} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("hetero-generate printed no JSON object: {e}"))?;
    Ok(Figures {
        prefill: v["prefill_tokens_per_s"].as_f64(),
        decode: BATCHES.map(|b| v["decode_tokens_per_s"][b.to_string()].as_f64()),
        weight_bytes: v["resident_weight_bytes"].as_f64(),
    })
}

fn llama_cpp(bin: &Path, model: &Path, threads: usize, repeats: usize) -> Result<Figures, String> {
    let run = |tool: &str, args: &[String]| -> Result<String, String> {
        let path = bin.join(tool);
        let out = Command::new(&path)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let m = model.to_string_lossy().into_owned();
    let t = threads.to_string();
    let r = repeats.max(1).to_string();
    let bench = run(
        "llama-bench",
        &[
            "-m", &m, "-t", &t, "-p", "128", "-n", "128", "-r", &r, "-o", "json",
        ]
        .map(String::from),
    )?;
    let tests: Value =
        serde_json::from_str(&bench).map_err(|e| format!("llama-bench printed no JSON: {e}"))?;
    let mut f = Figures::default();
    for test in tests.as_array().into_iter().flatten() {
        let (p, n) = (test["n_prompt"].as_u64(), test["n_gen"].as_u64());
        match (p, n) {
            (Some(128), Some(0)) => f.prefill = test["avg_ts"].as_f64(),
            (Some(0), Some(128)) => f.decode[0] = test["avg_ts"].as_f64(),
            _ => {}
        }
        f.weight_bytes = f.weight_bytes.or(test["model_size"].as_f64());
    }
    let batched = run(
        "llama-batched-bench",
        &[
            "-m",
            &m,
            "-t",
            &t,
            "-c",
            "4096",
            "-b",
            "2048",
            "-ub",
            "512",
            "-npp",
            "32",
            "-ntg",
            "64",
            "-npl",
            "1,8,32",
            "--output-format",
            "jsonl",
        ]
        .map(String::from),
    )?;
    for line in batched.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("llama-batched-bench printed a bad line {line:?}: {e}"))?;
        if let Some(i) = BATCHES
            .iter()
            .position(|&b| v["pl"].as_u64() == Some(b as u64))
        {
            // One sequence: llama-bench's -n 128 figure stays (its own measure).
            if i > 0 || f.decode[0].is_none() {
                f.decode[i] = v["speed_tg"].as_f64();
            }
        }
    }
    Ok(f)
}

fn print_table(model: &Path, columns: &[(String, Figures)], ratios: bool) {
    println!("{}", model.display());
    let mut header = String::from("| measure |");
    let mut rule = String::from("|---|");
    for (name, _) in columns {
        header += &format!(" {name} |");
        rule += "---|";
    }
    if ratios {
        for (name, _) in &columns[1..] {
            header += &format!(" {name} / llama.cpp |");
            rule += "---|";
        }
    }
    println!("{header}\n{rule}");
    type Getter = fn(&Figures) -> Option<f64>;
    let rows: [(&str, Getter); 5] = [
        ("prefill, 128 tokens (tokens/s)", |f| f.prefill),
        ("decode, 1 sequence (tokens/s)", |f| f.decode[0]),
        ("decode, 8 sequences (total tokens/s)", |f| f.decode[1]),
        ("decode, 32 sequences (total tokens/s)", |f| f.decode[2]),
        ("resident weights (MiB; ratio: lower is better)", |f| {
            f.weight_bytes.map(|b| b / f64::from(1u32 << 20))
        }),
    ];
    for (label, get) in &rows {
        let mut line = format!("| {label} |");
        for (_, f) in columns {
            line += &match get(f) {
                Some(v) => format!(" {v:.1} |"),
                None => " - |".into(),
            };
        }
        if ratios {
            let base = get(&columns[0].1);
            for (_, f) in &columns[1..] {
                line += &match (get(f), base) {
                    (Some(v), Some(b)) if b > 0.0 => format!(" {:.2}x |", v / b),
                    _ => " - |".into(),
                };
            }
        }
        println!("{line}");
    }
}
