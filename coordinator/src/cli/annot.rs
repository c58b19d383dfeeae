//! The annotation inputs a user downloads (the flags `serve`, `diversions` and `traces`
//! share, [`AnnotationArgs`]), loaded into an [`Annotator`] and a [`Gazetteer`]; and the
//! annotation fields a hop gets in `traces --json`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tracemesh::annotate::{self, Annotator};
use tracemesh::detect::Tables;
use tracemesh::geo::Gazetteer;

use super::args::AnnotationArgs;

impl AnnotationArgs {
    pub fn has_origins(&self) -> bool {
        !self.pfx2as.is_empty() || !self.mrt.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        !self.has_origins()
            && self.asnames.is_none()
            && self.as2org.is_none()
            && self.peeringdb.is_none()
    }

    /// Reads every file; any unreadable one is an error naming it (a damaged MRT dump
    /// only warns, keeping the prefixes read before the damage).
    pub fn load(&self) -> anyhow::Result<Tables> {
        let mut annot = Annotator::new();
        let mut gazetteer = Gazetteer::builtin();
        for p in &self.pfx2as {
            let n = annot
                .load_prefix_file(p)
                .with_context(|| format!("loading prefix table {}", p.display()))?;
            tracing::info!(file = %p.display(), prefixes = n, "loaded prefix table");
        }
        for p in &self.mrt {
            let load = annotate::load_mrt_file(p);
            if load.entries.is_empty()
                && let Some(e) = load.error
            {
                return Err(e).with_context(|| format!("loading MRT dump {}", p.display()));
            }
            if let Some(e) = &load.error {
                tracing::warn!(file = %p.display(), records = load.records, error = %e, "MRT dump damaged; keeping what was read");
            }
            tracing::info!(file = %p.display(), prefixes = load.entries.len(), "loaded MRT dump");
            annot.extend_prefixes(load.entries);
        }
        if let Some(p) = &self.as2org {
            let infos = annotate::load_as2org(p)
                .with_context(|| format!("loading as2org {}", p.display()))?;
            annot.extend_as_info(infos);
        }
        // asnames after as2org: its names are the ones operators recognise.
        if let Some(p) = &self.asnames {
            annot
                .load_asnames(p)
                .with_context(|| format!("loading AS names {}", p.display()))?;
        }
        if let Some(dir) = &self.peeringdb {
            let (ix, ixlan, ixpfx) = peeringdb_files(dir)?;
            let lans = annotate::load_peeringdb(&ix, &ixlan, &ixpfx)
                .with_context(|| format!("loading PeeringDB from {}", dir.display()))?;
            for lan in &lans {
                annot.add_ixp_lan(lan);
            }
            let cities = annotate::exchange_cities(&lans);
            gazetteer.add_exchange_cities(cities.iter().map(|(c, cc)| (c.as_str(), cc.as_str())));
            tracing::info!(dir = %dir.display(), lans = lans.len(), "loaded PeeringDB");
            // Facilities (optional `*fac.json`): where networks meet, for the metro prior.
            if let Some(fac) = peeringdb_facilities_file(dir)? {
                let facs = annotate::load_facilities(&fac)
                    .with_context(|| format!("loading PeeringDB facilities {}", fac.display()))?;
                gazetteer.add_facilities(facs.iter().filter_map(|f| {
                    let p = tracemesh::geo::GeoPoint::new(f.latitude?, f.longitude?);
                    p.is_valid()
                        .then_some((f.city.as_deref()?, f.country.as_deref()?, p))
                }));
            }
        }
        Ok(Tables { annot, gazetteer })
    }
}

/// The dump's facilities file (`fac.json`, `*-fac.json`), when there is one.
fn peeringdb_facilities_file(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read PeeringDB directory {}", dir.display()))?;
    Ok(entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.is_file()
            && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == "fac.json" || n.ends_with("-fac.json") || n.ends_with("_fac.json")
            })
    }))
}

/// The ix, ixlan and ixpfx files of a PeeringDB dump directory.
fn peeringdb_files(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read PeeringDB directory {}", dir.display()))?;
    let names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let pick = |suffix: &str| -> anyhow::Result<PathBuf> {
        let hits: Vec<&PathBuf> = names
            .iter()
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n == suffix
                        || n.ends_with(&format!("-{suffix}"))
                        || n.ends_with(&format!("_{suffix}"))
                })
            })
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no *{suffix} in PeeringDB directory {}", dir.display()),
            _ => bail!("several *{suffix} in PeeringDB directory {}", dir.display()),
        }
    };
    Ok((pick("ix.json")?, pick("ixlan.json")?, pick("ixpfx.json")?))
}

/// Adds `asn`, `as_name`, `as_country` and `ixp` to a hop's JSON (from `json::hop`).
pub fn annotate_hop(annot: &Annotator, hop: &mut Value) {
    let Some(addr) = hop
        .get("addr")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
    else {
        return;
    };
    let a = annot.annotate(addr);
    hop["asn"] = json!(a.asn);
    hop["as_name"] = json!(a.as_name);
    hop["as_country"] = json!(a.country);
    hop["ixp"] = json!(a.ixp);
    // Which rule gave the hop its AS: the prefix table (`origin`), or none for an
    // exchange LAN or unannounced address. Border reassignments (a router answering from
    // a neighbour-numbered port) are the detector's, stated per record in `diversions`.
    hop["asn_rule"] = json!(if a.ixp.is_some() {
        "exchange-lan"
    } else if a.asn.is_some() {
        "origin"
    } else {
        "unannounced"
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeringdb_directory_needs_exactly_one_of_each() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["2016-ix.json", "2016-ixlan.json", "2016-ixpfx.json"] {
            std::fs::write(dir.path().join(n), "{}").unwrap();
        }
        let (ix, ixlan, ixpfx) = peeringdb_files(dir.path()).unwrap();
        assert!(ix.ends_with("2016-ix.json"));
        assert!(ixlan.ends_with("2016-ixlan.json"));
        assert!(ixpfx.ends_with("2016-ixpfx.json"));
        std::fs::write(dir.path().join("2017-ix.json"), "{}").unwrap();
        let e = peeringdb_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("several *ix.json"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = peeringdb_files(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no *ix.json"), "{e}");
    }

    #[test]
    fn hops_get_as_country_and_exchange() {
        let mut annot = Annotator::new();
        annot.insert_prefix(
            "192.0.2.0/24".parse().unwrap(),
            annotate::parse_origin("64500").unwrap(),
        );
        annot.set_as_info(64500, annotate::split_name_country("EXAMPLE-NET, CA"));
        let mut hop = json!({"ttl": 3, "addr": "192.0.2.7"});
        annotate_hop(&annot, &mut hop);
        assert_eq!(hop["asn"], json!(64500));
        assert_eq!(hop["as_name"], json!("EXAMPLE-NET"));
        assert_eq!(hop["as_country"], json!("CA"));
        assert_eq!(hop["ixp"], Value::Null);
        let mut silent = json!({"ttl": 4, "addr": null});
        annotate_hop(&annot, &mut silent);
        assert!(silent.get("asn").is_none());
    }
}
