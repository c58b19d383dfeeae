//! AS names and registration countries.

use std::collections::HashMap;
use std::path::Path;

use super::error::{AnnotateError, display_name};
use super::input::read_all;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsInfo {
    pub name: String,
    /// ISO 3166 alpha-2, upper case, when the source gives one.
    pub country: Option<String>,
}

/// Splits pyasn's `"NAME - Org, CC"` into name and country: the country is a trailing
/// `, XX` of two ASCII letters; anything else stays part of the name.
pub fn split_name_country(value: &str) -> AsInfo {
    let value = value.trim();
    if let Some((name, cc)) = value.rsplit_once(',') {
        let cc = cc.trim();
        if cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_alphabetic()) {
            return AsInfo {
                name: name.trim().to_owned(),
                country: Some(cc.to_ascii_uppercase()),
            };
        }
    }
    AsInfo {
        name: value.to_owned(),
        country: None,
    }
}

/// Parses an asnames JSON object `{"812": "ROGERS-CABLE - ..., CA", ...}`.
pub fn parse_asnames(
    bytes: &[u8],
    source_name: &str,
) -> Result<HashMap<u32, AsInfo>, AnnotateError> {
    let map: HashMap<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| AnnotateError::Json {
            source_name: source_name.to_owned(),
            message: format!("expected an object of AS number -> name: {e}"),
        })?;
    let mut out = HashMap::with_capacity(map.len());
    for (k, v) in map {
        let asn: u32 =
            k.trim()
                .trim_start_matches("AS")
                .parse()
                .map_err(|_| AnnotateError::Json {
                    source_name: source_name.to_owned(),
                    message: format!("key {k:?} is not an AS number"),
                })?;
        // pyasn uses null for ASes without a registry entry.
        if let Some(s) = v.as_str() {
            out.insert(asn, split_name_country(s));
        }
    }
    Ok(out)
}

pub fn load_asnames(path: &Path) -> Result<HashMap<u32, AsInfo>, AnnotateError> {
    let bytes = read_all(path)?;
    let out = parse_asnames(&bytes, &display_name(path))?;
    tracing::info!(file = %path.display(), ases = out.len(), "loaded AS names");
    Ok(out)
}

/// Parses CAIDA's as2org text format: two sections introduced by `# format:` lines,
/// ASes (`aut|changed|aut_name|org_id|opaque_id|source`) and organisations
/// (`org_id|changed|org_name|country|source`), joined on `org_id`. The field order is
/// taken from the `# format:` lines themselves, so older and newer files both work.
pub fn parse_as2org(text: &str, source_name: &str) -> Result<HashMap<u32, AsInfo>, AnnotateError> {
    let mut fields: Vec<String> = Vec::new();
    let mut ases: Vec<(u32, String, String)> = Vec::new();
    let mut orgs: HashMap<String, (String, Option<String>)> = HashMap::new();
    let mut offset = 0u64;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += line.len() as u64;
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(fmt) = line.strip_prefix("# format:") {
            fields = fmt.split('|').map(|f| f.trim().to_owned()).collect();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let err = |message: String| AnnotateError::Parse {
            source_name: source_name.to_owned(),
            line: i as u64 + 1,
            byte_offset: start,
            message,
        };
        let values: Vec<&str> = line.split('|').collect();
        let get = |name: &str| {
            fields
                .iter()
                .position(|f| f == name)
                .and_then(|p| values.get(p))
                .map(|v| v.trim())
        };
        if fields.first().map(String::as_str) == Some("aut") {
            let asn = get("aut")
                .unwrap_or("")
                .parse::<u32>()
                .map_err(|_| err(format!("bad AS number in {line:?}")))?;
            let org = get("org_id").ok_or_else(|| err("missing org_id".to_owned()))?;
            ases.push((
                asn,
                get("aut_name").unwrap_or("").to_owned(),
                org.to_owned(),
            ));
        } else if fields.first().map(String::as_str) == Some("org_id") {
            let org = get("org_id").unwrap_or("").to_owned();
            let name = get("org_name").unwrap_or("").to_owned();
            let cc = get("country")
                .filter(|c| c.len() == 2)
                .map(str::to_ascii_uppercase);
            orgs.insert(org, (name, cc));
        } else {
            return Err(err("data line before any `# format:` line".to_owned()));
        }
    }
    Ok(ases
        .into_iter()
        .map(|(asn, aut_name, org)| {
            let (org_name, country) = orgs.get(&org).cloned().unwrap_or_default();
            let name = match (aut_name.is_empty(), org_name.is_empty()) {
                (false, false) => format!("{aut_name} - {org_name}"),
                (false, true) => aut_name,
                _ => org_name,
            };
            (asn, AsInfo { name, country })
        })
        .collect())
}

pub fn load_as2org(path: &Path) -> Result<HashMap<u32, AsInfo>, AnnotateError> {
    let bytes = read_all(path)?;
    let name = display_name(path);
    let text = std::str::from_utf8(&bytes).map_err(|e| AnnotateError::Parse {
        source_name: name.clone(),
        line: 0,
        byte_offset: e.valid_up_to() as u64,
        message: "not UTF-8".to_owned(),
    })?;
    parse_as2org(text, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as2org_joins_ases_and_orgs() {
        let text = "# name: AS Org\n# format:aut|changed|aut_name|org_id|opaque_id|source\n\
            4134|20120224|CHINANET-BACKBONE|CT-APNIC|x|APNIC\n812|20120224|ROGERS-CABLE|RC-ARIN|x|ARIN\n\
            # format:org_id|changed|org_name|country|source\n\
            CT-APNIC|20120130|China Telecom|CN|APNIC\nRC-ARIN|20120130|Rogers|ca|ARIN\n";
        let m = parse_as2org(text, "t").unwrap();
        assert_eq!(m[&4134].name, "CHINANET-BACKBONE - China Telecom");
        assert_eq!(m[&4134].country.as_deref(), Some("CN"));
        assert_eq!(m[&812].country.as_deref(), Some("CA"));
        let e = parse_as2org("1|x\n", "t").unwrap_err().to_string();
        assert!(e.contains("t:1 (byte 0)"), "{e}");
        let e = parse_as2org("# format:aut|changed\nx|1\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t:2 (byte 21)"), "{e}");
    }
}
