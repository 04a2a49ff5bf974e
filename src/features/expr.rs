//! Row expressions: arithmetic over a row's fields and earlier features.
//!
//! `+ - * /`, comparisons (`< <= > >= == !=`, giving 1 or 0), and the
//! functions `ln`, `log1p`, `exp`, `sqrt`, `abs`, `min`, `max`,
//! `if(cond, then, else)` and `coalesce(a, b, ...)`. Values are 64-bit
//! floats; a null operand makes the result null, except in `coalesce` and
//! in the branch `if` does not take.

use tideflow_connectors::Value;

/// A compiled expression: names resolved to column slots.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal number.
    Number(f64),
    /// The value in a column slot of the row.
    Column(usize),
    /// `-x`.
    Negate(Box<Expr>),
    /// A binary operator.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// A function call.
    Call(Function, Vec<Expr>),
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `<`
    Less,
    /// `<=`
    LessEqual,
    /// `>`
    Greater,
    /// `>=`
    GreaterEqual,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
}

/// Built-in functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// Natural logarithm.
    Ln,
    /// `ln(1 + x)`.
    Log1p,
    /// `e^x`.
    Exp,
    /// Square root.
    Sqrt,
    /// Absolute value.
    Abs,
    /// Least argument.
    Min,
    /// Greatest argument.
    Max,
    /// `if(cond, then, else)`: `then` where `cond` is not 0.
    If,
    /// First non-null argument.
    Coalesce,
}

impl Function {
    fn parse(name: &str) -> Option<(Self, std::ops::RangeInclusive<usize>)> {
        Some(match name {
            "ln" => (Function::Ln, 1..=1),
            "log1p" => (Function::Log1p, 1..=1),
            "exp" => (Function::Exp, 1..=1),
            "sqrt" => (Function::Sqrt, 1..=1),
            "abs" => (Function::Abs, 1..=1),
            "min" => (Function::Min, 2..=usize::MAX),
            "max" => (Function::Max, 2..=usize::MAX),
            "if" => (Function::If, 3..=3),
            "coalesce" => (Function::Coalesce, 1..=usize::MAX),
            _ => return None,
        })
    }
}

impl Expr {
    /// Parses `text`, resolving each name with `resolve` (which returns the
    /// column slot or an explanation of why the name cannot be used).
    pub fn parse(
        text: &str,
        resolve: &dyn Fn(&str) -> Result<usize, String>,
    ) -> Result<Expr, String> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            position: 0,
            resolve,
        };
        let expr = parser.comparison()?;
        match parser.peek() {
            None => Ok(expr),
            Some(token) => Err(format!("unexpected '{token}' after a complete expression")),
        }
    }

    /// Evaluates the expression on a row's numbers; `None` is null. The
    /// reference for [`Expr::eval_column`], which the engine runs.
    pub fn eval<R: Numbers + ?Sized>(&self, row: &R) -> Option<f64> {
        match self {
            Expr::Number(value) => Some(*value),
            Expr::Column(slot) => row.number(*slot),
            Expr::Negate(inner) => inner.eval(row).map(|value| -value),
            Expr::Binary(op, left, right) => {
                let (left, right) = (left.eval(row)?, right.eval(row)?);
                Some(apply_binary(*op, left, right))
            }
            Expr::Call(function, args) => call(*function, args, row),
        }
    }
}

impl Expr {
    /// Evaluates the expression on every row of `columns` at once, a node
    /// at a time over whole columns (rather than the whole tree per row):
    /// each row's result is the one [`Expr::eval`] gives it, bit for bit,
    /// since every row sees the same operations in the same order. `if`
    /// and `coalesce` evaluate all their arguments and pick per row, which
    /// changes nothing: evaluation has no effects and cannot fail.
    pub fn eval_column<C: NumberColumns + ?Sized>(&self, columns: &C) -> Vec<Option<f64>> {
        self.operand(columns).into_column(columns.rows())
    }

    /// The expression over every row: a column, or, where it reads no
    /// column, one number (a literal is never spread into a column of
    /// copies for an operator to read: `x / 3600000` is one pass over `x`).
    fn operand<C: NumberColumns + ?Sized>(&self, columns: &C) -> Operand {
        match self {
            Expr::Number(value) => Operand::Constant(*value),
            Expr::Column(slot) => Operand::Column(columns.numbers(*slot)),
            Expr::Negate(inner) => inner.operand(columns).map(|value| -value),
            Expr::Binary(op, left, right) => {
                match (left.operand(columns), right.operand(columns)) {
                    (Operand::Column(left), Operand::Column(right)) => {
                        Operand::Column(binary_column(*op, left, right))
                    }
                    (Operand::Column(left), Operand::Constant(right)) => {
                        Operand::Column(binary_with_constant(*op, left, right, Side::Right))
                    }
                    (Operand::Constant(left), Operand::Column(right)) => {
                        Operand::Column(binary_with_constant(*op, right, left, Side::Left))
                    }
                    (Operand::Constant(left), Operand::Constant(right)) => {
                        Operand::Constant(apply_binary(*op, left, right))
                    }
                }
            }
            Expr::Call(function, args) => call_column(*function, args, columns),
        }
    }
}

/// An expression evaluated over every row (see [`Expr::operand`]).
enum Operand {
    Column(Vec<Option<f64>>),
    /// The same number, never null, for every row.
    Constant(f64),
}

impl Operand {
    fn into_column(self, rows: usize) -> Vec<Option<f64>> {
        match self {
            Operand::Column(column) => column,
            Operand::Constant(value) => vec![Some(value); rows],
        }
    }

    /// Applies a function of one number to every present one.
    fn map(self, apply: impl Fn(f64) -> f64) -> Operand {
        match self {
            Operand::Column(column) => Operand::Column(map_present(column, apply)),
            Operand::Constant(value) => Operand::Constant(apply(value)),
        }
    }

    /// Combines row by row; a null on either side is null.
    fn zip(self, other: Operand, combine: impl Fn(f64, f64) -> f64) -> Operand {
        match (self, other) {
            (Operand::Column(left), Operand::Column(right)) => {
                Operand::Column(zip_present(left, right, combine))
            }
            (Operand::Column(left), Operand::Constant(right)) => {
                Operand::Column(map_present(left, |left| combine(left, right)))
            }
            (Operand::Constant(left), Operand::Column(right)) => {
                Operand::Column(map_present(right, |right| combine(left, right)))
            }
            (Operand::Constant(left), Operand::Constant(right)) => {
                Operand::Constant(combine(left, right))
            }
        }
    }
}

/// Which side of a binary operator a constant is on.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Left,
    Right,
}

/// A binary operator between a column and a constant, chosen once, so
/// that each loop runs one operation.
fn binary_with_constant(
    op: BinaryOp,
    column: Vec<Option<f64>>,
    constant: f64,
    side: Side,
) -> Vec<Option<f64>> {
    match (op, side) {
        (BinaryOp::Add, Side::Right) => map_present(column, |value| value + constant),
        (BinaryOp::Add, Side::Left) => map_present(column, |value| constant + value),
        (BinaryOp::Sub, Side::Right) => map_present(column, |value| value - constant),
        (BinaryOp::Sub, Side::Left) => map_present(column, |value| constant - value),
        (BinaryOp::Mul, Side::Right) => map_present(column, |value| value * constant),
        (BinaryOp::Mul, Side::Left) => map_present(column, |value| constant * value),
        (BinaryOp::Div, Side::Right) => map_present(column, |value| value / constant),
        (BinaryOp::Div, Side::Left) => map_present(column, |value| constant / value),
        (op, Side::Right) => map_present(column, |value| apply_binary(op, value, constant)),
        (op, Side::Left) => map_present(column, |value| apply_binary(op, constant, value)),
    }
}

/// Where an expression evaluated a column at a time reads its columns.
pub trait NumberColumns {
    /// The number of rows.
    fn rows(&self) -> usize;
    /// The numbers in `slot`, one per row; `None` for null or a non-number.
    fn numbers(&self, slot: usize) -> Vec<Option<f64>>;
}

fn map_present(mut column: Vec<Option<f64>>, apply: impl Fn(f64) -> f64) -> Vec<Option<f64>> {
    for value in column.iter_mut().flatten() {
        *value = apply(*value);
    }
    column
}

/// Combines two columns row by row; a null on either side is null.
fn zip_present(
    mut left: Vec<Option<f64>>,
    right: Vec<Option<f64>>,
    combine: impl Fn(f64, f64) -> f64,
) -> Vec<Option<f64>> {
    for (left, right) in left.iter_mut().zip(right) {
        *left = match (*left, right) {
            (Some(left), Some(right)) => Some(combine(left, right)),
            _ => None,
        };
    }
    left
}

/// A binary operator over two columns: the operator is chosen once, so
/// that each loop runs one operation.
fn binary_column(
    op: BinaryOp,
    left: Vec<Option<f64>>,
    right: Vec<Option<f64>>,
) -> Vec<Option<f64>> {
    match op {
        BinaryOp::Add => zip_present(left, right, |left, right| left + right),
        BinaryOp::Sub => zip_present(left, right, |left, right| left - right),
        BinaryOp::Mul => zip_present(left, right, |left, right| left * right),
        BinaryOp::Div => zip_present(left, right, |left, right| left / right),
        op => zip_present(left, right, |left, right| apply_binary(op, left, right)),
    }
}

fn call_column<C: NumberColumns + ?Sized>(
    function: Function,
    args: &[Expr],
    columns: &C,
) -> Operand {
    let rows = columns.rows();
    let mut evaluated = args.iter().map(|arg| arg.operand(columns));
    let first = evaluated
        .next()
        .unwrap_or(Operand::Column(vec![None; rows]));
    match function {
        Function::Ln => first.map(f64::ln),
        Function::Log1p => first.map(f64::ln_1p),
        Function::Exp => first.map(f64::exp),
        Function::Sqrt => first.map(f64::sqrt),
        Function::Abs => first.map(f64::abs),
        Function::Min => evaluated.fold(first, |result, arg| result.zip(arg, f64::min)),
        Function::Max => evaluated.fold(first, |result, arg| result.zip(arg, f64::max)),
        Function::If => {
            let mut column = first.into_column(rows);
            let mut branch = || {
                evaluated
                    .next()
                    .map_or_else(|| vec![None; rows], |arg| arg.into_column(rows))
            };
            let (then, otherwise) = (branch(), branch());
            for ((result, then), otherwise) in column.iter_mut().zip(then).zip(otherwise) {
                *result = match *result {
                    None => None,
                    Some(condition) if condition != 0.0 => then,
                    Some(_) => otherwise,
                };
            }
            Operand::Column(column)
        }
        // The first present argument: a constant is present in every row.
        Function::Coalesce => evaluated.fold(first, |result, arg| match (result, arg) {
            (Operand::Constant(value), _) => Operand::Constant(value),
            (Operand::Column(mut column), Operand::Constant(value)) => {
                column
                    .iter_mut()
                    .for_each(|result| *result = result.or(Some(value)));
                Operand::Column(column)
            }
            (Operand::Column(mut column), Operand::Column(arg)) => {
                for (result, value) in column.iter_mut().zip(arg) {
                    *result = result.or(value);
                }
                Operand::Column(column)
            }
        }),
    }
}

/// Where an expression reads a row's columns, as numbers (see
/// [`Value::as_f64`]).
pub trait Numbers {
    /// The number in `slot`; `None` for null or a non-number.
    fn number(&self, slot: usize) -> Option<f64>;
}

impl Numbers for [Value] {
    fn number(&self, slot: usize) -> Option<f64> {
        self[slot].as_f64()
    }
}

impl Numbers for Vec<Value> {
    fn number(&self, slot: usize) -> Option<f64> {
        self[slot].as_f64()
    }
}

fn apply_binary(op: BinaryOp, left: f64, right: f64) -> f64 {
    let truth = |condition: bool| if condition { 1.0 } else { 0.0 };
    match op {
        BinaryOp::Add => left + right,
        BinaryOp::Sub => left - right,
        BinaryOp::Mul => left * right,
        BinaryOp::Div => left / right,
        BinaryOp::Less => truth(left < right),
        BinaryOp::LessEqual => truth(left <= right),
        BinaryOp::Greater => truth(left > right),
        BinaryOp::GreaterEqual => truth(left >= right),
        BinaryOp::Equal => truth(left == right),
        BinaryOp::NotEqual => truth(left != right),
    }
}

fn call<R: Numbers + ?Sized>(function: Function, args: &[Expr], row: &R) -> Option<f64> {
    match function {
        Function::Ln => args[0].eval(row).map(f64::ln),
        Function::Log1p => args[0].eval(row).map(f64::ln_1p),
        Function::Exp => args[0].eval(row).map(f64::exp),
        Function::Sqrt => args[0].eval(row).map(f64::sqrt),
        Function::Abs => args[0].eval(row).map(f64::abs),
        Function::Min => fold_all(args, row, f64::min),
        Function::Max => fold_all(args, row, f64::max),
        Function::If => {
            let condition = args[0].eval(row)?;
            if condition != 0.0 {
                args[1].eval(row)
            } else {
                args[2].eval(row)
            }
        }
        Function::Coalesce => args.iter().find_map(|arg| arg.eval(row)),
    }
}

fn fold_all<R: Numbers + ?Sized>(
    args: &[Expr],
    row: &R,
    combine: fn(f64, f64) -> f64,
) -> Option<f64> {
    let mut result = args[0].eval(row)?;
    for arg in &args[1..] {
        result = combine(result, arg.eval(row)?);
    }
    Some(result)
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Symbol(&'static str),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Number(value) => write!(f, "{value}"),
            Token::Name(name) => write!(f, "{name}"),
            Token::Symbol(symbol) => write!(f, "{symbol}"),
        }
    }
}

const SYMBOLS: [&str; 14] = [
    "<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")", ",", "=",
];

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let first = rest.chars().next().unwrap_or(' ');
        if first.is_ascii_digit() || first == '.' {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E'))
                .unwrap_or(rest.len());
            let number = rest[..end]
                .parse()
                .map_err(|_| format!("'{}' is not a number", &rest[..end]))?;
            tokens.push(Token::Number(number));
            rest = &rest[end..];
        } else if first.is_alphabetic() || first == '_' {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            tokens.push(Token::Name(rest[..end].to_owned()));
            rest = &rest[end..];
        } else if let Some(symbol) = SYMBOLS.iter().find(|symbol| rest.starts_with(**symbol)) {
            if *symbol == "=" {
                return Err("'=' is not an operator; compare with '=='".to_owned());
            }
            tokens.push(Token::Symbol(symbol));
            rest = &rest[symbol.len()..];
        } else {
            return Err(format!("unexpected character '{first}'"));
        }
        rest = rest.trim_start();
    }
    if tokens.is_empty() {
        return Err("the expression is empty".to_owned());
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    position: usize,
    resolve: &'a dyn Fn(&str) -> Result<usize, String>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn eat(&mut self, symbol: &str) -> bool {
        if self.peek() == Some(&Token::Symbol(symbol_static(symbol))) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.additive()?;
        let op = match self.peek() {
            Some(Token::Symbol("<")) => BinaryOp::Less,
            Some(Token::Symbol("<=")) => BinaryOp::LessEqual,
            Some(Token::Symbol(">")) => BinaryOp::Greater,
            Some(Token::Symbol(">=")) => BinaryOp::GreaterEqual,
            Some(Token::Symbol("==")) => BinaryOp::Equal,
            Some(Token::Symbol("!=")) => BinaryOp::NotEqual,
            _ => return Ok(left),
        };
        self.position += 1;
        let right = self.additive()?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        loop {
            let op = if self.eat("+") {
                BinaryOp::Add
            } else if self.eat("-") {
                BinaryOp::Sub
            } else {
                return Ok(left);
            };
            left = Expr::Binary(op, Box::new(left), Box::new(self.term()?));
        }
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat("*") {
                BinaryOp::Mul
            } else if self.eat("/") {
                BinaryOp::Div
            } else {
                return Ok(left);
            };
            left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("-") {
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Token::Number(value)) => Ok(Expr::Number(value)),
            Some(Token::Symbol("(")) => {
                let inner = self.comparison()?;
                if !self.eat(")") {
                    return Err("missing ')'".to_owned());
                }
                Ok(inner)
            }
            Some(Token::Name(name)) if self.peek() == Some(&Token::Symbol("(")) => self.call(&name),
            Some(Token::Name(name)) => Ok(Expr::Column((self.resolve)(&name)?)),
            Some(token) => Err(format!("unexpected '{token}'")),
            None => Err("the expression ends too early".to_owned()),
        }
    }

    fn call(&mut self, name: &str) -> Result<Expr, String> {
        let (function, arity) = Function::parse(name).ok_or_else(|| {
            format!("unknown function '{name}'; known: ln, log1p, exp, sqrt, abs, min, max, if, coalesce")
        })?;
        self.position += 1;
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.comparison()?);
                if self.eat(")") {
                    break;
                }
                if !self.eat(",") {
                    return Err(format!("expected ',' or ')' in the arguments of {name}"));
                }
            }
        }
        if !arity.contains(&args.len()) {
            return Err(format!(
                "{name} takes {} arguments, got {}",
                describe_arity(&arity),
                args.len()
            ));
        }
        Ok(Expr::Call(function, args))
    }
}

fn describe_arity(arity: &std::ops::RangeInclusive<usize>) -> String {
    match (arity.start(), arity.end()) {
        (start, end) if start == end => start.to_string(),
        (start, &usize::MAX) => format!("{start} or more"),
        (start, end) => format!("{start} to {end}"),
    }
}

fn symbol_static(symbol: &str) -> &'static str {
    SYMBOLS
        .iter()
        .find(|candidate| **candidate == symbol)
        .copied()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Expr, String> {
        Expr::parse(text, &|name| match name {
            "a" => Ok(0),
            "b" => Ok(1),
            "n" => Ok(2),
            other => Err(format!("unknown column '{other}'")),
        })
    }

    /// Rows of three columns, as values, for the column evaluation.
    struct Rows(Vec<Vec<Value>>);

    impl NumberColumns for Rows {
        fn rows(&self) -> usize {
            self.0.len()
        }

        fn numbers(&self, slot: usize) -> Vec<Option<f64>> {
            self.0.iter().map(|row| row[slot].as_f64()).collect()
        }
    }

    /// Every operator and function, evaluated a column at a time, gives
    /// each row exactly (to the bit) what the row-at-a-time evaluation
    /// gives it, nulls and non-finite values included.
    #[test]
    fn column_evaluation_gives_each_row_its_row_evaluation() {
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let special = [0.0, -0.0, 1.0, -1.0, f64::NAN, f64::INFINITY, 1e-300];
        let rows: Vec<Vec<Value>> = (0..2000)
            .map(|_| {
                (0..3)
                    .map(|_| match next() % 6 {
                        0 => Value::Null,
                        1 => Value::I64((next() % 100) as i64 - 50),
                        2 => Value::F64(special[(next() % 7) as usize]),
                        _ => Value::F64((next() % 100_000) as f64 / 37.0 - 1000.0),
                    })
                    .collect()
            })
            .collect();
        let texts = [
            "a + b * 2 - n / 3",
            "-(a - b) / (n + 0.5)",
            "a < b",
            "a <= n",
            "a > 1",
            "b >= a",
            "a == b",
            "n != 0",
            "ln(a) + log1p(b) + exp(n / 100) + sqrt(a) + abs(b)",
            "min(a, b, n) + max(a, 7)",
            "if(a > b, n, b * 2)",
            "coalesce(n, b, a, 3)",
            "if(n, coalesce(a, 1), -b)",
            "a / 3600000 + 2 - b * 0.5",
            "2 - a / (1 + b) * 3",
            "min(coalesce(n, 86400000) / 3600000, 24)",
            "max(3, a) + min(a, -1, b)",
            "coalesce(5, a) + coalesce(a, 5, b) + coalesce(n, b, 7)",
            "-(2) * a + ln(2) + abs(-3) - a",
            "if(a > 1, 2, b) + if(1, a, 2) + if(0, 2, 3)",
            "2 < a + (a >= 1) + (3 == 3)",
        ];
        let rows = Rows(rows);
        for text in texts {
            let expr = compile(text).unwrap();
            let by_column = expr.eval_column(&rows);
            for (index, row) in rows.0.iter().enumerate() {
                let by_row = expr.eval(&row[..]);
                assert_eq!(
                    by_column[index].map(f64::to_bits),
                    by_row.map(f64::to_bits),
                    "{text} on {row:?}"
                );
            }
        }
    }

    fn eval(text: &str) -> Option<f64> {
        compile(text)
            .unwrap()
            .eval(&[Value::F64(6.0), Value::I64(3), Value::Null][..])
    }

    #[test]
    fn precedence_functions_and_nulls() {
        assert_eq!(eval("a + b * 2"), Some(12.0));
        assert_eq!(eval("(a + b) * 2"), Some(18.0));
        assert_eq!(eval("-a / b"), Some(-2.0));
        assert_eq!(eval("a / (b + 1)"), Some(1.5));
        assert_eq!(eval("max(a, b, 10)"), Some(10.0));
        assert_eq!(eval("if(a > b, 1, 2)"), Some(1.0));
        assert_eq!(eval("a + n"), None);
        assert_eq!(eval("coalesce(n, b)"), Some(3.0));
        assert_eq!(eval("if(a == 6, 5, n)"), Some(5.0));
        assert_eq!(
            eval("log1p(0) + exp(0) + sqrt(4) + abs(-1) + ln(1)"),
            Some(4.0)
        );
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(compile("a +").unwrap_err().contains("ends too early"));
        assert!(
            compile("zz * 2")
                .unwrap_err()
                .contains("unknown column 'zz'")
        );
        assert!(compile("foo(a)").unwrap_err().contains("unknown function"));
        assert!(
            compile("if(a, b)")
                .unwrap_err()
                .contains("takes 3 arguments")
        );
        assert!(compile("a = b").unwrap_err().contains("=="));
        assert!(compile("a b").unwrap_err().contains("unexpected 'b'"));
    }
}
