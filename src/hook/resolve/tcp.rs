//! The retry over TCP of a query whose UDP answer came truncated (libevent 2.1's evdns has no
//! TCP): on a pool thread, the A and/or AAAA questions are asked again of the resolver's
//! configured name servers (resolv.conf's, `EVCO_RESOLV_CONF`'s or `set_nameservers`'s, in
//! order) over TCP, with plain blocking sockets (a pool thread is outside every coroutine), and
//! the answers' addresses are read from the replies. The name is the one whose UDP answer came
//! truncated (a search-list name included). Each server gets [`TIMEOUT`] to connect and
//! answer.

use std::ffi::c_int;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use super::query::Answer;

/// How long one name server has to accept the connection and answer.
const TIMEOUT: Duration = Duration::from_secs(5);

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const RCODE_NXDOMAIN: u8 = 3;

/// Asks `servers` for `name`'s A (`v4`) and AAAA (`v6`) records over TCP (blocking: run it on
/// the pool). The first server that answers both decides.
pub(super) fn query(servers: &[SocketAddr], name: &str, v4: bool, v6: bool) -> Answer {
    let mut kinds = Vec::new();
    if v4 {
        kinds.push(TYPE_A);
    }
    if v6 {
        kinds.push(TYPE_AAAA);
    }
    let Some(questions) = kinds
        .iter()
        .map(|&k| question(name, k))
        .collect::<Option<Vec<_>>>()
    else {
        return Answer::Failed(libc::EAI_NONAME);
    };
    for server in servers {
        if let Ok(replies) = ask(*server, &questions) {
            return merge(&replies);
        }
    }
    Answer::Failed(libc::EAI_AGAIN)
}

/// Sends every question over one connection to `server`; their replies' rcodes and addresses.
fn ask(server: SocketAddr, questions: &[(u16, Vec<u8>)]) -> io::Result<Vec<(u8, Vec<IpAddr>)>> {
    let mut conn = TcpStream::connect_timeout(&server, TIMEOUT)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut replies = Vec::new();
    for (id, message) in questions {
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(message);
        conn.write_all(&framed)?;
        let mut len = [0u8; 2];
        conn.read_exact(&mut len)?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        conn.read_exact(&mut reply)?;
        let parsed =
            parse(&reply, *id).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        replies.push(parsed);
    }
    Ok(replies)
}

/// The replies as one answer: any address is the answer; NXDOMAIN is `EAI_NONAME`; a name
/// without addresses `EAI_NODATA`; other rcodes `EAI_AGAIN` (server failure) or `EAI_FAIL`.
fn merge(replies: &[(u8, Vec<IpAddr>)]) -> Answer {
    let addrs: Vec<IpAddr> = replies
        .iter()
        .flat_map(|(_, a)| a.iter().copied())
        .collect();
    if !addrs.is_empty() {
        return Answer::Addrs(addrs);
    }
    let code: c_int = if replies.iter().any(|(r, _)| *r == RCODE_NXDOMAIN) {
        libc::EAI_NONAME
    } else if replies.iter().all(|(r, _)| *r == 0) {
        libc::EAI_NODATA
    } else if replies.iter().any(|(r, _)| *r == 2) {
        libc::EAI_AGAIN
    } else {
        libc::EAI_FAIL
    };
    Answer::Failed(code)
}

/// A query message for `name` and record type `kind`, with its id; `None` for a name DNS cannot
/// carry (an empty or over-long label).
fn question(name: &str, kind: u16) -> Option<(u16, Vec<u8>)> {
    // Not guessable is not needed over a connection of our own; distinct per question is.
    let id = (std::process::id() as u16) ^ kind.rotate_left(8);
    let mut m = Vec::with_capacity(name.len() + 18);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.strip_suffix('.').unwrap_or(name).split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    if m.len() > 12 + 255 {
        return None;
    }
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // class IN
    Some((id, m))
}

/// A reply's rcode and the A and AAAA addresses of its answer section; `None` when it is not a
/// well-formed reply to query `id`.
fn parse(m: &[u8], id: u16) -> Option<(u8, Vec<IpAddr>)> {
    let header = m.get(..12)?;
    if u16::from_be_bytes([header[0], header[1]]) != id || header[2] & 0x80 == 0 {
        return None;
    }
    let rcode = header[3] & 0x0f;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(m, i)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..answers {
        i = skip_name(m, i)?;
        let fixed = m.get(i..i + 10)?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let data = m.get(i + 10..i + 10 + len)?;
        match (kind, len) {
            (TYPE_A, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) => {
                let octets: [u8; 16] = data.try_into().ok()?;
                addrs.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            _ => {}
        }
        i += 10 + len;
    }
    Some((rcode, addrs))
}

/// The offset just past the (possibly compressed) name at `i`.
fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *m.get(i)?;
        match len {
            0 => return Some(i + 1),
            l if l & 0xc0 == 0xc0 => return Some(i + 2),
            l => i += 1 + l as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_tcp_replies_parse_to_their_addresses() {
        let (id, q) = question("Big.Evco.Test.", TYPE_A).unwrap();
        assert_eq!(&q[12..], b"\x03Big\x04Evco\x04Test\x00\x00\x01\x00\x01");
        let mut reply = q.clone();
        reply[2] = 0x81;
        reply[3] = 0x80;
        reply[7] = 2; // two answers
        for last in [1u8, 2] {
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, last]);
        }
        let (rcode, addrs) = parse(&reply, id).unwrap();
        assert_eq!(rcode, 0);
        assert_eq!(
            addrs,
            [IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]
        );
        assert!(parse(&reply, id ^ 1).is_none(), "another query's reply");
        assert!(parse(&reply[..reply.len() - 1], id).is_none(), "cut short");
        assert!(question("a..b", TYPE_A).is_none());
    }
}
