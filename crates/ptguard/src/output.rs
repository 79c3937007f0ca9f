//! The one way every command prints its result: pretty JSON with `--json`, else the
//! command's own text.

use std::io::Write;

use serde::Serialize;

/// Writes `value` as pretty JSON and a newline when `json`, else what `text` writes.
pub fn emit<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    json: bool,
    value: &T,
    text: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)?;
    } else {
        text(out)?;
    }
    Ok(())
}
