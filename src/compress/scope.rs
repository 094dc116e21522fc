//! Which layers share a codebook.

use std::ops::RangeInclusive;

use crate::error::{Error, Result};

/// A codebook shared by a range of clustered layers (ordinals among the layers that are
/// clustered, in network order), with its own number of centroids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerGroup {
    /// Clustered-layer ordinals, inclusive.
    pub layers: RangeInclusive<usize>,
    /// Centroids of the group's codebook.
    pub k: usize,
}

/// How codebooks are shared across the network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CodebookScope {
    /// One codebook per kernel size for the whole network (the paper's default): all 3×3
    /// layers share one, a 7×7 stem gets its own.
    #[default]
    Shared,
    /// One codebook per layer (the paper's M13), `K` capped at the layer's kernel count.
    PerLayer,
    /// Explicit groups, like the reference code's `--multi 0-0=64,1-16=256`.
    Groups(Vec<LayerGroup>),
}

impl CodebookScope {
    /// Parses `"a-b=K,c-d=K,…"` (ranges of clustered-layer ordinals, inclusive; a single
    /// ordinal `a=K` is also accepted).
    ///
    /// ```
    /// use clustered_conv::{CodebookScope, LayerGroup};
    /// let scope = CodebookScope::parse_groups("0-0=64,1-16=256")?;
    /// assert_eq!(
    ///     scope,
    ///     CodebookScope::Groups(vec![
    ///         LayerGroup { layers: 0..=0, k: 64 },
    ///         LayerGroup { layers: 1..=16, k: 256 },
    ///     ])
    /// );
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidGroupSpec`] naming the fragment that does not parse, or a range whose
    /// end precedes its start, or `K = 0`.
    pub fn parse_groups(spec: &str) -> Result<Self> {
        let bad = |fragment: &str, expected| Error::InvalidGroupSpec {
            fragment: fragment.to_string(),
            expected,
        };
        let mut groups = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            let (range, k) = part
                .split_once('=')
                .ok_or_else(|| bad(part, "`first-last=K`"))?;
            let k: usize = k
                .trim()
                .parse()
                .map_err(|_| bad(part, "K as a positive integer"))?;
            if k == 0 {
                return Err(bad(part, "K >= 1"));
            }
            let (first, last) = match range.split_once('-') {
                Some((a, b)) => (a, b),
                None => (range, range),
            };
            let parse = |v: &str| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(part, "layer ordinals as integers"))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            if last < first {
                return Err(bad(part, "a range whose end is not before its start"));
            }
            groups.push(LayerGroup {
                layers: first..=last,
                k,
            });
        }
        Ok(CodebookScope::Groups(groups))
    }
}

/// For every clustered layer, the group it belongs to, checking that the groups cover the
/// `layers` clustered layers exactly once.
pub(crate) fn group_of_layers(groups: &[LayerGroup], layers: usize) -> Result<Vec<usize>> {
    let mut owner: Vec<Option<usize>> = vec![None; layers];
    for (g, group) in groups.iter().enumerate() {
        for layer in group.layers.clone() {
            let slot = owner.get_mut(layer).ok_or(Error::GroupCoverage {
                problem: "name a non-existent",
                layer,
                layers,
            })?;
            if slot.replace(g).is_some() {
                return Err(Error::GroupCoverage {
                    problem: "cover twice",
                    layer,
                    layers,
                });
            }
        }
    }
    owner
        .into_iter()
        .enumerate()
        .map(|(layer, g)| {
            g.ok_or(Error::GroupCoverage {
                problem: "do not cover",
                layer,
                layers,
            })
        })
        .collect()
}
