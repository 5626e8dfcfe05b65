//! A minimal HTTP/1.1 client for the HTTP-level tests (one connection per request, chunked
//! decoding for watch streams).

#![allow(dead_code)]

pub mod kubectl;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Http {
    pub base: String,
}

async fn send_head(
    base: &str,
    method: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: &[u8],
) -> BufReader<TcpStream> {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nAccept: {accept}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    BufReader::new(s)
}

/// Reads the status line and headers: (status, chunked).
async fn read_head(r: &mut BufReader<TcpStream>) -> (u16, bool, Option<usize>) {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .expect("code")
        .parse()
        .expect("code");
    let mut chunked = false;
    let mut len = None;
    loop {
        line.clear();
        r.read_line(&mut line).await.expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
    }
    (code, chunked, len)
}

async fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim(), 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf).await.ok()?;
    buf.truncate(size);
    Some(buf)
}

impl Http {
    pub fn new(base: String) -> Self {
        Http { base }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.request_accept(method, path, content_type, "application/json", body)
            .await
    }

    pub async fn request_accept(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        accept: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut r = send_head(&self.base, method, path, content_type, accept, &bytes).await;
        let (code, chunked, len) = read_head(&mut r).await;
        let mut data = Vec::new();
        if chunked {
            while let Some(c) = read_chunk(&mut r).await {
                data.extend(c);
            }
        } else if let Some(n) = len {
            data.resize(n, 0);
            r.read_exact(&mut data).await.expect("body");
        } else {
            r.read_to_end(&mut data).await.expect("body");
        }
        let v = serde_json::from_slice(&data).unwrap_or(Value::Null);
        (code, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, "application/json", None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, "application/json", Some(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("PUT", path, "application/json", Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, ct: &str, body: &Value) -> (u16, Value) {
        self.request("PATCH", path, ct, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request("DELETE", path, "application/json", None).await
    }

    /// Opens a watch; read events with [`Watch::next`].
    pub async fn watch(&self, path: &str) -> Watch {
        let mut r = send_head(
            &self.base,
            "GET",
            path,
            "application/json",
            "application/json",
            &[],
        )
        .await;
        let (code, chunked, _) = read_head(&mut r).await;
        assert_eq!(code, 200, "watch {path}");
        assert!(chunked, "watch answers are chunked");
        Watch { r, buf: Vec::new() }
    }
}

pub struct Watch {
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, `None` when the stream ended (or after 5 seconds of silence).
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event json"));
            }
            let chunk =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_chunk(&mut self.r))
                    .await
                    .ok()??;
            self.buf.extend(chunk);
        }
    }

    /// Next non-BOOKMARK event.
    pub async fn next_change(&mut self) -> Option<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}
