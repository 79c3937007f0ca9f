//! Round-trip latency of plain and transactional requests against the embedded xenstored.
use std::time::Instant;
use xenstore::server::{start, ServerConfig};
use xenstore::{TxId, XsClient};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("txlat-{}", std::process::id()));
    let h = start(ServerConfig::new(&dir))?;
    let mut c = XsClient::connect(h.socket_path())?;
    c.write(TxId::NONE, "/a", b"1")?;
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        c.read(TxId::NONE, "/a")?;
    }
    println!(
        "read: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let t = Instant::now();
    for _ in 0..n {
        let tx = c.transaction_start()?;
        c.transaction_end(tx, true)?;
    }
    println!(
        "transaction start+end: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let t = Instant::now();
    for _ in 0..n {
        let tx = c.transaction_start()?;
        c.write(tx, "/a", b"3")?;
        c.transaction_end(tx, true)?;
    }
    println!(
        "transaction with a write: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let t = Instant::now();
    let mut open = Vec::new();
    for _ in 0..n {
        open.push(c.transaction_start()?);
    }
    println!(
        "transaction start alone: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    let t = Instant::now();
    for tx in open {
        c.transaction_end(tx, false)?;
    }
    println!(
        "transaction abort alone: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    // The same through the in-process store: what the state machine itself costs.
    let local = xenstore::local::LocalXenstore::new(xenstore::store::Quotas::default());
    let mut l = local.connect(0);
    l.write(TxId::NONE, "/a", b"1")?;
    let t = Instant::now();
    for _ in 0..n {
        let tx = l.transaction_start()?;
        l.write(tx, "/a", b"3")?;
        l.transaction_end(tx, true)?;
    }
    println!(
        "in-process transaction with a write: {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
    h.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
