//! A stand-in for the Hugging Face hub on 127.0.0.1, for download tests (never the real hub).
//!
//! It serves the two routes the hub client uses: the repository listing
//! (`/api/models/{org}/{name}/revision/{rev}`) and files (`/{org}/{name}/resolve/{rev}/{file}`,
//! answering `Range` requests with 206 and the headers the hub sends: `X-Repo-Commit`,
//! `X-Linked-Etag` for LFS-style files, `ETag`, `Content-Range`). Faults are injected per file:
//! a connection dropped after some bytes, or a body that does not match its etag. Written with
//! `std::net` because the faults are malformed HTTP that no server crate would send.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::Digest as _;

/// A file of a served repository.
#[derive(Clone)]
pub struct ServedFile {
    /// The bytes sent.
    pub body: Vec<u8>,
    /// The etag announced (by default the body's sha256, as for LFS files).
    pub etag: String,
    /// Drop the connection after this many body bytes, this many times.
    pub drop_after: Option<(usize, usize)>,
}

impl ServedFile {
    /// A file announced with its true sha256.
    pub fn new(body: Vec<u8>) -> Self {
        let etag = sha256_hex(&body);
        Self {
            body,
            etag,
            drop_after: None,
        }
    }
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the server holds and what it saw.
#[derive(Default)]
pub struct HubState {
    /// `repo id → (commit, files)`.
    pub repos: BTreeMap<String, (String, BTreeMap<String, ServedFile>)>,
    /// Every request: (method, path, Range header).
    pub log: Vec<(String, String, Option<String>)>,
}

/// A running server; it stops when the test process ends.
pub struct HubServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Shared with the server thread.
    pub state: Arc<Mutex<HubState>>,
}

impl HubServer {
    /// Serve `state` on a free port.
    pub fn start(state: HubState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Self { endpoint, state }
    }

    /// Requests seen so far for paths containing `part`.
    pub fn requests(&self, part: &str) -> Vec<(String, String, Option<String>)> {
        let state = self.state.lock().expect("state");
        state
            .log
            .iter()
            .filter(|(_, p, _)| p.contains(part))
            .cloned()
            .collect()
    }
}

/// Add a repository of the files in `dir` (those named in `names`) at `commit`.
pub fn repo_from_dir(
    state: &mut HubState,
    repo: &str,
    commit: &str,
    dir: &std::path::Path,
    names: &[&str],
) {
    let files = names
        .iter()
        .map(|n| {
            let body = std::fs::read(dir.join(n)).expect("fixture file");
            (n.to_string(), ServedFile::new(body))
        })
        .collect();
    state
        .repos
        .insert(repo.to_string(), (commit.to_string(), files));
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn serve(mut stream: TcpStream, state: &Mutex<HubState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let mut st = state.lock().expect("state");
    st.log.push((method.clone(), path.clone(), range.clone()));
    let not_found = |stream: &mut TcpStream| {
        respond(
            stream,
            "404 Not Found",
            &[("Content-Length".into(), "0".into())],
            b"",
        )
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // {org}/{name}/revision/{rev}
        let segs: Vec<&str> = rest.split('/').collect();
        let Some((commit, files)) = (segs.len() == 4 && segs[2] == "revision")
            .then(|| st.repos.get(&format!("{}/{}", segs[0], segs[1])))
            .flatten()
        else {
            not_found(&mut stream);
            return Ok(());
        };
        let siblings: Vec<serde_json::Value> = files
            .keys()
            .map(|k| serde_json::json!({ "rfilename": k }))
            .collect();
        let body = serde_json::json!({ "sha": commit, "siblings": siblings }).to_string();
        respond(
            &mut stream,
            "200 OK",
            &[
                ("Content-Type".into(), "application/json".into()),
                ("Content-Length".into(), body.len().to_string()),
            ],
            body.as_bytes(),
        );
        return Ok(());
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if segs.len() != 5 || segs[2] != "resolve" {
        not_found(&mut stream);
        return Ok(());
    }
    let repo = format!("{}/{}", segs[0], segs[1]);
    let Some((commit, files)) = st.repos.get_mut(&repo) else {
        not_found(&mut stream);
        return Ok(());
    };
    let commit = commit.clone();
    let Some(file) = files.get_mut(segs[4]) else {
        not_found(&mut stream);
        return Ok(());
    };
    let size = file.body.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().map(|b: usize| b + 1).unwrap_or(size);
            (a, b.min(size))
        }
        None => (0, size),
    };
    let headers = vec![
        ("X-Repo-Commit".to_string(), commit),
        ("X-Linked-Etag".to_string(), format!("\"{}\"", file.etag)),
        ("ETag".to_string(), format!("\"{}\"", file.etag)),
        (
            "Content-Range".to_string(),
            format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
        ),
        ("Content-Length".to_string(), (end - start).to_string()),
    ];
    let mut body = file.body[start.min(size)..end].to_vec();
    // A dropped connection: the headers promise the whole range, fewer bytes arrive.
    let is_probe = end - start == 1 && size > 1;
    if !is_probe
        && let Some((after, times)) = file.drop_after.as_mut()
        && *times > 0
    {
        *times -= 1;
        body.truncate(*after);
    }
    drop(st);
    respond(&mut stream, "206 Partial Content", &headers, &body);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}
