//! The sample programs `meshpass up` runs (`meshpass sample helloworld|http|sleep`): tiny
//! blocking HTTP/1.0 servers that identify themselves by their `Server` header, so a response
//! shows whether it came through the sidecar (`server: istio-envoy`) or straight from the app.

use crate::MeshError;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// What a sample server answers.
#[derive(Clone, Debug)]
pub enum SampleApp {
    /// Istio's helloworld: `GET /hello` → `Hello version: V, instance: POD`, 404 elsewhere.
    Helloworld {
        /// Version string (`v1`).
        version: String,
    },
    /// A plain HTTP host answering every path with 200 and `Server: NAME`.
    Http {
        /// The `Server` header value.
        server: String,
    },
}

/// Serves `app` on `0.0.0.0:port` until the process is killed.
pub fn serve(app: SampleApp, port: u16) -> Result<(), MeshError> {
    let addr = format!("0.0.0.0:{port}");
    let listener = TcpListener::bind(&addr).map_err(MeshError::io("cannot listen on", &addr))?;
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "local".to_string());
    eprintln!("sample listening on {addr} as {instance}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (app, instance) = (app.clone(), instance.clone());
        std::thread::spawn(move || {
            // A client that goes away mid-request is its own problem, not the server's.
            let _ = handle(conn, &app, &instance);
        });
    }
    Ok(())
}

/// The response for one request line, as (status, server header, body).
pub fn respond(app: &SampleApp, instance: &str, method: &str, path: &str) -> (u16, String, String) {
    match app {
        SampleApp::Helloworld { version } => {
            let server = format!("helloworld/{version} (meshpass sample)");
            // HEAD as GET (the body is dropped when writing): `curl -I` is how users check.
            if (method == "GET" || method == "HEAD") && (path == "/hello" || path.starts_with("/hello?")) {
                (200, server, format!("Hello version: {version}, instance: {instance}\n"))
            } else {
                (404, server, "not found\n".to_string())
            }
        }
        SampleApp::Http { server } => (200, server.clone(), format!("{server}: {method} {path} from {instance}\n")),
    }
}

fn handle(mut conn: TcpStream, app: &SampleApp, instance: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, server, body) = respond(app, instance, method, path);
    let reason = if status == 200 { "OK" } else { "Not Found" };
    // HTTP/1.0 with Content-Length and close: the simplest thing every client understands.
    let reply = format!(
        "HTTP/1.0 {status} {reason}\r\nServer: {server}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = if method == "HEAD" { reply.strip_suffix(body.as_str()).unwrap_or(&reply).to_string() } else { reply };
    conn.write_all(reply.as_bytes())?;
    conn.flush()
}

/// `meshpass sample sleep`: a client pod's main process, which does nothing until killed.
pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helloworld_answers_hello_and_404s_elsewhere() {
        let app = SampleApp::Helloworld { version: "v1".into() };
        let (status, server, body) = respond(&app, "helloworld-v1-abc", "GET", "/hello");
        assert_eq!((status, body.as_str()), (200, "Hello version: v1, instance: helloworld-v1-abc\n"));
        assert_eq!(server, "helloworld/v1 (meshpass sample)");
        assert_eq!(respond(&app, "x", "GET", "/").0, 404);
        assert_eq!(respond(&app, "x", "HEAD", "/hello").0, 200);
    }

    #[test]
    fn serves_over_tcp_as_http_1_0() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            handle(conn, &SampleApp::Http { server: "external".into() }, "t").expect("handle");
        });
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.contains("Server: external\r\n"), "{out}");
    }
}
