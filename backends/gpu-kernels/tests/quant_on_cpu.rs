//! The quantized-weight kernels (`kernels/quant.cu`) compiled as C++ and
//! run on the CPU with one thread per GPU thread
//! (`tests/emulation/quant.cpp`), against `hetero_core::quant`'s reference
//! dequantization: products within f32 summation's error of a float64
//! reference, gathers bit for bit, for every format on shapes that make
//! the kernels' grid-stride loops and partial row groups run. It does not
//! replace running on a GPU (no warps, no real memory model).
//!
//! Needs a C++20 compiler with `_Float16` (`c++`, GCC 12 or clang 15 and
//! later); without one the trial is reported ignored with the reason.

use std::path::Path;
use std::process::Command;

use hetero_core::QuantType;
use hetero_core::rng::SplitMix64;
use hetero_core::testsuite::quant::random_quant_blocks;
use libtest_mimic::{Arguments, Failed, Trial};

mod emulation;

fn main() {
    let args = Arguments::from_args();
    let trial = emulation::needs_cxx(Trial::test("quant_kernels_match_reference_on_cpu", run));
    libtest_mimic::run(&args, vec![trial]).exit();
}

/// One product and one gather on the same weights.
struct Case {
    quant: QuantType,
    rows: usize,
    out: usize,
    inp: usize,
    x: Vec<f32>,
    w: Vec<u8>,
    ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (qi, quant) in QuantType::ALL.into_iter().enumerate() {
        let be = quant.block_elems();
        // Rows of x past one and two row groups of 8, weight rows past the
        // 3 x 8 the emulated grid covers at once, rows of 1 to 40 units.
        for (ci, &(rows, out, blocks)) in
            [(1, 1, 1), (3, 9, 2), (9, 30, 1), (17, 5, 5), (1, 64, 18)]
                .iter()
                .enumerate()
        {
            let inp = blocks * be;
            if inp / 32 > 40 && rows > 1 {
                continue;
            }
            let seed = 9000 + 97 * qi as u64 + ci as u64;
            let mut rng = SplitMix64::new(seed);
            let x = (0..rows * inp)
                .map(|_| rng.signed_unit_f32() * 2.0)
                .collect();
            let w = random_quant_blocks(quant, out * blocks, seed + 1);
            let ids = (0..4).map(|i| ((i * 7 + 2) % out) as u32).collect();
            cases.push(Case {
                quant,
                rows,
                out,
                inp,
                x,
                w,
                ids,
            });
        }
    }
    cases
}

fn run() -> Result<(), Failed> {
    let scratch = emulation::Scratch::new("quant")?;
    emulate_and_check(&scratch.0).map_err(Failed::from)
}

fn emulate_and_check(dir: &Path) -> Result<(), String> {
    let exe = emulation::build("quant", dir)?;
    let cases = cases();
    let mut input = Vec::new();
    for c in &cases {
        let row_bytes = c.quant.row_bytes(c.inp).map_err(|e| e.to_string())?;
        let header = [
            hetero_gpu_kernels::quant_format(c.quant) as u32,
            c.rows as u32,
            c.out as u32,
            c.inp as u32,
            row_bytes as u32,
            c.ids.len() as u32,
        ];
        header
            .iter()
            .for_each(|h| input.extend_from_slice(&h.to_le_bytes()));
        c.x.iter()
            .for_each(|v| input.extend_from_slice(&v.to_le_bytes()));
        input.extend_from_slice(&c.w);
        c.ids
            .iter()
            .for_each(|v| input.extend_from_slice(&v.to_le_bytes()));
    }
    let (cases_path, out_path) = (dir.join("cases.bin"), dir.join("out.bin"));
    std::fs::write(&cases_path, &input).map_err(|e| e.to_string())?;
    let run = Command::new(&exe)
        .arg(&cases_path)
        .arg(&out_path)
        .output()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    if !run.status.success() {
        return Err(format!(
            "the emulation failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let bytes = std::fs::read(&out_path).map_err(|e| e.to_string())?;
    let got: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut at = 0;
    for c in &cases {
        let mut dense = Vec::new();
        c.quant.dequantize(&c.w, &mut dense);
        let y = got
            .get(at..at + c.rows * c.out)
            .ok_or("the emulation wrote too little")?;
        at += c.rows * c.out;
        let shape = format!("{} {}x{}x{}", c.quant, c.rows, c.out, c.inp);
        for r in 0..c.rows {
            let xr = &c.x[r * c.inp..(r + 1) * c.inp];
            for j in 0..c.out {
                let wr = &dense[j * c.inp..(j + 1) * c.inp];
                let (mut want, mut abs) = (0.0f64, 0.0f64);
                for (&a, &b) in xr.iter().zip(wr) {
                    let p = f64::from(a) * f64::from(b);
                    want += p;
                    abs += p.abs();
                }
                let g = f64::from(y[r * c.out + j]);
                if !g.is_finite() || (g - want).abs() > 1e-5 * abs + 1e-6 {
                    return Err(format!("{shape}: y[{r}][{j}] = {g}, reference {want}"));
                }
            }
        }
        let emb = got
            .get(at..at + c.ids.len() * c.inp)
            .ok_or("the emulation wrote too little")?;
        at += c.ids.len() * c.inp;
        for (r, &id) in c.ids.iter().enumerate() {
            let want = &dense[id as usize * c.inp..(id as usize + 1) * c.inp];
            let row = &emb[r * c.inp..(r + 1) * c.inp];
            if let Some(i) = (0..c.inp).find(|&i| row[i].to_bits() != want[i].to_bits()) {
                return Err(format!(
                    "{shape}: gathered row {r} (id {id}) element {i} = {}, reference {} (must be exact)",
                    row[i], want[i]
                ));
            }
        }
    }
    if at != got.len() {
        return Err(format!(
            "the emulation wrote {} values, expected {at}",
            got.len()
        ));
    }
    eprintln!("{} quantized cases match the reference", cases.len());
    Ok(())
}
