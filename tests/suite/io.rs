//! safetensors import and dense export (feature `safetensors`).
#![cfg(feature = "safetensors")]

use std::collections::HashMap;

use crate::common::{random4, rng};
use clustered_conv::io::{
    import_conv_layers, read_safetensors, write_dense_safetensors, GeometryMap, TensorDtype,
};
use clustered_conv::{compress, CompressionConfig, ConvGeometry, Error, KernelCodebook};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small VGG-like state dict written with the `safetensors` crate itself.
fn state_dict() -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let mut r = rng(81);
    let w0: Vec<f32> = random4(&mut r, (8, 3, 3, 3))
        .iter()
        .map(|&v| v as f32)
        .collect();
    let b0: Vec<f32> = (0..8).map(|i| i as f32 * 0.1).collect();
    let w2: Vec<f32> = random4(&mut r, (16, 8, 3, 3))
        .iter()
        .map(|&v| v as f32)
        .collect();
    let w10: Vec<f32> = random4(&mut r, (16, 16, 3, 3))
        .iter()
        .map(|&v| v as f32)
        .collect();
    let pw: Vec<f32> = random4(&mut r, (4, 16, 1, 1))
        .iter()
        .map(|&v| v as f32)
        .collect();
    let bn: Vec<f32> = vec![1.0; 8];
    let fc: Vec<f32> = vec![0.5; 10 * 4];
    let w0b = f32_bytes(&w0);
    let b0b = f32_bytes(&b0);
    let w2b: Vec<u8> = w2
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let w10b: Vec<u8> = w10
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let b10b: Vec<u8> = (0..16)
        .flat_map(|i| (i as f64 * 0.01).to_le_bytes())
        .collect();
    let pwb = f32_bytes(&pw);
    let bnb = f32_bytes(&bn);
    let fcb = f32_bytes(&fc);
    let steps = 7i64.to_le_bytes().to_vec();
    let tensors = vec![
        (
            "features.0.weight",
            TensorView::new(Dtype::F32, vec![8, 3, 3, 3], &w0b).unwrap(),
        ),
        (
            "features.0.bias",
            TensorView::new(Dtype::F32, vec![8], &b0b).unwrap(),
        ),
        (
            "features.1.weight",
            TensorView::new(Dtype::F32, vec![8], &bnb).unwrap(),
        ),
        (
            "features.1.num_batches_tracked",
            TensorView::new(Dtype::I64, vec![], &steps).unwrap(),
        ),
        (
            "features.2.weight",
            TensorView::new(Dtype::F16, vec![16, 8, 3, 3], &w2b).unwrap(),
        ),
        (
            "features.10.weight",
            TensorView::new(Dtype::BF16, vec![16, 16, 3, 3], &w10b).unwrap(),
        ),
        (
            "features.10.bias",
            TensorView::new(Dtype::F64, vec![16], &b10b).unwrap(),
        ),
        (
            "features.11.weight",
            TensorView::new(Dtype::F32, vec![4, 16, 1, 1], &pwb).unwrap(),
        ),
        (
            "classifier.weight",
            TensorView::new(Dtype::F32, vec![10, 4], &fcb).unwrap(),
        ),
    ];
    let bytes = safetensors::serialize(tensors, None).unwrap();
    (bytes, w0, w2)
}

#[test]
fn imports_conv_layers_in_module_order_with_their_biases() {
    let (bytes, w0, w2) = state_dict();
    let state = read_safetensors(&bytes).unwrap();
    let mut geometry = GeometryMap::new();
    geometry.insert(
        "features.2".into(),
        ConvGeometry::default().stride(2, 2).padding(1, 1),
    );
    let model = import_conv_layers(&state, &geometry).unwrap();
    let names: Vec<&str> = model.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["features.0", "features.2", "features.10"]);
    assert_eq!(
        model.layers[0].weight.iter().copied().collect::<Vec<_>>(),
        w0
    );
    assert_eq!(model.layers[0].bias.as_ref().unwrap()[3], 0.3);
    // f16 weights are read exactly.
    let expected: Vec<f32> = w2
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(
        model.layers[1].weight.iter().copied().collect::<Vec<_>>(),
        expected
    );
    assert!(model.layers[1].bias.is_none());
    assert_eq!(
        model.layers[1].geometry,
        ConvGeometry::default().stride(2, 2).padding(1, 1)
    );
    assert_eq!(
        model.layers[2].geometry,
        ConvGeometry::default().padding(1, 1)
    );
    assert_eq!(model.layers[2].bias.as_ref().unwrap()[5], 0.05);
    let passthrough: Vec<&str> = model.passthrough.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        passthrough,
        [
            "classifier.weight",
            "features.1.num_batches_tracked",
            "features.1.weight",
            "features.11.weight"
        ]
    );
}

#[test]
fn dense_export_keeps_names_dtypes_and_passthrough_bytes() {
    let (bytes, _, _) = state_dict();
    let state = read_safetensors(&bytes).unwrap();
    let model = import_conv_layers(&state, &HashMap::new()).unwrap();
    let net = compress(
        &model.layers,
        &CompressionConfig::new(KernelCodebook::params(8)),
    )
    .unwrap();
    let out = write_dense_safetensors(&net, &model).unwrap();
    let back = read_safetensors(&out).unwrap();
    // Every original tensor name is present with its dtype and shape.
    let original: HashMap<_, _> = state
        .tensors
        .iter()
        .map(|t| (t.name.clone(), (t.dtype, t.shape.clone())))
        .collect();
    let written: HashMap<_, _> = back
        .tensors
        .iter()
        .map(|t| (t.name.clone(), (t.dtype, t.shape.clone())))
        .collect();
    assert_eq!(original, written);
    // Pass-through tensors are byte-identical.
    for t in &model.passthrough {
        let w = back.tensors.iter().find(|b| b.name == t.name).unwrap();
        assert_eq!(w.bytes, t.bytes, "{}", t.name);
    }
    // Clustered weights are the reconstructed ones, rounded to the stored dtype.
    let w2 = back
        .tensors
        .iter()
        .find(|t| t.name == "features.2.weight")
        .unwrap();
    assert_eq!(w2.dtype, Some(TensorDtype::F16));
    let dense = net.dense_layer(1).unwrap();
    for (a, &b) in w2.to_f32().unwrap().iter().zip(dense.weight().iter()) {
        assert_eq!(*a, half::f16::from_f32(b).to_f32());
    }
    let w0 = back
        .tensors
        .iter()
        .find(|t| t.name == "features.0.weight")
        .unwrap();
    assert_eq!(
        w0.to_f32().unwrap().iter().copied().collect::<Vec<_>>(),
        net.dense_layer(0)
            .unwrap()
            .weight()
            .iter()
            .copied()
            .collect::<Vec<_>>()
    );
}

#[test]
fn hostile_files_are_rejected() {
    let (bytes, _, _) = state_dict();
    for cut in [0, 7, 8, 40, bytes.len() - 1] {
        assert!(
            matches!(
                read_safetensors(&bytes[..cut]),
                Err(Error::InvalidSafetensors { .. })
            ),
            "cut {cut}"
        );
    }
    // A header that claims more data than there is.
    let mut lying = bytes.clone();
    let n = u64::from_le_bytes(lying[..8].try_into().unwrap());
    lying[..8].copy_from_slice(&(n + 1000).to_le_bytes());
    assert!(matches!(
        read_safetensors(&lying),
        Err(Error::InvalidSafetensors { .. })
    ));
    // A bias of the wrong length.
    let w = f32_bytes(&[0.0; 4 * 2 * 9]);
    let b = f32_bytes(&[0.0; 3]);
    let file = safetensors::serialize(
        vec![
            (
                "c.weight",
                TensorView::new(Dtype::F32, vec![4, 2, 3, 3], &w).unwrap(),
            ),
            ("c.bias", TensorView::new(Dtype::F32, vec![3], &b).unwrap()),
        ],
        None,
    )
    .unwrap();
    let state = read_safetensors(&file).unwrap();
    assert!(matches!(
        import_conv_layers(&state, &HashMap::new()),
        Err(Error::InvalidSafetensors { .. })
    ));
}

#[test]
fn element_type_names_are_safetensors_own() {
    // Independent truth: the safetensors crate's names of the same types.
    for (dtype, raw) in [
        (TensorDtype::F16, Dtype::F16),
        (TensorDtype::BF16, Dtype::BF16),
        (TensorDtype::F32, Dtype::F32),
        (TensorDtype::F64, Dtype::F64),
    ] {
        let name = format!("{raw:?}");
        assert_eq!(dtype.to_string(), name);
        assert_eq!(name.parse::<TensorDtype>().unwrap(), dtype);
    }
    for bad in ["", "f32", "I64", "U8", "F32 "] {
        let err = bad.parse::<TensorDtype>().unwrap_err();
        assert!(
            matches!(err, Error::Parse { what: "element type", ref input, .. } if input == bad),
            "{err:?}"
        );
    }
}
