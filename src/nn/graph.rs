//! Where each layer of a [`Network`](super::Network) reads from: a chain by default, or a
//! directed acyclic graph with residual adds.
//!
//! Values are numbered: value 0 is the network's input and value `l + 1` is the output of
//! layer `l`. A layer reads values with smaller numbers only, so the layer order is a
//! topological order and a cycle cannot be written down. The last layer's output is the
//! network's output, and every other layer's output must be read by some later layer.

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::linalg::Real;

/// The wiring of a network: `None` is a chain (layer `l` reads value `l`), which stays valid
/// when layers are added or removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Wiring {
    inputs: Option<Vec<Vec<usize>>>,
}

impl Wiring {
    /// Layer `l` reads value `l`.
    pub(super) fn chain() -> Self {
        Wiring { inputs: None }
    }

    /// Explicit inputs per layer, checked by [`check_inputs`].
    pub(super) fn graph(inputs: Vec<Vec<usize>>, arity: impl Fn(usize) -> Arity) -> Result<Self> {
        check_inputs(&inputs, arity)?;
        Ok(Wiring {
            inputs: Some(inputs),
        })
    }

    /// Whether this is a plain chain.
    pub(super) fn is_chain(&self) -> bool {
        self.inputs.is_none()
    }

    /// Checks that the wiring still has one entry per layer (the layer list is public and
    /// may have been edited).
    pub(super) fn check_len(&self, layers: usize) -> Result<()> {
        match &self.inputs {
            Some(inputs) if inputs.len() != layers => Err(Error::InvalidGraph {
                what: format!(
                    "the network has {layers} layers but its graph wires {}; rebuild it with \
                     Network::graph after editing the layers",
                    inputs.len()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// How many times each value is read (the output value counts once, as read by the
    /// caller).
    pub(super) fn reads(&self, layers: usize) -> Vec<usize> {
        let mut reads = vec![0; layers + 1];
        for l in 0..layers {
            for &v in self.sources(l).iter() {
                reads[v] += 1;
            }
        }
        reads[layers] += 1;
        reads
    }

    /// The values layer `l` reads, as an owned list (a chain's is `[l]`).
    pub(super) fn sources(&self, l: usize) -> Vec<usize> {
        match &self.inputs {
            Some(inputs) => inputs[l].clone(),
            None => vec![l],
        }
    }
}

/// How many inputs a layer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arity {
    /// Exactly one.
    One,
    /// Two or more (an element-wise sum).
    Many,
}

/// Checks a graph: each layer reads earlier values only, with the arity its kind needs, and
/// every layer but the last is read by a later one.
fn check_inputs(inputs: &[Vec<usize>], arity: impl Fn(usize) -> Arity) -> Result<()> {
    let layers = inputs.len();
    if layers == 0 {
        return Err(Error::InvalidGraph {
            what: "a network needs at least one layer".into(),
        });
    }
    let mut read = vec![false; layers + 1];
    for (l, from) in inputs.iter().enumerate() {
        let ok = match arity(l) {
            Arity::One => from.len() == 1,
            Arity::Many => from.len() >= 2,
        };
        if !ok {
            let need = if arity(l) == Arity::One {
                "exactly one input"
            } else {
                "two or more inputs"
            };
            return Err(Error::InvalidGraph {
                what: format!("layer {l} has {} inputs; it takes {need}", from.len()),
            });
        }
        if let Some(&v) = from.iter().find(|&&v| v > l) {
            return Err(Error::InvalidGraph {
                what: format!(
                    "layer {l} reads value {v}, which is not computed before it (value 0 is \
                     the input, value j + 1 the output of layer j)"
                ),
            });
        }
        for &v in from {
            read[v] = true;
        }
    }
    if let Some(l) = (0..layers - 1).find(|&l| !read[l + 1]) {
        return Err(Error::InvalidGraph {
            what: format!("the output of layer {l} is never read (only the last layer's output leaves the network)"),
        });
    }
    if !read[0] {
        return Err(Error::InvalidGraph {
            what: "no layer reads the network's input (value 0)".into(),
        });
    }
    Ok(())
}

/// The values of one pass: each is dropped after its last read, and handed over without a
/// copy to its last reader.
pub(super) struct Values<F> {
    slots: Vec<Option<ArrayD<F>>>,
    reads_left: Vec<usize>,
}

impl<F: Real> Values<F> {
    /// A pass whose value 0 is `input`.
    pub(super) fn new(input: ArrayD<F>, wiring: &Wiring, layers: usize) -> Self {
        let mut slots = vec![None; layers + 1];
        slots[0] = Some(input);
        Values {
            slots,
            reads_left: wiring.reads(layers),
        }
    }

    /// Stores value `v`.
    pub(super) fn put(&mut self, v: usize, value: ArrayD<F>) {
        self.slots[v] = Some(value);
    }

    /// Value `v` for one of its readers: moved out on the last read, else copied.
    pub(super) fn take(&mut self, v: usize) -> Result<ArrayD<F>> {
        let left = &mut self.reads_left[v];
        *left = left.saturating_sub(1);
        let value = if *left == 0 {
            self.slots[v].take()
        } else {
            self.slots[v].clone()
        };
        value.ok_or_else(|| Error::InvalidGraph {
            what: format!("value {v} was read before it was computed"),
        })
    }
}

/// Gradients with respect to the values of a pass, summed over each value's readers.
pub(super) struct ValueGrads<F> {
    slots: Vec<Option<ArrayD<F>>>,
}

impl<F: Real> ValueGrads<F> {
    /// No gradients yet for `values` values.
    pub(super) fn new(values: usize) -> Self {
        ValueGrads {
            slots: vec![None; values],
        }
    }

    /// Adds `g` to value `v`'s gradient.
    pub(super) fn add(&mut self, v: usize, g: ArrayD<F>) -> Result<()> {
        match &mut self.slots[v] {
            None => self.slots[v] = Some(g),
            Some(sum) if sum.shape() == g.shape() => *sum += &g,
            Some(sum) => {
                return Err(Error::ShapeMismatch {
                    what: "gradients of one value from two of its readers",
                    expected: sum.shape().to_vec(),
                    got: g.shape().to_vec(),
                })
            }
        }
        Ok(())
    }

    /// Value `v`'s summed gradient (taken out).
    pub(super) fn take(&mut self, v: usize) -> Result<ArrayD<F>> {
        self.slots[v].take().ok_or_else(|| Error::InvalidGraph {
            what: format!("no gradient reached value {v}"),
        })
    }
}
