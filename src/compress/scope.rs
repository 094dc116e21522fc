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

impl std::fmt::Display for CodebookScope {
    /// `shared`, `per-layer`, or the groups as `first-last=K,…` (what [`str::parse`] accepts
    /// back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodebookScope::Shared => f.write_str("shared"),
            CodebookScope::PerLayer => f.write_str("per-layer"),
            CodebookScope::Groups(groups) => {
                for (n, g) in groups.iter().enumerate() {
                    let sep = if n == 0 { "" } else { "," };
                    write!(f, "{sep}{}-{}={}", g.layers.start(), g.layers.end(), g.k)?;
                }
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for CodebookScope {
    type Err = Error;

    /// Parses `shared`, `per-layer`, or groups as [`CodebookScope::parse_groups`] does (what
    /// [`Display`](std::fmt::Display) writes).
    ///
    /// ```
    /// use clustered_conv::{CodebookScope, LayerGroup};
    /// assert_eq!("per-layer".parse::<CodebookScope>()?, CodebookScope::PerLayer);
    /// let groups = "0-0=64,1-16=256".parse::<CodebookScope>()?;
    /// assert_eq!(groups, CodebookScope::parse_groups("0-0=64,1-16=256")?);
    /// assert_eq!(groups.to_string(), "0-0=64,1-16=256");
    /// let err = "perlayer".parse::<CodebookScope>().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"invalid codebook scope "perlayer": expected shared, per-layer, or groups of clustered-layer ordinals like 0-0=64,1-16=256"#
    /// );
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Parse`] for text that is none of the three forms, [`Error::InvalidGroupSpec`]
    /// for groups (text with a `=`) that do not parse.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shared" => Ok(CodebookScope::Shared),
            "per-layer" => Ok(CodebookScope::PerLayer),
            groups if groups.contains('=') => CodebookScope::parse_groups(groups),
            _ => Err(Error::Parse {
                what: "codebook scope",
                input: s.to_string(),
                expected: "shared, per-layer, or groups of clustered-layer ordinals like \
                           0-0=64,1-16=256",
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_text_round_trips() {
        let groups = CodebookScope::Groups(vec![
            LayerGroup {
                layers: 0..=0,
                k: 64,
            },
            LayerGroup {
                layers: 1..=16,
                k: 256,
            },
            LayerGroup {
                layers: 17..=17,
                k: 3,
            },
        ]);
        for (text, scope) in [
            ("shared", CodebookScope::Shared),
            ("per-layer", CodebookScope::PerLayer),
            ("0-0=64,1-16=256,17-17=3", groups.clone()),
        ] {
            assert_eq!(text.parse::<CodebookScope>().unwrap(), scope);
            assert_eq!(scope.to_string(), text);
        }
        // A single ordinal is accepted and written back as a one-layer range.
        assert_eq!(
            "0=64, 1-16=256,17=3".parse::<CodebookScope>().unwrap(),
            groups
        );
    }

    #[test]
    fn scope_errors_name_what_is_accepted() {
        for bad in ["", "Shared", "per_layer", "0-16"] {
            let err = bad.parse::<CodebookScope>().unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Parse {
                        what: "codebook scope",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("shared, per-layer"), "{err}");
        }
        assert!(matches!(
            "0-=3".parse::<CodebookScope>(),
            Err(Error::InvalidGroupSpec { .. })
        ));
    }
}
