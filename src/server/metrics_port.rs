//! `--metrics-addr`: a listener of shard 0's that serves `GET /metrics` and
//! nothing else, open (no credentials): bind it where only the scraper reaches.
//! One request per connection; at most [`MAX_SCRAPERS`] at once (past it a
//! connection is closed at once), each within the relay's request deadlines.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};

use super::conn::close_after;
use crate::http::Response;
use crate::hub::Hub;
use crate::net;

/// Connections served at once; a scraper needs one.
const MAX_SCRAPERS: usize = 16;

/// Accepts until cancelled: a task of its own, which nothing but its own
/// accepts wakes (glommio's waker limit, see `Shard::run`).
pub(super) async fn accept_loop(listener: TcpListener, hub: Rc<Hub>) {
    let open = Rc::new(Cell::new(0usize));
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(stream) if open.get() >= MAX_SCRAPERS => drop(stream),
            Ok(stream) => {
                backoff = Duration::from_millis(5);
                open.set(open.get() + 1);
                let (hub, open) = (hub.clone(), open.clone());
                let task = glommio::spawn_local(async move {
                    serve(stream, &hub).await;
                    open.set(open.get() - 1);
                });
                task.detach();
            }
            // Out of descriptors, typically: the main port's accept loop says so.
            Err(_) => {
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn serve(mut stream: TcpStream, hub: &Hub) {
    let d = hub.global.deadlines;
    let mut buf = Vec::new();
    let Ok(Some(req)) = net::read_request_within(&mut stream, &mut buf, d.first_byte, &d).await else { return };
    let started = Instant::now();
    let resp = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => match super::api::metrics(hub).await {
            Ok(resp) => resp,
            Err(e) => super::api::ApiError::from(e).response(),
        },
        (_, "/metrics") => Response::error(405, "method_not_allowed", "use GET").with_header("Allow", "GET"),
        (_, path) => Response::error(404, "not_found", format!("no route for {path} (this port serves /metrics)")),
    };
    hub.count_request("metrics", resp.status, started);
    // One answer per connection (`Connection: close`).
    close_after(stream, &resp, hub.id).await;
}
