//! The command line on whole networks (feature `cli`): `compress model.onnx`, `eval`, `run`,
//! `finetune` and `export`, checked against onnxruntime's logits (recorded in
//! tests/data/onnx by scripts/onnx/make_models.py) and against the library.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clustered_conv::io::{read_onnx, read_safetensors, SavedNetwork};
use clustered_conv::nn::Layer;
use ndarray::{Array2, Array4};
use ndarray_npy::read_npy;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clustered-conv"))
        .args(args)
        .output()
        .expect("run clustered-conv")
}

/// Runs a command that must succeed; its standard output.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with status 1; its standard error.
fn refused(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} did not fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn data(name: &str) -> String {
    format!("{}/tests/data/onnx/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "clustered-conv-cli-net-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The top-1 / top-5 accuracy and argmax of reference logits, computed here.
fn reference_scores(logits: &Array2<f32>, labels: &[i64]) -> (f64, f64, Vec<usize>) {
    let (mut top1, mut top5, mut argmax) = (0, 0, Vec::new());
    for (row, &label) in logits.outer_iter().zip(labels) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap());
        top1 += usize::from(order[0] as i64 == label);
        top5 += usize::from(order[..5].iter().any(|&c| c as i64 == label));
        argmax.push(order[0]);
    }
    let n = labels.len() as f64;
    (top1 as f64 / n, top5 as f64 / n, argmax)
}

#[test]
fn eval_and_run_on_an_onnx_model_agree_with_onnxruntime() {
    let logits: Array2<f32> = read_npy(data("resnet_small_bn_logits.npy")).unwrap();
    let labels: ndarray::Array1<i64> = read_npy(data("labels.npy")).unwrap();
    let (top1, top5, argmax) = reference_scores(&logits, labels.as_slice().unwrap());
    let model = data("resnet_small_bn.onnx");
    let (images, labels) = (data("images.npy"), data("labels.npy"));
    let json = ok(&[
        "eval", &model, "--data", &images, "--labels", &labels, "--json", "-q",
    ]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["images"], 64);
    assert!((v["top1"].as_f64().unwrap() - top1).abs() < 1e-12, "{json}");
    assert!((v["top5"].as_f64().unwrap() - top5).abs() < 1e-12, "{json}");
    let confusion: Vec<Vec<u64>> = serde_json::from_value(v["confusion"].clone()).unwrap();
    let diagonal: u64 = (0..10).map(|c| confusion[c][c]).sum();
    assert_eq!(diagonal as f64 / 64.0, top1);
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 64);
    // `run` predicts the same classes, one CSV line per image, labels not needed.
    let csv = ok(&["run", &model, "--data", &images, "-q"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "index,file,predicted,class,probability");
    assert_eq!(lines.len(), 65);
    for (i, line) in lines[1..].iter().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[2].parse::<usize>().unwrap(), argmax[i], "{line}");
        let p: f64 = fields[4].parse().unwrap();
        assert!(p > 0.1 && p <= 1.0, "{line}");
    }
}

#[test]
fn compress_finetune_export_round_trip() {
    let dir = scratch("workflow");
    let compressed = dir.join("resnet.ccv.safetensors");
    let report = ok(&[
        "compress",
        &data("resnet_small_bn.onnx"),
        "-o",
        path(&compressed),
        "--k",
        "16",
        "-q",
    ]);
    assert!(report.contains("/block2/conv2/Conv"), "{report}");
    let saved = SavedNetwork::load(&compressed).unwrap();
    let clustered = saved
        .network
        .layers
        .iter()
        .filter(|l| matches!(l, Layer::Clustered { .. }))
        .count();
    assert!(clustered >= 4, "{clustered} clustered layers");
    assert_eq!(saved.input_shape, Some([1, 28, 28]));
    let inspect = ok(&["inspect", path(&compressed)]);
    let summary = "network: 23 layers (input 1×28×28, a graph)";
    assert!(inspect.contains(summary), "{inspect}");
    assert!(
        inspect.contains(&format!(" {clustered} clustered conv")),
        "{inspect}"
    );

    // Fine-tune on the 64 images, testing on them too: recalibration and 3 epochs help.
    let tuned = dir.join("tuned.ccv.safetensors");
    let (images, labels) = (data("images.npy"), data("labels.npy"));
    let table = ok(&[
        "finetune",
        path(&compressed),
        "--data",
        &images,
        "--labels",
        &labels,
        "--test-data",
        &images,
        "--test-labels",
        &labels,
        "--epochs",
        "3",
        "--batch",
        "16",
        "--lr",
        "0.02",
        "--recalibrate",
        "4",
        "--plot",
        path(&dir.join("plots")),
        "-o",
        path(&tuned),
        "-q",
    ]);
    let top1 = |stage: &str| -> f64 {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {stage} |")));
        let cell = line.unwrap_or_else(|| panic!("{stage} missing in {table}"));
        cell.split('|')
            .nth(2)
            .unwrap()
            .trim()
            .trim_end_matches(" %")
            .parse()
            .unwrap()
    };
    assert!(top1("epoch 3") > top1("loaded") + 20.0, "{table}");
    for ext in ["png", "svg"] {
        let picture = dir.join("plots").join(format!("accuracy.{ext}"));
        assert!(
            std::fs::metadata(&picture).unwrap().len() > 1000,
            "{picture:?}"
        );
    }
    let tuned_net = SavedNetwork::load(&tuned).unwrap();
    assert_eq!(tuned_net.layer_names, saved.layer_names);

    // Export to ONNX: the same graph, dense weights, the same logits.
    let onnx = dir.join("tuned.onnx");
    ok(&["export", path(&tuned), "-o", path(&onnx)]);
    let back = read_onnx(&onnx).unwrap();
    let x: Array4<f32> = read_npy(&images).unwrap();
    let ours = tuned_net.network.forward(x.view()).unwrap();
    let theirs = back.network.forward(x.view()).unwrap();
    let worst = (&ours - &theirs).iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        worst <= 1e-4 * scale,
        "exported logits differ by {worst} (scale {scale})"
    );

    // Export to a dense state_dict: every weight under its node's name.
    let dense = dir.join("tuned.safetensors");
    ok(&["export", path(&tuned), "-o", path(&dense)]);
    let state = read_safetensors(&std::fs::read(&dense).unwrap()).unwrap();
    let names: Vec<&str> = state.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"/block2/conv2/Conv.weight"), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn max_error_draws_error_against_k_for_every_searched_layer() {
    let dir = scratch("max-error");
    let out = dir.join("vgg.ccv.safetensors");
    let plots = dir.join("plots");
    let report = ok(&[
        "compress",
        &data("vgg_small.onnx"),
        "-o",
        path(&out),
        "--max-error",
        "0.6",
        "--plot",
        path(&plots),
        "-q",
    ]);
    let saved = SavedNetwork::load(&out).unwrap();
    let clustered: Vec<&String> = saved
        .network
        .layers
        .iter()
        .zip(&saved.layer_names)
        .filter(|(l, _)| matches!(l, Layer::Clustered { .. }))
        .map(|(_, n)| n)
        .collect();
    assert!(!clustered.is_empty(), "{report}");
    for name in clustered {
        let stem = name.trim_start_matches('/').replace('/', "_");
        for ext in ["png", "svg"] {
            let file = plots.join(format!("{stem}_error_vs_k.{ext}"));
            assert!(file.exists(), "{file:?} missing; report:\n{report}");
        }
    }
    // --plot without --max-error is a usage error (status 2).
    let bad = run(&[
        "compress",
        &data("vgg_small.onnx"),
        "-o",
        path(&out),
        "--plot",
        "x",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--max-error"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_refused_with_a_message() {
    let dir = scratch("bad");
    let model = data("vgg_small.onnx");
    let images = data("images.npy");
    let err = refused(&["eval", &model, "--data", &images, "-q"]);
    assert!(err.contains("--labels"), "{err}");
    let err = refused(&["eval", &model, "--data", "/nonexistent/x.npy", "-q"]);
    assert!(err.contains("/nonexistent/x.npy"), "{err}");
    let err = refused(&["eval", &model, "--data", &images, "--labels", &images, "-q"]);
    assert!(err.contains("labels"), "{err}");
    let err = refused(&[
        "eval", &model, "--data", &images, "--mean", "0.5", "--std", "0", "-q",
    ]);
    assert!(err.contains("normalisation"), "{err}");
    let err = refused(&[
        "compress",
        &model,
        "-o",
        path(&dir.join("x")),
        "--geometry",
        &images,
    ]);
    assert!(err.contains("--geometry"), "{err}");
    // Images of another size than the model's are refused, not resized.
    let folder = format!(
        "{}/tests/data/image_folder/mixed",
        env!("CARGO_MANIFEST_DIR")
    );
    let err = refused(&["eval", &model, "--data", &folder, "-q"]);
    assert!(err.contains("1×28×28") && err.contains("1×6×8"), "{err}");
    // A state_dict compressed without its graph cannot be run.
    let err = refused(&[
        "eval",
        &data("../golden_v1.safetensors"),
        "--data",
        &images,
        "-q",
    ]);
    assert!(err.contains("no network graph"), "{err}");
    // Exporting to ONNX needs the input shape, which a network saved without one lacks.
    let saved = SavedNetwork::load(Path::new(&data("../golden_v2.safetensors"))).unwrap();
    let plain = dir.join("plain.safetensors");
    saved.network.save(&plain).unwrap();
    let err = refused(&["export", path(&plain), "-o", path(&dir.join("p.onnx"))]);
    assert!(err.contains("--input-shape"), "{err}");
    ok(&[
        "export",
        path(&plain),
        "-o",
        path(&dir.join("p.onnx")),
        "--input-shape",
        "2,8,8",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_and_run_read_an_image_folder() {
    use clustered_conv::data::{Channels, ImageFolder, Normalization};
    use clustered_conv::nn::{Linear, Network};
    use clustered_conv::{Conv2d, ConvGeometry};
    use ndarray::{Array1, Array2};

    let dir = scratch("folder");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/image_folder/mixed");
    let conv = Conv2d::new(
        Array4::from_shape_fn((3, 1, 3, 3), |(o, _, r, c)| {
            (o as f32 - 1.0) * 0.3 + (r * 3 + c) as f32 * 0.05
        }),
        Some(Array1::from_vec(vec![0.1, -0.1, 0.0])),
        ConvGeometry::default().padding(1, 1),
    )
    .unwrap();
    let fc = Linear {
        weight: Array2::from_shape_fn((3, 3), |(o, i)| if o == i { 1.0 } else { -0.5 }),
        bias: Array1::zeros(3),
    };
    let net = Network::new(vec![
        Layer::Conv(conv),
        Layer::Relu,
        Layer::GlobalAvgPool,
        Layer::Flatten,
        Layer::Linear(fc),
    ]);
    let model = dir.join("net.safetensors");
    net.save(&model).unwrap();

    // What the library computes on the same folder (its loader is checked against Pillow in
    // image_data.rs).
    let norm = Normalization::new(vec![0.45], vec![0.22]).unwrap();
    let folder = ImageFolder::load(&root, Channels::Grey, &norm).unwrap();
    let logits = net.forward(folder.dataset.images.view()).unwrap();
    let argmax: Vec<usize> = logits
        .outer_iter()
        .map(|r| (0..3).fold(0, |b, j| if r[j] > r[b] { j } else { b }))
        .collect();

    let args = [
        "--data",
        path(&root),
        "--mean",
        "0.45",
        "--std",
        "0.22",
        "-q",
    ];
    let csv = ok(&[&["run", path(&model)][..], &args].concat());
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), folder.files.len());
    for (i, row) in rows.iter().enumerate() {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields[1], folder.files[i].display().to_string());
        assert_eq!(fields[2].parse::<usize>().unwrap(), argmax[i], "{row}");
        assert_eq!(fields[3], folder.dataset.classes[argmax[i]]);
    }
    let json = ok(&[&["eval", path(&model), "--json"][..], &args].concat());
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let correct = argmax
        .iter()
        .zip(&folder.dataset.labels)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(
        v["top1"].as_f64().unwrap(),
        correct as f64 / argmax.len() as f64
    );
    assert_eq!(
        v["classes"],
        serde_json::json!(["a_square", "b_circle", "c_nested"])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
