//! Platform selection in an image index: os, architecture and variant, with
//! the OCI normalisations (arm64 without a variant means v8).

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform { os: "linux".into(), architecture: arch.into(), variant: None }
    }

    fn normalised_variant(arch: &str, variant: Option<&str>) -> Option<String> {
        match (arch, variant) {
            ("arm64", None | Some("")) => Some("v8".into()),
            (_, Some("")) | (_, None) => None,
            (_, Some(v)) => Some(v.to_owned()),
        }
    }

    /// The first manifest in `index` for this platform.
    pub fn select<'a>(&self, index: &'a ImageIndex) -> Option<&'a Descriptor> {
        let want_variant = Self::normalised_variant(&self.architecture, self.variant.as_deref());
        index.manifests().iter().find(|d| {
            let Some(p) = d.platform() else { return false };
            let arch = p.architecture().to_string();
            let variant = Self::normalised_variant(&arch, p.variant().as_deref());
            p.os().to_string() == self.os
                && arch == self.architecture
                && (self.variant.is_none() && self.architecture != "arm64" || variant == want_variant)
        })
    }

    /// "os/arch[/variant]" of every entry, for error messages.
    pub fn list(index: &ImageIndex) -> String {
        let all: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|d| d.platform().as_ref())
            .map(|p| match p.variant() {
                Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                None => format!("{}/{}", p.os(), p.architecture()),
            })
            .collect();
        if all.is_empty() {
            "none".into()
        } else {
            all.join(", ")
        }
    }
}

impl FromStr for Platform {
    type Err = String;

    /// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform { os: (*os).into(), architecture: (*arch).into(), variant: None })
            }
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(Platform { os: (*os).into(), architecture: (*arch).into(), variant: Some((*v).into()) })
            }
            _ => Err(format!("platform {s:?} is not os/arch[/variant]")),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.architecture),
            None => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ImageIndex {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
                 "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
                 "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
                 "digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
                 "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        }))
        .unwrap()
    }

    fn pick(p: &str) -> Option<String> {
        p.parse::<Platform>().unwrap().select(&index()).map(|d| d.digest().to_string()[7..8].to_owned())
    }

    #[test]
    fn selects_by_os_arch_and_variant() {
        assert_eq!(pick("linux/amd64").as_deref(), Some("3"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("1"));
        assert_eq!(pick("linux/arm/v6"), None);
        assert_eq!(pick("linux/arm64/v8").as_deref(), Some("2"), "arm64 without variant is v8");
        assert_eq!(pick("linux/arm64").as_deref(), Some("2"));
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn parse_errors_and_listing() {
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert_eq!(Platform::list(&index()), "linux/arm/v7, linux/arm64, linux/amd64");
    }
}
