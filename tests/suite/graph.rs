//! Networks as graphs: residual adds forward (against the layers composed by hand) and
//! backward (against finite differences), a chain written as a graph equal bit for bit to the
//! plain chain, and one error per malformed graph.

use crate::common::{random4, rng};
use crate::nn::{assert_network_gradients, small_network};
use clustered_conv::nn::{relu, AvgPool2d, BatchNorm2d, Layer, Linear, Network};
use clustered_conv::{
    ClusteredConv2d, Codebooks, Conv2d, ConvGeometry, Error, KernelCodebook, Symmetry,
};
use ndarray::{Array1, Array2, Array4, Axis};
use rand::Rng;

/// Padded, and averaging over the positions inside the input only.
const POOL: AvgPool2d = AvgPool2d {
    kernel: 3,
    stride: 2,
    padding: 1,
    count_include_pad: false,
};

fn conv(r: &mut rand_chacha::ChaCha8Rng, cout: usize, cin: usize, k: usize) -> Conv2d<f64> {
    let pad = k / 2;
    Conv2d::new(
        random4(r, (cout, cin, k, k)),
        Some(Array1::from_shape_fn(cout, |o| 0.1 * o as f64)),
        ConvGeometry::default().padding(pad, pad),
    )
    .unwrap()
}

/// A residual network over input `(N, 2, 4, 4)`:
///
/// ```text
/// v1 = conv3(x)       v2 = bn(v1)          v3 = relu(v2)     v4 = conv3(v3)
/// v5 = conv1×1(x)     v6 = v4 + v5         v7 = relu(v6)     v8 = clustered(v7)
/// v9 = v8 + v7 + v2   v10 = avgpool(v9)    v11 = flatten     v12 = linear
/// ```
///
/// The batch norm's output is read twice (by the ReLU and the three-way add), so the two
/// must not run fused; `x` and `v7` are read twice too.
fn residual_network(r: &mut rand_chacha::ChaCha8Rng) -> Network<f64> {
    let mut bn = BatchNorm2d::new(3);
    bn.gamma = Array1::from_shape_fn(3, |c| 1.0 + 0.2 * c as f64);
    bn.beta = Array1::from_shape_fn(3, |c| 0.1 * c as f64);
    let idx = Array2::from_shape_fn((3, 3), |_| r.random_range(0..6u32));
    let scales = Array2::from_shape_fn((3, 3), |_| r.random_range(0.5..1.5));
    let clustered = ClusteredConv2d::new(
        idx,
        Some(scales),
        Some(Array1::from_elem(3, 0.05)),
        ConvGeometry::default().padding(1, 1),
    )
    .unwrap();
    let fc = Linear {
        weight: Array2::from_shape_fn((4, 3 * 2 * 2), |_| r.random_range(-0.5..0.5)),
        bias: Array1::from_shape_fn(4, |j| 0.01 * j as f64),
    };
    let layers = vec![
        Layer::Conv(conv(r, 3, 2, 3)),
        Layer::BatchNorm(bn),
        Layer::Relu,
        Layer::Conv(conv(r, 3, 3, 3)),
        Layer::Conv(conv(r, 3, 2, 1)),
        Layer::Add,
        Layer::Relu,
        Layer::Clustered {
            layer: Box::new(clustered),
            codebook: 0,
        },
        Layer::Add,
        Layer::AvgPool(POOL),
        Layer::Flatten,
        Layer::Linear(fc),
    ];
    let inputs = vec![
        vec![0],
        vec![1],
        vec![2],
        vec![3],
        vec![0],
        vec![4, 5],
        vec![6],
        vec![7],
        vec![8, 7, 2],
        vec![9],
        vec![10],
        vec![11],
    ];
    let mut net = Network::graph(layers, inputs).unwrap();
    let centroids = random4(r, (1, 3, 3, 3)).remove_axis(Axis(0));
    net.codebooks = Codebooks::from(vec![KernelCodebook::from_centroids(
        centroids,
        Symmetry::Flip,
    )
    .unwrap()]);
    net
}

/// The residual network's evaluation-mode logits, composed layer by layer by hand.
fn by_hand(net: &Network<f64>, x: &Array4<f64>) -> Array2<f64> {
    let conv = |l: usize, h: &Array4<f64>| match &net.layers[l] {
        Layer::Conv(c) => c.forward(h.view()).unwrap(),
        other => panic!("layer {l} is {other:?}"),
    };
    let v1 = conv(0, x);
    let v2 = match &net.layers[1] {
        Layer::BatchNorm(bn) => bn.forward_eval(v1.view()).unwrap(),
        _ => unreachable!(),
    };
    let v3 = relu(v2.view());
    let v6 = conv(3, &v3) + conv(4, x);
    let v7 = relu(v6.view());
    let v8 = match &net.layers[7] {
        Layer::Clustered { layer, codebook } => layer
            .forward(net.codebooks.get(*codebook).unwrap(), v7.view())
            .unwrap(),
        _ => unreachable!(),
    };
    let v9 = v8 + &v7 + &v2;
    let pooled = POOL.forward(v9.view()).unwrap();
    let n = pooled.dim().0;
    let flat = pooled.into_shape_with_order((n, 12)).unwrap();
    match &net.layers[11] {
        Layer::Linear(fc) => fc.forward(flat.view()).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn residual_forward_equals_the_layers_composed_by_hand() {
    let mut r = rng(5);
    let mut net = residual_network(&mut r);
    // Running statistics away from (0, 1), so that evaluation mode is not the identity.
    net.forward_train(random4(&mut r, (4, 2, 4, 4)).view())
        .unwrap();
    let x = random4(&mut r, (3, 2, 4, 4));
    let got = net.forward(x.view()).unwrap();
    let want = by_hand(&net, &x);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{g} vs {w}");
    }
}

#[test]
fn residual_gradients_match_finite_differences() {
    let mut r = rng(6);
    let net = residual_network(&mut r);
    let x = random4(&mut r, (3, 2, 4, 4));
    assert_network_gradients(&net, &x, &[0, 3, 1]);
}

#[test]
fn a_chain_written_as_a_graph_equals_the_chain_bit_for_bit() {
    let mut r = rng(7);
    let chain = small_network(&mut r);
    let n = chain.layers.len();
    let mut graph =
        Network::graph(chain.layers.clone(), (0..n).map(|l| vec![l]).collect()).unwrap();
    graph.codebooks = chain.codebooks.clone();
    assert!(chain.is_chain() && !graph.is_chain());
    let x = random4(&mut r, (3, 2, 4, 4));
    assert_eq!(
        chain.forward(x.view()).unwrap(),
        graph.forward(x.view()).unwrap()
    );
    let (mut a, mut b) = (chain.clone(), graph.clone());
    let (la, ta) = a.forward_train(x.view()).unwrap();
    let (lb, tb) = b.forward_train(x.view()).unwrap();
    assert_eq!(la, lb);
    let g = Array2::from_shape_fn(la.dim(), |(i, j)| (i + 2 * j) as f64 * 0.1);
    assert_eq!(
        a.backward(&ta, g.clone()).unwrap(),
        b.backward(&tb, g).unwrap()
    );
}

fn graph_error(layers: Vec<Layer<f64>>, inputs: Vec<Vec<usize>>) -> String {
    match Network::graph(layers, inputs) {
        Err(e @ Error::InvalidGraph { .. }) => e.to_string(),
        other => panic!("expected InvalidGraph, got {other:?}"),
    }
}

#[test]
fn malformed_graphs_are_refused_with_the_reason() {
    let relus = |n: usize| vec![Layer::Relu; n];
    let e = graph_error(relus(2), vec![vec![2], vec![1]]);
    assert!(e.contains("layer 0 reads value 2"), "{e}");
    let e = graph_error(relus(2), vec![vec![0], vec![1], vec![2]]);
    assert!(e.contains("2 layers but inputs for 3"), "{e}");
    let e = graph_error(vec![Layer::Relu, Layer::Add], vec![vec![0], vec![1]]);
    assert!(
        e.contains("layer 1 has 1 inputs; it takes two or more"),
        "{e}"
    );
    let e = graph_error(relus(2), vec![vec![0, 0], vec![1]]);
    assert!(
        e.contains("layer 0 has 2 inputs; it takes exactly one"),
        "{e}"
    );
    let e = graph_error(relus(3), vec![vec![0], vec![0], vec![2]]);
    assert!(e.contains("output of layer 0 is never read"), "{e}");
    let e = graph_error(Vec::new(), Vec::new());
    assert!(e.contains("at least one layer"), "{e}");
}

#[test]
fn shape_errors_in_a_graph_are_errors_not_panics() {
    let mut r = rng(8);
    // An add of 3 and 2 channels.
    let net = Network::graph(
        vec![
            Layer::Conv(conv(&mut r, 3, 2, 3)),
            Layer::Add,
            Layer::Flatten,
        ],
        vec![vec![0], vec![1, 0], vec![2]],
    )
    .unwrap();
    let x = random4(&mut r, (1, 2, 4, 4));
    assert!(matches!(
        net.forward(x.view()),
        Err(Error::ShapeMismatch { .. })
    ));
    // Layers edited after the graph was built.
    let mut edited = residual_network(&mut r);
    edited.layers.pop();
    let e = edited.forward(random4(&mut r, (1, 2, 4, 4)).view());
    assert!(
        matches!(&e, Err(Error::InvalidGraph { what }) if what.contains("11 layers but its graph wires 12")),
        "{e:?}"
    );
}
