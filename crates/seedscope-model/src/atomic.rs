//! Writing results so that a crash never leaves a half-written one under the final name:
//! files through a synced temporary file and a rename, directories assembled beside their
//! final place and swapped in. Every crate that writes results uses these two.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// Write `bytes` to `path` through a synced temporary file in the same directory and a
/// rename (the directory is made when missing).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_atomic_with(path, |tmp| std::fs::write(tmp, bytes))
}

/// Like [`write_file_atomic`], with `write` writing the temporary file at the path it is given
/// (so large files can be streamed instead of assembled in memory).
pub fn write_file_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<()> {
    let io = |source: std::io::Error| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = sibling(path, &format!("tmp-{}", std::process::id()));
    let written = (|| {
        write(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// Put the finished directory `new` at `out`. A previous `out` is set aside first and removed
/// only once `new` is in place; if moving `new` fails, the previous `out` is put back, so
/// `out` is always either the old or the new directory. (A set-aside copy that cannot be
/// removed afterwards is left as `<out>.old-<pid>`; the new directory is in place.)
pub fn replace_dir(new: &Path, out: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| ModelError::Io { path, source }
    };
    let old = sibling(out, &format!("old-{}", std::process::id()));
    let had_old = match std::fs::symlink_metadata(out) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(out)(e)),
    };
    if had_old {
        std::fs::rename(out, &old).map_err(io(out))?;
    }
    if let Err(e) = std::fs::rename(new, out) {
        let restored = !had_old || std::fs::rename(&old, out).is_ok();
        let kept = if restored {
            String::new()
        } else {
            format!("; the previous one is at {}", old.display())
        };
        return Err(ModelError::Io {
            path: new.to_path_buf(),
            source: std::io::Error::new(
                e.kind(),
                format!("moving it to {}: {e}{kept}", out.display()),
            ),
        });
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// `path` with `.{tag}` appended to its file name.
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{tag}"));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("seedscope-atomic-")
            .tempdir()
            .expect("temp dir")
    }

    #[test]
    fn a_directory_replaces_the_old_one_or_leaves_it() {
        let dir = temp();
        let d = dir.path();
        let (new, out) = (d.join("new"), d.join("out"));
        std::fs::create_dir_all(&out).expect("out");
        std::fs::write(out.join("f"), b"old").expect("old");
        std::fs::create_dir_all(&new).expect("new");
        std::fs::write(new.join("f"), b"new").expect("new");
        replace_dir(&new, &out).expect("replace");
        assert_eq!(std::fs::read(out.join("f")).expect("read"), b"new");
        assert!(!new.exists());
        // A `new` that cannot be moved leaves the previous directory where it was.
        let e = replace_dir(&d.join("missing"), &out).expect_err("nothing to move");
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(std::fs::read(out.join("f")).expect("read"), b"new");
        let leftovers: Vec<_> = std::fs::read_dir(d).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "only `out` is left");
    }

    #[test]
    fn a_file_is_written_whole_or_not_at_all() {
        let dir = temp();
        let d = dir.path();
        let p = d.join("sub/x.json");
        write_file_atomic(&p, b"{}").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"{}");
        // A directory in the way: an error naming the file, no temporary file left.
        let e = write_file_atomic(&d.join("sub"), b"x").expect_err("a directory");
        assert!(e.to_string().contains("sub"), "{e}");
        assert_eq!(std::fs::read_dir(d.join("sub")).expect("ls").count(), 1);
    }
}
