//! Node permissions: the `n0` / `r1` / `w2` / `b3` strings and the access rule of xenstored.
//!
//! The first entry names the owner and the access every other domain gets; later entries
//! grant a named domain more (or less). Dom0, the owner, and a domain whose target is the
//! owner (SET_TARGET) have full access.

use std::fmt;

/// A domain id as Xenstore carries it (decimal, 0..65535 in practice).
pub type XsDomId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

impl Access {
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One entry of a permission list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    pub access: Access,
    pub domid: XsDomId,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid permission {text:?}: expected n, r, w or b followed by a decimal domain id")]
pub struct PermParseError {
    pub text: String,
}

impl Perm {
    pub fn new(access: Access, domid: XsDomId) -> Perm {
        Perm { access, domid }
    }

    pub fn parse(text: &[u8]) -> Result<Perm, PermParseError> {
        let err = || PermParseError {
            text: String::from_utf8_lossy(text).into_owned(),
        };
        let (&first, digits) = text.split_first().ok_or_else(err)?;
        let access = match first {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(err()),
        };
        if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(err());
        }
        let domid = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(err)?;
        Ok(Perm { access, domid })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A node's permission list; never empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PermList(Vec<Perm>);

impl PermList {
    /// Owned by `owner`, everyone else gets `others`.
    pub fn owned_by(owner: XsDomId, others: Access) -> PermList {
        PermList(vec![Perm::new(others, owner)])
    }

    pub fn from_vec(perms: Vec<Perm>) -> Option<PermList> {
        if perms.is_empty() {
            None
        } else {
            Some(PermList(perms))
        }
    }

    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    pub fn owner(&self) -> XsDomId {
        self.0[0].domid
    }

    /// Parses the NUL-separated strings of a SET_PERMS / GET_PERMS payload.
    pub fn parse_all<'a>(
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<PermList, PermParseError> {
        let perms = parts
            .into_iter()
            .map(Perm::parse)
            .collect::<Result<Vec<_>, _>>()?;
        PermList::from_vec(perms).ok_or(PermParseError {
            text: String::new(),
        })
    }

    /// The payload form: each entry followed by a NUL.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            out.extend_from_slice(p.to_string().as_bytes());
            out.push(0);
        }
        out
    }

    /// Access of a connection of domain `domid` whose SET_TARGET target is `target`.
    pub fn access_for(&self, domid: XsDomId, target: Option<XsDomId>) -> Access {
        let owner = self.owner();
        if domid == 0 || owner == domid || target == Some(owner) {
            return Access::Both;
        }
        let mut access = self.0[0].access;
        for p in &self.0[1..] {
            if p.domid == domid || Some(p.domid) == target {
                access = p.access;
            }
        }
        access
    }

    /// True if the connection may change this node's permissions.
    pub fn is_owner(&self, domid: XsDomId, target: Option<XsDomId>) -> bool {
        domid == 0 || self.owner() == domid || target == Some(self.owner())
    }

    /// The list a new child node gets: the parent's, with the owner changed to the creating
    /// domain when that is not dom0.
    pub fn inherit(&self, creator: XsDomId) -> PermList {
        let mut perms = self.0.clone();
        if creator != 0 {
            perms[0].domid = creator;
        }
        PermList(perms)
    }
}

impl fmt::Display for PermList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Perm::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for s in ["n0", "r1", "w2", "b3", "b65535"] {
            assert_eq!(Perm::parse(s.as_bytes()).unwrap().to_string(), s);
        }
        for bad in ["", "x1", "r", "r-1", "r1a", "R1", "r99999999999"] {
            assert!(Perm::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn access_rule() {
        // owned by 5, others read, dom 7 nothing, dom 8 write
        let p = PermList::from_vec(vec![
            Perm::new(Access::Read, 5),
            Perm::new(Access::None, 7),
            Perm::new(Access::Write, 8),
        ])
        .unwrap();
        assert_eq!(p.access_for(0, None), Access::Both);
        assert_eq!(p.access_for(5, None), Access::Both);
        assert_eq!(p.access_for(6, None), Access::Read);
        assert_eq!(p.access_for(7, None), Access::None);
        assert_eq!(p.access_for(8, None), Access::Write);
        assert_eq!(p.access_for(9, Some(5)), Access::Both, "target of owner");
        assert_eq!(
            p.access_for(9, Some(8)),
            Access::Write,
            "inherits target's grant"
        );
        assert_eq!(p.inherit(9).owner(), 9);
        assert_eq!(p.inherit(0).owner(), 5);
    }
}
