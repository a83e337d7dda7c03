//! A DNS A-record query over UDP, enough to prove the cluster's DNS answers from outside a pod
//! (the host reaches the kube-dns ClusterIP through the bed's veth pair and kube-proxy's rules).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Asks `server` for the A records of `name`. `Ok(vec![])` is an answer without addresses
/// (NXDOMAIN or no A record); `Err` is no answer at all.
pub fn query_a(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> std::io::Result<Vec<Ipv4Addr>> {
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0x1f1f);
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(server)?;
    socket.send(&encode(id, name)?)?;
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf)?;
    decode(id, &buf[..n])
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned())
}

fn encode(id: u16, name: &str) -> std::io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    // Recursion desired; one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..64).contains(l))
            .ok_or_else(|| invalid("bad label"))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    Ok(q)
}

fn decode(id: u16, r: &[u8]) -> std::io::Result<Vec<Ipv4Addr>> {
    if r.len() < 12 || r[0..2] != id.to_be_bytes() {
        return Err(invalid("not our answer"));
    }
    let answers = u16::from_be_bytes([r[6], r[7]]);
    let mut at = 12;
    // Skip the question: name, type, class.
    at = skip_name(r, at)? + 4;
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(r, at)?;
        let header = r.get(at..at + 10).ok_or_else(|| invalid("short record"))?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[8], header[9]]));
        at += 10;
        let data = r.get(at..at + len).ok_or_else(|| invalid("short data"))?;
        if kind == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += len;
    }
    Ok(out)
}

fn skip_name(r: &[u8], mut at: usize) -> std::io::Result<usize> {
    loop {
        let len = *r.get(at).ok_or_else(|| invalid("short name"))?;
        if len & 0xc0 == 0xc0 {
            return Ok(at + 2);
        }
        at += 1 + usize::from(len);
        if len == 0 {
            return Ok(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_answer_with_a_compressed_name() {
        let mut r = encode(7, "a.b").unwrap();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1; // one answer
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, 1]);
        assert_eq!(decode(7, &r).unwrap(), vec![Ipv4Addr::new(10, 96, 0, 1)]);
        assert!(decode(8, &r).is_err());
        assert!(encode(1, "bad..name").is_err());
    }
}
