//! `poolfs key export` and `poolfs key import`: the owner key of a storage directory
//! shown as its recovery code, and written back from one.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};

use crate::cli::{KeyExportArgs, KeyImportArgs};
use poolfs::trust::{read_recovery_code, OwnerKey, OWNER_KEY_FILE, RECOVERY_WORDS};

/// Prints the recovery code of `STORAGE/owner.key` on one line of standard output (and
/// nothing else there, so scripts can take it); advice goes to standard error.
///
/// Errors: no owner key there (no mount has used the directory), or an unreadable one.
pub fn export(args: KeyExportArgs) -> Result<()> {
    let key = OwnerKey::load(&args.storage)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", key.recovery_code())
        .and_then(|()| out.flush())
        .context("cannot write the recovery code to standard output")?;
    eprintln!(
        "Keep these {RECOVERY_WORDS} words on paper, with the pool key: with both, \
         `poolfs mount MOUNTPOINT --storage NEW-DIR --recover` brings the files back on \
         any machine of the pool. Whoever reads them can read your files."
    );
    Ok(())
}

/// Reads a recovery code from `--code-file` or standard input, checks it, and writes
/// its owner key to `STORAGE/owner.key` (mode 0600), saying what it did on standard
/// output.
///
/// Errors: the code cannot be read or is not a valid code (the message says which word
/// or why), or a different owner key is there already; nothing is written then.
pub fn import(args: KeyImportArgs) -> Result<()> {
    let text = match &args.code_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the recovery code from {}", file.display()))?,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Type the {RECOVERY_WORDS} words of the recovery code, then Enter:");
            }
            read_recovery_code(stdin.lock())
                .context("cannot read the recovery code from standard input")?
        }
    };
    let key = OwnerKey::from_recovery_code(&text).context("not a valid recovery code")?;
    let file = args.storage.join(OWNER_KEY_FILE);
    let existed = file.exists();
    OwnerKey::save_new(&args.storage, &key)?;
    if existed {
        println!(
            "{} already holds this owner key; nothing written",
            file.display()
        );
    } else {
        println!(
            "wrote the owner key to {} (mode 0600); `poolfs mount MOUNTPOINT --storage {} \
             --recover` finds its files in the pool",
            file.display(),
            args.storage.display()
        );
    }
    Ok(())
}
