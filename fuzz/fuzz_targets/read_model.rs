//! Feeds arbitrary bytes to the compressed-model reader: it must return `Ok` or `Err`, never
//! panic, and never allocate beyond the limits (libFuzzer's `-rss_limit_mb` catches that).
//! A model that loads must also save to bytes that load back to the same model, and a file
//! with a network graph (format version 2) must load as a network that runs or errs.
//!
//! Run: `cargo +nightly fuzz run read_model fuzz/corpus/read_model` (seeded with the golden
//! files: `mkdir -p fuzz/corpus/read_model && cp tests/data/golden_v*.safetensors
//! fuzz/corpus/read_model/`).
#![no_main]

use clustered_conv::io::{CompressedModel, SavedNetwork};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = CompressedModel::from_bytes(data) {
        let bytes = model.to_bytes().expect("a loaded model saves");
        let again = CompressedModel::from_bytes(&bytes).expect("a saved model loads");
        assert_eq!(again, model);
    }
    if let Ok(saved) = SavedNetwork::from_bytes(data) {
        if let Some([c, h, w]) = saved.input_shape {
            if c * h * w <= 1 << 16 {
                let _ = saved.network.forward(ndarray::Array4::zeros((1, c, h, w)).view());
            }
        }
        let bytes = saved.to_bytes().expect("a loaded network saves");
        let again = SavedNetwork::from_bytes(&bytes).expect("a saved network loads");
        assert_eq!(again, saved);
    }
});
