//! `libptguard_preload.so`: preloaded into a stock device model (qemu-xen), it sends the
//! four libxenctrl calls qemu makes for a passthrough device's MSI-X vectors —
//! `xc_physdev_map_pirq_msi`, `xc_domain_update_msi_irq`, `xc_domain_unbind_msi_irq`,
//! `xc_physdev_unmap_pirq` — to ptguard's broker, so that every binding is in the ledger
//! before it exists in Xen, without changing qemu's source (docs/preload.md).
//!
//! This crate owns only that translation: a C-ABI symbol per call, the broker's line
//! protocol over its unix socket, and the choice to fall through to the real libxenctrl
//! (found with `dlsym(RTLD_NEXT)`) when the broker does not manage the device or is not
//! there. It must not decide policy (the broker checks every request) and must not make
//! hypercalls of its own; everything else qemu calls goes to libxenctrl untouched. Its
//! `unsafe` is the FFI boundary: raw pointers from C and the `dlsym` lookups.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeSet;
use std::ffi::{c_int, c_void, CStr};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use wire::{Reply, ReplyCode, Request};
use xen::DomId;

/// Where `ptguard watch` serves the broker on a real dom0.
const DEFAULT_SOCKET: &str = "/run/ptguard/broker.sock";
/// How long a call waits for the broker's answer; a broker that takes longer is treated
/// as failed (`EIO`), never fallen through, since it may have mapped the vector.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// qemu's `XEN_PT_AUTO_ASSIGN`: a new IRQ for the MSI, as opposed to an existing one.
const AUTO_ASSIGN: c_int = -1;

/// (domid, pirq) this process mapped through the broker: their later calls go there
/// too, and only theirs (a pirq mapped by the real library stays with it).
static BROKERED: Mutex<BTreeSet<(u32, i32)>> = Mutex::new(BTreeSet::new());

fn brokered(domid: u32, pirq: i32) -> bool {
    BROKERED
        .lock()
        .map(|s| s.contains(&(domid, pirq)))
        .unwrap_or(false)
}

fn remember(domid: u32, pirq: i32, mapped: bool) {
    if let Ok(mut s) = BROKERED.lock() {
        if mapped {
            s.insert((domid, pirq));
        } else {
            s.remove(&(domid, pirq));
        }
    }
}

fn log(msg: std::fmt::Arguments<'_>) {
    // qemu's stderr is its log file (/var/log/xen/qemu-dm-NAME.log under xl).
    let _ = writeln!(std::io::stderr(), "ptguard-preload: {msg}");
}

/// What the broker made of one call.
enum Answer {
    /// Done; the pirq for a map.
    Done(Option<i32>),
    /// Not ptguard's to broker (no broker, device not managed): the real library does it.
    FallThrough(String),
    /// Refused or failed: the call fails with this errno.
    Failed(c_int, String),
}

fn socket_path() -> String {
    std::env::var("PTGUARD_BROKER").unwrap_or_else(|_| DEFAULT_SOCKET.to_owned())
}

/// The request as sent: with the assignment token `ptguard attach` printed, when whoever
/// started the device model passed it in `PTGUARD_TOKEN` (without one, the broker serves
/// only the process the toolstack recorded as the domain's device model).
fn with_token(request: Request) -> Request {
    let token = std::env::var("PTGUARD_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    request.with_token(token)
}

/// libxenctrl's `uint32_t domid` as the broker names domains; `None` for an id no domain
/// can have, which is not the broker's to serve.
fn domain(domid: u32) -> Option<DomId> {
    u16::try_from(domid).ok().map(DomId)
}

/// One request, one reply line. `Ok(None)`: the broker closed the connection before a byte
/// of reply came, which it does only to a connection whose request it never read (it
/// evicted it for room, docs/broker.md "Staying up"), so asking again is safe.
fn exchange(mut stream: UnixStream, line: &str) -> std::io::Result<Option<String>> {
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    if let Err(e) = stream.write_all(line.as_bytes()) {
        return match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => Ok(None),
            _ => Err(e),
        };
    }
    let mut reply = String::new();
    match BufReader::new(&stream).read_line(&mut reply) {
        Ok(0) => Ok(None),
        Err(e) if e.kind() == ErrorKind::ConnectionReset && reply.is_empty() => Ok(None),
        Ok(_) if !reply.ends_with('\n') => Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the broker closed the connection in the middle of its reply",
        )),
        Ok(_) => Ok(Some(reply)),
        Err(e) => Err(e),
    }
}

/// How many times a request is sent when the broker closes the connection unread.
const ATTEMPTS: usize = 3;

fn ask(request: Request) -> Answer {
    let path = socket_path();
    let line = with_token(request).to_line();
    let mut reply = None;
    for _ in 0..ATTEMPTS {
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            // No broker (ptguard not running, or this device model cannot reach its
            // socket): qemu works as without the library, and the sweep covers it at
            // teardown.
            Err(e) => return Answer::FallThrough(format!("no broker at {path}: {e}")),
        };
        match exchange(stream, &line) {
            Ok(Some(r)) => {
                reply = Some(r);
                break;
            }
            Ok(None) => continue,
            // The request may have reached Xen: never fall through to a second map.
            Err(e) => return Answer::Failed(libc::EIO, format!("broker at {path}: {e}")),
        }
    }
    let Some(reply) = reply else {
        return Answer::Failed(
            libc::EIO,
            format!("broker at {path} closed the connection unread {ATTEMPTS} times"),
        );
    };
    let reply = match Reply::parse_line(&reply) {
        Ok(r) => r,
        Err(e) => return Answer::Failed(libc::EIO, format!("unreadable broker reply: {e}")),
    };
    let Some(code) = reply.failure_code() else {
        return Answer::Done(reply.pirq);
    };
    let why = format!("{code}: {}", reply.error.as_deref().unwrap_or(""));
    match code {
        ReplyCode::NotManaged => Answer::FallThrough(why),
        ReplyCode::PirqBudget => Answer::Failed(libc::ENOSPC, why),
        ReplyCode::Error => {
            let errno = reply.errno.filter(|e| *e > 0).unwrap_or(libc::EIO);
            Answer::Failed(errno, why)
        }
        // Every refusal, and a code this build does not know: the call fails, closed.
        _ => Answer::Failed(libc::EPERM, why),
    }
}

fn set_errno(errno: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's
    // life.
    unsafe { *libc::__errno_location() = errno };
}

/// The next definition of `name` after this library: libxenctrl's.
fn real(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT is valid from a shared object.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

fn missing(name: &CStr) -> c_int {
    log(format_args!("{name:?}: no libxenctrl behind this library"));
    set_errno(libc::ENOSYS);
    -1
}

/// The minor version of the libxenctrl that defines `sym`, from its file name
/// (`libxenctrl.so.4.21`, as Debian and upstream install it); `None` if it cannot tell.
fn libxenctrl_minor(sym: *mut c_void) -> Option<u16> {
    // SAFETY: an all-zero Dl_info is valid (null pointers); dladdr only writes it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `sym` came from dlsym; dladdr reads no memory through it.
    if unsafe { libc::dladdr(sym, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr set dli_fname to the loaded object's NUL-terminated path.
    let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    soname_minor(&path)
}

/// `…/libxenctrl.so.4.21[.0]` → 21.
pub fn soname_minor(path: &str) -> Option<u16> {
    let version = path.rsplit('/').next()?.strip_prefix("libxenctrl.so.4.")?;
    version.split('.').next()?.parse().ok()
}

/// The device's segment and bus from `xc_physdev_map_pirq_msi`'s `bus` argument. From
/// libxenctrl 4.21 (commit b7838d12bd) it is `segment << 16 | bus` and the library asks
/// Xen with `MAP_PIRQ_TYPE_MSI_SEG`; before, it is the bus alone and the library maps on
/// segment 0. Anything else is not a device ptguard can name: the call goes to
/// libxenctrl, logged (a device the ledger cannot record is never mapped in its name).
pub fn decode_segbus(segbus: c_int, libxenctrl_minor: Option<u16>) -> Result<(u16, u8), String> {
    let raw = segbus as u32;
    match libxenctrl_minor {
        Some(m) if m >= 21 => {
            if raw & 0xff00 != 0 {
                return Err(format!("bus argument {raw:#x}: bits 8-15 set, neither a bus nor a segment"));
            }
            Ok(((raw >> 16) as u16, (raw & 0xff) as u8))
        }
        known => u8::try_from(segbus).map(|b| (0, b)).map_err(|_| {
            format!(
                "bus argument {raw:#x} does not fit a bus, and libxenctrl {} maps on segment 0 only (the segment is passed from 4.21)",
                known.map_or("of unknown version".to_string(), |m| format!("4.{m}"))
            )
        }),
    }
}

type MapPirqMsiFn =
    unsafe extern "C" fn(*mut c_void, u32, c_int, *mut c_int, c_int, c_int, c_int, u64) -> c_int;
type UpdateMsiIrqFn = unsafe extern "C" fn(*mut c_void, u32, u32, u32, u32, u64) -> c_int;
type UnbindMsiIrqFn = unsafe extern "C" fn(*mut c_void, u32, u32, u32, u32) -> c_int;
type UnmapPirqFn = unsafe extern "C" fn(*mut c_void, u32, c_int) -> c_int;

const MAP_PIRQ_MSI: &CStr = c"xc_physdev_map_pirq_msi";
const UPDATE_MSI_IRQ: &CStr = c"xc_domain_update_msi_irq";
const UNBIND_MSI_IRQ: &CStr = c"xc_domain_unbind_msi_irq";
const UNMAP_PIRQ: &CStr = c"xc_physdev_unmap_pirq";

/// Sends one call of a pirq this process mapped through the broker: `Some(rc)` is the
/// call's return value (0, or -1 with errno set), `None` sends it to libxenctrl.
fn brokered_call(what: &str, request: Request, done: impl FnOnce()) -> Option<c_int> {
    match ask(request) {
        Answer::Done(_) => {
            done();
            Some(0)
        }
        Answer::Failed(errno, why) => {
            log(format_args!("{what}: {why}"));
            set_errno(errno);
            Some(-1)
        }
        Answer::FallThrough(why) => {
            log(format_args!("{what}: {why}; calling libxenctrl"));
            None
        }
    }
}

/// `xc_physdev_map_pirq_msi`: an MSI-X entry (`table_base` non-zero, a new IRQ) of a device
/// the broker manages is mapped by the broker; anything else by libxenctrl.
///
/// # Safety
/// As libxenctrl's: `pirq` is null or points to an `int` the caller owns.
#[no_mangle]
pub unsafe extern "C" fn xc_physdev_map_pirq_msi(
    xch: *mut c_void,
    domid: u32,
    index: c_int,
    pirq: *mut c_int,
    devfn: c_int,
    bus: c_int,
    entry_nr: c_int,
    table_base: u64,
) -> c_int {
    let fall_through = |why: &str| -> c_int {
        if !why.is_empty() {
            log(format_args!(
                "map_pirq_msi d{domid}: {why}; calling libxenctrl"
            ));
        }
        match real(MAP_PIRQ_MSI) {
            Some(f) => {
                // SAFETY: the symbol is libxenctrl's xc_physdev_map_pirq_msi, whose C
                // signature MapPirqMsiFn mirrors (xenctrl.h); the arguments are the caller's.
                unsafe {
                    let f: MapPirqMsiFn = std::mem::transmute(f);
                    f(xch, domid, index, pirq, devfn, bus, entry_nr, table_base)
                }
            }
            None => missing(MAP_PIRQ_MSI),
        }
    };
    let minor = real(MAP_PIRQ_MSI).and_then(libxenctrl_minor);
    let (seg, bus8) = match decode_segbus(bus, minor) {
        Ok(sb) => sb,
        Err(why) => return fall_through(&why),
    };
    let (Ok(devfn8), Ok(entry)) = (u8::try_from(devfn), u16::try_from(entry_nr)) else {
        return fall_through("");
    };
    // Plain MSI (no table) and an existing IRQ are not ledger bindings.
    if pirq.is_null() || table_base == 0 || index != AUTO_ASSIGN {
        return fall_through("");
    }
    // SAFETY: checked non-null above; libxenctrl's contract makes it a valid int.
    let requested = unsafe { *pirq };
    let (Some(dom), Ok(sbdf)) = (
        domain(domid),
        pci::Sbdf::new(seg, bus8, devfn8 >> 3, devfn8 & 7),
    ) else {
        return fall_through("");
    };
    let request = Request::MapPirqMsi {
        domid: dom,
        sbdf,
        entry,
        table_base,
        pirq: (requested >= 0).then_some(requested),
        token: None,
    };
    let what = format!("map_pirq_msi d{domid} {sbdf} entry {entry}");
    match ask(request) {
        Answer::Done(Some(p)) => {
            remember(domid, p, true);
            log(format_args!("{what}: pirq {p} (ledger)"));
            // SAFETY: non-null and valid, as above.
            unsafe { *pirq = p };
            0
        }
        Answer::Done(None) => {
            log(format_args!("{what}: the broker answered no pirq"));
            set_errno(libc::EIO);
            -1
        }
        Answer::Failed(errno, why) => {
            log(format_args!("{what}: {why}"));
            set_errno(errno);
            -1
        }
        Answer::FallThrough(why) => fall_through(&why),
    }
}

/// `xc_domain_update_msi_irq`: through the broker for a pirq it mapped.
///
/// # Safety
/// As libxenctrl's (`xch` is passed through untouched).
#[no_mangle]
pub unsafe extern "C" fn xc_domain_update_msi_irq(
    xch: *mut c_void,
    domid: u32,
    gvec: u32,
    pirq: u32,
    gflags: u32,
    gtable: u64,
) -> c_int {
    let pirq_i = pirq as c_int;
    if let Some(dom) = domain(domid).filter(|_| brokered(domid, pirq_i)) {
        // libxenctrl stores gvec in the uint8_t of xen_domctl_bind_pt_irq: the same cut.
        let request = Request::UpdateMsiIrq {
            domid: dom,
            pirq: pirq_i,
            gvec: (gvec & 0xff) as u8,
            gflags,
            gtable,
            token: None,
        };
        let what = format!("update_msi_irq d{domid} pirq {pirq_i}");
        let done = || log(format_args!("{what}: vector {:#x} (ledger)", gvec & 0xff));
        if let Some(rc) = brokered_call(&what, request, done) {
            return rc;
        }
    }
    match real(UPDATE_MSI_IRQ) {
        // SAFETY: libxenctrl's xc_domain_update_msi_irq, signature as UpdateMsiIrqFn.
        Some(f) => unsafe {
            let f: UpdateMsiIrqFn = std::mem::transmute(f);
            f(xch, domid, gvec, pirq, gflags, gtable)
        },
        None => missing(UPDATE_MSI_IRQ),
    }
}

/// `xc_domain_unbind_msi_irq`: through the broker for a pirq it mapped.
///
/// # Safety
/// As libxenctrl's.
#[no_mangle]
pub unsafe extern "C" fn xc_domain_unbind_msi_irq(
    xch: *mut c_void,
    domid: u32,
    gvec: u32,
    pirq: u32,
    gflags: u32,
) -> c_int {
    let pirq_i = pirq as c_int;
    if let Some(dom) = domain(domid).filter(|_| brokered(domid, pirq_i)) {
        let request = Request::UnbindMsiIrq {
            domid: dom,
            pirq: pirq_i,
            token: None,
        };
        let what = format!("unbind_msi_irq d{domid} pirq {pirq_i}");
        let done = || log(format_args!("{what}: unbound (ledger)"));
        if let Some(rc) = brokered_call(&what, request, done) {
            return rc;
        }
    }
    match real(UNBIND_MSI_IRQ) {
        // SAFETY: libxenctrl's xc_domain_unbind_msi_irq, signature as UnbindMsiIrqFn.
        Some(f) => unsafe {
            let f: UnbindMsiIrqFn = std::mem::transmute(f);
            f(xch, domid, gvec, pirq, gflags)
        },
        None => missing(UNBIND_MSI_IRQ),
    }
}

/// `xc_physdev_unmap_pirq`: through the broker for a pirq it mapped.
///
/// # Safety
/// As libxenctrl's.
#[no_mangle]
pub unsafe extern "C" fn xc_physdev_unmap_pirq(xch: *mut c_void, domid: u32, pirq: c_int) -> c_int {
    if let Some(dom) = domain(domid).filter(|_| brokered(domid, pirq)) {
        let request = Request::UnmapPirq {
            domid: dom,
            pirq,
            token: None,
        };
        let what = format!("unmap_pirq d{domid} pirq {pirq}");
        let done = || {
            remember(domid, pirq, false);
            log(format_args!("{what}: unmapped (ledger)"));
        };
        if let Some(rc) = brokered_call(&what, request, done) {
            return rc;
        }
    }
    match real(UNMAP_PIRQ) {
        // SAFETY: libxenctrl's xc_physdev_unmap_pirq, signature as UnmapPirqFn.
        Some(f) => unsafe {
            let f: UnmapPirqFn = std::mem::transmute(f);
            f(xch, domid, pirq)
        },
        None => missing(UNMAP_PIRQ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_rides_in_the_bus_argument_from_libxenctrl_4_21() {
        assert_eq!(decode_segbus(0x0001_0003, Some(21)), Ok((1, 3)));
        assert_eq!(decode_segbus(0x0000_0003, Some(22)), Ok((0, 3)));
        assert_eq!(
            decode_segbus(0xffff_00ffu32 as c_int, Some(21)),
            Ok((0xffff, 0xff))
        );
        assert!(decode_segbus(0x0001_0103, Some(21)).is_err(), "bits 8-15");
        // Before 4.21 the argument is a bus: a segment there is not a device it maps.
        assert_eq!(decode_segbus(3, Some(17)), Ok((0, 3)));
        assert!(decode_segbus(0x0001_0003, Some(20)).is_err());
        assert!(decode_segbus(0x0001_0003, None).is_err());
        assert!(decode_segbus(-1, Some(17)).is_err());
    }

    #[test]
    fn the_version_comes_from_the_libraries_file_name() {
        assert_eq!(
            soname_minor("/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.17.0"),
            Some(17)
        );
        assert_eq!(soname_minor("/usr/lib/libxenctrl.so.4.21"), Some(21));
        assert_eq!(soname_minor("/usr/lib/libxenctrl.so"), None);
        assert_eq!(soname_minor("/opt/libxenctrl.so.5.0"), None);
    }
}
