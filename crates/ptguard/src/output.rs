//! The one way every command prints its result: pretty JSON with `--json`, else the
//! command's own text.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Whether this process printed a JSON result: what else it has to say (a `--trace` or
/// `--dry-run` listing) then goes to stderr, so that stdout stays one JSON document.
static JSON_PRINTED: AtomicBool = AtomicBool::new(false);

/// See [`JSON_PRINTED`].
pub fn json_printed() -> bool {
    JSON_PRINTED.load(Ordering::Relaxed)
}

/// Writes `value` as pretty JSON and a newline when `json`, else what `text` writes.
pub fn emit<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    json: bool,
    value: &T,
    text: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if json {
        JSON_PRINTED.store(true, Ordering::Relaxed);
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)?;
    } else {
        text(out)?;
    }
    Ok(())
}
