//! A model split by layers from the command line: `hetero-generate
//! --split` gives the one-device greedy ids and reports its stages in
//! `--json`; `hetero-place --model` profiles, plans and explains, and
//! leaves out a device too small for any layer. Bad `--split` values are
//! named errors. Skipped without `HETERO_TEST_GGUF`.

use std::path::Path;
use std::process::{Command, Output};

use libtest_mimic::{Arguments, Failed, Trial};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn json(bin: &str, args: &[&str]) -> Result<serde_json::Value, Failed> {
    let out = run(bin, args);
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

const GENERATE: &str = env!("CARGO_BIN_EXE_hetero-generate");
const PLACE: &str = env!("CARGO_BIN_EXE_hetero-place");

fn generate_split(model: &str) -> Result<(), Failed> {
    let base = [
        "--model",
        model,
        "--json",
        "--prompt",
        "The capital of Germany is",
        "--max-tokens",
        "12",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        json(GENERATE, &a)
    };
    let one = with(&["--device", "host"])?;
    assert_eq!(one["devices"].as_array().map(Vec::len), Some(1));
    let layers = one["devices"][0]["layers"][1].as_u64().ok_or("no layers")? as usize + 1;
    let first = layers / 3;
    let split = format!("layers:{first},{}", layers - first);
    let two = with(&[
        "--device",
        "host:threads=1",
        "--device",
        "host:threads=1",
        "--split",
        &split,
    ])?;
    if two["ids"] != one["ids"] {
        return Err(format!("split ids {} vs one device {}", two["ids"], one["ids"]).into());
    }
    let stages = two["devices"].as_array().ok_or("no devices")?;
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["layers"], serde_json::json!([0, first - 1]));
    assert_eq!(stages[1]["layers"], serde_json::json!([first, layers - 1]));
    // auto: the DP's choice, whatever it is, gives the same ids.
    let auto = with(&["--device", "host:threads=1", "--device", "host:threads=1"])?;
    if auto["ids"] != one["ids"] {
        return Err(format!("auto ids {} vs one device {}", auto["ids"], one["ids"]).into());
    }
    // Bad values, named.
    for (split, needle) in [("layers:1,2", "one count per device"), ("bogus", "--split")] {
        let mut a = base.to_vec();
        a.extend_from_slice(&["--device", "host", "--device", "host", "--split", split]);
        let out = run(GENERATE, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains(needle) {
            return Err(format!("--split {split}: {}, stderr {err}", out.status).into());
        }
    }
    Ok(())
}

fn place_model(model: &str) -> Result<(), Failed> {
    let r = json(
        PLACE,
        &[
            "--model",
            model,
            "--device",
            "host:threads=1",
            "--device",
            "host:threads=1",
            "--device",
            "host:threads=1,memory=1MiB",
            "--batch",
            "2",
            "--json",
        ],
    )?;
    let report = &r["report"];
    let dp = &report["dp"];
    let stages = dp["stages"].as_array().ok_or("the DP found no plan")?;
    let layers = r["profiles"][0]["layer_s"]
        .as_array()
        .ok_or("no profile")?
        .len();
    let covered: u64 = stages
        .iter()
        .map(|s| s["layers"][1].as_u64().unwrap_or(0) - s["layers"][0].as_u64().unwrap_or(0) + 1)
        .sum();
    assert_eq!(covered as usize, layers);
    let left = report["left_out"].as_array().ok_or("no left_out")?;
    if left.len() != 1 || left[0][0].as_str() != Some("host:2") {
        return Err(format!("left out: {left:?}").into());
    }
    for base in ["memory_proportional", "equal"] {
        if report[base]["fits"].as_bool() == Some(true) {
            let (d, b) = (
                dp["bottleneck_s"].as_f64().ok_or("dp")?,
                report[base]["bottleneck_s"].as_f64().ok_or("base")?,
            );
            assert!(d <= b + 1e-12, "dp {d} vs {base} {b}");
        }
    }
    Ok(())
}

/// A trial on the model file.
type TrialFn = fn(&str) -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let path = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| Path::new(p).is_file());
    let mut trials = Vec::new();
    let cases: [(&str, TrialFn); 2] = [
        (
            "split_cli::generate_split_gives_one_device_ids",
            generate_split,
        ),
        ("split_cli::place_model_plans_and_leaves_out", place_model),
    ];
    for (name, f) in cases {
        match &path {
            Some(p) => {
                let p = p.clone();
                trials.push(Trial::test(name, move || f(&p)));
            }
            None => trials.push(
                Trial::test(name, || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
            ),
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
