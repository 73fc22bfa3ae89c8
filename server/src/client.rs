//! A minimal blocking HTTP/1.1 client for loopback tests and load
//! benchmarks of OpenAI-compatible servers (this one, llama.cpp's
//! `llama-server`): one request per connection (`Connection: close`),
//! `Content-Length` or chunked bodies, and server-sent events delivered
//! one at a time as they arrive. It is not a general HTTP client: no TLS,
//! no redirects, no keep-alive. Header and chunk sizes are bounded, so a
//! misbehaving server cannot make it allocate without limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest header section accepted.
const MAX_HEADER_BYTES: usize = 64 << 10;
/// Largest body (or chunk) accepted.
const MAX_BODY_BYTES: usize = 64 << 20;

/// A response read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> std::io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(std::io::Error::other)
    }
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// An open response whose body is read as it arrives.
#[derive(Debug)]
pub struct OpenResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes of the body left (Content-Length), or of the current chunk.
    left: Option<usize>,
    done: bool,
}

/// Send `method path` with an optional JSON body; returns once the
/// status line and headers are in.
pub fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<OpenResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        stream.write_all(b)?;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("not an HTTP status line: {line:?}")))?;
    let mut headers = Vec::new();
    let mut total = line.len();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 || total > MAX_HEADER_BYTES {
            return Err(invalid("the response's headers end early or are too long"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let left = match (chunked, find("content-length")) {
        (false, Some(v)) => Some(
            v.parse::<usize>()
                .map_err(|_| invalid(format!("Content-Length {v:?}")))?,
        ),
        _ => None,
    };
    Ok(OpenResponse {
        status,
        headers,
        reader,
        chunked,
        left: if chunked { Some(0) } else { left },
        done: false,
    })
}

impl OpenResponse {
    /// The next bytes of the body; empty at its end.
    pub fn next_bytes(&mut self) -> std::io::Result<Vec<u8>> {
        if self.done {
            return Ok(Vec::new());
        }
        if self.chunked {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(invalid("the chunked body ends without its last chunk"));
            }
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size > MAX_BODY_BYTES {
                return Err(invalid(format!("a chunk of {size} bytes")));
            }
            if size == 0 {
                self.done = true;
                return Ok(Vec::new());
            }
            let mut buf = vec![0; size];
            self.reader.read_exact(&mut buf)?;
            let mut crlf = [0; 2];
            self.reader.read_exact(&mut crlf)?;
            return Ok(buf);
        }
        let mut buf = vec![0; 16 << 10];
        let want = self.left.map_or(buf.len(), |l| l.min(buf.len()));
        if want == 0 {
            self.done = true;
            return Ok(Vec::new());
        }
        let n = self.reader.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
            if self.left.is_some_and(|l| l > 0) {
                return Err(invalid("the body ends before its Content-Length"));
            }
        }
        if let Some(l) = &mut self.left {
            *l -= n;
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// The rest of the body.
    pub fn read_all(mut self) -> std::io::Result<HttpResponse> {
        let mut body = Vec::new();
        loop {
            let b = self.next_bytes()?;
            if b.is_empty() {
                break;
            }
            if body.len() + b.len() > MAX_BODY_BYTES {
                return Err(invalid("the body is over 64 MiB"));
            }
            body.extend_from_slice(&b);
        }
        Ok(HttpResponse {
            status: self.status,
            headers: self.headers,
            body,
        })
    }

    /// Read server-sent events, calling `on_data` with each event's `data`
    /// (its data lines joined) as it arrives; stops at the end of the body
    /// or when `on_data` returns false (the connection is then dropped).
    pub fn events(mut self, on_data: &mut dyn FnMut(&str) -> bool) -> std::io::Result<()> {
        let mut pending = Vec::new();
        loop {
            let b = self.next_bytes()?;
            if b.is_empty() {
                return Ok(());
            }
            pending.extend_from_slice(&b);
            if pending.len() > MAX_BODY_BYTES {
                return Err(invalid("an event of over 64 MiB"));
            }
            while let Some(end) = find_event_end(&pending) {
                let event: Vec<u8> = pending.drain(..end.0 + end.1).collect();
                let text = String::from_utf8_lossy(&event[..end.0]);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() && !on_data(&data.join("\n")) {
                    return Ok(());
                }
            }
        }
    }
}

/// Where the first blank line ends an event: (its length, the separator's).
fn find_event_end(b: &[u8]) -> Option<(usize, usize)> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

/// Send a request and read the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    open(addr, method, path, body, timeout)?.read_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ends_are_found_with_either_line_ending() {
        assert_eq!(find_event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: a\n"), None);
    }
}
