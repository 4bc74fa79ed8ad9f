//! [`PieceDir`]'s work is blocking file I/O; async callers (a NAS device's
//! gRPC service, a vendor's local directory) run it here, on tokio's
//! blocking pool, so it never holds an async worker thread.

use std::io::ErrorKind;

use crate::{PieceDir, PieceError};

impl PieceDir {
    /// Runs `work` on this directory on the blocking pool. A task that
    /// panics or is cancelled is an [`PieceError::Io`] on the directory's
    /// root, so callers handle it as the I/O failure it stands for.
    pub async fn run_blocking<T, F>(&self, work: F) -> Result<T, PieceError>
    where
        T: Send + 'static,
        F: FnOnce(&PieceDir) -> Result<T, PieceError> + Send + 'static,
    {
        let dir = self.clone();
        match tokio::task::spawn_blocking(move || work(&dir)).await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(root = %self.root().display(), error = %join, "piece directory task failed");
                Err(PieceError::refused(
                    self.root(),
                    ErrorKind::Other,
                    format!("the piece directory's task failed ({join}); retry"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_proto::{Hash, PieceId};

    #[tokio::test]
    async fn work_runs_on_the_directory_and_a_panic_is_an_io_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = PieceDir::open(root.path(), None).unwrap();
        let id = PieceId::new("p-0").unwrap();
        let stored = {
            let id = id.clone();
            dir.run_blocking(move |dir| {
                dir.put(&id, b"piece", &Hash::of(b"piece"))?;
                dir.get(&id)
            })
            .await
            .unwrap()
        };
        assert_eq!(stored, b"piece");

        let err = dir
            .run_blocking(|_| -> Result<(), PieceError> { panic!("a bug in the work") })
            .await
            .unwrap_err();
        assert!(matches!(err, PieceError::Io { .. }), "{err}");
        assert!(err.to_string().contains("task failed"), "{err}");
    }
}
