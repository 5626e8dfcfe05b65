//! Dotted version numbers as tools and kernels print them: `nftables v1.0.6 (Lester
//! Gooch #5)`, kernel releases like `6.1.0-18-amd64` or `5.15.0-91-generic`.

use std::fmt;

/// A `major.minor.patch` version; missing parts are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses the leading `N[.N[.N]]` of `s`; the rest (`-18-amd64`, `+`, `rc1`) is ignored.
    pub fn parse_prefix(s: &str) -> Option<Version> {
        let mut parts = [0u32; 3];
        let mut rest = s;
        for (i, part) in parts.iter_mut().enumerate() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                if i == 0 {
                    return None;
                }
                break;
            }
            *part = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            match rest.strip_prefix('.') {
                Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => rest = r,
                _ => break,
            }
        }
        Some(Version::new(parts[0], parts[1], parts[2]))
    }

    /// A kernel release (`uname -r`), e.g. `6.18.44-fc-v657` → 6.18.44.
    pub fn from_kernel_release(release: &str) -> Option<Version> {
        Version::parse_prefix(release.trim())
    }

    /// The version in `nft --version` output, e.g. `nftables v1.0.6 (Lester Gooch #5)`.
    pub fn from_nft_version(output: &str) -> Option<Version> {
        output
            .split_whitespace()
            .filter_map(|w| w.strip_prefix('v'))
            .find_map(Version::parse_prefix)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_versions() {
        assert_eq!(
            Version::from_nft_version("nftables v1.0.6 (Lester Gooch #5)\n"),
            Some(Version::new(1, 0, 6))
        );
        assert_eq!(
            Version::from_nft_version("nftables v0.9.8 (E.D.S.)"),
            Some(Version::new(0, 9, 8))
        );
        assert_eq!(
            Version::from_nft_version("nftables v1.1 (Commodore Bullmoose)"),
            Some(Version::new(1, 1, 0))
        );
        assert_eq!(Version::from_nft_version("garbage"), None);
        assert!(Version::new(1, 0, 6) >= Version::new(1, 0, 1));
        assert!(Version::new(0, 9, 9) < Version::new(1, 0, 1));
    }

    #[test]
    fn parses_kernel_releases() {
        let cases = [
            ("6.18.44-fc-v657", Version::new(6, 18, 44)),
            ("6.1.0-18-amd64\n", Version::new(6, 1, 0)),
            ("5.15.0-91-generic", Version::new(5, 15, 0)),
            ("5.13", Version::new(5, 13, 0)),
            ("4.19.0+", Version::new(4, 19, 0)),
            ("6.8.0-rc1", Version::new(6, 8, 0)),
            ("5.10.0.1-x", Version::new(5, 10, 0)),
        ];
        for (release, want) in cases {
            assert_eq!(
                Version::from_kernel_release(release),
                Some(want),
                "{release}"
            );
        }
        assert_eq!(Version::from_kernel_release("linux"), None);
        assert!(Version::new(5, 12, 19) < Version::new(5, 13, 0));
    }
}
