//! AWS IoT SQL (version 2016-03-23): the statements rules select messages
//! with. Pure: text in, syntax tree out; evaluation works on the tree.

pub mod eval;
pub mod lexer;
pub mod parser;
pub mod template;

pub use eval::{Evaluation, Message, Output, Variables, evaluate};
pub use lexer::SqlError;
pub use parser::{Statement, parse};
pub use template::Template;
