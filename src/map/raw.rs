//! The map as written: serde's view of the TOML, every value with its span.

use crate::short::Short;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    #[serde(default)]
    pub settings: Option<Spanned<RawSettings>>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub table: Option<Spanned<String>>,
    pub masquerade: Option<bool>,
    pub accounting: Option<bool>,
    pub forward_accept: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub listen: Spanned<ListenText>,
    pub protocol: Option<Spanned<String>>,
    pub targets: Spanned<RawTargets>,
    pub masquerade: Option<bool>,
    pub localhost: Option<bool>,
}

/// `listen` as written: `"8080"`, `8080`, `"10.0.0.1:80"` or `"[fd00::1]:80"`.
#[derive(Debug, Clone)]
pub struct ListenText(pub Short);

impl<'de> Deserialize<'de> for ListenText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ListenText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port (\"8080\") or ADDRESS:PORT (\"10.0.0.1:80\", \"[fd00::1]:80\")")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenText, E> {
                Ok(ListenText(Short::new(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ListenText, E> {
                Ok(ListenText(Short::new(&v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A service's targets as written: inline when there is one (see `plan::Targets`).
pub type RawTargets = smallvec::SmallVec<[Spanned<RawTarget>; 1]>;

/// A target: `"HOST:PORT"` or `{ address = "HOST:PORT", weight = N }`.
#[derive(Debug, Clone)]
pub struct RawTarget {
    pub address: Short,
    pub weight: Option<i64>,
}

impl<'de> Deserialize<'de> for RawTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTarget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"HOST:PORT\" or { address = \"HOST:PORT\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTarget, E> {
                Ok(RawTarget {
                    address: Short::new(v),
                    weight: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawTarget, A::Error> {
                let (mut address, mut weight) = (None, None);
                while let Some(key) = m.next_key::<String>()? {
                    match key.as_str() {
                        "address" => address = Some(m.next_value::<String>()?),
                        "weight" => weight = Some(m.next_value::<i64>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["address", "weight"]));
                        }
                    }
                }
                let address = address.ok_or_else(|| de::Error::missing_field("address"))?;
                Ok(RawTarget {
                    address: Short::new(&address),
                    weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}
