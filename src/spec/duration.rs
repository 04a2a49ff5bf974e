//! Durations as written in specs: an integer and a unit (`250ms`, `5s`,
//! `10m`, `1h`, `7d`), and windows, which may also be `lifetime`.

/// A window length: a number of milliseconds, or the whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Records with event time in `(t - ms, t]`.
    Millis(i64),
    /// Every earlier record.
    Lifetime,
}

/// Parses `"<integer><unit>"` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: it must start with a whole number"))?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("'{text}' has unit '{other}'; use ms, s, m, h or d")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too long a duration"))
}

/// Parses a window: a positive duration or `lifetime`.
pub fn parse_window(text: &str) -> Result<Window, String> {
    if text.trim() == "lifetime" {
        return Ok(Window::Lifetime);
    }
    match parse_duration_ms(text)? {
        0 => Err("a window must be longer than 0".to_owned()),
        ms => Ok(Window::Millis(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale_and_mistakes_are_explained() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_window("lifetime"), Ok(Window::Lifetime));
        assert!(parse_duration_ms("5 minutes").unwrap_err().contains("unit"));
        assert!(parse_duration_ms("h").unwrap_err().contains("whole number"));
        assert!(parse_window("0s").is_err());
    }
}
