//! Descriptors are budgeted: by default one address may hold a quarter of the
//! process's open-files limit and all clients together the limit less 5%, so
//! that a flood of silent connections from two addresses (which once took all
//! 20,000) leaves room for health checks and new clients; past the total, only
//! health checks are answered.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;

use common::{http, relay_client, wait_until, Running, DEADLINE};

/// A TCP connection from `source` (any port) to `addr`.
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = addr else { panic!("the test relay listens on IPv4") };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; it is handed
    // to a TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        let opt_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            opt_len,
        );
        let from = sockaddr(SocketAddrV4::new(source, 0));
        assert_eq!(libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len), 0, "bind");
        let dest = sockaddr(to);
        let rc = libc::connect(fd, (&dest as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// The relay's open-files limit is this process's: the test must have room for
/// its own side of the flood.
fn open_files_limit() -> usize {
    hedgehog::config::open_files_limit()
}

#[test]
fn silent_floods_from_two_addresses_leave_room_for_health_checks_and_clients() {
    let limit = open_files_limit();
    let per_ip = hedgehog::config::default_max_per_ip(limit);
    assert!(2 * (per_ip + 50) + 500 < limit, "room in this process for the flood ({limit} files)");
    // The default limits; only the silence deadline is lengthened, so the flood
    // stays while it is measured.
    let (child, addr) = common::start_binary(&["--simulate", "--first-byte-timeout", "120"]);
    let _child = Running(child);
    let mut flood = Vec::new();
    for source in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)] {
        for _ in 0..per_ip + 50 {
            flood.push(connect_from(source, addr));
        }
    }
    wait_until("the relay holds both floods", || {
        http(addr, "GET", "/healthz", "").2["connections"].as_u64().unwrap_or(0) >= 2 * per_ip as u64
    });
    // It holds `per_ip` from each address and refuses the other 100 with 429
    // (which ones depends on the order the shards accept them in).
    for s in &flood {
        s.set_nonblocking(true).unwrap();
    }
    let mut refused = Vec::new();
    wait_until("100 refusals", || {
        for s in flood.iter_mut() {
            let mut buf = [0u8; 1024];
            if let Ok(n @ 1..) = s.read(&mut buf) {
                refused.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        refused.len() >= 100
    });
    assert_eq!(refused.len(), 100);
    for answer in &refused {
        assert!(answer.starts_with("HTTP/1.1 429 ") && answer.contains("too_many_connections"), "{answer}");
    }
    let (status, _, body) = http(addr, "GET", "/healthz", "");
    assert_eq!(status, 200, "{body}");
    let (mut client, id) = relay_client(addr);
    let (status, _, _) = http(addr, "POST", "/api/v1/subscribe/BTC-USD", &format!("X-Client-Id: {id}\r\n"));
    assert_eq!(status, 200);
    client.until("data", |v| v["type"] == "ticker" || v["type"] == "match");
    drop(flood);
}

#[test]
fn past_the_connection_limit_only_health_checks_are_answered() {
    let (child, addr) =
        common::start_binary(&["--simulate", "--max-connections", "300", "--first-byte-timeout", "120"]);
    let _child = Running(child);
    let flood: Vec<TcpStream> = (0..320).map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), addr)).collect();
    wait_until("the relay holds its limit", || {
        http(addr, "GET", "/livez", "").0 == 200
            && http(addr, "GET", "/healthz", "").2["connections"].as_u64().unwrap_or(0) >= 300
    });
    let (status, _, body) = http(addr, "GET", "/healthz", "");
    assert_eq!(status, 200, "served from the reserve: {body}");
    assert_eq!(http(addr, "GET", "/readyz", "").0, 200);
    let (status, head, body) = http(addr, "GET", "/api/v1/history/BTC-USD", "");
    assert_eq!((status, body["error"].as_str()), (503, Some("server_full")), "{body}");
    assert!(head.contains("Retry-After: 1") && head.contains("X-Hedgehog-Shard: "), "{head}");
    let mut ws = TcpStream::connect(addr).unwrap();
    ws.set_read_timeout(Some(DEADLINE)).unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = ws.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503 ") && answer.contains("server_full"), "{answer}");
    // Once the flood leaves, clients are served again.
    drop(flood);
    wait_until("room again", || http(addr, "GET", "/healthz", "").2["connections"].as_u64().unwrap_or(999) < 10);
    let (_client, _id) = relay_client(addr);
}
