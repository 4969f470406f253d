//! HTTP dates (RFC 9110 section 5.6.7): IMF-fixdate out, and the three
//! forms a recipient must accept in.

use alloc::string::String;
use core::fmt::Write;

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

use mirage_runtime::time::civil_from_days as civil;

/// The inverse of [`civil`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch as an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn format_http_date(secs: u64) -> String {
    let mut s = String::with_capacity(29);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil(days);
    let _ = write!(
        s,
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[m as usize - 1],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    s
}

fn month(name: &str) -> Option<u32> {
    MONTHS.iter().position(|m| *m == name).map(|i| i as u32 + 1)
}

fn num(s: &str, digits: usize) -> Option<u32> {
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn hms(s: &str) -> Option<u64> {
    let mut it = s.split(':');
    let h = num(it.next()?, 2)?;
    let m = num(it.next()?, 2)?;
    let sec = num(it.next()?, 2)?;
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(u64::from(h) * 3600 + u64::from(m) * 60 + u64::from(sec))
}

fn epoch(y: i64, m: u32, d: u32, time: u64) -> Option<u64> {
    if !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    u64::try_from(days).ok().map(|days| days * 86_400 + time)
}

/// Parses an HTTP date in any of its three forms (IMF-fixdate, RFC 850,
/// asctime) to seconds since the epoch; `None` if it is none of them.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let s = s.trim();
    let parts: alloc::vec::Vec<&str> = s.split_ascii_whitespace().collect();
    match parts.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [_, d, mon, y, t, "GMT"] if parts[0].ends_with(',') => {
            epoch(i64::from(num(y, 4)?), month(mon)?, num(d, 2)?, hms(t)?)
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [_, date, t, "GMT"] if parts[0].ends_with(',') => {
            let mut it = date.split('-');
            let d = num(it.next()?, 2)?;
            let mon = month(it.next()?)?;
            let yy = i64::from(num(it.next()?, 2)?);
            // RFC 9110: a two-digit year more than 50 years ahead is in the past.
            let y = if yy < 70 { 2000 + yy } else { 1900 + yy };
            epoch(y, mon, d, hms(t)?)
        }
        // Sun Nov  6 08:49:37 1994
        [_, mon, d, t, y] => {
            let d: u32 =
                if d.len() <= 2 && d.bytes().all(|b| b.is_ascii_digit()) { d.parse().ok()? } else { return None };
            epoch(i64::from(num(y, 4)?), month(mon)?, d, hms(t)?)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_the_three_forms() {
        assert_eq!(format_http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format_http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        for secs in [0u64, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_http_date(&format_http_date(secs)), Some(secs));
        }
    }

    #[test]
    fn refuses_what_is_not_a_date() {
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }
}
