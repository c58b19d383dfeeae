//! The human view of a [`DiversionReport`]: incidents first (what an operator acts on),
//! then for each affected vantage its normal and diverted paths side by side, aligned by
//! TTL, with the hand-off and the ingress marked and the evidence spelled out. Pure:
//! takes the report and the annotator (for AS names), returns text.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use tracemesh_proto::time::{Precision, format_rfc3339};

use super::{DiversionRecord, DiversionReport, Incident, PathHop};
use crate::annotate::Annotator;
use crate::geo::rtt_radius_km;

fn utc(unix_s: f64) -> String {
    format_rfc3339(unix_s, Precision::Seconds)
}

pub(super) fn as_label(annot: &Annotator, asn: u32) -> String {
    match annot.as_info(asn) {
        Some(i) if !i.name.is_empty() => match &i.country {
            Some(cc) => format!("AS{asn} {} ({cc})", i.name),
            None => format!("AS{asn} {}", i.name),
        },
        _ => format!("AS{asn}"),
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.2} ms")).unwrap_or_default()
}

/// One path cell: address (or `*` for silence), AS, RTT.
fn cell(h: Option<&PathHop>, addr_w: usize) -> String {
    let Some(h) = h else {
        return String::new();
    };
    let addr = h.addr.map_or_else(|| "*".to_owned(), |a| a.to_string());
    let asn = h
        .asn
        .map(|a| format!("AS{a}"))
        .unwrap_or_else(|| "-".into());
    let flag = if h.adversary { "!" } else { " " };
    format!("{flag}{addr:<addr_w$} {asn:<8} {:>10}", ms(h.rtt_ms))
}

/// The side-by-side drawing of one record's paths.
fn draw_paths(out: &mut String, r: &DiversionRecord) {
    let ev = &r.evidence;
    let addr_w = ev
        .normal_path
        .iter()
        .chain(&ev.diverted_path)
        .filter_map(|h| h.addr)
        .map(|a| a.to_string().len())
        .max()
        .unwrap_or(1)
        .max(11);
    let cell_w = addr_w + 21;
    let ttls: BTreeSet<u8> = ev
        .normal_path
        .iter()
        .chain(&ev.diverted_path)
        .map(|h| h.ttl)
        .collect();
    let _ = writeln!(
        out,
        "      TTL  {:<cell_w$}  {:<cell_w$}",
        " normal path", " diverted path"
    );
    let mut past_handoff = false;
    // A diverted path may loop back through the ingress; it is marked where it entered.
    let mut ingress_seen = false;
    for ttl in ttls {
        let n = ev.normal_path.iter().find(|h| h.ttl == ttl);
        let d = ev.diverted_path.iter().find(|h| h.ttl == ttl);
        let mut note = String::new();
        if r.handoff.ttl == Some(ttl) {
            note.push_str("<- hand-off: leaves the normal path");
            past_handoff = true;
        } else if !ingress_seen && d.and_then(|h| h.addr) == Some(r.ingress.addr) {
            note.push_str("<- ingress: first hop in the adversary's network");
            if r.ingress.owner_rule == "neighbour-numbered-port" {
                note.push_str(" (its port on the border link is numbered by the hand-off's AS)");
            }
            ingress_seen = true;
        } else if past_handoff && d.is_some_and(|h| h.adversary) {
            note.push_str("   (adversary)");
        }
        let _ = writeln!(
            out,
            "      {ttl:>3}  {:<cell_w$}  {:<cell_w$}  {note}",
            cell(n, addr_w),
            cell(d, addr_w)
        );
    }
    let dst = |rtt: Option<f64>| format!(" {:<addr_w$} {:<8} {:>10}", r.target, "", ms(rtt));
    let _ = writeln!(
        out,
        "      dst  {:<cell_w$}  {:<cell_w$}",
        dst(ev.normal_rtt_dst_ms),
        dst(ev.rtt_dst_ms)
    );
}

fn evidence_lines(out: &mut String, r: &DiversionRecord) {
    let ev = &r.evidence;
    let path = |p: &[u32]| {
        p.iter()
            .map(|a| format!("AS{a}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        out,
        "      AS path: {} (normal: {})",
        path(&ev.as_path),
        if ev.normal_as_path.is_empty() {
            "not learned yet".to_owned()
        } else {
            path(&ev.normal_as_path)
        }
    );
    if let (Some(d), Some(n), Some(x)) = (ev.rtt_dst_ms, ev.normal_rtt_dst_ms, ev.detour_ms) {
        let _ = writeln!(
            out,
            "      detour: the destination answers in {d:.1} ms instead of {n:.1} ms ({x:+.1} ms)"
        );
    }
    if let Some(rtt) = ev.rtt_ingress_ms {
        let km = rtt_radius_km(rtt);
        let verdict = match ev.ingress_abroad {
            Some(true) => ", closer than the adversary's home country: a point of presence abroad",
            Some(false) => ", far enough to be in the adversary's home country",
            None => "",
        };
        let _ = writeln!(
            out,
            "      light speed: the ingress answered in {rtt:.2} ms, so it lies within {km:.0} km of the vantage{verdict}"
        );
    }
    if let Some(j) = ev.max_rtt_jump_ms
        && j >= 5.0
    {
        let _ = writeln!(
            out,
            "      after the ingress the RTT jumps by up to {j:.1} ms: a long-haul stretch of up to {:.0} km inside the adversary's network",
            rtt_radius_km(j)
        );
    }
}

fn incident_header(
    out: &mut String,
    inc: &Incident,
    records: &[&DiversionRecord],
    annot: &Annotator,
) {
    let first = records.first();
    let _ = writeln!(
        out,
        "Incident {}: {} takes traffic in at {}",
        inc.id,
        as_label(annot, inc.adversary_asn),
        inc.ingress
    );
    if !inc.corroborated {
        let _ = writeln!(
            out,
            "  not corroborated: seen by one vantage only ({})",
            inc.vantages.join(", ")
        );
    }
    if let Some(r) = first {
        let place = match (&r.ingress.city, &r.ingress.city_country) {
            (Some(c), Some(cc)) => format!("near {c}, {cc}"),
            (Some(c), None) => format!("near {c}"),
            _ => "position unknown".to_owned(),
        };
        let loc = match (r.ingress.loc, r.ingress.radius_km) {
            (Some(p), Some(rad)) => format!(
                " at ({:.2}, {:.2}) ±{rad:.0} km from {} RTT constraints",
                p.lat, p.lon, r.ingress.constraints
            ),
            _ => String::new(),
        };
        let how = if r.ingress.inferred {
            " (silent on these paths; named from other paths)"
        } else if r.ingress.owner_rule == "neighbour-numbered-port" {
            " (answers from a port numbered by its neighbour; always followed by the adversary's own addresses)"
        } else {
            ""
        };
        let ixp = r
            .ingress
            .ixp
            .as_ref()
            .map(|x| format!(", on the {x} exchange LAN"))
            .unwrap_or_default();
        let _ = writeln!(out, "  ingress PoP: {place}{loc}{ixp}{how}");
    }
    let active = records.iter().any(|r| r.active);
    let _ = writeln!(
        out,
        "  seen {} .. {}{}",
        utc(inc.first_seen),
        utc(inc.last_seen),
        if active { " (still active)" } else { "" }
    );
    let _ = writeln!(
        out,
        "  {} vantage(s): {}",
        inc.vantages.len(),
        join(&inc.vantages)
    );
    let _ = writeln!(
        out,
        "  {} target(s): {}",
        inc.targets.len(),
        join(&inc.targets)
    );
    if !inc.handoffs.is_empty() {
        let _ = writeln!(out, "  hand-off(s): {}", join(&inc.handoffs));
    }
}

fn record_line(r: &DiversionRecord) -> String {
    let handoff = match r.handoff.addr {
        Some(a) => format!("hand-off {a} ({})", r.handoff.method),
        None => "hand-off unknown".to_owned(),
    };
    format!(
        "{} -> {}: rounds {}..{} ({} diverted){}, {handoff}",
        r.vantage,
        r.target,
        r.first_round,
        r.last_round,
        r.rounds,
        if r.active { ", active" } else { "" }
    )
}

/// Renders the report for a terminal: every incident, one drawing per (incident,
/// vantage) and one line for each further target of that vantage.
pub fn render_text(report: &DiversionReport, annot: &Annotator, traces: usize) -> String {
    let mut out = String::new();
    if report.diversions.is_empty() {
        let _ = writeln!(out, "no diversions in {traces} traces");
        return out;
    }
    let _ = writeln!(
        out,
        "{} diverted (vantage, target) episode(s) in {} incident(s), from {traces} traces",
        report.diversions.len(),
        report.incidents.len()
    );
    for inc in &report.incidents {
        let records: Vec<&DiversionRecord> = report
            .diversions
            .iter()
            .filter(|r| r.incident == inc.id)
            .collect();
        out.push('\n');
        incident_header(&mut out, inc, &records, annot);
        let mut drawn: BTreeSet<&str> = BTreeSet::new();
        for r in &records {
            let _ = writeln!(out, "\n    {}", record_line(r));
            if drawn.insert(r.vantage.as_str()) {
                draw_paths(&mut out, r);
                evidence_lines(&mut out, r);
            }
        }
    }
    let _ = writeln!(
        out,
        "\n'!' marks a hop in an adversary's network; '*' a hop that did not answer."
    );
    // Padding leaves trailing blanks on short rows.
    let mut tidy = String::with_capacity(out.len());
    for line in out.lines() {
        tidy.push_str(line.trim_end());
        tidy.push('\n');
    }
    tidy
}
