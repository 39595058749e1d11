//! `cargo xtask image` and `cargo xtask install-unit`: alloctrace deployed
//! as an agent, from the files in `deploy/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{build, util};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Tag of the image built
    #[arg(long, default_value = "localhost/alloctrace:latest")]
    pub tag: String,
}

#[derive(clap::Args)]
pub struct UnitArgs {
    /// Install under this directory instead of / (for packaging; the unit
    /// is then neither enabled nor started)
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

/// Builds the binary, then the image, offline (deploy/build-image.sh).
pub fn image(args: &ImageArgs) -> Result<()> {
    let bin = build::build(false)?;
    util::run(
        Command::new(util::workspace_root().join("deploy/build-image.sh"))
            .arg(&bin)
            .arg(&args.tag),
    )?;
    println!("ok: built image {}", args.tag);
    Ok(())
}

/// Installs the binary to /usr/local/bin and deploy/alloctrace.service to
/// /etc/systemd/system, then enables and starts it when systemd runs here.
pub fn install_unit(args: &UnitArgs) -> Result<()> {
    let bin = build::build(false)?;
    let installed_bin = args.root.join("usr/local/bin/alloctrace");
    let unit = args.root.join("etc/systemd/system/alloctrace.service");
    install(&bin, &installed_bin, 0o755)?;
    install(
        &util::workspace_root().join("deploy/alloctrace.service"),
        &unit,
        0o644,
    )?;
    println!(
        "installed {} and {}",
        installed_bin.display(),
        unit.display()
    );
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    if args.root != Path::new("/") {
        return Ok(());
    }
    if !systemd_runs {
        println!(
            "systemd is not the service manager here: on a systemd host run \
             `systemctl daemon-reload && systemctl enable --now alloctrace`"
        );
        return Ok(());
    }
    util::run(Command::new("systemctl").arg("daemon-reload"))?;
    util::run(Command::new("systemctl").args(["enable", "--now", "alloctrace"]))?;
    println!("ok: alloctrace.service enabled and started (metrics on 127.0.0.1:9464)");
    Ok(())
}

/// Copies `from` to `to` with `mode`, creating the directories, replacing
/// a running binary safely (a new inode, not a write into the old one).
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = to.parent().context("install path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let staged = to.with_extension("new");
    std::fs::copy(from, &staged)
        .with_context(|| format!("copying {} to {}", from.display(), staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&staged, to).with_context(|| format!("installing {}", to.display()))?;
    Ok(())
}
