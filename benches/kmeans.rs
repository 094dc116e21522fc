//! k-means on 100,000 × 9 `f32` rows (the size of a few conv layers' worth of 3×3 kernels),
//! K = 256, `n_init` 1, greedy k-means++ seeding, `tol` 1e-4.
//!
//! Data (seed 42, ChaCha8): a mixture of 256 isotropic Gaussians in 9-D. The component
//! centres are drawn from N(0, I₉) and each row picks a component uniformly at random and
//! adds N(0, 0.1²·I₉) noise. With K equal to the true number of components the ideal
//! inertia is about `100,000 · 9 · 0.01 = 9,000`; the printed inertia shows how close the
//! fit gets (k-means++ with one restart usually merges a few components and splits others).
//!
//! Benches:
//! - `kmeans/fit/n100000_d9_k256`: a full fit (seeding + Lloyd to convergence);
//! - `kmeans/seed_plus_1iter/n100000_d9_k256`: `max_iter(1)`, i.e. the k-means++ seeding
//!   plus one Lloyd iteration (and the final assignment), as a proxy for the seeding cost.
//!
//! Before each timing, one fit runs outside the loop and its inertia and iteration count are
//! printed to stderr, as linfa's benches do.

use std::time::Duration;

use clustered_conv::KMeans;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const N: usize = 100_000;
const D: usize = 9;
const K: usize = 256;
const COMPONENTS: usize = 256;
const WITHIN_STD: f32 = 0.1;
const DATA_SEED: u64 = 42;
const FIT_SEED: u64 = 0;

/// `N × D` rows from the Gaussian mixture described in the module docs.
fn mixture() -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(DATA_SEED);
    let centres =
        Array2::<f32>::from_shape_simple_fn((COMPONENTS, D), || rng.sample(StandardNormal));
    let mut data = Array2::<f32>::zeros((N, D));
    for mut row in data.rows_mut() {
        let c = rng.random_range(0..COMPONENTS);
        for (v, &mu) in row.iter_mut().zip(centres.row(c)) {
            let z: f32 = rng.sample(StandardNormal);
            *v = mu + WITHIN_STD * z;
        }
    }
    data
}

fn bench_kmeans(c: &mut Criterion) {
    let data = mixture();
    let name = format!("n{N}_d{D}_k{K}");
    let mut group = c.benchmark_group("kmeans");
    // A fit takes over a second: with flat sampling and this target time every sample is
    // one fit (criterion then prints a harmless "Unable to complete 10 samples" warning).
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    // One "element" is one row.
    group.throughput(Throughput::Elements(N as u64));

    let full = KMeans::params(K).seed(FIT_SEED).n_init(1).tol(1e-4);
    let fit = full.fit(data.view()).expect("fit");
    eprintln!(
        "kmeans/fit/{name}: inertia = {:.1}, n_iter = {}, convergence = {:?} \
         (ideal ≈ {:.0})",
        fit.inertia,
        fit.n_iter,
        fit.convergence,
        (N * D) as f64 * f64::from(WITHIN_STD * WITHIN_STD),
    );
    group.bench_function(format!("fit/{name}"), |b| {
        b.iter(|| full.fit(data.view()).expect("fit"))
    });

    let seeding = full.max_iter(1);
    let fit = seeding.fit(data.view()).expect("fit");
    eprintln!(
        "kmeans/seed_plus_1iter/{name}: inertia = {:.1}, n_iter = {}",
        fit.inertia, fit.n_iter
    );
    group.bench_function(format!("seed_plus_1iter/{name}"), |b| {
        b.iter(|| seeding.fit(data.view()).expect("fit"))
    });

    group.finish();
}

criterion_group!(benches, bench_kmeans);
criterion_main!(benches);
