// Logger labels with a meaning for the log output: messages from libraries Backstop hands a
// logger to (postgres-nio's connection pool) go under `library` and are written at debug
// below warning, so an outage reads as Backstop's own one line, not as library chatter.

public enum LogLabels {
    public static let library = "backstop.library"
}
