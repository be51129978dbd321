//! A PostgreSQL wire proxy between a shop and the real server, for faults
//! that only a network makes: a statement (a COMMIT, say) that reaches
//! PostgreSQL and takes effect while its reply is lost, a connection cut
//! before a statement arrives, a slow reply, every connection reset at once,
//! new connections refused.
//!
//! It reads just enough of the protocol to know which statement a reply
//! answers: the client's `Query` and `Parse`/`Bind`/`Execute`/`Sync`
//! messages, and the server's `ReadyForQuery`, which ends every reply. It
//! declines TLS itself, so the stream stays readable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const UPSTREAM: &str = "127.0.0.1:5432";
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// Which statements a fault applies to.
#[derive(Debug, Clone)]
pub enum Statement {
    /// A transaction's `COMMIT`.
    Commit,
    /// The `COMMIT` of a transaction that ran a statement containing this.
    CommitOf(String),
    /// Any statement whose text contains this.
    Containing(String),
}

impl Statement {
    /// Whether `sql`, run in a transaction that has run `before`, matches.
    fn matches(&self, sql: &str, before: &[String]) -> bool {
        match self {
            Self::Commit => is_commit(sql),
            Self::CommitOf(text) => is_commit(sql) && before.iter().any(|earlier| earlier.contains(text.as_str())),
            Self::Containing(text) => sql.contains(text.as_str()),
        }
    }
}

fn is_commit(sql: &str) -> bool {
    sql.trim().trim_end_matches(';').eq_ignore_ascii_case("COMMIT")
}

fn ends_transaction(sql: &str) -> bool {
    is_commit(sql) || sql.trim().to_ascii_uppercase().starts_with("ROLLBACK")
}

#[derive(Debug, Clone, Copy)]
enum Action {
    /// Forward the statement, swallow the server's reply, cut the connection.
    LoseReply,
    /// Cut the connection instead of forwarding the statement.
    CutBefore,
    /// Hold the reply this long before passing it on.
    Delay(Duration),
}

struct Fault {
    statement: Statement,
    action: Action,
    remaining: usize,
    fired: Fired,
}

/// How many times one fault has fired.
#[derive(Clone, Default)]
pub struct Fired(Arc<AtomicUsize>);

impl Fired {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    fired: usize,
    /// The SQLSTATE of every error the server answered.
    errors: Vec<String>,
    refuse_connections: bool,
    /// Nothing passes either way, and new connections hang: a network that
    /// drops every packet, as opposed to one that refuses.
    blackhole: bool,
    /// Cancelled to reset every open connection; replaced afterwards.
    reset: CancellationToken,
}

impl State {
    /// The action for this statement, counting it against its fault.
    fn take(&mut self, sql: &str, before: &[String]) -> Option<Action> {
        let fault = self.faults.iter_mut().find(|fault| fault.remaining > 0 && fault.statement.matches(sql, before))?;
        fault.remaining -= 1;
        fault.fired.0.fetch_add(1, Ordering::SeqCst);
        self.fired += 1;
        Some(fault.action)
    }
}

#[derive(Clone)]
pub struct PgProxy {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl PgProxy {
    pub async fn start() -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (refuse, reset) = {
                    let state = accepting.lock().unwrap();
                    (state.refuse_connections, state.reset.clone())
                };
                if refuse {
                    continue;
                }
                let state = accepting.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = relay(client, state) => {}
                        _ = reset.cancelled() => {}
                    }
                });
            }
        });
        PgProxy { port, state }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `database` on PostgreSQL, through this proxy.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The next `times` matching statements reach PostgreSQL and take
    /// effect, but their replies are lost with their connections.
    pub fn lose_reply_to(&self, statement: Statement, times: usize) -> Fired {
        self.add(statement, Action::LoseReply, times)
    }

    /// The next `times` matching statements never reach PostgreSQL: their
    /// connections are cut instead.
    pub fn cut_before(&self, statement: Statement, times: usize) -> Fired {
        self.add(statement, Action::CutBefore, times)
    }

    /// The replies to the next `times` matching statements come `delay` late.
    pub fn delay_reply_to(&self, statement: Statement, delay: Duration, times: usize) -> Fired {
        self.add(statement, Action::Delay(delay), times)
    }

    fn add(&self, statement: Statement, action: Action, times: usize) -> Fired {
        let fired = Fired::default();
        self.state.lock().unwrap().faults.push(Fault { statement, action, remaining: times, fired: fired.clone() });
        fired
    }

    /// Removes the faults that have not fired yet.
    pub fn heal(&self) {
        let mut state = self.state.lock().unwrap();
        state.faults.clear();
        state.refuse_connections = false;
    }

    /// How many faults have fired, all together.
    pub fn fired(&self) -> usize {
        self.state.lock().unwrap().fired
    }

    /// How many errors with this SQLSTATE the server has answered.
    pub fn errors(&self, sqlstate: &str) -> usize {
        self.state.lock().unwrap().errors.iter().filter(|code| *code == sqlstate).count()
    }

    /// New connections are closed at once while `refuse` holds.
    /// Drops everything, both ways, until called with `false`.
    pub fn blackhole(&self, on: bool) {
        self.state.lock().unwrap().blackhole = on;
    }

    pub fn refuse_connections(&self, refuse: bool) {
        self.state.lock().unwrap().refuse_connections = refuse;
    }

    /// Cuts every open connection, as a database restart would.
    pub fn reset_all(&self) {
        let mut state = self.state.lock().unwrap();
        state.reset.cancel();
        state.reset = CancellationToken::new();
    }
}

/// What a connection's client side tells its server side about the reply
/// now awaited.
type Pending = Arc<Mutex<Option<Action>>>;

async fn relay(mut client: TcpStream, state: Arc<Mutex<State>>) {
    // Startup: untyped messages; TLS and GSS encryption are declined here.
    let startup = loop {
        let Ok(message) = read_untyped(&mut client).await else { return };
        let code = u32::from_be_bytes(message[4..8].try_into().unwrap());
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            if client.write_all(b"N").await.is_err() {
                return;
            }
            continue;
        }
        break message;
    };
    through_the_hole(&state).await;
    let Ok(mut server) = TcpStream::connect(UPSTREAM).await else { return };
    // Messages are forwarded one by one: without this, Nagle's algorithm
    // and delayed ACKs hold many of them back for tens of milliseconds.
    if client.set_nodelay(true).is_err() || server.set_nodelay(true).is_err() {
        return;
    }
    if server.write_all(&startup).await.is_err() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let pending: Pending = Arc::default();
    tokio::select! {
        _ = client_to_server(BufReader::new(client_read), server_write, state.clone(), pending.clone()) => {}
        _ = server_to_client(BufReader::new(server_read), client_write, state, pending) => {}
    }
}

/// Waits while the proxy is a black hole.
async fn through_the_hole(state: &Mutex<State>) {
    while state.lock().unwrap().blackhole {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_untyped(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u32().await?;
    let mut message = length.to_be_bytes().to_vec();
    message.resize(length as usize, 0);
    stream.read_exact(&mut message[4..]).await?;
    Ok(message)
}

/// One typed message: its type byte, then its whole bytes (type included).
async fn read_typed(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = stream.read_u8().await?;
    let length = stream.read_u32().await?;
    let mut message = vec![kind];
    message.extend_from_slice(&length.to_be_bytes());
    message.resize(1 + length as usize, 0);
    stream.read_exact(&mut message[5..]).await?;
    Ok((kind, message))
}

/// The NUL-terminated strings at the start of a message body.
fn strings(body: &[u8], count: usize) -> Vec<String> {
    body.split(|byte| *byte == 0).take(count).map(|text| String::from_utf8_lossy(text).into_owned()).collect()
}

async fn client_to_server(
    mut client: BufReader<OwnedReadHalf>,
    mut server: OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    pending: Pending,
) {
    let mut statements: HashMap<String, String> = HashMap::new();
    let mut portals: HashMap<String, String> = HashMap::new();
    // What the open transaction has run, for `Statement::CommitOf`.
    let mut transaction: Vec<String> = Vec::new();
    let mut armed: Option<Action> = None;
    loop {
        let Ok((kind, message)) = read_typed(&mut client).await else { return };
        let body = &message[5..];
        let mut action = None;
        let run = |sql: String, transaction: &mut Vec<String>| {
            let action = state.lock().unwrap().take(&sql, transaction);
            if ends_transaction(&sql) {
                transaction.clear();
            } else {
                transaction.push(sql);
            }
            action
        };
        match kind {
            b'Q' => action = run(strings(body, 1).remove(0), &mut transaction),
            b'P' => {
                let parsed = strings(body, 2);
                statements.insert(parsed[0].clone(), parsed[1].clone());
            }
            b'B' => {
                let bound_to = strings(body, 2);
                portals.insert(bound_to[0].clone(), bound_to[1].clone());
            }
            b'E' => {
                let portal = &strings(body, 1)[0];
                let sql = portals.get(portal).and_then(|name| statements.get(name)).cloned().unwrap_or_default();
                armed = run(sql, &mut transaction).or(armed);
            }
            // A Sync sends what came before it: the reply to arm for.
            b'S' => action = armed.take(),
            b'X' => {
                server.write_all(&message).await.ok();
                return;
            }
            _ => {}
        }
        match action {
            Some(Action::CutBefore) => return,
            Some(action) => *pending.lock().unwrap() = Some(action),
            None => {}
        }
        through_the_hole(&state).await;
        if server.write_all(&message).await.is_err() {
            return;
        }
    }
}

async fn server_to_client(
    mut server: BufReader<OwnedReadHalf>,
    mut client: OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    pending: Pending,
) {
    loop {
        let Ok((kind, message)) = read_typed(&mut server).await else { return };
        if kind == b'E' {
            // Fields: a type byte and a NUL-terminated value each; 'C' is the SQLSTATE.
            let fields = message[5..].split(|byte| *byte == 0);
            if let Some(code) = fields.filter_map(|field| field.split_first()).find(|(kind, _)| **kind == b'C') {
                state.lock().unwrap().errors.push(String::from_utf8_lossy(code.1).into_owned());
            }
        }
        let action = *pending.lock().unwrap();
        match action {
            Some(Action::LoseReply) => {
                // The statement has taken effect once its reply is complete.
                if kind == b'Z' {
                    return;
                }
                continue;
            }
            Some(Action::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                *pending.lock().unwrap() = None;
            }
            Some(Action::CutBefore) | None => {}
        }
        through_the_hole(&state).await;
        if client.write_all(&message).await.is_err() {
            return;
        }
    }
}
