//! W3C Trace Context: the `traceparent` that ties one request's work together
//! across the processes it reaches (the outbox, the bus, the consumers).
//!
//! A context is a trace id shared by all the work of one trace, the id of the
//! span that is current where it is used (sent as `parent-id` to the next
//! hop), and the trace flags (bit 0: sampled). See
//! <https://www.w3.org/TR/trace-context/#traceparent-header>.

use std::fmt;

/// One point of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// The trace flag saying the caller records this trace.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// The start of a new trace, sampled.
    pub fn root() -> TraceContext {
        let mut trace_id = [0; 16];
        fill_nonzero(&mut trace_id);
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            flags: SAMPLED,
        }
    }

    /// A span within this one's trace, whose parent is this one. Flags this
    /// version does not know are cleared, as the specification asks of
    /// whoever passes a trace on.
    #[must_use]
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            flags: self.flags & SAMPLED,
            ..*self
        }
    }

    /// The `traceparent` header's value, or `None` when it is not one. Version
    /// `00` is exactly `00-<32 hex>-<16 hex>-<2 hex>` in lower case with
    /// neither id all zeros; a later version may append fields after the
    /// flags, which are ignored (as the specification asks); version `ff` is
    /// invalid.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let header = header.trim_matches([' ', '\t']);
        let bytes = header.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        let exact = version == 0;
        if version == 0xff
            || (exact && bytes.len() != 55)
            || (!exact && bytes.len() > 55 && bytes[55] != b'-')
        {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        let mut span_id = [0; 8];
        decode(&bytes[3..35], &mut trace_id)?;
        decode(&bytes[36..52], &mut span_id)?;
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A context from its parts (as a tracing library holds them), or `None`
    /// when either id is all zeros (invalid). Only the sampled flag is kept.
    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Option<TraceContext> {
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags: if sampled { SAMPLED } else { 0 },
        })
    }

    /// The trace id's 16 bytes.
    pub fn trace_id_bytes(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The current span's id's 8 bytes.
    pub fn span_id_bytes(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace id, as 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The current span's id, as 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// Whether the caller asked for this trace to be recorded.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// The `traceparent` header value (version `00`).
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn new_span_id() -> [u8; 8] {
    let mut id = [0; 8];
    fill_nonzero(&mut id);
    id
}

/// Random bytes, not all zero (an all-zero id is invalid), from the thread's
/// generator (seeded from the system, without a system call per id).
fn fill_nonzero(buf: &mut [u8]) {
    rand::fill(buf);
    if buf.iter().all(|b| *b == 0) {
        buf[buf.len() - 1] = 1;
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn decode(digits: &[u8], out: &mut [u8]) -> Option<()> {
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_from_its_parts_round_trips_and_refuses_zero_ids() {
        let t = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        let again = TraceContext::from_parts(t.trace_id_bytes(), t.span_id_bytes(), t.sampled());
        assert_eq!(again, Some(t));
        assert_eq!(TraceContext::from_parts([0; 16], [1; 8], true), None);
        assert_eq!(TraceContext::from_parts([1; 16], [0; 8], true), None);
        let unsampled = TraceContext::from_parts([1; 16], [2; 8], false).expect("valid");
        assert!(!unsampled.sampled());
    }

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let context = TraceContext::parse(EXAMPLE).expect("valid");
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
        assert!(context.sampled());
        assert_eq!(context.to_string(), EXAMPLE);
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_span_of_its_own() {
        let parent = TraceContext::parse(EXAMPLE).expect("valid");
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert_eq!(child.sampled(), parent.sampled());
        let unknown_flags = TraceContext::parse(&EXAMPLE.replace("-01", "-ff")).expect("valid");
        assert!(unknown_flags.child().to_string().ends_with("-01"));
        let root = TraceContext::root();
        assert_ne!(root.trace_id(), TraceContext::root().trace_id());
        assert_eq!(TraceContext::parse(&root.to_string()), Some(root));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_it_is_understood() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        let context = TraceContext::parse(later).expect("valid");
        assert_eq!(context.to_string(), EXAMPLE);
        assert_eq!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
    }
}
