//! A tiny HTTP/1.0 file server on 127.0.0.1 for download tests (optionally slow).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running server; it stops when dropped.
pub struct FileServer {
    /// Base URL, e.g. http://127.0.0.1:4711
    pub url: String,
    /// Number of GET requests served.
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Serve the files of `dir`; `delay` pauses after each 64 KiB sent (to make a slow download).
    pub fn start(dir: PathBuf, delay: Option<Duration>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s2, h2) = (stop.clone(), hits.clone());
        std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).ok();
                let dir = dir.clone();
                let h = h2.clone();
                let s3 = s2.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    reader.read_line(&mut line).ok();
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    loop {
                        let mut l = String::new();
                        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut stream = stream;
                    let file = dir.join(path.trim_start_matches('/'));
                    match std::fs::read(&file) {
                        Ok(body) => {
                            let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                            for chunk in body.chunks(64 << 10) {
                                if s3.load(Ordering::SeqCst) || stream.write_all(chunk).is_err() {
                                    return;
                                }
                                if let Some(d) = delay {
                                    std::thread::sleep(d);
                                }
                            }
                        }
                        Err(_) => {
                            let _ = stream
                                .write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                        }
                    }
                });
            }
        });
        FileServer { url, hits, stop }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
