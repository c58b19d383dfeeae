//! The `tracemesh` command line: `serve` runs the coordinator; every other subcommand is
//! a client of a running coordinator's ConsumerService, found through `--data DIR` (the
//! address file and admin identity `serve` writes there) or `--coordinator` +
//! `--identity` for a remote one. This module only dispatches: the flags are in
//! `args.rs`, each subcommand in its own file.

pub mod agents;
pub mod aliases;
pub mod annot;
mod annot_digest;
pub mod args;
pub mod campaign;
pub mod client;
pub mod deploy;
pub mod diversions;
pub mod export;
pub mod identity;
pub mod import;
pub mod json;
pub mod mda;
pub mod mesh;
pub mod parse;
pub mod report;
pub mod retain;
pub mod serve;
pub mod token;
pub mod traces;

pub use args::{Cli, Command};
use args::{DeployCmd, TokenCmd};
use client::connect;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(cli.data, a).await,
        Command::Token(TokenCmd::Create(a)) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            token::create(&mut c, a).await
        }
        Command::Campaign(cmd) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            campaign::run(&mut c, cmd).await
        }
        Command::Agents { json } => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            agents::list(&mut c, json).await
        }
        Command::Traces(a) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            traces::list(&mut c, a).await
        }
        Command::Aliases(a) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            aliases::run(&mut c, a).await
        }
        Command::Mesh(a) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            mesh::run(&mut c, a).await
        }
        Command::Mda(a) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            mda::run(&mut c, a).await
        }
        Command::Diversions(a) => {
            // Load tables first: a typo in a path should not wait on the network.
            let loaded = diversions::annotation(&a)?;
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            diversions::run(&mut c, a, &loaded).await
        }
        Command::Report(a) => {
            // Where the page goes is checked first: a typo should not wait on the work.
            report::check_destination(&a.html)?;
            let loaded = diversions::annotation(&a.detect())?;
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            report::run(&mut c, a, &loaded).await
        }
        Command::Import(a) => import::run(&cli.data, a),
        Command::Export(a) => {
            let mut c = connect(&cli.data, cli.coordinator, cli.identity).await?;
            export::run(&mut c, a).await
        }
        Command::Deploy(DeployCmd::Render(a)) => {
            deploy::render(&cli.data, cli.coordinator, cli.identity, a).await
        }
        Command::Identity(cmd) => {
            identity::identity(&cli.data, cli.coordinator, cli.identity, cmd).await
        }
        Command::Agent(cmd) => identity::agent(&cli.data, cli.coordinator, cli.identity, cmd).await,
        Command::Retain(a) => retain::run(&cli.data, a),
    }
}
