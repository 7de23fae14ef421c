//! Write order against the real CQL node: a write that reaches the node after a newer write of
//! the same cells must not override it. That happens to a request that timed out on the client
//! but was still queued on the node while the loop retried it and went on, and to the last
//! write of an instance whose partitions were revoked, applied after the next owner's. The
//! sessions carry client-side timestamps for that (`CqlConfig::session_builder`).
//!
//! The late arrival is made real with a TCP proxy between one session and the node that holds
//! the session's bytes until the test lets them through.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Forwards connections to `node`; while held, what the clients send is kept back (and copied
/// into `held`) until it is released. What the node sends is always forwarded.
struct HoldingProxy {
    address: SocketAddr,
    hold: watch::Sender<bool>,
    held: Arc<Mutex<Vec<u8>>>,
    arrived: Arc<Notify>,
}

impl HoldingProxy {
    async fn start(node: SocketAddr) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let address = listener.local_addr().expect("proxy address");
        let (hold, holding) = watch::channel(false);
        let held = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (held_by_task, arrived_by_task) = (Arc::clone(&held), Arc::clone(&arrived));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(node).await.expect("proxy to the node");
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let (mut holding, held, arrived) = (
                    holding.clone(),
                    Arc::clone(&held_by_task),
                    Arc::clone(&arrived_by_task),
                );
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    loop {
                        let read = match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => read,
                        };
                        if *holding.borrow() {
                            held.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .extend_from_slice(&buffer[..read]);
                            arrived.notify_waiters();
                            if holding.wait_for(|hold| !hold).await.is_err() {
                                return;
                            }
                        }
                        if server_write.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HoldingProxy {
            address,
            hold,
            held,
            arrived,
        }
    }

    fn hold(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// Waits until the bytes held back contain `needle`.
    async fn wait_until_held(&self, needle: &[u8]) {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let notified = self.arrived.notified();
                let found = self
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .windows(needle.len())
                    .any(|window| window == needle);
                if found {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the write reached the proxy");
    }
}

#[tokio::test]
async fn a_write_that_reaches_the_node_late_loses_to_the_newer_write_it_follows() {
    let stack = Stack::get().await;
    let (session, keyspace) = stack.keyspace().await;
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.write_order (id text PRIMARY KEY, value text)"),
            (),
        )
        .await
        .expect("create table");
    let insert = format!("INSERT INTO {keyspace}.write_order (id, value) VALUES (?, ?)");

    // The late session reaches the node only through the proxy: it is its contact point, and
    // the addresses the driver learns for the node (the node's own, or the one it reached the
    // node at) both lead to it.
    let node = session.get_cluster_state().get_nodes_info()[0].address;
    let node = SocketAddr::new(node.ip(), node.port());
    let proxy = HoldingProxy::start(node).await;
    let mut late_config = stack.config.cql.clone();
    late_config.contact_points = vec![proxy.address.to_string()];
    let late = late_config
        .session_builder()
        .expect("builder")
        .address_translator(Arc::new(HashMap::from([
            (node, proxy.address),
            (proxy.address, proxy.address),
        ])))
        .build()
        .await
        .expect("session through the proxy");
    let late_insert = late.prepare(insert.as_str()).await.expect("prepare");
    let newer_insert = session.prepare(insert.as_str()).await.expect("prepare");

    // The late session sends its write first; the proxy holds it back.
    proxy.hold(true);
    let stale = "sent first, applied last";
    let late_write = tokio::spawn(async move {
        late.execute_unpaged(&late_insert, ("row", stale))
            .await
            .map(|_| ())
    });
    proxy.wait_until_held(stale.as_bytes()).await;

    // The newer write is sent after it and applied at once.
    let newer = "sent second, applied first";
    session
        .execute_unpaged(&newer_insert, ("row", newer))
        .await
        .expect("newer write");

    // Then the held write reaches the node, which acknowledges it.
    proxy.hold(false);
    tokio::time::timeout(TIMEOUT, late_write)
        .await
        .expect("the held write is acknowledged once released")
        .expect("write task")
        .expect("late write");

    let (value,): (String,) = session
        .query_unpaged(
            format!("SELECT value FROM {keyspace}.write_order WHERE id = 'row'"),
            (),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("one row");
    assert_eq!(
        value, newer,
        "the write sent first but applied last overrode the newer one: the node stamped it \
         when it applied it"
    );
}
