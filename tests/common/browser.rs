//! A real browser for the page tests: Debian's `chromium`, headless, driven through Debian's
//! `chromedriver` over the W3C WebDriver protocol (JSON over HTTP on loopback; the few commands
//! the tests use are written here, over a plain TCP stream).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::broker::free_port;

/// A chromedriver and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// Whether Debian's chromium and chromedriver are installed (`deploy/setup.sh` installs them).
pub fn available() -> bool {
    Path::new("/usr/bin/chromedriver").exists() && Path::new("/usr/bin/chromium").exists()
}

impl Browser {
    pub fn start() -> Browser {
        assert!(available(), "chromium and chromedriver are missing: run deploy/setup.sh");
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser { driver, port, session: String::new(), _profile: profile };
        let until = Instant::now() + Duration::from_secs(30);
        while browser.request("GET", "/status", None).is_err() {
            assert!(Instant::now() < until, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let created = browser.request("POST", "/session", Some(caps)).expect("a browser session");
        browser.session = created["value"]["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    /// One WebDriver command: its `value`, or the error it answered.
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_bytes())).map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the answer ended in its head".into());
            }
            answer.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&answer).into_owned();
        let length: usize = (head.lines())
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .ok_or("no Content-Length")?;
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&body);
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        match head.split_whitespace().nth(1) {
            Some("200") => Ok(value),
            status => Err(format!("{method} {path}: {status:?}: {value}")),
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body).unwrap_or_else(|e| panic!("{e}"))["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> Option<String> {
        let path = format!("/session/{}/element", self.session);
        let found = self.request("POST", &path, Some(json!({"using": "css selector", "value": css}))).ok()?;
        let element = found["value"].as_object()?.values().next()?.as_str()?.to_string();
        Some(element)
    }

    /// The text of the first element `css` selects, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css)?;
        let path = format!("/session/{}/element/{element}/text", self.session);
        self.request("GET", &path, None).ok()?["value"].as_str().map(str::to_string)
    }

    /// How many elements `css` selects.
    pub fn count(&self, css: &str) -> usize {
        let found = self.command("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        found.as_array().map_or(0, Vec::len)
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    pub fn wait_text(&self, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        loop {
            if let Some(text) = self.text(css).filter(|t| ok(t)) {
                return text;
            }
            assert!(Instant::now() < until, "{css}: no matching text within {timeout:?}, last {:?}", self.text(css));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({"text": text}));
    }

    pub fn click(&self, css: &str) {
        self.on_element(css, "click", json!({}));
    }

    /// `action` on the element `css` selects, found again when the page drew it anew between
    /// the finding and the action (the pages redraw their tables as data comes).
    fn on_element(&self, css: &str, action: &str, body: Value) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let element = self.find(css).unwrap_or_else(|| panic!("no {css}"));
            let path = format!("/session/{}/element/{element}/{action}", self.session);
            match self.request("POST", &path, Some(body.clone())) {
                Ok(_) => return,
                Err(e) if e.contains("stale element") && Instant::now() < until => continue,
                Err(e) => panic!("{css}: {e}"),
            }
        }
    }

    /// The address the browser is at.
    pub fn url(&self) -> String {
        self.command("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// Signs in with `token` when the page shows the login form.
    pub fn sign_in_if_asked(&self, token: &str) {
        if self.find("#token").is_some() {
            self.type_into("#token", token);
            self.click("#sign-in");
        }
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.command("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64")).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
