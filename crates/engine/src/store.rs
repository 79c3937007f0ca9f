//! The ledger in Xenstore: reading a device's record (strictly: anything unexpected is
//! `LedgerCorrupt`), the single-node writes, and the nodes written at assignable-add and
//! attach. Transactions are the callers'; nothing here calls Xen or touches a device.

use pci::Sbdf;
use xen::{DomId, DomainInfo};
use xenstore::{Access, Perm, PermList, TxId, XsClient};

use crate::ledger::*;
use crate::EngineError;

type Result<T> = std::result::Result<T, EngineError>;

pub(crate) fn corrupt(path: String, value: &str, reason: impl Into<String>) -> EngineError {
    EngineError::LedgerCorrupt {
        path,
        value: value.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn read_opt(xs: &mut XsClient, tx: TxId, path: &str) -> Result<Option<String>> {
    match xs.read_optional(tx, path)? {
        Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
        None => Ok(None),
    }
}

/// The children of `path`; none when the node does not exist (a directory the ledger has
/// not made yet, or removed with its last child).
pub(crate) fn children(xs: &mut XsClient, tx: TxId, path: &str) -> Result<Vec<String>> {
    match xs.directory(tx, path) {
        Ok(n) => Ok(n),
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The entries under `/ptguard/device`, as named there (none before the first device).
pub(crate) fn device_names(xs: &mut XsClient) -> Result<Vec<String>> {
    children(xs, TxId::NONE, DEVICES)
}

/// The record head of every device named as an address under `/ptguard/device`.
pub(crate) fn heads(xs: &mut XsClient) -> Result<Vec<DeviceRecord>> {
    let mut out = Vec::new();
    for sbdf in device_names(xs)?
        .iter()
        .filter_map(|n| Sbdf::from_xs_key(n).ok())
    {
        out.extend(read_head(xs, TxId::NONE, sbdf)?);
    }
    Ok(out)
}

/// The nodes under a device's `binding/` (none before its first binding).
fn binding_names(xs: &mut XsClient, tx: TxId, sbdf: Sbdf) -> Result<Vec<String>> {
    children(xs, tx, &bindings_path(sbdf))
}

/// Every MSI-X binding holding a pirq of the devices the ledger has attached to `domid`
/// (attach finished or not, any incarnation), each with its device's record head. The
/// bindings are found by listing them, not by reading every entry of the table: a device
/// model's libxenctrl calls ask this on each call.
pub(crate) fn attached_msix_bindings(
    xs: &mut XsClient,
    domid: DomId,
) -> Result<Vec<(DeviceRecord, Binding)>> {
    let mut out = Vec::new();
    for rec in heads(xs)? {
        if rec.owner != Some(domid) || rec.state != DeviceState::Attached {
            continue;
        }
        for name in binding_names(xs, TxId::NONE, rec.sbdf)? {
            let Ok(key @ BindingKey::Msix(entry)) = name.parse::<BindingKey>() else {
                continue;
            };
            if entry >= rec.msix_size {
                continue;
            }
            if let Some(b) = read_binding(xs, TxId::NONE, rec.sbdf, key)? {
                if b.pirq.is_some() {
                    out.push((rec.clone(), b));
                }
            }
        }
    }
    Ok(out)
}

/// Reads a device's record without its bindings: one request (the head is one node).
pub fn read_head(xs: &mut XsClient, tx: TxId, sbdf: Sbdf) -> Result<Option<DeviceRecord>> {
    let path = device_path(sbdf);
    match read_opt(xs, tx, &path)? {
        // An empty node is a parent xenstored made for a stray child, not a record.
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => DeviceRecord::decode_head(sbdf, &text)
            .map(Some)
            .map_err(|why| corrupt(path, &text, why)),
    }
}

/// Writes a record's head (its bindings are written one by one, by the broker).
pub(crate) fn write_head(xs: &mut XsClient, tx: TxId, rec: &DeviceRecord) -> Result<()> {
    write(xs, tx, &device_path(rec.sbdf), &rec.encode_head())
}

/// The `binding/lost` node: binds retried over an intent a crash left without its pirq.
/// It lives among the bindings so that a device without one costs no extra request.
pub(crate) const LOST_MAPS: &str = "lost";

pub(crate) fn lost_maps_path(sbdf: Sbdf) -> String {
    format!("{}/binding/{LOST_MAPS}", device_path(sbdf))
}

/// `/ptguard/intx/<domid>/<gsi>[/<SSSS-BB-DD-F>]`: which attached devices of a guest use
/// one machine INTx line, so that a teardown unmaps the line's pirq only with its last user.
pub(crate) fn intx_line_path(domid: DomId, gsi: u32, sbdf: Option<Sbdf>) -> String {
    match sbdf {
        Some(s) => format!("{ROOT}/intx/{}/{gsi}/{}", domid.0, s.xs_key()),
        None => format!("{ROOT}/intx/{}/{gsi}", domid.0),
    }
}

/// Drops `sbdf` from its INTx line's index, and the line's node with its last user.
pub(crate) fn forget_intx_line(
    xs: &mut XsClient,
    tx: TxId,
    owner: DomId,
    gsi: u32,
    sbdf: Sbdf,
) -> Result<()> {
    let line = intx_line_path(owner, gsi, None);
    rm(xs, tx, &intx_line_path(owner, gsi, Some(sbdf)))?;
    match xs.directory(tx, &line) {
        Ok(n) if n.is_empty() => rm(xs, tx, &line),
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn parse_lost_maps(sbdf: Sbdf, text: &str) -> Result<u32> {
    text.parse()
        .map_err(|_| corrupt(lost_maps_path(sbdf), text, "not a count"))
}

/// Reads one binding node (`None`: absent).
pub(crate) fn read_binding(
    xs: &mut XsClient,
    tx: TxId,
    sbdf: Sbdf,
    key: BindingKey,
) -> Result<Option<Binding>> {
    let path = binding_path(sbdf, &key);
    match read_opt(xs, tx, &path)? {
        None => Ok(None),
        Some(text) => Binding::decode(key, &text)
            .map(Some)
            .map_err(|r| corrupt(path, &text, r)),
    }
}

/// Reads one device's record inside `tx`, bindings included (`None`: not in the ledger).
pub fn read_record(xs: &mut XsClient, tx: TxId, sbdf: Sbdf) -> Result<Option<DeviceRecord>> {
    let Some(mut rec) = read_head(xs, tx, sbdf)? else {
        return Ok(None);
    };
    read_bindings(xs, tx, &mut rec)?;
    Ok(Some(rec))
}

/// Fills a head's bindings and lost-maps count from the ledger.
pub(crate) fn read_bindings(xs: &mut XsClient, tx: TxId, rec: &mut DeviceRecord) -> Result<()> {
    let sbdf = rec.sbdf;
    let msix_size = rec.msix_size;
    let mut bindings = Vec::new();
    let dir = bindings_path(sbdf);
    for name in binding_names(xs, tx, sbdf)? {
        let path = format!("{dir}/{name}");
        if name == LOST_MAPS {
            let text = read_opt(xs, tx, &path)?.unwrap_or_default();
            rec.lost_maps = parse_lost_maps(sbdf, &text)?;
            continue;
        }
        let key: BindingKey = name
            .parse()
            .map_err(|_| corrupt(path.clone(), &name, "unknown binding key"))?;
        if let BindingKey::Msix(e) = key {
            if e >= msix_size {
                return Err(corrupt(path, &name, "entry beyond the MSI-X table"));
            }
        }
        let text = read_opt(xs, tx, &path)?.unwrap_or_default();
        bindings.push(Binding::decode(key, &text).map_err(|r| corrupt(path, &text, r))?);
    }
    rec.bindings = bindings;
    Ok(())
}

pub(crate) fn write(xs: &mut XsClient, tx: TxId, path: &str, v: &str) -> Result<()> {
    xs.write(tx, path, v.as_bytes()).map_err(Into::into)
}

pub(crate) fn rm(xs: &mut XsClient, tx: TxId, path: &str) -> Result<()> {
    match xs.rm(tx, path) {
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(()),
        r => r.map_err(Into::into),
    }
}

/// A permission list from (access, domid) pairs, the first naming the owner.
pub(crate) fn perm_list(entries: &[(Access, u32)]) -> PermList {
    PermList::from_vec(entries.iter().map(|(a, d)| Perm::new(*a, *d)).collect())
        .unwrap_or_else(|| PermList::owned_by(0, Access::None))
}

/// `rec` attached to the domain `info` describes (domid and, when Xen gave it one, its
/// handle, so that a later domain reusing the domid is not taken for the owner) at `epoch`.
pub(crate) fn attached_to(rec: &mut DeviceRecord, info: &DomainInfo, epoch: u64) {
    rec.state = DeviceState::Attached;
    rec.owner = Some(info.domid);
    rec.owner_handle = Some(info.handle).filter(|h| !h.is_nil());
    rec.owner_uid = info.unique_id;
    rec.epoch = epoch;
    // A new assignment: the last one's token proves nothing any more.
    rec.credential = None;
}

/// The epoch after `epoch`; a hand-edited maximum must not wrap to an old one.
pub(crate) fn next_epoch(sbdf: Sbdf, epoch: u64) -> Result<u64> {
    epoch
        .checked_add(1)
        .ok_or(EngineError::EpochExhausted { sbdf, epoch })
}

/// Notes in the owner index that `rec`'s owner holds it (inside the transaction that
/// writes the head naming the owner).
pub(crate) fn index_owner(xs: &mut XsClient, tx: TxId, rec: &DeviceRecord) -> Result<()> {
    match rec.owner {
        Some(d) => write(xs, tx, &owner_index_path(d, rec.sbdf), ""),
        None => Ok(()),
    }
}

/// Removes `rec`'s owner's note (inside the transaction that clears the owner), and the
/// owner's directory once it is empty.
pub(crate) fn unindex_owner(xs: &mut XsClient, tx: TxId, rec: &DeviceRecord) -> Result<()> {
    let Some(d) = rec.owner else {
        return Ok(());
    };
    rm(xs, tx, &owner_index_path(d, rec.sbdf))?;
    let dir = format!("{OWNERS}/{}", d.0);
    if children(xs, tx, &dir)?.is_empty() {
        rm(xs, tx, &dir)?;
    }
    Ok(())
}

/// The devices the owner index lists for `domid`; `None` when the ledger is not (yet)
/// wholly indexed.
pub(crate) fn indexed_devices(xs: &mut XsClient, domid: DomId) -> Result<Option<Vec<String>>> {
    if read_opt(xs, TxId::NONE, OWNERS)?.as_deref() != Some(OWNERS_INDEXED) {
        return Ok(None);
    }
    children(xs, TxId::NONE, &format!("{OWNERS}/{}", domid.0)).map(Some)
}

/// Forgets `rec` (its head and bindings), keeping its epoch as the floor a new record of
/// the device starts from: one transaction.
pub(crate) fn forget_record(xs: &mut XsClient, rec: &DeviceRecord) -> Result<()> {
    xs.transaction(|xs, tx| -> Result<()> {
        rm(xs, tx, &device_path(rec.sbdf))?;
        unindex_owner(xs, tx, rec)?;
        write(
            xs,
            tx,
            &retired_epoch_path(rec.sbdf),
            &rec.epoch.to_string(),
        )
    })
}

/// The epoch a new record of `sbdf` starts at: the last one it had, if ptguard forgot it
/// before, else 0. An unreadable floor (edited by hand) is an error, not a restart at 0.
pub(crate) fn epoch_floor(xs: &mut XsClient, tx: TxId, sbdf: Sbdf) -> Result<u64> {
    let path = retired_epoch_path(sbdf);
    match read_opt(xs, tx, &path)? {
        None => Ok(0),
        Some(t) => t
            .trim()
            .parse()
            .map_err(|_| corrupt(path, &t, "not an epoch")),
    }
}
