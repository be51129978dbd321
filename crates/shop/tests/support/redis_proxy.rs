//! A TCP proxy between a shop and Redis that can lose the reply to a
//! command: the command reaches Redis and runs, and the connection is cut
//! before its answer comes back — the one failure a client cannot tell from
//! "it never ran". Commands are recognised by a piece of their bytes (a key
//! name, say); replies are not parsed, so the cut takes whatever Redis sent
//! next, as a real one would. It can also hold every reply back a while, as
//! a Redis that answers late.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Where Redis listens.
    upstream: String,
    /// Commands containing this lose their reply, this many more times.
    lose_reply: Option<(Vec<u8>, usize)>,
    fired: usize,
    /// How long each reply is held back.
    delay: Duration,
}

#[derive(Clone)]
pub struct RedisProxy {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl RedisProxy {
    /// In front of the shared Redis.
    pub async fn start() -> RedisProxy {
        Self::start_to(6379).await
    }

    /// In front of the Redis on `port`.
    pub async fn start_to(port: u16) -> RedisProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = format!("127.0.0.1:{port}");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State { upstream, ..State::default() }));
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, accepting.clone()));
            }
        });
        RedisProxy { port, state }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The next `times` commands whose bytes contain `needle` run in Redis,
    /// and their connection is cut before the reply.
    pub fn lose_reply_to(&self, needle: &str, times: usize) {
        self.state.lock().unwrap().lose_reply = Some((needle.as_bytes().to_vec(), times));
    }

    /// Every reply from now on reaches the shop this long after Redis sent
    /// it (`Duration::ZERO`: at once again).
    pub fn delay_replies(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// How many replies have been lost.
    pub fn fired(&self) -> usize {
        self.state.lock().unwrap().fired
    }
}

async fn relay(client: TcpStream, state: Arc<Mutex<State>>) {
    let address = state.lock().unwrap().upstream.clone();
    let Ok(server) = TcpStream::connect(address).await else { return };
    if client.set_nodelay(true).is_err() || server.set_nodelay(true).is_err() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Set once a matching command is forwarded: the next reply is cut.
    let cut = Arc::new(Notify::new());
    tokio::select! {
        _ = upstream(client_read, server_write, state.clone(), cut.clone()) => {}
        _ = downstream(server_read, client_write, state, cut) => {}
    }
}

async fn upstream(mut client: OwnedReadHalf, mut server: OwnedWriteHalf, state: Arc<Mutex<State>>, cut: Arc<Notify>) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        let matched = {
            let mut state = state.lock().unwrap();
            let hit = match &mut state.lose_reply {
                Some((needle, remaining)) if *remaining > 0 && chunk.windows(needle.len()).any(|w| w == needle) => {
                    *remaining -= 1;
                    true
                }
                _ => false,
            };
            state.fired += usize::from(hit);
            hit
        };
        // Armed before the command goes out, so its reply cannot slip past.
        if matched {
            cut.notify_one();
        }
        if server.write_all(chunk).await.is_err() {
            return;
        }
    }
}

async fn downstream(mut server: OwnedReadHalf, client: OwnedWriteHalf, state: Arc<Mutex<State>>, cut: Arc<Notify>) {
    // Replies go out in order, each when its delay from arrival is over, so
    // a delay holds each back without queueing them behind one another.
    let (replies, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        let mut client = client;
        while let Some((at, reply)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if client.write_all(&reply).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0; 64 * 1024];
    loop {
        tokio::select! {
            biased;
            _ = cut.notified() => {
                // Wait for Redis to answer, so the command has run, then drop
                // the answer and the connection.
                let _answered = server.read(&mut buffer).await;
                writer.abort();
                return;
            }
            read = server.read(&mut buffer) => {
                let read = match read {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                let at = Instant::now() + state.lock().unwrap().delay;
                if replies.send((at, buffer[..read].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
    drop(replies);
    writer.await.ok();
}
