//! Where the server listens: an owner-only Unix socket, and optionally TCP with mutual TLS.
//!
//! The Unix socket must never be reachable by anyone but the owner, not even for an
//! instant, so it is not bound in place and then chmod-ed (a window), nor made under a
//! changed umask (process-wide, racing other threads that create files). It is bound in a
//! fresh directory only the owner can enter, made 0600 there, then renamed into place
//! (rename is atomic and keeps the socket's inode). A lock file next to it (`PATH.lock`,
//! `flock`, held for the server's lifetime) tells a second daemon that the path is taken,
//! and tells a restarted daemon that a socket left there is stale and can be replaced. The
//! lock file itself is left behind on exit: deleting it would let two daemons lock two
//! different files of the same name.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting up a listener; each names the path or address.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path}: another slipstream is serving this socket (its lock {path}.lock is held)")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; remove it or choose another control.socket")]
    NotASocket { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("tcp {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ListenError + '_ {
    move |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bound Unix socket; removes the socket file when dropped (the lock is released with
/// the file descriptor).
#[derive(Debug)]
pub struct UnixSocket {
    pub path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
    _lock: std::fs::File,
}

impl UnixSocket {
    /// Turns the bound socket into a tokio listener (inside a runtime).
    pub fn take_listener(&mut self) -> io::Result<tokio::net::UnixListener> {
        let l = self
            .listener
            .take()
            .ok_or_else(|| io::Error::other("listener already taken"))?;
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds an owner-only (0600) Unix socket at `path`, creating its directory (0700) when
/// missing.
pub fn bind_unix(path: &Path) -> Result<UnixSocket, ListenError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            ListenError::InUse {
                path: path.to_path_buf(),
            }
        } else {
            ListenError::Io {
                path: lock_path,
                source: e,
            }
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // We hold the lock, so whoever made it is gone: a stale socket.
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    // Bind where only we can reach, tighten, then move into place.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ctl.sock".into());
    let private = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io_err(&private))?;
    let tmp = private.join("s");
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io_err(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    Ok(UnixSocket {
        path: path.to_path_buf(),
        listener: Some(result?),
        _lock: lock,
    })
}

/// A TLS connection that finished its handshake (client certificate verified).
pub struct TlsConn(TlsStream<TcpStream>);

impl TlsConn {
    /// The key exchange group the handshake used.
    pub fn key_exchange(&self) -> Option<rustls::NamedGroup> {
        self.0
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    }
}

impl Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts TCP connections and yields those whose TLS handshake succeeds; failed
/// handshakes (no client certificate, a certificate from another CA) are logged and
/// dropped without disturbing the others.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("control: tcp accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = TlsConn(tls);
                        tracing::debug!("control: {peer}: TLS with {:?}", conn.key_exchange());
                        let _ = conn_tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::info!("control: {peer}: TLS handshake refused: {e}"),
                    Err(_) => tracing::info!("control: {peer}: TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_owner_only_and_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ctl.sock");
        let s = bind_unix(&path).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert!(matches!(bind_unix(&path), Err(ListenError::InUse { .. })));
        drop(s);
        assert!(!path.exists(), "socket removed on drop");
        // A stale socket (its daemon died) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let _s = bind_unix(&path).unwrap();
        // Not a socket: refused, not deleted.
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            bind_unix(&file),
            Err(ListenError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
