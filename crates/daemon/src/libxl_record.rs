//! What libxl recorded of a domain it built: its saved domain configuration, the JSON
//! file `xl list -l` prints (`XEN_LIB_DIR/userdata-d.DOMID.UUID.libxl-json`, written by
//! `libxl__userdata_store`). Read for what Xen cannot be asked: the memory map libxl
//! gave a PV domain (`XENMEM_memory_map` answers only for the calling domain).

use std::io::Read;
use std::path::{Path, PathBuf};

use engine::PvMemoryMap;
use xen::DomainInfo;

/// libxl's `XEN_LIB_DIR` on Debian and upstream builds.
pub const XEN_LIB_DIR: &str = "/var/lib/xen";

/// A saved configuration is a few KiB; anything far larger is not libxl's.
const MAX_RECORD: u64 = 4 << 20;

/// Where libxl keeps `domain`'s configuration: the domid and the handle together name
/// this incarnation, so a file a destroyed domain with the same id left is not read.
pub fn record_path(dir: &Path, domain: &DomainInfo) -> PathBuf {
    dir.join(format!(
        "userdata-d.{}.{}.libxl-json",
        domain.domid.0, domain.handle
    ))
}

/// The PV memory map libxl built `domain` with, from its saved configuration in `dir`.
pub fn pv_memory_map(dir: &Path, domain: &DomainInfo) -> PvMemoryMap {
    let Ok(file) = std::fs::File::open(record_path(dir, domain)) else {
        return PvMemoryMap::Unknown;
    };
    let mut text = Vec::new();
    if file.take(MAX_RECORD).read_to_end(&mut text).is_err() {
        return PvMemoryMap::Unknown;
    }
    pv_memory_map_of(&text)
}

/// From libxl's JSON, for a domain Xen says is PV. libxl saves the configuration as its
/// user gave it, not with its defaults filled in (`d_config_saved` in libxl_create.c),
/// and leaves a default-valued field out (gentypes.py's `get_default_expr`), but always
/// writes an aggregate, so a PV guest's build info is always under `b_info."type.pv"`
/// (the union's key, `type`, then the member's name). Its `e820_host` is `"True"` when
/// the config set it (or xl did, for a PV guest with `pci=[...]`), and otherwise absent
/// or `"False"`, which libxl builds as off (`libxl_defbool_setdefault(.., false)`).
/// Without `"type.pv"` the record is not what this reads: unknown.
pub fn pv_memory_map_of(json: &[u8]) -> PvMemoryMap {
    // libxl stores the string with its terminating NUL (`strlen + 1`, libxl_internal.c).
    let end = json.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json[..end]) else {
        return PvMemoryMap::Unknown;
    };
    let Some(pv) = v["b_info"]["type.pv"].as_object() else {
        return PvMemoryMap::Unknown;
    };
    match pv.get("e820_host").map(|e| e.as_str()) {
        Some(Some("True")) => PvMemoryMap::HostRegions,
        Some(Some("False")) | Some(Some("<default>")) | None => PvMemoryMap::RamOnly,
        Some(_) => PvMemoryMap::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(e820_host: &str) -> String {
        format!(
            r#"{{"c_info": {{"type": "pv", "name": "g"}},
               "b_info": {{"max_vcpus": 1,
                          "type.pv": {{"kernel": "/k", "e820_host": "{e820_host}"}}}}}}"#
        )
    }

    #[test]
    fn reads_e820_host_as_libxl_saves_it() {
        let map = |j: &str| pv_memory_map_of(j.as_bytes());
        assert_eq!(map(&record("True")), PvMemoryMap::HostRegions);
        assert_eq!(map(&record("False")), PvMemoryMap::RamOnly);
        assert_eq!(map(&record("<default>")), PvMemoryMap::RamOnly);
        // Left out, as libxl leaves a default-valued field out: off.
        let unset = r#"{"c_info": {"type": "pv"}, "b_info": {"type.pv": {"kernel": "/k"}}}"#;
        assert_eq!(map(unset), PvMemoryMap::RamOnly);
    }

    /// The record real Xen 4.17.5's libxl wrote for a PV guest with `passthrough` and no
    /// `pci=` (the bed, 2026-12-03), with the NUL libxl stores after it.
    #[test]
    fn reads_the_record_libxl_wrote_on_the_bed() {
        let mut rec = br#"{"c_info": {"type": "pv", "name": "nomap", "domid": 4294967295,
            "uuid": "a025cfb4-92d1-4584-b5a4-581a5da330d2", "run_hotplug_scripts": "True",
            "passthrough": "enabled"},
          "b_info": {"max_vcpus": 1, "avail_vcpus": [0], "max_memkb": 262144,
            "target_memkb": 262144, "video_memkb": 0, "sched_params": {},
            "claim_mode": "True", "kernel": "/opt/ptguard-test/guest-vmlinuz",
            "cmdline": "console=hvc0 loglevel=4", "ramdisk": "/opt/ptguard-test/guest-initrd.gz",
            "type.pv": {}, "arch_arm": {}, "arch_x86": {"msr_relaxed": "False"}},
          "on_reboot": "restart", "on_crash": "preserve", "on_soft_reset": "soft_reset"}
"#
        .to_vec();
        rec.push(0);
        assert_eq!(pv_memory_map_of(&rec), PvMemoryMap::RamOnly);
        let mapped = String::from_utf8(rec)
            .unwrap()
            .replace(r#""type.pv": {}"#, r#""type.pv": {"e820_host": "True"}"#);
        assert_eq!(
            pv_memory_map_of(mapped.as_bytes()),
            PvMemoryMap::HostRegions
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"b_info": {"type": "hvm", "type.hvm": {}}}"#,
            br#"{"c_info": {"type": "pv"}, "b_info": {"max_vcpus": 1}}"#,
            br#"{"b_info": {"type.pv": {"e820_host": 1}}}"#,
        ] {
            assert_eq!(pv_memory_map_of(bad), PvMemoryMap::Unknown, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_file_of_this_incarnation_only() {
        let dir = std::env::temp_dir().join(format!("ptguard-libxl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = DomainInfo {
            domid: xen::DomId(7),
            dying: false,
            shutdown: false,
            hvm: false,
            paused: true,
            shutdown_reason: 0,
            handle: xen::DomainHandle([0x11; 16]),
            unique_id: None,
        };
        std::fs::write(record_path(&dir, &d), record("False")).unwrap();
        assert_eq!(pv_memory_map(&dir, &d), PvMemoryMap::RamOnly);
        assert!(record_path(&dir, &d)
            .ends_with("userdata-d.7.11111111-1111-1111-1111-111111111111.libxl-json"));
        d.handle = xen::DomainHandle([0x22; 16]);
        assert_eq!(pv_memory_map(&dir, &d), PvMemoryMap::Unknown);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
