//! How an operator mends a failure, kept apart from what failed: every error type whose cause
//! a change of configuration, permissions or schema fixes says how through `Fix`, and the
//! command line (`commands::report`) prints it on its own line under the error.

/// An error that knows its remedy.
pub trait Fix {
    /// What to change so that it does not fail again; `None` when nothing the operator does
    /// helps (it is retried, or it is a bug to report).
    fn fix(&self) -> Option<String>;
}
