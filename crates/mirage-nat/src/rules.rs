//! The firewall's rules: a small text syntax, one rule per line, read
//! once at start; a line that does not parse refuses the whole set with
//! its number and what to write instead.
//!
//! ```text
//! # A comment runs from '#' to the end of the line; blank lines are skipped.
//! ACTION [in on IFACE] [out on IFACE] [proto PROTO] [from ADDR [port PORTS]] [to ADDR [port PORTS]]
//!
//! ACTION  allow | deny
//! IFACE   an interface's name, or `local`: the router itself (`out on
//!         local` is traffic to the router, `in on local` traffic it sends)
//! PROTO   tcp | udp | icmp (echo requests) | any
//! ADDR    any | A.B.C.D | A.B.C.D/N
//! PORTS   N or N-M, several joined by commas without spaces; tcp and udp only
//! ```
//!
//! The rules are written for IPv4. A router that also routes IPv6 (without
//! NAT) may ask them about a new IPv6 flow ([`Rules::decide_ipv6`]): a rule
//! that names an address or prefix never matches IPv6, the others match on
//! interfaces, protocol (`icmp` is ICMPv6 echo) and ports as for IPv4, and
//! a flow no rule matches is denied, as for IPv4.
//!
//! Rules are matched against the first packet of each new flow, in order;
//! the first that matches decides, and a flow no rule matches is denied.
//! Packets of flows already allowed (both directions), and ICMP errors
//! about them, pass without the rules. Addresses and ports are matched as
//! the packet reaches its destination: after a port forward has rewritten
//! the destination, before masquerade rewrites the source.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;

use crate::{Interface, LOCAL, Protocol};

/// What a rule does with the flows it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The flow is tracked and its packets pass, both ways.
    Allow,
    /// The packet is dropped and counted ([`crate::Reason::Denied`]).
    Deny,
}

/// An address prefix: `addr/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    addr: u32,
    mask: u32,
}

impl Prefix {
    const ANY: Prefix = Prefix { addr: 0, mask: 0 };
    fn contains(&self, a: u32) -> bool {
        a & self.mask == self.addr
    }
}

#[derive(Debug, Clone)]
struct Rule {
    action: Action,
    in_if: Option<u8>,
    out_if: Option<u8>,
    proto: Option<u8>,
    src: Prefix,
    sports: Vec<(u16, u16)>,
    dst: Prefix,
    dports: Vec<(u16, u16)>,
    line: usize,
    text: String,
    hits: u64,
}

/// The firewall's rules, in order, with how many flows each decided.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    default_hits: u64,
}

/// One rule as [`Rules::iter`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo<'a> {
    /// Its line in the text it was read from (1 is the first).
    pub line: usize,
    /// The rule as written, without its comment.
    pub text: &'a str,
    /// What it does.
    pub action: Action,
    /// How many new flows it decided.
    pub hits: u64,
}

/// A rule that does not parse: its line and what is wrong, with what to
/// write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The line (1 is the first).
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "firewall rule on line {}: {}", self.line, self.message)
    }
}

impl core::error::Error for ParseError {}

/// What a flow's first packet looks like to the rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub in_if: u8,
    pub out_if: u8,
    pub proto: u8,
    pub src: u32,
    pub sport: u16,
    pub dst: u32,
    pub dport: u16,
}

fn in_ranges(ranges: &[(u16, u16)], p: u16) -> bool {
    ranges.is_empty() || ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&p))
}

impl Rule {
    fn matches(&self, c: &Candidate) -> bool {
        self.in_if.is_none_or(|i| i == c.in_if)
            && self.out_if.is_none_or(|o| o == c.out_if)
            && self.proto.is_none_or(|p| p == c.proto)
            && self.src.contains(c.src)
            && self.dst.contains(c.dst)
            && in_ranges(&self.sports, c.sport)
            && in_ranges(&self.dports, c.dport)
    }
}

impl Rules {
    /// No rules: every new flow is denied.
    pub fn deny_all() -> Rules {
        Rules::default()
    }

    /// Reads rules from `text` (the syntax is in the module's doc).
    /// `interfaces` names the interfaces rules may mention; `local` is
    /// the router itself and may not be one of them.
    ///
    /// ```
    /// use mirage_nat::{Interface, Rules};
    /// let ifs = [("uplink", Interface(0)), ("inside", Interface(1))];
    /// let rules = Rules::parse("allow in on inside  # anything from inside\n\
    ///                           allow in on uplink proto tcp to 10.0.0.5 port 80,8000-8080\n", &ifs).unwrap();
    /// assert_eq!(rules.iter().count(), 2);
    /// let err = Rules::parse("allow in on inside proto tpc", &ifs).unwrap_err();
    /// assert_eq!(err.line, 1);
    /// assert!(err.to_string().contains("write tcp, udp, icmp or any"));
    /// ```
    pub fn parse(text: &str, interfaces: &[(&str, Interface)]) -> Result<Rules, ParseError> {
        let mut rules = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let body = raw.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let rule = parse_rule(body, n + 1, interfaces).map_err(|message| ParseError { line: n + 1, message })?;
            rules.push(rule);
        }
        Ok(Rules { rules, default_hits: 0 })
    }

    /// The rules in order, with their hit counts.
    pub fn iter(&self) -> impl Iterator<Item = RuleInfo<'_>> {
        self.rules.iter().map(|r| RuleInfo { line: r.line, text: &r.text, action: r.action, hits: r.hits })
    }

    /// How many new flows no rule matched (and were denied).
    pub fn default_hits(&self) -> u64 {
        self.default_hits
    }

    /// Decides a new IPv6 flow coming in on `in_if` and going out of
    /// `out_if` (`None`: to the router itself), counting the hit: the
    /// first rule without an address that matches decides, and a flow no
    /// rule matches is denied.
    ///
    /// ```
    /// use mirage_nat::{Action, Interface, Protocol, Rules};
    /// let ifs = [("uplink", Interface(0)), ("inside", Interface(1))];
    /// let mut rules = Rules::parse("allow in on uplink proto tcp to 10.0.0.5 port 80\n\
    ///                               allow in on inside\n", &ifs).unwrap();
    /// let out = rules.decide_ipv6(Interface(1), Some(Interface(0)), Protocol::Udp, 5000, 53);
    /// assert_eq!(out, Action::Allow);
    /// // The first rule names an IPv4 address: it never matches IPv6.
    /// let back = rules.decide_ipv6(Interface(0), Some(Interface(1)), Protocol::Tcp, 5000, 80);
    /// assert_eq!(back, Action::Deny);
    /// assert_eq!(rules.default_hits(), 1);
    /// ```
    pub fn decide_ipv6(
        &mut self,
        in_if: Interface,
        out_if: Option<Interface>,
        protocol: Protocol,
        sport: u16,
        dport: u16,
    ) -> Action {
        let c = Candidate {
            in_if: in_if.0,
            out_if: out_if.map_or(LOCAL, |i| i.0),
            proto: protocol.number(),
            src: 0,
            sport: if protocol == Protocol::Icmp { 0 } else { sport },
            dst: 0,
            dport,
        };
        for r in &mut self.rules {
            if r.src == Prefix::ANY && r.dst == Prefix::ANY && r.matches(&c) {
                r.hits += 1;
                return r.action;
            }
        }
        self.default_hits += 1;
        Action::Deny
    }

    /// Decides a new flow, counting the hit.
    pub(crate) fn decide(&mut self, c: &Candidate) -> Action {
        for r in &mut self.rules {
            if r.matches(c) {
                r.hits += 1;
                return r.action;
            }
        }
        self.default_hits += 1;
        Action::Deny
    }
}

fn parse_rule(body: &str, line: usize, interfaces: &[(&str, Interface)]) -> Result<Rule, String> {
    let mut words = body.split_whitespace();
    let action = match words.next() {
        Some("allow") => Action::Allow,
        Some("deny") => Action::Deny,
        Some(w) => return Err(format!("a rule starts with its action, not '{w}': write allow or deny")),
        None => return Err("an empty rule: write allow or deny and what it matches".into()),
    };
    let mut rule = Rule {
        action,
        in_if: None,
        out_if: None,
        proto: None,
        src: Prefix::ANY,
        sports: Vec::new(),
        dst: Prefix::ANY,
        dports: Vec::new(),
        line,
        text: body.to_string(),
        hits: 0,
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut words = words.peekable();
    while let Some(w) = words.next() {
        if seen.contains(&w) {
            return Err(format!("'{w}' is given twice: give each of in, out, proto, from and to once"));
        }
        match w {
            "in" | "out" => {
                match words.next() {
                    Some("on") => {}
                    _ => return Err(format!("'{w}' needs an interface: write '{w} on NAME'")),
                }
                let name = words.next().ok_or_else(|| format!("'{w} on' needs an interface's name"))?;
                let i = interface(name, interfaces)?;
                if w == "in" {
                    rule.in_if = Some(i);
                } else {
                    rule.out_if = Some(i);
                }
            }
            "proto" => {
                let p = words.next().unwrap_or("");
                rule.proto = match p {
                    "tcp" => Some(Protocol::Tcp.number()),
                    "udp" => Some(Protocol::Udp.number()),
                    "icmp" => Some(Protocol::Icmp.number()),
                    "any" => None,
                    _ => return Err(format!("'{p}' is not a protocol: write tcp, udp, icmp or any")),
                };
            }
            "from" | "to" => {
                let a =
                    words.next().ok_or_else(|| format!("'{w}' needs an address: write any, A.B.C.D or A.B.C.D/N"))?;
                let prefix = prefix(a)?;
                let mut ports = Vec::new();
                if words.peek() == Some(&"port") {
                    words.next();
                    let p =
                        words.next().ok_or("'port' needs ports: write N, N-M or a list such as 80,443,8000-8080")?;
                    ports = port_list(p)?;
                }
                if w == "from" {
                    (rule.src, rule.sports) = (prefix, ports);
                } else {
                    (rule.dst, rule.dports) = (prefix, ports);
                }
            }
            "port" => {
                return Err(
                    "'port' follows an address: write 'from ADDR port N' or 'to ADDR port N' (ADDR may be any)".into(),
                );
            }
            _ => return Err(format!("unknown word '{w}': expected in, out, proto, from or to")),
        }
        seen.push(w);
    }
    let tcp_udp = matches!(rule.proto, Some(6 | 17));
    if (!rule.sports.is_empty() || !rule.dports.is_empty()) && !tcp_udp {
        return Err("ports need a protocol that has them: add 'proto tcp' or 'proto udp'".into());
    }
    Ok(rule)
}

fn interface(name: &str, interfaces: &[(&str, Interface)]) -> Result<u8, String> {
    if name == "local" {
        return Ok(LOCAL);
    }
    interfaces.iter().find(|(n, _)| *n == name).map(|(_, i)| i.0).ok_or_else(|| {
        let mut known: Vec<&str> = interfaces.iter().map(|(n, _)| *n).collect();
        known.push("local");
        format!("no interface is named '{name}': the interfaces are {}", known.join(", "))
    })
}

fn prefix(s: &str) -> Result<Prefix, String> {
    if s == "any" {
        return Ok(Prefix::ANY);
    }
    let bad = || format!("'{s}' is not an address: write any, A.B.C.D or A.B.C.D/N with N at most 32");
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok().filter(|l| *l <= 32).ok_or_else(bad)?),
        None => (s, 32),
    };
    let addr = u32::from(a.parse::<Ipv4Addr>().map_err(|_| bad())?);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if addr & !mask != 0 {
        return Err(format!("'{s}' has bits set past its prefix length: write {}/{len}", Ipv4Addr::from(addr & mask)));
    }
    Ok(Prefix { addr, mask })
}

fn port_list(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let port = |p: &str| {
        p.parse::<u16>().map_err(|_| {
            format!("'{p}' is not a port: write a number from 0 to 65535 (ranges as N-M, lists with commas)")
        })
    };
    s.split(',')
        .map(|r| match r.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("'{r}' is an empty range: write the lower port first, {hi}-{lo}"));
                }
                Ok((lo, hi))
            }
            None => port(r).map(|p| (p, p)),
        })
        .collect()
}
