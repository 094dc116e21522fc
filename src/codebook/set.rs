//! [`Codebooks`]: the one owner of a network's codebooks, handed to layers by id.

use ndarray::{Array3, ArrayView2};

use super::KernelCodebook;
use crate::error::{Error, Result};
use crate::linalg::Real;

/// The codebooks of a network. Layers refer to a codebook by its id (its position, as
/// returned by [`Codebooks::push`]); every lookup checks the id and returns an error, never
/// a panic, for one that does not exist. Codebooks can be fine-tuned
/// ([`Codebooks::set_centroids`]) but not replaced, so their `K`, kernel size and scale
/// scheme stay what the layers were checked against.
///
/// ```
/// use clustered_conv::{Codebooks, Error, KernelCodebook, Symmetry};
/// use ndarray::Array3;
///
/// let mut codebooks = Codebooks::new();
/// let id = codebooks.push(KernelCodebook::from_centroids(Array3::<f32>::ones((4, 3, 3)), Symmetry::Identity)?);
/// assert_eq!((id, codebooks.len()), (0, 1));
/// assert_eq!(codebooks.get(id)?.len(), 4);
/// assert!(matches!(codebooks.get(1), Err(Error::CodebookOutOfRange { codebook: 1, codebooks: 1 })));
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Codebooks<F> {
    books: Vec<KernelCodebook<F>>,
}

impl<F> Default for Codebooks<F> {
    fn default() -> Self {
        Codebooks { books: Vec::new() }
    }
}

impl<F> From<Vec<KernelCodebook<F>>> for Codebooks<F> {
    fn from(books: Vec<KernelCodebook<F>>) -> Self {
        Codebooks { books }
    }
}

impl<F: Real> Codebooks<F> {
    /// No codebooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a codebook; returns its id.
    pub fn push(&mut self, codebook: KernelCodebook<F>) -> usize {
        self.books.push(codebook);
        self.books.len() - 1
    }

    /// Adds every codebook of `other`; returns the id of its first one here (ids of `other`
    /// are shifted by it).
    pub fn append(&mut self, other: Codebooks<F>) -> usize {
        let offset = self.books.len();
        self.books.extend(other.books);
        offset
    }

    /// Number of codebooks.
    pub fn len(&self) -> usize {
        self.books.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.books.is_empty()
    }

    /// Codebook `id`.
    ///
    /// # Errors
    /// [`Error::CodebookOutOfRange`] for an id `≥ len()`.
    pub fn get(&self, id: usize) -> Result<&KernelCodebook<F>> {
        self.books.get(id).ok_or(Error::CodebookOutOfRange {
            codebook: id,
            codebooks: self.books.len(),
        })
    }

    /// Codebook `id`, after checking that `indices` are valid stored indices for it
    /// (what a layer that uses it must hold).
    ///
    /// # Errors
    /// [`Error::CodebookOutOfRange`], or [`Error::IndexOutOfRange`] for the first index
    /// `≥ K·S`.
    pub fn check(&self, id: usize, indices: ArrayView2<u32>) -> Result<&KernelCodebook<F>> {
        let codebook = self.get(id)?;
        codebook.check_indices(&indices)?;
        Ok(codebook)
    }

    /// Replaces the centroids of codebook `id` (for fine-tuning: same `K` and kernel size).
    ///
    /// # Errors
    /// [`Error::CodebookOutOfRange`], or as [`KernelCodebook::set_centroids`].
    pub fn set_centroids(&mut self, id: usize, centroids: Array3<F>) -> Result<()> {
        let count = self.books.len();
        self.books
            .get_mut(id)
            .ok_or(Error::CodebookOutOfRange {
                codebook: id,
                codebooks: count,
            })?
            .set_centroids(centroids)
    }

    /// The codebooks, by id.
    pub fn iter(&self) -> std::slice::Iter<'_, KernelCodebook<F>> {
        self.books.iter()
    }
}

impl<'a, F> IntoIterator for &'a Codebooks<F> {
    type Item = &'a KernelCodebook<F>;
    type IntoIter = std::slice::Iter<'a, KernelCodebook<F>>;

    fn into_iter(self) -> Self::IntoIter {
        self.books.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook::Symmetry;
    use ndarray::array;

    #[test]
    fn ids_out_of_range_are_errors() {
        let mut set = Codebooks::new();
        let cb =
            KernelCodebook::from_centroids(Array3::<f64>::ones((2, 1, 2)), Symmetry::Flip).unwrap();
        assert_eq!(set.push(cb.clone()), 0);
        assert_eq!(set.append(Codebooks::from(vec![cb.clone(), cb])), 1);
        assert_eq!(set.len(), 3);
        let missing = |e: Error| {
            matches!(
                e,
                Error::CodebookOutOfRange {
                    codebook: 3,
                    codebooks: 3
                }
            )
        };
        assert!(missing(set.get(3).unwrap_err()));
        assert!(missing(
            set.set_centroids(3, Array3::zeros((2, 1, 2))).unwrap_err()
        ));
        // K·S = 4 valid indices.
        assert!(set.check(2, array![[0u32, 3]].view()).is_ok());
        assert!(matches!(
            set.check(2, array![[0u32, 4]].view()),
            Err(Error::IndexOutOfRange {
                index: 4,
                limit: 4,
                ..
            })
        ));
        assert!(matches!(
            set.check(7, array![[0u32]].view()).unwrap_err(),
            Error::CodebookOutOfRange {
                codebook: 7,
                codebooks: 3
            }
        ));
    }
}
