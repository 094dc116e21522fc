//! The `clustered-conv` command line, end to end (feature `cli`): compress a small
//! real-shaped state dict, inspect it (table, JSON, PNG and SVG), decompress, bench, and the error
//! paths with their exit codes.
#![cfg(feature = "cli")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{random4, rng};
use clustered_conv::io::{import_conv_layers, read_safetensors, CompressedModel};
use clustered_conv::{
    compress, CodebookScope, CompressionConfig, KernelCodebook, ScaleScheme, ScaleStorage, Symmetry,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clustered-conv"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run clustered-conv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("clustered-conv-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A VGG-like state dict as PyTorch's `save_file(model.state_dict())` would write it: three
/// 3×3 convolutions (the first with a bias), a BatchNorm and a Linear layer.
fn write_state_dict(path: &Path) -> Vec<u8> {
    let mut r = rng(5);
    let f32s =
        |v: Vec<f64>| -> Vec<u8> { v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect() };
    let w0 = f32s(random4(&mut r, (16, 3, 3, 3)).into_raw_vec_and_offset().0);
    let b0 = f32s((0..16).map(|i| f64::from(i) * 0.01).collect());
    let w3 = f32s(random4(&mut r, (32, 16, 3, 3)).into_raw_vec_and_offset().0);
    let bn = f32s(vec![1.0; 32]);
    let w6 = f32s(random4(&mut r, (32, 32, 3, 3)).into_raw_vec_and_offset().0);
    let fc = f32s(random4(&mut r, (10, 32, 1, 1)).into_raw_vec_and_offset().0);
    let bytes = safetensors::serialize(
        vec![
            (
                "features.0.weight",
                TensorView::new(Dtype::F32, vec![16, 3, 3, 3], &w0).unwrap(),
            ),
            (
                "features.0.bias",
                TensorView::new(Dtype::F32, vec![16], &b0).unwrap(),
            ),
            (
                "features.3.weight",
                TensorView::new(Dtype::F32, vec![32, 16, 3, 3], &w3).unwrap(),
            ),
            (
                "features.4.weight",
                TensorView::new(Dtype::F32, vec![32], &bn).unwrap(),
            ),
            (
                "features.6.weight",
                TensorView::new(Dtype::F32, vec![32, 32, 3, 3], &w6).unwrap(),
            ),
            (
                "classifier.weight",
                TensorView::new(Dtype::F32, vec![10, 32], &fc[..1280]).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn option_values_are_parsed_by_the_library_types() {
    let dir = scratch("options");
    let input = dir.join("model.safetensors");
    write_state_dict(&input);
    let output = dir.join("model.ccv.safetensors");
    let out = run(&[
        "compress",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--k",
        "4",
        "--scope",
        "per-layer",
        "--symmetry",
        "ihvo",
        "--scales",
        "fixed8",
        "--no-default-keep-dense",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let net = CompressedModel::load(&output).unwrap().network;
    // Three 3×3 convolutions, one codebook each.
    assert_eq!(net.codebooks().len(), 3);
    assert!(net
        .codebooks()
        .iter()
        .all(|cb| cb.symmetry() == Symmetry::Flips));
    assert_eq!(net.scale_scheme(), "fixed8".parse::<ScaleScheme>().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compress_inspect_decompress_and_bench() {
    let dir = scratch("flow");
    let input = dir.join("model.safetensors");
    let state = write_state_dict(&input);
    let output = dir.join("model.ccv.safetensors");
    let report_json = dir.join("report.json");
    let out = run(&[
        "compress",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--k",
        "16",
        "--symmetry",
        "ih",
        "--seed",
        "3",
        "--report-json",
        report_json.to_str().unwrap(),
        "--no-default-keep-dense",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("features.3") && stdout.contains("codebook 0"),
        "{stdout}"
    );

    // The file holds exactly what the library makes with the same settings.
    let loaded = CompressedModel::load(&output).unwrap();
    let imported = import_conv_layers(&read_safetensors(&state).unwrap(), &HashMap::new()).unwrap();
    let config = CompressionConfig {
        codebook: KernelCodebook::params(16)
            .symmetry(Symmetry::Flip)
            .seed(3)
            .scale_scheme(ScaleScheme::L2(ScaleStorage::F16)),
        scope: CodebookScope::Shared,
        ..Default::default()
    };
    let net = compress(&imported.layers, &config).unwrap();
    assert_eq!(
        loaded,
        CompressedModel::from_import(net, &imported).unwrap()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_json).unwrap()).unwrap();
    assert_eq!(report["report"]["layers"].as_array().unwrap().len(), 3);

    // inspect: table, JSON, pictures.
    let out = run(&["inspect", output.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("features.6"));
    // f16 scales are held as f16: a u8 index (K·S = 32) and 2 scale bytes per kernel, 12×.
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("in memory: clustered layers hold"))
        .unwrap_or_else(|| panic!("no in-memory line in {stdout}"));
    let numbers: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "{line}");
    assert_eq!(numbers[1], 2 * numbers[0], "{line}");
    assert_eq!(numbers[2], 36 * numbers[0], "{line}");
    assert!(line.ends_with("(12.00×)"), "{line}");
    let out = run(&["inspect", output.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["report"]["codebooks"][0]["k"], 16);
    let pictures = dir.join("pictures");
    let out = run(&[
        "inspect",
        output.to_str().unwrap(),
        "--png",
        pictures.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut listed: Vec<String> = std::fs::read_dir(&pictures)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "codebook0_centroids.png",
            "codebook0_centroids.svg",
            "codebook0_usage.png",
            "codebook0_usage.svg"
        ]
    );
    for (file, width, height) in [
        // 16 centroids of 3×3 → 4×4 tiles of 48 pixels, a title band and a colour bar.
        ("codebook0_centroids.png", 480, 360),
        ("codebook0_usage.png", 960, 480),
    ] {
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(pictures.join(file)).unwrap(),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (width, height), "{file}");
        // Not blank: colour-mapped centroids or bars, and anti-aliased text.
        let distinct: std::collections::HashSet<&[u8]> = buf.chunks(3).collect();
        assert!(distinct.len() >= 10, "{file}");
    }
    for (file, text) in [
        (
            "codebook0_centroids.svg",
            "codebook 0: 16 centroids (3×3), most- to least-used",
        ),
        ("codebook0_usage.svg", "centroid (by usage rank)"),
    ] {
        let svg = std::fs::read_to_string(pictures.join(file)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains(text), "{file}");
    }

    // decompress: original names, shapes and types; weights are the reconstruction.
    let dense_path = dir.join("dense.safetensors");
    let out = run(&[
        "decompress",
        output.to_str().unwrap(),
        "-o",
        dense_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dense = read_safetensors(&std::fs::read(&dense_path).unwrap()).unwrap();
    let original = read_safetensors(&state).unwrap();
    assert_eq!(
        dense
            .tensors
            .iter()
            .map(|t| (&t.name, &t.shape))
            .collect::<Vec<_>>(),
        original
            .tensors
            .iter()
            .map(|t| (&t.name, &t.shape))
            .collect::<Vec<_>>()
    );
    let w3 = dense
        .tensors
        .iter()
        .find(|t| t.name == "features.3.weight")
        .unwrap();
    let want = loaded.network.dense_layer(1).unwrap();
    assert!(w3
        .to_f32()
        .unwrap()
        .iter()
        .zip(want.weight())
        .all(|(a, b)| a == b));

    // bench runs and reports every clustered layer.
    let out = run(&[
        "bench",
        output.to_str().unwrap(),
        "--input",
        "8x8",
        "--batch",
        "1",
        "--repeats",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("features.0") && stdout.contains("total"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_have_messages_and_exit_codes() {
    let dir = scratch("errors");
    let input = dir.join("model.safetensors");
    write_state_dict(&input);
    let output = dir.join("out.safetensors");
    std::fs::write(&output, b"keep me").unwrap();
    let i = input.to_str().unwrap();
    let o = output.to_str().unwrap();

    // A missing input file.
    let out = run(&["compress", "/no/such/file.safetensors", "-o", o]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: cannot read"),
        "{}",
        text(&out.stderr)
    );
    // Codebook groups that name a missing layer: fails, and the existing output is untouched.
    let out = run(&["compress", i, "-o", o, "--scope", "0-0=8,1-5=16", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&output).unwrap(), b"keep me");
    // Bad option values.
    for args in [
        vec!["compress", i, "-o", o, "--symmetry", "xyz"],
        vec!["compress", i, "-o", o, "--scales", "f8"],
        vec!["compress", i, "-o", o, "--scope", "0-=3"],
        vec!["compress", i, "-o", o, "--scope", "per_layer"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).starts_with("error: invalid"),
            "{}",
            text(&out.stderr)
        );
    }
    // A plain state dict is not a compressed model.
    let out = run(&["inspect", i]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("compressed first"),
        "{}",
        text(&out.stderr)
    );
    // Usage errors are clap's exit code 2; --help succeeds and lists every command.
    assert_eq!(run(&["compress"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    let help = run(&["--help"]);
    assert!(help.status.success());
    for command in ["compress", "inspect", "decompress", "bench"] {
        assert!(text(&help.stdout).contains(command), "{command}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The weight of layer `name` of a compressed file, if it is stored dense.
fn dense_weight_bits(model: &CompressedModel, name: &str) -> Option<Vec<u32>> {
    model.network.layers().iter().find_map(|l| match l {
        clustered_conv::CompressedLayer::Dense { name: n, layer } if n == name => {
            Some(layer.weight().iter().map(|v| v.to_bits()).collect())
        }
        _ => None,
    })
}

#[test]
fn keep_dense_default_rule_and_max_error_flags() {
    let dir = scratch("keep");
    let input = dir.join("model.safetensors");
    let state = write_state_dict(&input);
    let imported = import_conv_layers(&read_safetensors(&state).unwrap(), &HashMap::new()).unwrap();
    let original = |name: &str| -> Vec<u32> {
        let layer = imported.layers.iter().find(|l| l.name == name).unwrap();
        layer.weight.iter().map(|v| v.to_bits()).collect()
    };
    let (i, o) = (input.to_str().unwrap(), dir.join("out.ccv.safetensors"));
    let o = o.to_str().unwrap();

    // --keep-dense: the matched layer's weights are the input's, bit for bit; the default
    // rule keeps the 3-channel first layer dense, and the table says why.
    let out = run(&[
        "compress",
        i,
        "-o",
        o,
        "--k",
        "16",
        "--keep-dense",
        "*.6",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("matched pattern `*.6`"), "{stdout}");
    assert!(
        stdout.contains("default rule: image input (Cin = 3)"),
        "{stdout}"
    );
    assert!(stdout.contains("SQNR dB"), "{stdout}");
    let model = CompressedModel::load(Path::new(o)).unwrap();
    assert_eq!(
        dense_weight_bits(&model, "features.6"),
        Some(original("features.6"))
    );
    assert_eq!(
        dense_weight_bits(&model, "features.0"),
        Some(original("features.0"))
    );
    assert_eq!(dense_weight_bits(&model, "features.3"), None);

    // --no-default-keep-dense: the first layer is clustered.
    let out = run(&[
        "compress",
        i,
        "-o",
        o,
        "--k",
        "16",
        "--no-default-keep-dense",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model = CompressedModel::load(Path::new(o)).unwrap();
    assert_eq!(dense_weight_bits(&model, "features.0"), None);

    // --max-error: one codebook per clustered layer, with the search in the table.
    let out = run(&["compress", i, "-o", o, "--max-error", "0.5", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("max-error search features.3"),
        "{}",
        text(&out.stdout)
    );
    let model = CompressedModel::load(Path::new(o)).unwrap();
    assert_eq!(model.network.codebooks().len(), 2);

    // Bad values: exit 1 with the reason; --max-error with --k or --scope is a usage error.
    for (args, message) in [
        (vec!["--keep-dense", "classifier*"], "\"classifier*\""),
        (vec!["--max-error=-0.1"], "max_error"),
        (vec!["--max-error", "0"], "max_error"),
        (vec!["--max-error", "NaN"], "max_error"),
    ] {
        let out = run(&[&["compress", i, "-o", o, "--quiet"], &args[..]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out.stderr).contains(message), "{}", text(&out.stderr));
    }
    for extra in [["--k", "64"], ["--scope", "per-layer"]] {
        let args = [&["compress", i, "-o", o, "--max-error", "0.1"], &extra[..]].concat();
        assert_eq!(run(&args).status.code(), Some(2), "{extra:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
