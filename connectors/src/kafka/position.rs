//! Where a Kafka source starts and where it ends, as users write them on
//! the command line (`--from`, `--until`) or in the spec.

use std::fmt;
use std::str::FromStr;

/// Where each partition starts reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained record.
    Earliest,
    /// The high watermark at start: only records produced from now on.
    Latest,
    /// The consumer group's committed offsets (earliest where the group
    /// has none for a partition).
    Committed,
    /// The first record with a timestamp at or after this epoch ms.
    Time(i64),
    /// Explicit `partition:offset` pairs; unlisted partitions start at the
    /// earliest record.
    Offsets(Vec<(u32, u64)>),
}

/// When each partition stops reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndPosition {
    /// Never: a live run.
    Never,
    /// At the high watermark seen at start: a bounded backfill.
    Now,
    /// Before the first record with a timestamp at or after this epoch ms,
    /// or, once the partition is caught up, when the clock passes it.
    Time(i64),
}

impl FromStr for StartPosition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        Ok(match text {
            "earliest" => StartPosition::Earliest,
            "latest" => StartPosition::Latest,
            "committed" => StartPosition::Committed,
            _ if text.contains(':') && !text.contains('T') => {
                StartPosition::Offsets(parse_offsets(text)?)
            }
            _ => StartPosition::Time(parse_time(text).map_err(|_| {
                format!(
                    "start position '{text}' is not earliest, latest, committed, \
                     an RFC 3339 time, epoch milliseconds, or partition:offset pairs"
                )
            })?),
        })
    }
}

impl FromStr for EndPosition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        Ok(match text {
            "never" => EndPosition::Never,
            "now" => EndPosition::Now,
            _ => EndPosition::Time(parse_time(text).map_err(|_| {
                format!(
                    "end position '{text}' is not never, now, an RFC 3339 time, or epoch milliseconds"
                )
            })?),
        })
    }
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::Latest => f.write_str("latest"),
            StartPosition::Committed => f.write_str("committed"),
            StartPosition::Time(ms) => write!(f, "{}", format_time(*ms)),
            StartPosition::Offsets(pairs) => {
                let pairs: Vec<String> = pairs
                    .iter()
                    .map(|(partition, offset)| format!("{partition}:{offset}"))
                    .collect();
                f.write_str(&pairs.join(","))
            }
        }
    }
}

impl fmt::Display for EndPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndPosition::Never => f.write_str("never"),
            EndPosition::Now => f.write_str("now"),
            EndPosition::Time(ms) => write!(f, "{}", format_time(*ms)),
        }
    }
}

/// An RFC 3339 time (`2026-11-22T10:00:00Z`) or epoch milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|error| error.to_string())?;
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "times before 1970 are not supported".to_owned())?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| "time out of range".to_owned())
}

fn format_time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        Err(_) => ms.to_string(),
    }
}

fn parse_offsets(text: &str) -> Result<Vec<(u32, u64)>, String> {
    let mut pairs: Vec<(u32, u64)> = Vec::new();
    for pair in text
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let parsed = pair.split_once(':').and_then(|(partition, offset)| {
            Some((partition.trim().parse().ok()?, offset.trim().parse().ok()?))
        });
        let Some((partition, offset)) = parsed else {
            return Err(format!(
                "'{pair}' is not partition:offset (for example 0:1200,1:980)"
            ));
        };
        if pairs.iter().any(|(seen, _)| *seen == partition) {
            return Err(format!("partition {partition} is listed twice"));
        }
        pairs.push((partition, offset));
    }
    if pairs.is_empty() {
        return Err("no partition:offset pairs given".into());
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse_in_every_form() {
        assert_eq!("earliest".parse(), Ok(StartPosition::Earliest));
        assert_eq!("latest".parse(), Ok(StartPosition::Latest));
        assert_eq!("committed".parse(), Ok(StartPosition::Committed));
        assert_eq!(
            "1700000000000".parse(),
            Ok(StartPosition::Time(1_700_000_000_000))
        );
        assert_eq!(
            "2023-11-14T22:13:20Z".parse(),
            Ok(StartPosition::Time(1_700_000_000_000))
        );
        assert_eq!(
            "0:10, 3:7".parse(),
            Ok(StartPosition::Offsets(vec![(0, 10), (3, 7)]))
        );
    }

    #[test]
    fn bad_positions_say_what_is_accepted() {
        let error = "yesterday".parse::<StartPosition>().unwrap_err();
        assert!(error.contains("earliest, latest, committed"), "{error}");
        let error = "0:x".parse::<StartPosition>().unwrap_err();
        assert!(error.contains("partition:offset"), "{error}");
        let error = "0:1,0:2".parse::<StartPosition>().unwrap_err();
        assert!(error.contains("listed twice"), "{error}");
        let error = "soon".parse::<EndPosition>().unwrap_err();
        assert!(error.contains("never, now"), "{error}");
    }

    #[test]
    fn positions_print_as_they_parse() {
        for text in [
            "earliest",
            "committed",
            "0:10,3:7",
            "2023-11-14T22:13:20.000Z",
        ] {
            let position: StartPosition = text.parse().unwrap();
            assert_eq!(position.to_string(), text);
        }
        assert_eq!("now".parse::<EndPosition>().unwrap().to_string(), "now");
    }
}
