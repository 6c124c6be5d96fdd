//! PostgreSQL streaming replication client (CopyBoth), built on `postgres-protocol`.
//!
//! tokio-postgres cannot open a `replication=database` connection, so this speaks
//! the walsender protocol directly: startup and authentication (trust, cleartext,
//! MD5, SCRAM-SHA-256), replication commands (`IDENTIFY_SYSTEM`,
//! `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`, `START_REPLICATION`), and the
//! CopyBoth stream of XLogData / keepalive frames with standby status updates.
//! Over TCP it asks for TLS as the DSN's `sslmode` says (see `crate::pg::tls`).

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{Host, SslMode};

use super::lsn::Lsn;
use crate::pg::tls::PgTls;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("cannot connect to PostgreSQL at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("PostgreSQL error {code}: {message}{}", detail_suffix(.detail, .hint))]
    Server {
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("replication connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("unexpected replication protocol data: {0}")]
    Protocol(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("TLS to PostgreSQL at {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("PostgreSQL closed the replication connection")]
    Closed,
}

fn detail_suffix(detail: &Option<String>, hint: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(d) = detail {
        s.push_str(&format!(" ({d})"));
    }
    if let Some(h) = hint {
        s.push_str(&format!(" hint: {h}"));
    }
    s
}

impl ReplicationError {
    /// The SQLSTATE of a server error, for callers that react to specific ones.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long closing a stream waits for the server to close its side.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A replication-mode connection before streaming starts.
pub struct ReplicationConn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// What `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT` returns.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    pub consistent_point: Lsn,
    /// Valid for `SET TRANSACTION SNAPSHOT` until this connection runs another command.
    pub snapshot_name: String,
}

/// A frame of the CopyBoth stream.
#[derive(Debug)]
pub enum Frame {
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        reply_requested: bool,
    },
}

enum Incoming {
    Msg(backend::Message),
    CopyBoth,
}

impl ReplicationConn {
    /// Opens a `replication=database` connection using the same settings as the
    /// regular connection (URL or key=value form), so operators configure one DSN.
    pub async fn connect(
        config: &tokio_postgres::Config,
        tls: &PgTls,
    ) -> Result<Self, ReplicationError> {
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let (io, addr): (Box<dyn Io>, String) = match config.get_hosts().first() {
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let addr = path.display().to_string();
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|source| ReplicationError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
                (Box::new(s), addr)
            }
            Some(Host::Tcp(host)) => {
                let addr = format!("{host}:{port}");
                let s = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|source| ReplicationError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
                s.set_nodelay(true)?;
                let io = negotiate_tls(s, config.get_ssl_mode(), host, &addr, tls).await?;
                (io, addr)
            }
            None => {
                return Err(ReplicationError::Connect {
                    addr: "<none>".into(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "no host in the DSN"),
                });
            }
        };
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::Auth("the DSN names no user".into()))?
            .to_owned();
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        tracing::debug!(%addr, %user, %dbname, "opening replication connection");
        let mut conn = ReplicationConn {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
        };
        let params = [
            ("user", user.as_str()),
            ("database", dbname.as_str()),
            ("replication", "database"),
            ("application_name", "flywheel"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params, &mut conn.wbuf)?;
        conn.flush().await?;
        conn.authenticate(&user, config.get_password()).await?;
        Ok(conn)
    }

    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn recv(&mut self) -> Result<Incoming, ReplicationError> {
        loop {
            // CopyBothResponse is not in postgres-protocol's backend parser.
            if self.rbuf.len() >= 5 && self.rbuf[0] == b'W' {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if self.rbuf.len() > len {
                    self.rbuf.advance(len + 1);
                    return Ok(Incoming::CopyBoth);
                }
            } else if let Some(msg) = backend::Message::parse(&mut self.rbuf)? {
                return Ok(Incoming::Msg(msg));
            }
            // read_buf is cancel-safe: partial frames stay in rbuf.
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ReplicationError> {
        let need_password = || {
            password.ok_or_else(|| {
                ReplicationError::Auth("the server asks for a password but the DSN has none".into())
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let Incoming::Msg(msg) = self.recv().await? else {
                return Err(ReplicationError::Protocol("CopyBoth during startup".into()));
            };
            match msg {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(need_password()?, &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        need_password()?,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next()? {
                        offered |= m == "SCRAM-SHA-256";
                    }
                    if !offered {
                        return Err(ReplicationError::Auth(
                            "server offers no SASL mechanism we support (need SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let s = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Auth("SASL continue before start".into())
                    })?;
                    s.update(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    scram
                        .as_mut()
                        .ok_or_else(|| ReplicationError::Auth("SASL final before start".into()))?
                        .finish(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                }
                backend::Message::ErrorResponse(body) => return Err(server_error(body)),
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ParameterStatus(_)
                | backend::Message::BackendKeyData(_)
                | backend::Message::NoticeResponse(_) => {}
                _ => {
                    return Err(ReplicationError::Auth(
                        "unsupported authentication method (supported: trust, password, md5, scram-sha-256)"
                            .into(),
                    ));
                }
            }
        }
    }

    /// Runs a replication command and returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await? {
                Incoming::Msg(backend::Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = ranges.next()? {
                        values.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Incoming::Msg(backend::Message::ErrorResponse(body)) => {
                    error = Some(server_error(body));
                }
                Incoming::Msg(backend::Message::ReadyForQuery(_)) => break,
                Incoming::Msg(_) => {}
                Incoming::CopyBoth => {
                    return Err(ReplicationError::Protocol(format!(
                        "`{sql}` unexpectedly started a copy"
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`: returns the server's current WAL flush position.
    pub async fn identify_system(&mut self) -> Result<Lsn, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let xlogpos = rows
            .first()
            .and_then(|r| r.get(2))
            .and_then(|v| v.as_deref())
            .ok_or_else(|| {
                ReplicationError::Protocol("IDENTIFY_SYSTEM returned no xlogpos".into())
            })?;
        xlogpos
            .parse()
            .map_err(|e: super::lsn::ParseLsnError| ReplicationError::Protocol(e.to_string()))
    }

    /// Creates a pgoutput slot and exports its snapshot. Keep this connection idle
    /// until the snapshot was imported: the next command invalidates it.
    pub async fn create_slot_exporting_snapshot(
        &mut self,
        slot: &str,
    ) -> Result<CreatedSlot, ReplicationError> {
        self.create_exporting(slot, "").await
    }

    /// Ends the connection politely (a temporary slot goes with it).
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.wbuf);
        self.flush().await
    }

    /// A slot that lives as long as this connection, for its exported
    /// snapshot alone: a read consistent with an exact stream position.
    pub async fn create_temporary_slot_exporting_snapshot(
        &mut self,
        slot: &str,
    ) -> Result<CreatedSlot, ReplicationError> {
        self.create_exporting(slot, " TEMPORARY").await
    }

    async fn create_exporting(
        &mut self,
        slot: &str,
        temporary: &str,
    ) -> Result<CreatedSlot, ReplicationError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_ident(slot)
        );
        let rows = self.simple_query(&sql).await?;
        let row = rows.first().ok_or_else(|| {
            ReplicationError::Protocol("CREATE_REPLICATION_SLOT returned no row".into())
        })?;
        let field = |i: usize| row.get(i).and_then(|v| v.clone());
        let consistent_point = field(1)
            .ok_or_else(|| ReplicationError::Protocol("no consistent_point".into()))?
            .parse()
            .map_err(|e: super::lsn::ParseLsnError| ReplicationError::Protocol(e.to_string()))?;
        let snapshot_name =
            field(2).ok_or_else(|| ReplicationError::Protocol("no exported snapshot".into()))?;
        Ok(CreatedSlot {
            consistent_point,
            snapshot_name,
        })
    }

    /// `START_REPLICATION ... LOGICAL` with pgoutput v1 and logical messages on.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplicationError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names '{}', messages 'true')",
            quote_ident(slot),
            quote_ident(publication).replace('\'', "''"),
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            match self.recv().await? {
                Incoming::CopyBoth => return Ok(ReplicationStream { conn: self }),
                Incoming::Msg(backend::Message::ErrorResponse(body)) => {
                    return Err(server_error(body));
                }
                Incoming::Msg(_) => {}
            }
        }
    }
}

/// The streaming phase of a replication connection.
pub struct ReplicationStream {
    conn: ReplicationConn,
}

impl ReplicationStream {
    /// The next XLogData or keepalive frame. Cancel-safe.
    pub async fn next_frame(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            match self.conn.recv().await? {
                Incoming::Msg(backend::Message::CopyData(body)) => {
                    return parse_copy_data(body.into_bytes());
                }
                Incoming::Msg(backend::Message::ErrorResponse(body)) => {
                    return Err(server_error(body));
                }
                Incoming::Msg(backend::Message::CopyDone) => return Err(ReplicationError::Closed),
                Incoming::Msg(_) | Incoming::CopyBoth => {}
            }
        }
    }

    /// Standby status update: everything up to `flushed` is durable downstream
    /// and the server may discard WAL before it.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(written.0);
        payload.put_u64(flushed.0);
        payload.put_u64(flushed.0);
        payload.put_i64(pg_epoch_micros());
        payload.put_u8(reply_requested as u8);
        frontend::CopyData::new(payload.freeze())?.write(&mut self.conn.wbuf);
        self.conn.flush().await
    }

    /// Ends the stream politely so the walsender releases the slot at once,
    /// and waits (at most `CLOSE_WAIT`) until the server has closed its side.
    ///
    /// Why wait: the walsender keeps sending WAL until it reads our CopyDone.
    /// Closing with that data unread makes the kernel reset the connection,
    /// and a server that had not yet read our last status update then never
    /// does: the slot stayed short of what was confirmed before a clean stop
    /// (seen once in CI, with a writer busy during SIGTERM). The server reads
    /// in order, so its end of the connection means it read the update.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::copy_done(&mut self.conn.wbuf);
        frontend::terminate(&mut self.conn.wbuf);
        self.conn.flush().await?;
        let until_closed = async {
            loop {
                self.conn.rbuf.clear();
                match self.conn.io.read_buf(&mut self.conn.rbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(CLOSE_WAIT, until_closed)
            .await
            .is_err()
        {
            tracing::debug!("the server did not close the replication connection in time");
        }
        Ok(())
    }
}

/// The SSLRequest exchange of a TCP connection, then the TLS handshake when
/// the server agrees. `prefer` falls back to plain text on 'N'; `require`
/// does not.
async fn negotiate_tls(
    mut socket: tokio::net::TcpStream,
    mode: SslMode,
    host: &str,
    addr: &str,
    tls: &PgTls,
) -> Result<Box<dyn Io>, ReplicationError> {
    if mode == SslMode::Disable {
        return Ok(Box::new(socket));
    }
    let failed = |reason: String| ReplicationError::Tls {
        addr: addr.to_owned(),
        reason,
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    socket.write_all(&request).await?;
    match socket.read_u8().await? {
        b'S' => {
            let stream = tls
                .handshake(host, socket)
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok(Box::new(stream))
        }
        b'N' if mode == SslMode::Require => Err(failed(
            "the server does not offer TLS, and the DSN has sslmode=require".into(),
        )),
        b'N' => Ok(Box::new(socket)),
        other => Err(ReplicationError::Protocol(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

fn parse_copy_data(mut data: Bytes) -> Result<Frame, ReplicationError> {
    let short = || ReplicationError::Protocol("truncated CopyData frame".into());
    if data.is_empty() {
        return Err(short());
    }
    match data.get_u8() {
        b'w' => {
            if data.remaining() < 24 {
                return Err(short());
            }
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(Frame::XLogData {
                wal_start,
                wal_end,
                data,
            })
        }
        b'k' => {
            if data.remaining() < 17 {
                return Err(short());
            }
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(Frame::Keepalive {
                wal_end,
                reply_requested: data.get_u8() == 1,
            })
        }
        other => Err(ReplicationError::Protocol(format!(
            "unknown CopyData kind {:?}",
            other as char
        ))),
    }
}

fn server_error(body: backend::ErrorResponseBody) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    let mut hint = None;
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => code = v,
            b'M' => message = v,
            b'D' => detail = Some(v),
            b'H' => hint = Some(v),
            _ => {}
        }
    }
    ReplicationError::Server {
        code,
        message,
        detail,
        hint,
    }
}

/// Microseconds since the PostgreSQL epoch (2000-01-01 UTC).
pub fn pg_epoch_micros() -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    unix.as_micros() as i64 - PG_EPOCH_UNIX_SECS * 1_000_000
}

/// Quotes an identifier for replication commands.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keepalive_and_xlogdata() {
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x10);
        k.put_i64(0);
        k.put_u8(1);
        match parse_copy_data(k.freeze()).unwrap() {
            Frame::Keepalive {
                wal_end,
                reply_requested,
            } => {
                assert_eq!(wal_end, Lsn(0x10));
                assert!(reply_requested);
            }
            f => panic!("{f:?}"),
        }
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(1);
        w.put_u64(2);
        w.put_i64(0);
        w.put_slice(b"B...");
        match parse_copy_data(w.freeze()).unwrap() {
            Frame::XLogData { data, wal_end, .. } => {
                assert_eq!(&data[..], b"B...");
                assert_eq!(wal_end, Lsn(2));
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn short_frames_are_errors() {
        assert!(parse_copy_data(Bytes::from_static(b"w\0\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"k")).is_err());
        assert!(parse_copy_data(Bytes::new()).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"z")).is_err());
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("flywheel"), "\"flywheel\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
