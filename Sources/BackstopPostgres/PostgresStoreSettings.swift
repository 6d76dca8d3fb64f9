// `[ratelimit.postgres]`: where the shared counter store is and how Backstop talks to it,
// plus the backend object the executable registers so `store = "postgres"` works:
//     CounterStoreRegistry.register("postgres", PostgresCounterStoreBackend())
// Reading reports bad values with file:line; it does not connect (the store does, at start).

import BackstopCore
import Foundation
import Logging
import NIOCore
import PostgresNIO

public struct PostgresCounterStoreBackend: CounterStoreBackend {
    public init() {}

    public func readSettings(_ section: ConfigSection, baseDirectory: String) -> any CounterStoreSettings {
        PostgresStoreSettings(reading: section, baseDirectory: baseDirectory)
    }
}

public struct PostgresStoreSettings: CounterStoreSettings, Equatable {
    public enum TLSMode: String, Sendable, Equatable {
        case disable, prefer, require

        var configuration: PostgresClient.Configuration.TLS {
            switch self {
            case .disable: .disable
            case .prefer: .prefer(.makeClientConfiguration())
            case .require: .require(.makeClientConfiguration())
            }
        }
    }

    public var host = "127.0.0.1"
    public var port = 5432
    public var user = "backstop"
    public var password: String?
    /// Where the password was read from (password_file), resolved; read again at every reload.
    public var passwordFile: String?
    public var database = "backstop"
    public var tls: TLSMode = .disable
    public var poolSize = 4
    public var connectTimeout: TimeAmount = .seconds(2)
    public var statementTimeout: TimeAmount = .milliseconds(500)
    /// After three failures in a row, hits fail at once for this long before the database is tried again.
    public var retryInterval: TimeAmount = .seconds(1)
    public var sweepInterval: TimeAmount = .seconds(60)
    /// Create the table UNLOGGED (faster; emptied if PostgreSQL crashes, not replicated).
    public var unlogged = true

    public init() {}

    public var files: [String] { passwordFile.map { [$0] } ?? [] }

    public init(reading s: ConfigSection, baseDirectory: String) {
        defer { s.finish() }
        host = s.string("host", default: host)
        if host.isEmpty { s.report("host", "must not be empty: e.g. \"127.0.0.1\" or \"db.example.org\"") }
        port = s.int("port", default: port, range: 1...65535)
        user = s.string("user", default: user)
        database = s.string("database", default: database)
        password = s.optionalString("password")
        if let file = s.optionalString("password_file") {
            if password != nil { s.report("password_file", "give either password or password_file, not both") }
            let path = file.hasPrefix("/") ? file : (baseDirectory as NSString).appendingPathComponent(file)
            passwordFile = path
            do {
                let bytes = try RegularFile.read(path, maxBytes: 64 * 1024)
                if let text = String(validating: bytes, as: UTF8.self) {
                    password = text.trimmingCharacters(in: .whitespacesAndNewlines)
                } else {
                    s.report("password_file", "\(LogEscaping.escape(path)) is not valid UTF-8")
                }
            } catch {
                s.report("password_file", "cannot read \(LogEscaping.escape(path)): \(error.reason)")
            }
        }
        let tlsText = s.string("tls", default: tls.rawValue)
        if let mode = TLSMode(rawValue: tlsText) { tls = mode } else {
            s.report("tls", "\"\(LogEscaping.escape(tlsText))\" is not one of disable, prefer, require")
        }
        poolSize = s.int("pool_size", default: poolSize, range: 1...256)
        connectTimeout = s.duration("connect_timeout", default: connectTimeout, range: .milliseconds(10)...(.minutes(5)))
        statementTimeout = s.duration("statement_timeout", default: statementTimeout, range: .milliseconds(10)...(.seconds(60)))
        retryInterval = s.duration("retry_interval", default: retryInterval, range: .milliseconds(10)...(.minutes(10)))
        sweepInterval = s.duration("sweep_interval", default: sweepInterval, range: .seconds(1)...(.hours(24)))
        unlogged = s.bool("unlogged", default: unlogged)
    }

    public var identity: String {
        var h = Hasher()
        h.combine(password)
        return "host=\(host) port=\(port) user=\(user) database=\(database) tls=\(tls.rawValue) pool=\(poolSize) "
            + "connect=\(connectTimeout.nanoseconds) statement=\(statementTimeout.nanoseconds) "
            + "retry=\(retryInterval.nanoseconds) sweep=\(sweepInterval.nanoseconds) unlogged=\(unlogged) pw=\(h.finalize())"
    }

    public func makeStore(logger: Logger) throws -> any CounterStore {
        PostgresCounterStore(settings: self, logger: logger)
    }
}
