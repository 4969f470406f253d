//! The firewall's rule syntax: what parses, and each refusal with its line
//! and its fix.

use mirage_nat::{Action, Interface, Rules};

const IFS: [(&str, Interface); 2] = [("uplink", Interface(0)), ("inside", Interface(1))];

fn err(text: &str) -> (usize, String) {
    let e = Rules::parse(text, &IFS).expect_err(text);
    (e.line, e.to_string())
}

#[test]
fn every_clause_parses() {
    let text = "\
# a comment line, then a blank one

allow in on inside out on uplink proto tcp from 10.0.0.0/24 port 1024-65535 to any port 80,443,8000-8080  # web
deny in on uplink proto udp from 0.0.0.0/0 to 192.0.2.1 port 53
allow out on local proto icmp
allow in on local
allow proto any from 10.1.2.3 to 10.0.0.0/8
deny
";
    let rules = Rules::parse(text, &IFS).unwrap();
    let got: Vec<_> = rules.iter().map(|r| (r.line, r.action, r.text)).collect();
    assert_eq!(
        got,
        [
            (
                3,
                Action::Allow,
                "allow in on inside out on uplink proto tcp from 10.0.0.0/24 port 1024-65535 to any port 80,443,8000-8080"
            ),
            (4, Action::Deny, "deny in on uplink proto udp from 0.0.0.0/0 to 192.0.2.1 port 53"),
            (5, Action::Allow, "allow out on local proto icmp"),
            (6, Action::Allow, "allow in on local"),
            (7, Action::Allow, "allow proto any from 10.1.2.3 to 10.0.0.0/8"),
            (8, Action::Deny, "deny"),
        ]
    );
    assert!(rules.iter().all(|r| r.hits == 0));
    assert_eq!(Rules::parse("", &IFS).unwrap().iter().count(), 0);
}

#[test]
fn bad_rules_are_refused_with_their_line_and_the_fix() {
    let cases: &[(&str, usize, &str)] = &[
        ("permit in on inside", 1, "not 'permit': write allow or deny"),
        (
            "allow in on inside\nallow in on upstream",
            2,
            "no interface is named 'upstream': the interfaces are uplink, inside, local",
        ),
        ("allow in inside", 1, "write 'in on NAME'"),
        ("allow in on", 1, "'in on' needs an interface's name"),
        ("# ok\n\nallow proto tpc", 3, "'tpc' is not a protocol: write tcp, udp, icmp or any"),
        ("allow from 10.0.0.0/33", 1, "'10.0.0.0/33' is not an address: write any, A.B.C.D or A.B.C.D/N"),
        ("allow from 10.0.0.256", 1, "is not an address"),
        ("allow to 10.0.0.1/24", 1, "has bits set past its prefix length: write 10.0.0.0/24"),
        ("allow from", 1, "'from' needs an address"),
        ("allow proto tcp to any port 70000", 1, "'70000' is not a port"),
        ("allow proto tcp to any port 90-80", 1, "an empty range: write the lower port first, 80-90"),
        ("allow proto tcp to any port", 1, "'port' needs ports"),
        ("allow proto tcp port 80", 1, "'port' follows an address"),
        ("allow to any port 80", 1, "ports need a protocol that has them: add 'proto tcp' or 'proto udp'"),
        ("allow proto icmp to any port 80", 1, "add 'proto tcp' or 'proto udp'"),
        ("allow proto tcp proto udp", 1, "'proto' is given twice"),
        ("allow in on inside in on uplink", 1, "'in' is given twice"),
        ("allow in on inside quickly", 1, "unknown word 'quickly': expected in, out, proto, from or to"),
        ("allow to any port 80,,81", 1, "'' is not a port"),
    ];
    for &(text, line, want) in cases {
        let (l, msg) = err(text);
        assert_eq!(l, line, "{text}: {msg}");
        assert!(msg.starts_with(&format!("firewall rule on line {line}: ")), "{msg}");
        assert!(msg.contains(want), "{text}: {msg} lacks {want}");
    }
}
