//! The HTML report: one self-contained file that opens offline. The map view
//! ([`MapView`]) goes in as JSON beside the vendored map library and world map
//! (`assets/report/`, with their licences), and the page's own script draws it. Pure:
//! view in, text out.

use thiserror::Error;

use crate::detect::MapView;

const D3_ARRAY: &str = include_str!("../assets/report/d3-array.min.js");
const D3_GEO: &str = include_str!("../assets/report/d3-geo.min.js");
const TOPOJSON: &str = include_str!("../assets/report/topojson-client.min.js");
const WORLD: &str = include_str!("../assets/report/countries-110m.json");
const SCRIPT: &str = include_str!("../assets/report/report.js");
const STYLE: &str = include_str!("../assets/report/report.css");
const LIVE: &str = include_str!("../assets/report/live.js");

/// The vendored files' licences, verbatim: they travel inside every report.
const LICENCES: [(&str, &str); 4] = [
    (
        "d3-array 3.2.5",
        include_str!("../assets/report/LICENSE.d3-array"),
    ),
    (
        "d3-geo 3.1.2",
        include_str!("../assets/report/LICENSE.d3-geo"),
    ),
    (
        "topojson-client 3.1.0",
        include_str!("../assets/report/LICENSE.topojson-client"),
    ),
    (
        "world-atlas 2.0.2 (map data: Natural Earth, public domain)",
        include_str!("../assets/report/LICENSE.world-atlas"),
    ),
];

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot encode the report's data: {0}")]
    Encode(#[from] serde_json::Error),
}

/// JSON that may sit inside a `<script>` element: `<` only occurs inside JSON strings,
/// where `\u003c` means the same, so no `</script>` or `<!--` can end the element.
fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
}

/// Text for an HTML element's content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole report page.
pub fn render_html(view: &MapView<'_>, title: &str) -> Result<String, ReportError> {
    render_page(view, title, None)
}

/// The page of the live view (`serve --http`): the report as of live detection's
/// `generation`, reloading itself when the server announces a newer one.
pub fn render_live_html(
    view: &MapView<'_>,
    title: &str,
    generation: u64,
) -> Result<String, ReportError> {
    render_page(view, title, Some(generation))
}

fn render_page(view: &MapView<'_>, title: &str, live: Option<u64>) -> Result<String, ReportError> {
    let data = script_json(&serde_json::to_string(view)?);
    let world = script_json(WORLD);
    let title = escape(title);
    let mut out = String::with_capacity(data.len() + 300_000);
    // The policy forbids every fetch, frame, font and image from anywhere: the page can
    // only run its inline scripts and styles.
    // The live page may also talk to the server it came from (its event stream).
    let connect = if live.is_some() {
        "; connect-src 'self'"
    } else {
        ""
    };
    out.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; ",
        "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
    ));
    out.push_str(connect);
    out.push_str(concat!(
        "\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<meta name=\"generator\" content=\"tracemesh report\">\n"
    ));
    out.push_str(&format!(
        "<title>{title}</title>\n<style>\n{STYLE}</style>\n"
    ));
    out.push_str("</head>\n<body>\n");
    out.push_str(&format!("<h1>{title}</h1>\n"));
    if live.is_some() {
        out.push_str("<p id=\"live-status\" class=\"muted\">live: connecting</p>\n");
    }
    out.push_str(concat!(
        "<p id=\"summary\" class=\"summary\"></p>\n",
        "<div class=\"legend\">",
        "<span><svg width=\"12\" height=\"12\"><circle cx=\"6\" cy=\"6\" r=\"4.5\" class=\"vantage\"/></svg> vantage</span>",
        "<span><svg width=\"30\" height=\"12\"><path d=\"M2 6H28\" class=\"normal\"/></svg> normal path</span>",
        "<span><svg width=\"30\" height=\"12\"><path d=\"M2 6H28\" class=\"diverted\"/></svg> diverted path</span>",
        "<span><svg width=\"14\" height=\"14\"><path d=\"M7 1L13 7L7 13L1 7Z\" class=\"handoff\"/></svg> hand-off</span>",
        "<span><svg width=\"16\" height=\"16\"><circle cx=\"8\" cy=\"8\" r=\"5\" class=\"ingress\"/></svg> ingress, ",
        "with the region holding it (dashed)</span>",
        "<span><svg width=\"8\" height=\"8\"><circle cx=\"4\" cy=\"4\" r=\"1.8\" class=\"hop\"/></svg> located hop</span>",
        "</div>\n<div id=\"map-box\"></div>\n<p id=\"undrawn\" class=\"muted\"></p>\n",
        "<p class=\"muted\">Positions come from round-trip times alone (light in fibre), ",
        "never from configuration; a hop is drawn where its RTT constraints place it.</p>\n",
        "<div id=\"incidents\"></div>\n",
        "<noscript><p>This report draws its map and tables with JavaScript.</p></noscript>\n",
    ));
    out.push_str(
        "<footer class=\"muted\"><details><summary>Made by tracemesh; the embedded libraries and map data, and their licences</summary>\n",
    );
    for (what, text) in LICENCES {
        out.push_str(&format!(
            "<h3>{}</h3><pre>{}</pre>\n",
            escape(what),
            escape(text)
        ));
    }
    out.push_str("</details></footer>\n");
    out.push_str("<script id=\"tm-data\" type=\"application/json\">");
    out.push_str(&data);
    out.push_str("</script>\n<script id=\"tm-world\" type=\"application/json\">");
    out.push_str(&world);
    out.push_str("</script>\n");
    if let Some(generation) = live {
        out.push_str(&format!(
            "<script id=\"tm-live\" type=\"application/json\">{{\"generation\":{generation}}}</script>\n"
        ));
    }
    let live_js = if live.is_some() { LIVE } else { "" };
    for lib in [D3_ARRAY, D3_GEO, TOPOJSON, SCRIPT, live_js] {
        if lib.is_empty() {
            continue;
        }
        out.push_str("<script>\n");
        out.push_str(lib);
        out.push_str("\n</script>\n");
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_assets_cannot_close_their_script_element() {
        for (name, text) in [
            ("d3-array", D3_ARRAY),
            ("d3-geo", D3_GEO),
            ("topojson", TOPOJSON),
            ("report.js", SCRIPT),
            ("live.js", LIVE),
        ] {
            assert!(
                !text.to_ascii_lowercase().contains("</script"),
                "{name} contains </script"
            );
        }
        let s = script_json(r#"{"a":"</script><!--"}"#);
        assert!(!s.contains('<'), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
        assert_eq!(back["a"], "</script><!--");
    }
}
