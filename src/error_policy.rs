//! One error policy for every PostgreSQL connection (SQL and replication, source and
//! warehouse): what a SQLSTATE means for the pipeline. A failure is waited out and retried, an
//! event is set aside as a dead letter, or the process stops with the fix. Each error type asks
//! here instead of keeping its own list.

/// What the pipeline does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The server is down, restarting, out of connections or busy: wait and retry; nothing
    /// is acknowledged meanwhile.
    Retry,
    /// The value cannot be stored as it is: the event goes to the dead letters, the batch on.
    DeadLetter,
    /// Only a change of configuration or schema helps: stop and say how.
    Stop,
}

/// The action for a SQLSTATE.
pub fn for_sqlstate(code: &str) -> Action {
    match code {
        // Connection exceptions, insufficient resources (too many connections, disk full),
        // operator intervention (shutdown, crash recovery, starting up).
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => Action::Retry,
        // Serialization failure and deadlock: the transaction may simply run again.
        "40001" | "40P01" => Action::Retry,
        // The server ended a transaction left idle too long (this writer was frozen or its
        // network stalled: its locks were given back), or cancelled a statement.
        "25P03" | "25P04" | "57014" => Action::Retry,
        // Object in use: another process holds the replication slot until it ends.
        "55006" => Action::Retry,
        // Internal error: what a walsender reports when its session is torn down under it.
        "XX000" => Action::Retry,
        // Data exceptions and integrity violations: this value, not the pipeline.
        c if c.starts_with("22") || c.starts_with("23") => Action::DeadLetter,
        _ => Action::Stop,
    }
}

/// The action for a server's refusal of a new session: as for its SQLSTATE, and a database
/// closed to connections for a while (`ALLOW_CONNECTIONS false` during maintenance, SQLSTATE
/// 55000, which otherwise means a state only a change fixes) is waited out too.
pub fn for_connect_refusal(code: &str, message: &str) -> Action {
    if code == "55000" && message.contains("not currently accepting connections") {
        return Action::Retry;
    }
    for_sqlstate(code)
}

/// The action for a tokio-postgres error; one without a SQLSTATE is an I/O problem or a
/// closed connection, retried.
pub fn for_pg(e: &tokio_postgres::Error) -> Action {
    e.code().map_or(Action::Retry, |c| for_sqlstate(c.code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(for_sqlstate("08006"), Action::Retry);
        assert_eq!(for_sqlstate("57P01"), Action::Retry);
        assert_eq!(for_sqlstate("53300"), Action::Retry);
        assert_eq!(for_sqlstate("40P01"), Action::Retry);
        assert_eq!(for_sqlstate("25P03"), Action::Retry);
        assert_eq!(for_sqlstate("22007"), Action::DeadLetter);
        assert_eq!(for_sqlstate("23502"), Action::DeadLetter);
        assert_eq!(for_sqlstate("42501"), Action::Stop);
        assert_eq!(for_sqlstate("42704"), Action::Stop);
        assert_eq!(
            for_connect_refusal(
                "55000",
                "database \"wh\" is not currently accepting connections"
            ),
            Action::Retry
        );
        assert_eq!(
            for_connect_refusal("55000", "slot invalidated"),
            Action::Stop
        );
    }
}
