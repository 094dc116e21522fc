//! Feeds arbitrary bytes to the compressed-model reader: it must return `Ok` or `Err`, never
//! panic, and never allocate beyond the limits (libFuzzer's `-rss_limit_mb` catches that).
//! A model that loads must also save to bytes that load back to the same model.
//!
//! Run: `cargo +nightly fuzz run read_model fuzz/corpus/read_model` (seeded with the golden
//! file: `mkdir -p fuzz/corpus/read_model && cp tests/data/golden_v1.safetensors
//! fuzz/corpus/read_model/`).
#![no_main]

use clustered_conv::io::CompressedModel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = CompressedModel::from_bytes(data) {
        let bytes = model.to_bytes().expect("a loaded model saves");
        let again = CompressedModel::from_bytes(&bytes).expect("a saved model loads");
        assert_eq!(again, model);
    }
});
