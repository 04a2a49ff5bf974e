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

fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if key.is_empty() {
            return Err(format!("'{path}' has an empty key"));
        }
        steps.push(Step::Key(key.to_owned()));
        while let Some(inner) = rest.strip_prefix('[') {
            let close = inner
                .find(']')
                .ok_or_else(|| format!("'{path}' has an unclosed ["))?;
            let index = inner[..close]
                .parse()
                .map_err(|_| format!("'{}' is not an array index", &inner[..close]))?;
            steps.push(Step::Index(index));
            rest = &inner[close + 1..];
        }
    }
    Ok(steps)
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
