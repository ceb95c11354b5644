//! What an image model's inputs are: how images are fetched by URL (`[fetch]`, [`FetchSpec`])
//! and how a decoded image becomes the model's tensor (`preprocess`, [`PreprocessSpec`]).
//! Both are parsed and checked here, once; the executor's `images` module does the work.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units::HumanDuration;
use super::SpecError;

/// The order of the colour channels in the tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    #[default]
    Rgb,
    Bgr,
}

/// An image to a tensor: its short side resized to `resize` (bilinear, widened when shrinking),
/// the centre `crop` x `crop` cut out, each channel `(x - mean) / scale`, laid out channels
/// first (`[3, crop, crop]`). Transparent pixels are laid over white first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub resize: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub scale: [f32; 3],
    #[serde(default)]
    pub channels: Channels,
}

impl PreprocessSpec {
    /// Checks its values; `at` is its key in errors (`models[1].preprocess`).
    pub fn validate(&self, at: &str) -> Result<(), SpecError> {
        if !(1..=4096).contains(&self.crop) {
            return Err(SpecError::new(&format!("{at}.crop"), "must be between 1 and 4096"));
        }
        if self.resize < self.crop || self.resize > 8192 {
            return Err(SpecError::new(&format!("{at}.resize"), format!("must be between {at}.crop and 8192")));
        }
        if self.scale.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(SpecError::new(&format!("{at}.scale"), "must be three finite numbers other than 0"));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(SpecError::new(&format!("{at}.mean"), "must be three finite numbers"));
        }
        Ok(())
    }

    /// Values in one image's tensor.
    pub fn tensor_len(&self) -> usize {
        3 * self.crop as usize * self.crop as usize
    }
}

/// An address block, `127.0.0.1/32` or `fd00::/8`: what `fetch.allow` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = ((prefix / 8) as usize, prefix % 8);
    a[..bytes] == b[..bytes] && (bits == 0 || (a[bytes] ^ b[bytes]) >> (8 - bits) == 0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad = || format!("`{text}` is not an address block such as \"127.0.0.1/32\" or \"fd00::/8\"");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr = canonical(IpAddr::from_str(addr.trim()).map_err(|_| bad())?);
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= most).ok_or_else(bad)?,
            None => most,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `[fetch]`: how an executor downloads the images records name by URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSpec {
    /// Downloads in flight at once, per executor.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// From the request to the last byte, per attempt.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// A larger body is refused (`too large`), by its Content-Length or as it streams.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// Further attempts after a transient failure (a connection error, a timeout, HTTP 429 or
    /// 5xx), each after twice the previous wait (from `backoff`, at most 5 s), while the first
    /// attempt is less than `retry_window` ago. An image still failing then fails its task,
    /// which is retried (and then the query stops, as for any failing task): a host that is down
    /// is an outage, not a bad record, so it never becomes a dead letter, and in upsert mode
    /// never leaves a key with its old vector. Permanent failures (HTTP 404, not an image, too
    /// large) are dead letters at once.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
    #[serde(default = "default_retry_window")]
    pub retry_window: HumanDuration,
    /// Addresses fetched from although they are loopback, link-local or private (refused
    /// otherwise: URLs come from records, which anyone who can produce to the topic writes).
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// An image of more pixels (width x height, read from its header) is refused before it is
    /// decoded: a small file can claim gigabytes once decoded (a decompression bomb).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn default_concurrency() -> usize {
    32
}
fn default_timeout() -> HumanDuration {
    HumanDuration::parse("10s").expect("a duration")
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration::parse("3s").expect("a duration")
}
fn default_max_bytes() -> u64 {
    10 << 20
}
fn default_max_redirects() -> usize {
    3
}
/// 40 megapixels (8000 x 5000); Pillow refuses 89 and more by default.
fn default_max_pixels() -> u64 {
    40_000_000
}
fn default_retries() -> u32 {
    8
}
fn default_retry_window() -> HumanDuration {
    HumanDuration::parse("30s").expect("a duration")
}
fn default_backoff() -> HumanDuration {
    HumanDuration::parse("200ms").expect("a duration")
}

impl Default for FetchSpec {
    fn default() -> FetchSpec {
        FetchSpec {
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            max_bytes: default_max_bytes(),
            max_redirects: default_max_redirects(),
            retries: default_retries(),
            backoff: default_backoff(),
            retry_window: default_retry_window(),
            allow: Vec::new(),
            max_pixels: default_max_pixels(),
        }
    }
}

impl FetchSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(1..=1024).contains(&self.concurrency) {
            return Err(SpecError::new("fetch.concurrency", "must be between 1 and 1024"));
        }
        for (key, d) in [("timeout", &self.timeout), ("connect_timeout", &self.connect_timeout)] {
            if d.get().is_zero() {
                return Err(SpecError::new(&format!("fetch.{key}"), "must be a duration above zero, such as \"10s\""));
            }
        }
        if self.max_bytes == 0 {
            return Err(SpecError::new("fetch.max_bytes", "must be at least 1"));
        }
        if !(1..=400_000_000).contains(&self.max_pixels) {
            return Err(SpecError::new("fetch.max_pixels", "must be between 1 and 400000000"));
        }
        if self.retries > 20 {
            return Err(SpecError::new("fetch.retries", "must be at most 20"));
        }
        Ok(())
    }

    /// May an image be fetched from `ip`? Public addresses may; loopback, private, link-local,
    /// unspecified, shared (100.64/10) and multicast ones only if `allow` lists them.
    pub fn may_fetch_from(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !is_internal(ip) || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// Addresses that are not the public internet's, or that reach an internal one through a
/// translation or tunnel (NAT64, 6to4, Teredo, IPv4-compatible IPv6).
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // shared address space
                || a == 0
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18.0.0/15
                || a >= 240 // reserved, 240.0.0.0/4
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded =
                |hi: u16, lo: u16| is_internal(IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32)));
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
                // NAT64: the well-known prefix 64:ff9b::/96 and the local-use 64:ff9b:1::/48
                // translate to any IPv4 address, internal ones included.
                || (s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1))
                || s[0] == 0x2002 // 6to4 (2002::/16) embeds an IPv4 address
                || (s[0] == 0x2001 && s[1] == 0) // Teredo (2001::/32) tunnels to any address
                // IPv4-compatible (::a.b.c.d, deprecated) carries an IPv4 address.
                || (s[..6] == [0; 6] && embedded(s[6], s[7]))
                || s[0] == 0x100 && s[1..4] == [0; 3] // discard-only 100::/64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let fetch = FetchSpec::default();
        for internal in
            ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1", "::1"]
        {
            assert!(!fetch.may_fetch_from(ip(internal)), "{internal}");
        }
        for internal in ["fd00::1", "fe80::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254"] {
            assert!(!fetch.may_fetch_from(ip(internal)), "{internal}");
        }
        assert!(fetch.may_fetch_from(ip("93.184.216.34")));
        assert!(fetch.may_fetch_from(ip("2606:2800:220:1::1")));
        let allowed =
            FetchSpec { allow: vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()], ..fetch };
        assert!(allowed.may_fetch_from(ip("127.0.0.1")));
        assert!(allowed.may_fetch_from(ip("::ffff:127.0.0.1")));
        assert!(allowed.may_fetch_from(ip("10.200.0.9")));
        assert!(!allowed.may_fetch_from(ip("127.0.0.2")));
        assert!(!allowed.may_fetch_from(ip("192.168.0.1")));
    }

    #[test]
    fn ssrf_filter_gaps_are_closed() {
        let fetch = FetchSpec::default();
        // Each form that reaches an internal address, or is not the public internet's.
        for internal in [
            "64:ff9b::a00:1",                       // NAT64 of 10.0.0.1
            "64:ff9b::7f00:1",                      // NAT64 of 127.0.0.1
            "64:ff9b::5db8:d822",                   // NAT64 of a public address: still a translator's
            "64:ff9b:1::a00:1",                     // local-use NAT64
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::1",                    // 6to4 of 169.254.169.254
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "::127.0.0.1",                          // IPv4-compatible
            "::10.0.0.1",
            "fec0::1",    // site-local
            "100::1",     // discard-only
            "192.0.0.8",  // IETF protocol assignments
            "198.18.0.1", // benchmarking
            "198.19.255.255",
            "240.0.0.1", // reserved
            "255.255.255.254",
        ] {
            assert!(!fetch.may_fetch_from(ip(internal)), "{internal} is internal");
        }
        for public in ["93.184.216.34", "198.20.0.1", "8.8.8.8", "2606:2800:220:1::1", "2a00:1450::1"] {
            assert!(fetch.may_fetch_from(ip(public)), "{public} is public");
        }
        assert_eq!(FetchSpec { max_pixels: 0, ..fetch }.validate().unwrap_err().key, "fetch.max_pixels");
    }

    #[test]
    fn address_blocks_parse_or_say_what_they_want() {
        let c: Cidr = "192.168.4.0/22".parse().unwrap();
        assert!(c.contains(ip("192.168.7.255")) && !c.contains(ip("192.168.8.0")));
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!("127.0.0.1".parse::<Cidr>().unwrap().to_string(), "127.0.0.1/32");
        for bad in ["127.0.0.1/33", "localhost", "10.0.0.0/x", ""] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains("address block"), "{bad}: {e}");
        }
    }

    #[test]
    fn preprocess_values_are_checked() {
        let p = PreprocessSpec { resize: 256, crop: 224, mean: [127.0; 3], scale: [128.0; 3], channels: Channels::Rgb };
        assert!(p.validate("m").is_ok());
        assert_eq!(p.tensor_len(), 3 * 224 * 224);
        assert_eq!(PreprocessSpec { resize: 200, ..p.clone() }.validate("m").unwrap_err().key, "m.resize");
        assert_eq!(PreprocessSpec { scale: [1.0, 0.0, 1.0], ..p.clone() }.validate("m").unwrap_err().key, "m.scale");
        assert_eq!(PreprocessSpec { crop: 0, ..p }.validate("m").unwrap_err().key, "m.crop");
    }
}
