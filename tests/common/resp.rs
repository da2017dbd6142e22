//! A raw RESP2 client for the Redis door's tests: replies as a client sees them, and a
//! connection whose reads give up after [`BOUND`].

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::BOUND;

/// One RESP2 reply, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Resp>),
    NilArray,
}

pub fn bulk(bytes: &[u8]) -> Resp {
    Resp::Bulk(bytes.to_vec())
}

pub fn ok() -> Resp {
    Resp::Simple("OK".into())
}

/// The reply at the start of `buf` and the bytes it takes; `None` while it is incomplete.
pub fn parse_reply(buf: &[u8]) -> Option<(Resp, usize)> {
    let cr = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..cr]).expect("reply header is not text");
    let after = cr + 2;
    let number = || line.parse::<i64>().expect("reply length is not a number");
    match buf[0] {
        b'+' => Some((Resp::Simple(line.into()), after)),
        b'-' => Some((Resp::Error(line.into()), after)),
        b':' => Some((Resp::Int(number()), after)),
        b'$' if number() < 0 => Some((Resp::Nil, after)),
        b'$' => {
            let len = number() as usize;
            if buf.len() < after + len + 2 {
                return None;
            }
            assert_eq!(
                &buf[after + len..after + len + 2],
                b"\r\n",
                "bulk not ended"
            );
            Some((
                Resp::Bulk(buf[after..after + len].to_vec()),
                after + len + 2,
            ))
        }
        b'*' if number() < 0 => Some((Resp::NilArray, after)),
        b'*' => {
            let mut used = after;
            let mut items = Vec::new();
            for _ in 0..number() {
                let (item, n) = parse_reply(&buf[used..])?;
                items.push(item);
                used += n;
            }
            Some((Resp::Array(items), used))
        }
        other => panic!("a reply cannot start with {:?}", other as char),
    }
}

/// A raw RESP connection whose reads give up after [`BOUND`].
pub struct Conn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, BOUND).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream.set_write_timeout(Some(BOUND)).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next reply; panics when the server closes the connection or sends nothing in time.
    pub fn reply(&mut self) -> Resp {
        self.try_reply()
            .expect("the server closed the connection instead of replying")
    }

    /// The next reply, or `None` when the server closed the connection first.
    pub fn try_reply(&mut self) -> Option<Resp> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                return Some(reply);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("no reply within {BOUND:?}: {e}"),
            }
        }
    }

    /// Sends one multibulk request and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Resp {
        self.send(&multibulk(args));
        self.reply()
    }

    /// Like [`Conn::call`], with the arguments as text.
    pub fn cmd(&mut self, args: &[&str]) -> Resp {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call(&args)
    }

    /// An integer reply, or a panic naming the command.
    pub fn int(&mut self, args: &[&str]) -> i64 {
        match self.cmd(args) {
            Resp::Int(n) => n,
            other => panic!("{args:?} answered {other:?}"),
        }
    }

    /// Asserts that the server closes the connection with nothing more to say.
    pub fn assert_closed(&mut self) {
        assert_eq!(self.buf, b"", "unread bytes before the close");
        match self.try_reply() {
            None => {}
            Some(reply) => panic!("expected the connection to close, got {reply:?}"),
        }
    }
}

pub fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}
