//! `tracemesh report --html FILE`: the detector's report over the stored traces (as
//! `diversions` makes it), drawn as one self-contained HTML page (`tracemesh::report`).

use std::io::Write as _;

use anyhow::{Context as _, anyhow};
use tonic::transport::Channel;
use tracemesh::detect::Tables;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::ReportArgs;
use super::diversions;

/// Fails unless `html` can be written: its directory exists and it is not a directory.
pub fn check_destination(html: &std::path::Path) -> anyhow::Result<()> {
    if html.is_dir() {
        anyhow::bail!("--html {} is a directory; name a file", html.display());
    }
    let dir = match html.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "--html {}: directory {} does not exist",
            html.display(),
            dir.display()
        );
    }
    Ok(())
}

pub async fn run(
    c: &mut ConsumerServiceClient<Channel>,
    a: ReportArgs,
    loaded: &Tables,
) -> anyhow::Result<()> {
    let annot = &loaded.annot;
    let (det, n) = diversions::detector(c, &a.detect(), annot).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| anyhow!("system clock before 1970: {e}"))?
        .as_secs_f64();
    let t = std::time::Instant::now();
    let report = det.report(annot, &loaded.gazetteer, now);
    let report_ms = t.elapsed().as_secs_f64() * 1e3;
    let view = det.map_view(&report, annot, &loaded.gazetteer, n, now);
    let view_ms = t.elapsed().as_secs_f64() * 1e3 - report_ms;
    let html = tracemesh::report::render_html(&view, &a.title)?;
    // Written beside the target and renamed: a reader never sees half a report, and a
    // failed run leaves an earlier report in place.
    let tmp = a.html.with_extension("html.tmp");
    std::fs::write(&tmp, html.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.html).with_context(|| format!("cannot write {}", a.html.display()))?;
    tracing::info!(
        file = %a.html.display(),
        bytes = html.len(),
        traces = n,
        records = report.diversions.len(),
        incidents = report.incidents.len(),
        located_hops = view.located.len(),
        detect_report_ms = report_ms,
        locate_hops_ms = view_ms,
        total_ms = t.elapsed().as_secs_f64() * 1e3,
        "report written"
    );
    if a.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &view)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
