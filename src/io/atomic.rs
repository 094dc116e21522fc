//! Atomic file replacement: a failure never leaves a half-written output.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file in the same directory, flushed to disk,
/// then renamed over `path`. On any failure the temporary file is removed and `path` is left
/// as it was (absent, or its old content) — including when `path` is also the input.
///
/// # Errors
/// [`Error::Write`] with the destination and the I/O error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let write_error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.file_name().ok_or_else(|| {
        write_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path does not end in a file name",
        ))
    })?;
    let tmp = temporary_sibling(path, file_name);
    let result = write_and_sync(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        // The temporary file may not exist (creation failed); nothing else to clean.
        let _ = fs::remove_file(&tmp);
        return Err(write_error(e));
    }
    Ok(())
}

/// `.<name>.<pid>.<n>.tmp` next to `path`, unique within this process.
fn temporary_sibling(path: &Path, file_name: &std::ffi::OsStr) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn write_and_sync(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create_new(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()
}
