//! IXP peering LANs from PeeringDB API dumps (`ix`, `ixlan`, `ixpfx` objects).
//! A hop on an IXP LAN is an interface of some member's router, but its address says
//! nothing about which member: the detector must not attribute it to an AS by prefix.

use std::collections::HashMap;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use super::error::{AnnotateError, display_name};
use super::input::read_all;

#[derive(Debug, Clone, PartialEq)]
pub struct IxpLan {
    pub prefix: IpNet,
    pub ix_name: String,
    pub country: Option<String>,
    pub city: Option<String>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: Vec<T>,
}

#[derive(Deserialize)]
struct Ix {
    id: u64,
    name: String,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    city: Option<String>,
}

/// A PeeringDB facility (`fac` object): a carrier hotel or data centre where networks
/// meet, with its position.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Facility {
    pub name: String,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
}

/// Parses a PeeringDB `fac` dump; facilities without a position are kept (the caller
/// skips them).
pub fn parse_facilities(bytes: &[u8], name: &str) -> Result<Vec<Facility>, AnnotateError> {
    parse::<Facility>(bytes, name)
}

pub fn load_facilities(path: &Path) -> Result<Vec<Facility>, AnnotateError> {
    let bytes = read_all(path)?;
    let out = parse_facilities(&bytes, &display_name(path))?;
    tracing::info!(facilities = out.len(), "loaded PeeringDB facilities");
    Ok(out)
}

#[derive(Deserialize)]
struct IxLan {
    id: u64,
    ix_id: u64,
}

#[derive(Deserialize)]
struct IxPfx {
    ixlan_id: u64,
    prefix: String,
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], name: &str) -> Result<Vec<T>, AnnotateError> {
    serde_json::from_slice::<Envelope<T>>(bytes)
        .map(|e| e.data)
        .map_err(|e| AnnotateError::Json {
            source_name: name.to_owned(),
            message: format!("not a PeeringDB dump of the expected object: {e}"),
        })
}

/// Joins the three dumps. Prefixes whose LAN or exchange is missing are skipped (a
/// snapshot is not referentially consistent); a malformed prefix string is an error.
pub fn parse_peeringdb(
    ix: (&[u8], &str),
    ixlan: (&[u8], &str),
    ixpfx: (&[u8], &str),
) -> Result<Vec<IxpLan>, AnnotateError> {
    let ixs: HashMap<u64, Ix> = parse::<Ix>(ix.0, ix.1)?
        .into_iter()
        .map(|i| (i.id, i))
        .collect();
    let lans: HashMap<u64, u64> = parse::<IxLan>(ixlan.0, ixlan.1)?
        .into_iter()
        .map(|l| (l.id, l.ix_id))
        .collect();
    let mut out = Vec::new();
    for p in parse::<IxPfx>(ixpfx.0, ixpfx.1)? {
        let prefix: IpNet = p.prefix.trim().parse().map_err(|_| AnnotateError::Json {
            source_name: ixpfx.1.to_owned(),
            message: format!("bad prefix {:?} for ixlan {}", p.prefix, p.ixlan_id),
        })?;
        let Some(ix) = lans.get(&p.ixlan_id).and_then(|id| ixs.get(id)) else {
            tracing::debug!(prefix = %prefix, ixlan = p.ixlan_id, "IXP prefix without exchange");
            continue;
        };
        out.push(IxpLan {
            prefix: prefix.trunc(),
            ix_name: ix.name.clone(),
            country: ix.country.clone().filter(|c| !c.is_empty()),
            city: ix.city.clone().filter(|c| !c.is_empty()),
        });
    }
    Ok(out)
}

/// One `(city, country)` per exchange (an exchange has several LAN prefixes), for
/// [`crate::geo::Gazetteer::add_exchange_cities`].
pub fn exchange_cities(lans: &[IxpLan]) -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeMap::new();
    for l in lans {
        if let (Some(city), Some(cc)) = (&l.city, &l.country) {
            seen.entry(l.ix_name.clone())
                .or_insert_with(|| (city.clone(), cc.clone()));
        }
    }
    seen.into_values().collect()
}

pub fn load_peeringdb(ix: &Path, ixlan: &Path, ixpfx: &Path) -> Result<Vec<IxpLan>, AnnotateError> {
    let (a, b, c) = (read_all(ix)?, read_all(ixlan)?, read_all(ixpfx)?);
    let out = parse_peeringdb(
        (&a, &display_name(ix)),
        (&b, &display_name(ixlan)),
        (&c, &display_name(ixpfx)),
    )?;
    tracing::info!(lans = out.len(), "loaded PeeringDB IXP LANs");
    Ok(out)
}
