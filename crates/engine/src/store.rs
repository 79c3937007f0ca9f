//! The ledger in Xenstore: reading a device's record (strictly: anything unexpected is
//! `LedgerCorrupt`), the single-node writes, and the nodes written at assignable-add and
//! attach. Transactions are the callers'; nothing here calls Xen or touches a device.

use pci::Sbdf;
use xen::{DomId, DomainHandle, DomainInfo};
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

/// The entries under `/ptguard/device`, as named there (none before the first device).
pub(crate) fn device_names(xs: &mut XsClient) -> Result<Vec<String>> {
    match xs.directory(TxId::NONE, DEVICES) {
        Ok(n) => Ok(n),
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Every MSI-X binding holding a pirq of the devices the ledger has attached to `domid`
/// (attach finished or not, any incarnation), each with its device's record head.
pub(crate) fn attached_msix_bindings(
    xs: &mut XsClient,
    domid: DomId,
) -> Result<Vec<(DeviceRecord, Binding)>> {
    let mut out = Vec::new();
    for sbdf in device_names(xs)?
        .iter()
        .filter_map(|n| Sbdf::from_xs_key(n).ok())
    {
        let Some(rec) = read_head(xs, TxId::NONE, sbdf)? else {
            continue;
        };
        if rec.owner != Some(domid) || rec.state != DeviceState::Attached {
            continue;
        }
        for entry in 0..rec.msix_size {
            if let Some(b) = read_binding(xs, TxId::NONE, sbdf, BindingKey::Msix(entry))? {
                if b.pirq.is_some() {
                    out.push((rec.clone(), b));
                }
            }
        }
    }
    Ok(out)
}

/// Reads a device's record without its bindings (a constant number of requests).
pub fn read_head(xs: &mut XsClient, tx: TxId, sbdf: Sbdf) -> Result<Option<DeviceRecord>> {
    let Some(state_text) = read_opt(xs, tx, &field_path(sbdf, "state"))? else {
        return Ok(None);
    };
    let state: DeviceState = state_text
        .parse()
        .map_err(|_| corrupt(field_path(sbdf, "state"), &state_text, "unknown state"))?;
    let (owner, owner_handle) = match read_opt(xs, tx, &field_path(sbdf, "owner"))? {
        None => (None, None),
        Some(t) => {
            let bad = |what| corrupt(field_path(sbdf, "owner"), &t, what);
            let mut parts = t.split_whitespace();
            let domid = parts
                .next()
                .and_then(|d| d.parse().ok())
                .map(DomId)
                .ok_or_else(|| bad("not a domain id"))?;
            let handle = match parts.next() {
                None => None,
                Some(h) => Some(
                    h.parse::<DomainHandle>()
                        .map_err(|_| bad("not a domain handle"))?,
                ),
            };
            if parts.next().is_some() {
                return Err(bad("not \"DOMID [HANDLE]\""));
            }
            (Some(domid), handle)
        }
    };
    let epoch = match read_opt(xs, tx, &field_path(sbdf, "epoch"))? {
        None => return Err(corrupt(field_path(sbdf, "epoch"), "", "missing")),
        Some(t) => t
            .parse()
            .map_err(|_| corrupt(field_path(sbdf, "epoch"), &t, "not a number"))?,
    };
    let step = match read_opt(xs, tx, &field_path(sbdf, "step"))? {
        None => None,
        Some(t) => Some(
            t.parse()
                .map_err(|_| corrupt(field_path(sbdf, "step"), &t, "unknown step"))?,
        ),
    };
    let reason = read_opt(xs, tx, &field_path(sbdf, "reason"))?;
    let driver = read_opt(xs, tx, &field_path(sbdf, "driver"))?.filter(|d| !d.is_empty());
    let msix_size = match read_opt(xs, tx, &field_path(sbdf, "msix-size"))? {
        None => 0,
        Some(t) => t
            .parse::<u16>()
            .ok()
            .filter(|n| *n <= 2048)
            .ok_or_else(|| corrupt(field_path(sbdf, "msix-size"), &t, "not a table size"))?,
    };
    let table_base = match read_opt(xs, tx, &field_path(sbdf, "table-base"))? {
        None => None,
        Some(t) => Some(
            t.strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| corrupt(field_path(sbdf, "table-base"), &t, "not a hex address"))?,
        ),
    };
    if matches!(state, DeviceState::Attached | DeviceState::TearingDown) && owner.is_none() {
        return Err(corrupt(
            field_path(sbdf, "owner"),
            "",
            format!("a {state} device needs an owner"),
        ));
    }
    Ok(Some(DeviceRecord {
        sbdf,
        state,
        owner,
        epoch,
        step,
        reason,
        driver,
        msix_size,
        table_base,
        owner_handle,
        lost_maps: 0,
        bindings: Vec::new(),
    }))
}

/// `mode` of a device adopted from the toolstack: forgotten once clean.
pub(crate) const COMPANION: &str = "companion";
/// `mode` of a device ptguard managed before a toolstack gave it: assignable once clean.
pub(crate) const COMPANION_KEEP: &str = "companion-keep";

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
    let msix_size = rec.msix_size;
    let mut bindings = Vec::new();
    let dir = format!("{}/binding", device_path(sbdf));
    let names = match xs.directory(tx, &dir) {
        Ok(n) => n,
        Err(e) if e.code() == Some(xenstore::ErrorCode::Enoent) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for name in names {
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
    Ok(Some(rec))
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

/// What the ledger keeps about a device itself: the driver to give it back to, its MSI-X
/// table size and the host address of the table's BAR.
pub(crate) fn write_device_facts(
    xs: &mut XsClient,
    tx: TxId,
    sbdf: Sbdf,
    driver: &str,
    msix_size: u16,
    table_base: u64,
) -> Result<()> {
    write(xs, tx, &field_path(sbdf, "driver"), driver)?;
    write(
        xs,
        tx,
        &field_path(sbdf, "msix-size"),
        &msix_size.to_string(),
    )?;
    write(
        xs,
        tx,
        &field_path(sbdf, "table-base"),
        &format!("{table_base:#x}"),
    )
}

/// The `owner` node: the domid, and the domain's handle when Xen gave it one, so that a
/// later domain reusing the domid is not taken for the owner.
pub(crate) fn owner_text(domid: DomId, info: Option<&DomainInfo>) -> String {
    match info.map(|i| i.handle).filter(|h| !h.is_nil()) {
        Some(h) => format!("{} {h}", domid.0),
        None => domid.0.to_string(),
    }
}

/// Marks `sbdf` attached to the domain `info` describes (domid and handle) at `epoch`.
pub(crate) fn write_attached(
    xs: &mut XsClient,
    tx: TxId,
    sbdf: Sbdf,
    info: &DomainInfo,
    epoch: u64,
) -> Result<()> {
    write(xs, tx, &field_path(sbdf, "state"), "attached")?;
    write(
        xs,
        tx,
        &field_path(sbdf, "owner"),
        &owner_text(info.domid, Some(info)),
    )?;
    write(xs, tx, &field_path(sbdf, "epoch"), &epoch.to_string())
}

/// Whether the domain Xen knows as `info` is the incarnation the ledger recorded.
pub(crate) fn same_incarnation(recorded: Option<DomainHandle>, info: &DomainInfo) -> bool {
    recorded.is_none_or(|h| h == info.handle)
}

/// The epoch after `epoch`; a hand-edited maximum must not wrap to an old one.
pub(crate) fn next_epoch(sbdf: Sbdf, epoch: u64) -> Result<u64> {
    epoch
        .checked_add(1)
        .ok_or(EngineError::EpochExhausted { sbdf, epoch })
}
