//! The herd secret kept in a file: `herd up` makes one when the config and
//! the environment have none, and `herd serve` reads it, so that a server
//! can be started by hand beside the ones `herd up` runs.
//!
//! The file is `DATA_DIR/secret`, one line of hex, readable by its owner
//! only: whoever can read it can join the herd.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file's name in the data folder.
pub const SECRET_FILE: &str = "secret";

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} can be read by others (mode {mode:04o}); make it the owner's alone: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The secret in `path`, `None` if there is no such file. A file that
/// group or others may read is refused rather than used.
pub fn read_secret(path: &Path) -> Result<Option<String>, SecretError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(path)(error)),
    };
    let mode = std::fs::metadata(path)
        .map_err(io_error(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Some(secret.to_owned()))
}

/// The secret in `path`, made (32 random bytes, as hex) and written with
/// mode 0600 if the file does not exist yet.
pub fn read_or_create_secret(path: &Path) -> Result<String, SecretError> {
    if let Some(secret) = read_secret(path)? {
        return Ok(secret);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    // Created with its final mode, so it is never readable by others, and
    // only if absent: of two `herd up` starting at once, one writes it.
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            writeln!(file, "{secret}")
                .and_then(|()| file.sync_all())
                .map_err(io_error(path))?;
            Ok(secret)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_secret(path)?
            .ok_or_else(|| SecretError::Empty {
                path: path.to_owned(),
            }),
        Err(error) => Err(io_error(path)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_secret_is_the_owners_alone_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(SECRET_FILE);
        assert!(read_secret(&path).unwrap().is_none());
        let made = read_or_create_secret(&path).unwrap();
        assert_eq!(made.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_or_create_secret(&path).unwrap(), made, "kept");
        assert_eq!(read_secret(&path).unwrap(), Some(made));
    }

    #[test]
    fn a_secret_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_secret(&path).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&path).unwrap().as_deref(), Some("abc"));
    }
}
