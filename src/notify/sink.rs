//! A local SMTP sink: a small SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT) that writes each accepted message to a folder as an `.eml` file. `firstkey demo` uses
//! it so mail can be read without a relay, and the tests use it as the real SMTP peer of lettre.
//!
//! It is not a relay: it listens on loopback only, accepts every recipient, and keeps nothing in
//! memory beyond the message being received (capped at [`MAX_MESSAGE`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest message accepted, in bytes.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// A running sink; stops when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    dir: PathBuf,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Listens on `addr` (use port 0 for any) and writes mail into `dir` (created if missing).
    pub async fn start(addr: SocketAddr, dir: &Path) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let counter = Arc::new(AtomicU64::new(0));
        let folder = dir.to_path_buf();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let folder = folder.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(stream, &folder, &counter).await {
                        tracing::debug!(error = %e, "smtp sink session ended");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            dir: dir.to_path_buf(),
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay URL for the `smtp_relay` setting.
    pub fn relay_url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The folder mail is written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(stream: TcpStream, folder: &Path, counter: &AtomicU64) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 firstkey-sink ESMTP\r\n").await?;
    let mut recipients: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") {
            b"250-firstkey-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if command.starts_with("HELO") || command.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if command.starts_with("MAIL FROM:") {
            recipients.clear();
            b"250 ok\r\n"
        } else if command.starts_with("RCPT TO:") {
            recipients.push(
                line.trim_end()
                    .get(8..)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            );
            b"250 ok\r\n"
        } else if command.starts_with("RSET") {
            recipients.clear();
            b"250 ok\r\n"
        } else if command == "DATA" {
            if recipients.is_empty() {
                b"503 need RCPT first\r\n"
            } else {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut message = Vec::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Dot-stuffing (RFC 5321 §4.5.2).
                    let content = line.strip_prefix('.').unwrap_or(&line);
                    if message.len().saturating_add(content.len()) > MAX_MESSAGE {
                        write.write_all(b"552 message too large\r\n").await?;
                        return Ok(());
                    }
                    message.extend_from_slice(content.as_bytes());
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let name = format!("{:06}-{}.eml", n, std::process::id());
                let tmp = folder.join(format!(".{name}.tmp"));
                let mut header =
                    format!("X-Firstkey-Sink-Recipients: {}\r\n", recipients.join(", "))
                        .into_bytes();
                header.extend_from_slice(&message);
                tokio::fs::write(&tmp, &header).await?;
                tokio::fs::rename(&tmp, folder.join(name)).await?;
                recipients.clear();
                b"250 ok: queued\r\n"
            }
        } else if command.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// The `.eml` files in a sink folder, oldest first.
pub fn messages(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files.iter().map(std::fs::read_to_string).collect()
}
