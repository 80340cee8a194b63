//! Time: timestamps and the injectable clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// Stored as a BIGINT; shown on the wire as RFC 3339 with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// A timestamp from epoch milliseconds.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This moment plus `d` (saturating at the end of time).
    pub fn plus(self, d: std::time::Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The RFC 3339 form, e.g. `2026-11-23T09:15:00.123Z`. Times before 1970 or
    /// after 9999 cannot be written in that form and are clamped to those bounds.
    pub fn to_rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.clamped()).to_string()
    }

    /// The moment written in RFC 3339 (`2026-11-23T09:15:00.123Z`); times
    /// before 1970 are refused.
    pub fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
        let at = humantime::parse_rfc3339(text).map_err(|e| e.to_string())?;
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "times before 1970 are not supported".to_string())?
            .as_millis();
        i64::try_from(ms)
            .map(Timestamp)
            .map_err(|_| "time out of range".to_string())
    }

    fn clamped(self) -> SystemTime {
        const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        UNIX_EPOCH + Duration::from_millis(self.0.clamp(0, MAX_MS).unsigned_abs())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.clamped()))
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    /// Reads the RFC 3339 form written by `Serialize` (UTC, `Z`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// The source of "now". Injected everywhere time matters, so tests can control it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start.0))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_json() {
        let t = Timestamp::from_millis(1_795_448_906_123);
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(json, "\"2026-11-23T15:48:26.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(t));
        for bad in ["\"yesterday\"", "\"1969-12-31T23:59:59Z\"", "12"] {
            assert!(serde_json::from_str::<Timestamp>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_render_as_rfc3339_with_milliseconds() {
        assert_eq!(
            Timestamp::from_millis(1_700_000_000_123).to_rfc3339(),
            "2023-11-14T22:13:20.123Z"
        );
        let json = serde_json::to_string(&Timestamp::from_millis(0)).unwrap_or_default();
        assert_eq!(json, "\"1970-01-01T00:00:00.000Z\"");
    }

    #[test]
    fn out_of_range_timestamps_are_clamped_not_panicked_on() {
        assert_eq!(
            Timestamp::from_millis(-5).to_rfc3339(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(i64::MAX).to_rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new(Timestamp::from_millis(1_000));
        assert_eq!(clock.now().as_millis(), 1_000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now().as_millis(), 3_000);
    }
}
