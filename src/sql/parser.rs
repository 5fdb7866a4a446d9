//! AWS IoT SQL statements to syntax trees (spec/aws-iot-shadow-rules.md
//! §2.3), by recursive descent with standard SQL precedence: unary minus;
//! `* / %`; `+ -`; comparisons; NOT; AND; OR. Errors carry the byte offset
//! of the token that broke the grammar.

use super::lexer::{Keyword, Kind, SqlError, Sym, Token, tokenize};

/// A whole rule statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// `SET @v = expr, ...`, in order.
    pub set: Vec<(String, Expr)>,
    /// What the rule outputs.
    pub select: Select,
    /// The topic filter of `FROM`.
    pub from: String,
    /// The `WHERE` condition.
    pub filter: Option<Expr>,
}

/// The SELECT clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `SELECT VALUE expr`: the raw value.
    Value(Expr),
    /// `SELECT a, b AS c, *`: an object.
    Items(Vec<Item>),
}

/// One item of a SELECT list.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `*`: every key of the payload.
    Star,
    /// An expression, maybe with an alias.
    Expr(Expr, Option<String>),
}

/// A nested `(SELECT ... FROM array [WHERE ...])`.
#[derive(Debug, Clone, PartialEq)]
pub struct Nested {
    /// What each element yields.
    pub select: Select,
    /// The array iterated, a path from the current object.
    pub from: Vec<String>,
    /// Which elements.
    pub filter: Option<Expr>,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// Expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `1`
    Int(i64),
    /// `1.5`
    Decimal(f64),
    /// `'a'` or `"a"`
    Str(String),
    /// `true` / `false`
    Bool(bool),
    /// `null`
    Null,
    /// An attribute of the payload root.
    Attr(String),
    /// `@name`
    Variable(String),
    /// `*` as a function argument: the raw payload.
    Star,
    /// `e.name`
    Member(Box<Expr>, String),
    /// `e[i]`
    Index(Box<Expr>, Box<Expr>),
    /// `-e`
    Neg(Box<Expr>),
    /// `NOT e`
    Not(Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `name(args)`, name lowercased.
    Call(String, Vec<Expr>),
    /// `cast(e AS Type)`, type lowercased.
    Cast(Box<Expr>, String),
    /// `CASE [subject] WHEN a THEN b ... [ELSE c] END`
    Case {
        /// The value compared (simple form); `None` for the searched form.
        subject: Option<Box<Expr>>,
        /// The arms, in order.
        arms: Vec<(Expr, Expr)>,
        /// The ELSE value.
        otherwise: Option<Box<Expr>>,
    },
    /// `{"k": e, ...}`
    Object(Vec<(String, Expr)>),
    /// `[e, ...]`
    Array(Vec<Expr>),
    /// A nested select.
    Nested(Box<Nested>),
}

impl Expr {
    /// Whether evaluating it may read the payload (an attribute or `*`;
    /// the compound forms are assumed to).
    pub fn reads_payload(&self) -> bool {
        match self {
            Expr::Int(_)
            | Expr::Decimal(_)
            | Expr::Str(_)
            | Expr::Bool(_)
            | Expr::Null
            | Expr::Variable(_) => false,
            Expr::Member(e, _) | Expr::Neg(e) | Expr::Not(e) | Expr::Cast(e, _) => {
                e.reads_payload()
            }
            Expr::Index(a, b) | Expr::Binary(_, a, b) => a.reads_payload() || b.reads_payload(),
            Expr::Call(_, args) => args.iter().any(Expr::reads_payload),
            Expr::Attr(_)
            | Expr::Star
            | Expr::Case { .. }
            | Expr::Object(_)
            | Expr::Array(_)
            | Expr::Nested(_) => true,
        }
    }
}

/// Parses a rule statement.
pub fn parse(text: &str) -> Result<Statement, SqlError> {
    let tokens = checked(text)?;
    let mut p = Parser { tokens, pos: 0 };
    let stmt = p.statement()?;
    p.expect_end()?;
    Ok(stmt)
}

/// Parses a lone expression (a substitution template's body).
pub fn parse_expr(text: &str) -> Result<Expr, SqlError> {
    let tokens = checked(text)?;
    let mut p = Parser { tokens, pos: 0 };
    let e = p.expr(0)?;
    p.expect_end()?;
    Ok(e)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

const MAX_DEPTH: usize = 64;

/// Most tokens in a statement or template: long operator chains build deep
/// trees that evaluation walks recursively, so their length is bounded too.
const MAX_TOKENS: usize = 2048;

fn checked(text: &str) -> Result<Vec<Token>, SqlError> {
    let tokens = tokenize(text)?;
    if tokens.len() > MAX_TOKENS {
        return Err(SqlError::new(
            tokens.get(MAX_TOKENS).map_or(0, |t| t.at),
            format!("statement longer than {MAX_TOKENS} tokens"),
        ));
    }
    Ok(tokens)
}

impl Parser {
    fn peek(&self) -> &Kind {
        self.tokens.get(self.pos).map_or(&Kind::End, |t| &t.kind)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(0, |t| t.at)
    }

    fn bump(&mut self) -> Kind {
        let k = self.peek().clone();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        k
    }

    fn is_kw(&self, k: Keyword) -> bool {
        *self.peek() == Kind::Keyword(k)
    }

    fn is_sym(&self, s: Sym) -> bool {
        *self.peek() == Kind::Sym(s)
    }

    fn eat_kw(&mut self, k: Keyword) -> bool {
        let hit = self.is_kw(k);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn eat_sym(&mut self, s: Sym) -> bool {
        let hit = self.is_sym(s);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn error(&self, expected: &str) -> SqlError {
        SqlError::new(
            self.at(),
            format!("expected {expected}, found {}", self.peek()),
        )
    }

    fn expect_kw(&mut self, k: Keyword, what: &str) -> Result<(), SqlError> {
        if self.eat_kw(k) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn expect_sym(&mut self, s: Sym, what: &str) -> Result<(), SqlError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn expect_end(&self) -> Result<(), SqlError> {
        if *self.peek() == Kind::End {
            Ok(())
        } else {
            Err(self.error("the end of the statement"))
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, SqlError> {
        match self.peek().clone() {
            Kind::Ident(s) => {
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.error(what)),
        }
    }

    fn statement(&mut self) -> Result<Statement, SqlError> {
        let mut set = Vec::new();
        if self.eat_kw(Keyword::Set) {
            loop {
                let Kind::Variable(name) = self.peek().clone() else {
                    return Err(self.error("a variable (@name)"));
                };
                self.pos += 1;
                if set.iter().any(|(n, _)| *n == name) {
                    return Err(SqlError::new(
                        self.at(),
                        format!("@{name} is assigned twice"),
                    ));
                }
                self.expect_sym(Sym::Eq, "`=`")?;
                set.push((name, self.expr(0)?));
                if !self.eat_sym(Sym::Comma) {
                    break;
                }
            }
        }
        self.expect_kw(Keyword::Select, "SELECT")?;
        let select = self.select_list(0)?;
        self.expect_kw(Keyword::From, "FROM")?;
        let from = match self.bump() {
            Kind::Str(s) => s,
            _ => {
                self.pos -= 1;
                return Err(self.error("a topic filter in quotes"));
            }
        };
        let filter = if self.eat_kw(Keyword::Where) {
            Some(self.expr(0)?)
        } else {
            None
        };
        Ok(Statement {
            set,
            select,
            from,
            filter,
        })
    }

    fn select_list(&mut self, depth: usize) -> Result<Select, SqlError> {
        if self.eat_kw(Keyword::Value) {
            return Ok(Select::Value(self.expr(depth)?));
        }
        let mut items = Vec::new();
        loop {
            if self.eat_sym(Sym::Star) {
                items.push(Item::Star);
            } else {
                let e = self.expr(depth)?;
                let alias = if self.eat_kw(Keyword::As) {
                    let mut name = self.ident("an alias")?;
                    while self.eat_sym(Sym::Dot) {
                        name.push('.');
                        name.push_str(&self.ident("an alias")?);
                    }
                    Some(name)
                } else {
                    None
                };
                items.push(Item::Expr(e, alias));
            }
            if !self.eat_sym(Sym::Comma) {
                break;
            }
        }
        Ok(Select::Items(items))
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, SqlError> {
        if depth > MAX_DEPTH {
            return Err(SqlError::new(self.at(), "expression nested too deeply"));
        }
        self.or(depth + 1)
    }

    fn or(&mut self, d: usize) -> Result<Expr, SqlError> {
        let mut e = self.and(d)?;
        while self.eat_kw(Keyword::Or) {
            e = Expr::Binary(BinOp::Or, Box::new(e), Box::new(self.and(d)?));
        }
        Ok(e)
    }

    fn and(&mut self, d: usize) -> Result<Expr, SqlError> {
        let mut e = self.not(d)?;
        while self.eat_kw(Keyword::And) {
            e = Expr::Binary(BinOp::And, Box::new(e), Box::new(self.not(d)?));
        }
        Ok(e)
    }

    fn not(&mut self, d: usize) -> Result<Expr, SqlError> {
        if self.eat_kw(Keyword::Not) {
            if d > MAX_DEPTH {
                return Err(SqlError::new(self.at(), "expression nested too deeply"));
            }
            return Ok(Expr::Not(Box::new(self.not(d + 1)?)));
        }
        self.comparison(d)
    }

    fn comparison(&mut self, d: usize) -> Result<Expr, SqlError> {
        let left = self.additive(d)?;
        let op = match self.peek() {
            Kind::Sym(Sym::Eq) => BinOp::Eq,
            Kind::Sym(Sym::Ne) => BinOp::Ne,
            Kind::Sym(Sym::Lt) => BinOp::Lt,
            Kind::Sym(Sym::Le) => BinOp::Le,
            Kind::Sym(Sym::Gt) => BinOp::Gt,
            Kind::Sym(Sym::Ge) => BinOp::Ge,
            _ => return Ok(left),
        };
        self.pos += 1;
        Ok(Expr::Binary(
            op,
            Box::new(left),
            Box::new(self.additive(d)?),
        ))
    }

    fn additive(&mut self, d: usize) -> Result<Expr, SqlError> {
        let mut e = self.multiplicative(d)?;
        loop {
            let op = match self.peek() {
                Kind::Sym(Sym::Plus) => BinOp::Add,
                Kind::Sym(Sym::Minus) => BinOp::Sub,
                _ => return Ok(e),
            };
            self.pos += 1;
            e = Expr::Binary(op, Box::new(e), Box::new(self.multiplicative(d)?));
        }
    }

    fn multiplicative(&mut self, d: usize) -> Result<Expr, SqlError> {
        let mut e = self.unary(d)?;
        loop {
            let op = match self.peek() {
                Kind::Sym(Sym::Star) => BinOp::Mul,
                Kind::Sym(Sym::Slash) => BinOp::Div,
                Kind::Sym(Sym::Percent) => BinOp::Mod,
                _ => return Ok(e),
            };
            self.pos += 1;
            e = Expr::Binary(op, Box::new(e), Box::new(self.unary(d)?));
        }
    }

    fn unary(&mut self, d: usize) -> Result<Expr, SqlError> {
        if self.eat_sym(Sym::Minus) {
            if d > MAX_DEPTH {
                return Err(SqlError::new(self.at(), "expression nested too deeply"));
            }
            return Ok(Expr::Neg(Box::new(self.unary(d + 1)?)));
        }
        self.postfix(d)
    }

    fn postfix(&mut self, d: usize) -> Result<Expr, SqlError> {
        let mut e = self.primary(d)?;
        loop {
            if self.eat_sym(Sym::Dot) {
                e = Expr::Member(Box::new(e), self.ident("an attribute name")?);
            } else if self.eat_sym(Sym::LBracket) {
                let index = self.expr(d + 1)?;
                self.expect_sym(Sym::RBracket, "`]`")?;
                e = Expr::Index(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self, d: usize) -> Result<Expr, SqlError> {
        let at = self.at();
        match self.bump() {
            Kind::Int(i) => Ok(Expr::Int(i)),
            Kind::Decimal(x) => Ok(Expr::Decimal(x)),
            Kind::Str(s) => Ok(Expr::Str(s)),
            Kind::Keyword(Keyword::True) => Ok(Expr::Bool(true)),
            Kind::Keyword(Keyword::False) => Ok(Expr::Bool(false)),
            Kind::Keyword(Keyword::Null) => Ok(Expr::Null),
            Kind::Variable(v) => Ok(Expr::Variable(v)),
            // `value` is a keyword after SELECT, and a common payload key everywhere else.
            Kind::Keyword(Keyword::Value) => Ok(Expr::Attr("value".into())),
            Kind::Sym(Sym::Star) => Ok(Expr::Star),
            Kind::Keyword(Keyword::Case) => self.case(d),
            Kind::Sym(Sym::LParen) => {
                let e = if self.is_kw(Keyword::Select) {
                    self.pos += 1;
                    self.nested(d)?
                } else {
                    self.expr(d + 1)?
                };
                self.expect_sym(Sym::RParen, "`)`")?;
                Ok(e)
            }
            Kind::Sym(Sym::LBrace) => {
                let mut fields = Vec::new();
                if !self.eat_sym(Sym::RBrace) {
                    loop {
                        let key = match self.bump() {
                            Kind::Str(s) | Kind::Ident(s) => s,
                            _ => {
                                self.pos -= 1;
                                return Err(self.error("a key"));
                            }
                        };
                        self.expect_sym(Sym::Colon, "`:`")?;
                        fields.push((key, self.expr(d + 1)?));
                        if !self.eat_sym(Sym::Comma) {
                            break;
                        }
                    }
                    self.expect_sym(Sym::RBrace, "`}`")?;
                }
                Ok(Expr::Object(fields))
            }
            Kind::Sym(Sym::LBracket) => {
                let mut items = Vec::new();
                if !self.eat_sym(Sym::RBracket) {
                    loop {
                        items.push(self.expr(d + 1)?);
                        if !self.eat_sym(Sym::Comma) {
                            break;
                        }
                    }
                    self.expect_sym(Sym::RBracket, "`]`")?;
                }
                Ok(Expr::Array(items))
            }
            Kind::Ident(name) => {
                if !self.eat_sym(Sym::LParen) {
                    return Ok(Expr::Attr(name));
                }
                let lower = name.to_ascii_lowercase();
                if lower == "cast" {
                    let e = self.expr(d + 1)?;
                    self.expect_kw(Keyword::As, "AS")?;
                    let ty = self.ident("a type name")?.to_ascii_lowercase();
                    self.expect_sym(Sym::RParen, "`)`")?;
                    return Ok(Expr::Cast(Box::new(e), ty));
                }
                let mut args = Vec::new();
                if !self.eat_sym(Sym::RParen) {
                    loop {
                        args.push(self.expr(d + 1)?);
                        if !self.eat_sym(Sym::Comma) {
                            break;
                        }
                    }
                    self.expect_sym(Sym::RParen, "`)`")?;
                }
                Ok(Expr::Call(lower, args))
            }
            other => {
                self.pos -= 1;
                Err(SqlError::new(
                    at,
                    format!("expected an expression, found {other}"),
                ))
            }
        }
    }

    fn case(&mut self, d: usize) -> Result<Expr, SqlError> {
        let subject = if self.is_kw(Keyword::When) {
            None
        } else {
            Some(Box::new(self.expr(d + 1)?))
        };
        let mut arms = Vec::new();
        while self.eat_kw(Keyword::When) {
            let when = self.expr(d + 1)?;
            self.expect_kw(Keyword::Then, "THEN")?;
            arms.push((when, self.expr(d + 1)?));
        }
        if arms.is_empty() {
            return Err(self.error("WHEN"));
        }
        let otherwise = if self.eat_kw(Keyword::Else) {
            Some(Box::new(self.expr(d + 1)?))
        } else {
            None
        };
        self.expect_kw(Keyword::End, "END")?;
        Ok(Expr::Case {
            subject,
            arms,
            otherwise,
        })
    }

    fn nested(&mut self, d: usize) -> Result<Expr, SqlError> {
        let select = self.select_list(d + 1)?;
        self.expect_kw(Keyword::From, "FROM")?;
        let mut from = vec![self.ident("an array attribute")?];
        while self.eat_sym(Sym::Dot) {
            from.push(self.ident("an attribute name")?);
        }
        let filter = if self.eat_kw(Keyword::Where) {
            Some(self.expr(d + 1)?)
        } else {
            None
        };
        Ok(Expr::Nested(Box::new(Nested {
            select,
            from,
            filter,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attr(a: &str) -> Expr {
        Expr::Attr(a.into())
    }

    #[test]
    fn the_typical_rule() {
        let s = parse("SELECT a, b.c FROM 'x/+' WHERE temp > 30").expect("valid");
        assert_eq!(s.from, "x/+");
        assert_eq!(
            s.select,
            Select::Items(vec![
                Item::Expr(attr("a"), None),
                Item::Expr(Expr::Member(Box::new(attr("b")), "c".into()), None),
            ])
        );
        assert_eq!(
            s.filter,
            Some(Expr::Binary(
                BinOp::Gt,
                Box::new(attr("temp")),
                Box::new(Expr::Int(30))
            ))
        );
    }

    #[test]
    fn spec_examples_parse() {
        for sql in [
            "SELECT *, topic(2) AS device FROM 'sensors/+/temp' WHERE temp > 50",
            "SELECT VALUE color FROM 'a/b'",
            "SET @t = temp * 2, @u = @t + 1 SELECT @t AS t2 FROM 'a' WHERE @u > 3",
            "SELECT (SELECT VALUE v FROM e WHERE n = 'temperature') AS temps FROM 'a/#'",
            "SELECT CASE color WHEN 'red' THEN 1 WHEN 'blue' THEN 2 ELSE 0 END AS code FROM 'c'",
            "SELECT CASE WHEN t > 1 THEN 'hot' END AS h FROM 'c'",
            "SELECT cast(x AS Int) AS i, encode(*, 'base64') AS data FROM 'raw/#'",
            "SELECT {'a': 1, \"b\": [1, 2.5, true, null]} AS o FROM 'x' WHERE NOT flag AND (a = 1 OR b <> 2)",
            "SELECT arr[0].name AS first, -x % 3 AS m FROM 'x' WHERE a != 'b'",
            "select value timestamp() from 'x'",
        ] {
            parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn precedence_is_sql_standard() {
        let s = parse("SELECT VALUE 1 + 2 * 3 = 7 AND NOT a OR b FROM 'x'").expect("valid");
        let Select::Value(e) = s.select else {
            panic!("VALUE")
        };
        // ((1 + (2 * 3)) = 7 AND NOT a) OR b
        let Expr::Binary(BinOp::Or, left, _) = e else {
            panic!("OR at the top: {e:?}")
        };
        let Expr::Binary(BinOp::And, cmp, not) = *left else {
            panic!("AND under OR")
        };
        assert!(matches!(*not, Expr::Not(_)));
        let Expr::Binary(BinOp::Eq, sum, _) = *cmp else {
            panic!("= under AND")
        };
        assert!(
            matches!(*sum, Expr::Binary(BinOp::Add, _, ref r) if matches!(**r, Expr::Binary(BinOp::Mul, _, _)))
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("SELECT a FROM x", 14, "topic filter"),
            ("SELECT a 'x'", 9, "FROM"),
            ("SELECT a FROM 'x' WHERE", 23, "expression"),
            ("SELECT a FROM 'x' WHERE (b = 1", 30, "`)`"),
            ("SELECT CASE a END FROM 'x'", 14, "WHEN"),
            ("SET @a = 1, @a = 2 SELECT a FROM 'x'", 15, "twice"),
            ("SELECT a FROM 'x' extra", 18, "end of the statement"),
        ];
        for (sql, at, text) in cases {
            let e = parse(sql).expect_err(sql);
            assert_eq!(e.at, at, "{sql}: {e}");
            assert!(e.message.contains(text), "{sql}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let sql = format!(
            "SELECT VALUE {}1{} FROM 'x'",
            "(".repeat(500),
            ")".repeat(500)
        );
        assert!(parse(&sql).is_err());
        let sql = format!("SELECT VALUE {}1 FROM 'x'", "-".repeat(500));
        assert!(parse(&sql).is_err());
        let sql = format!("SELECT VALUE {}a FROM 'x'", "NOT ".repeat(500));
        assert!(parse(&sql).is_err());
        // Long chains are bounded too (evaluation walks them recursively).
        let sql = format!("SELECT VALUE a{} FROM 'x'", "+a".repeat(5000));
        assert!(parse(&sql).is_err());
        let sql = format!("SELECT VALUE a{} FROM 'x'", ".b".repeat(5000));
        assert!(parse(&sql).is_err());
    }

    #[test]
    fn value_is_also_an_attribute_name() {
        let s = parse("SELECT VALUE value FROM 'x' WHERE value > 5").expect("valid");
        assert_eq!(s.select, Select::Value(attr("value")));
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }

        #[test]
        fn sql_like_input_never_panics(s in "(SELECT|FROM|WHERE|CASE|WHEN|END|AND|NOT|[a-z]{1,3}|'[a-z/+]*'|[0-9.]{1,4}|[-+*/%=<>(),.\\[\\]{}:@ ]){0,30}") {
            let _ = parse(&s);
        }
    }
}
