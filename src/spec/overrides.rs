//! `--set KEY=VALUE`: overriding any spec value by its TOML dotted path,
//! array items by index (`sink[0].path=/tmp/out/`).

/// Applies one `KEY=VALUE` assignment to a parsed spec table. The value is
/// read as a TOML value when it parses as one (`4`, `true`, `"x"`,
/// `[1, 2]`), and as a plain string otherwise.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (path, raw_value) = assignment.split_once('=').ok_or("expected KEY=VALUE")?;
    let value = parse_value(raw_value.trim());
    let steps = parse_path(path.trim())?;
    let (last, parents) = steps.split_last().ok_or("empty key")?;
    let mut current = TableOrArray::Table(table);
    for step in parents {
        current = current.child(step)?;
    }
    current.set(last, value)
}

#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Splits a dotted path into keys and indexes. A key may be quoted, as in
/// TOML, when it holds dots itself: `source.options."fetch.wait.max.ms"`.
fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut chars = path.chars().peekable();
    loop {
        let mut key = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => key.push(c),
                    None => return Err(format!("'{path}' has an unclosed quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c == '[' {
                    break;
                }
                if c == '"' {
                    return Err(format!("'{path}': quote the whole key, not part of it"));
                }
                key.push(c);
                chars.next();
            }
        }
        if key.is_empty() {
            return Err(format!("'{path}' has an empty key"));
        }
        steps.push(Step::Key(key));
        while chars.peek() == Some(&'[') {
            chars.next();
            let mut digits = String::new();
            loop {
                match chars.next() {
                    Some(']') => break,
                    Some(c) => digits.push(c),
                    None => return Err(format!("'{path}' has an unclosed [")),
                }
            }
            let index = digits
                .parse()
                .map_err(|_| format!("'{digits}' is not an array index"))?;
            steps.push(Step::Index(index));
        }
        match chars.next() {
            None => return Ok(steps),
            Some('.') => {}
            Some(c) => return Err(format!("'{path}' has '{c}' where a '.' belongs")),
        }
    }
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

enum TableOrArray<'a> {
    Table(&'a mut toml::Table),
    Array(&'a mut Vec<toml::Value>),
}

impl<'a> TableOrArray<'a> {
    fn child(self, step: &Step) -> Result<TableOrArray<'a>, String> {
        let value = match (self, step) {
            (TableOrArray::Table(table), Step::Key(key)) => table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            (TableOrArray::Array(array), Step::Index(index)) => {
                let length = array.len();
                array
                    .get_mut(*index)
                    .ok_or_else(|| format!("index {index} is past the end ({length} items)"))?
            }
            (_, step) => return Err(format!("{step:?} does not fit the spec's structure there")),
        };
        match value {
            toml::Value::Table(table) => Ok(TableOrArray::Table(table)),
            toml::Value::Array(array) => Ok(TableOrArray::Array(array)),
            other => Err(format!(
                "cannot descend into the {} value there",
                other.type_str()
            )),
        }
    }

    fn set(self, step: &Step, value: toml::Value) -> Result<(), String> {
        match (self, step) {
            (TableOrArray::Table(table), Step::Key(key)) => {
                table.insert(key.clone(), value);
                Ok(())
            }
            (TableOrArray::Array(array), Step::Index(index)) => {
                let length = array.len();
                let slot = array
                    .get_mut(*index)
                    .ok_or_else(|| format!("index {index} is past the end ({length} items)"))?;
                *slot = value;
                Ok(())
            }
            (_, step) => Err(format!("{step:?} does not fit the spec's structure there")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(path: &str) -> Vec<String> {
        parse_path(path)
            .unwrap()
            .iter()
            .map(|step| match step {
                Step::Key(key) => key.clone(),
                Step::Index(index) => format!("[{index}]"),
            })
            .collect()
    }

    #[test]
    fn paths_split_on_dots_outside_quotes_and_take_indexes() {
        assert_eq!(keys("sink[0].path"), ["sink", "[0]", "path"]);
        assert_eq!(
            keys(r#"source.options."fetch.wait.max.ms""#),
            ["source", "options", "fetch.wait.max.ms"]
        );
        assert_eq!(keys(r#""a.b"[2][1].c"#), ["a.b", "[2]", "[1]", "c"]);
    }

    #[test]
    fn malformed_paths_are_errors() {
        for path in ["", "a..b", "a.", r#"a."b"#, "a[1", "a[x]", r#"a"b""#] {
            assert!(parse_path(path).is_err(), "{path} should not parse");
        }
    }

    #[test]
    fn a_quoted_key_sets_a_dotted_option() {
        let mut table: toml::Table = toml::from_str("[source]\ntopic = \"t\"").unwrap();
        apply_override(&mut table, r#"source.options."fetch.wait.max.ms"="5""#).unwrap();
        assert_eq!(
            table["source"]["options"]["fetch.wait.max.ms"].as_str(),
            Some("5")
        );
    }
}
