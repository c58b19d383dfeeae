//! `tracemesh deploy render`: one cloud-init user-data file per inventory agent, each
//! with a fresh one-time token minted by the running coordinator.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tracemesh::deploy::{self, BinarySource, Inventory};
use tracemesh_proto::time::{Precision, format_rfc3339};

use super::args::DeployRenderArgs;
use super::client::{connect, status};

pub async fn render(
    data: &Path,
    coordinator: Option<String>,
    identity: Option<PathBuf>,
    a: DeployRenderArgs,
) -> anyhow::Result<()> {
    // Everything local is checked before any token is minted, so a mistake wastes none.
    let text = std::fs::read_to_string(&a.inventory)
        .with_context(|| format!("cannot read inventory {}", a.inventory.display()))?;
    let inv = Inventory::parse(&text, &a.inventory.display().to_string())?;
    let bin = match (&a.binary_url, &a.binary_sha256, &a.embed_binary) {
        (Some(url), Some(sha), None) => BinarySource::url(url, sha)?,
        (None, None, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read agent binary {}", path.display()))?;
            BinarySource::embedded(&bytes)?
        }
        _ => bail!(
            "say how VMs get the agent: --binary-url URL --binary-sha256 HEX, or --embed-binary PATH"
        ),
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut c = connect(data, coordinator, identity).await?;
    for agent in &inv.agents {
        let resp = c
            .create_token(deploy::token_request(agent, a.ttl))
            .await
            .map_err(|s| status(&format!("token for {}", agent.name), s))?
            .into_inner();
        let expires = format_rfc3339(
            resp.expires_at_ns.div_euclid(1_000_000_000) as f64,
            Precision::Seconds,
        );
        let doc = deploy::render(&inv, agent, &resp.token, &expires, &bin);
        let path = a.out.join(format!("{}.yaml", agent.name));
        write_secret(&path, doc.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// User-data holds a live token: readable by its owner only, from the first byte.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
