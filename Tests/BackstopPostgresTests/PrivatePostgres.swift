// A private PostgreSQL cluster for the tests: initdb in a temp directory, trust auth,
// listening on 127.0.0.1 on a free port only, started and stopped with pg_ctl. PostgreSQL
// refuses to run as root, so as root the cluster belongs to (and runs as) the `postgres` user.
// Debian puts the binaries in /usr/lib/postgresql/<version>/bin; when none are installed,
// `start` fails, so a machine without PostgreSQL fails these tests. Setting
// BACKSTOP_SKIP_POSTGRES=1 skips them explicitly (swift-testing reports them as skipped);
// CI never sets it.

import Foundation

final class PrivatePostgres: @unchecked Sendable {
    let directory: String
    private(set) var port: Int
    private let bin: String
    private let asPostgresUser: Bool

    static func binaries() -> String? {
        let base = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [])
            .compactMap(Int.init).sorted()
        for version in versions.reversed() {
            let bin = "\(base)/\(version)/bin"
            if FileManager.default.isExecutableFile(atPath: bin + "/pg_ctl") { return bin }
        }
        return nil
    }

    /// True when the run asked to skip the PostgreSQL tests (BACKSTOP_SKIP_POSTGRES=1).
    static var skipped: Bool { ProcessInfo.processInfo.environment["BACKSTOP_SKIP_POSTGRES"] == "1" }

    /// Creates and starts a cluster; fails when PostgreSQL is not installed.
    static func start() throws -> PrivatePostgres {
        guard let bin = binaries() else {
            throw CommandFailed(description: "PostgreSQL tests need the server binaries (apt-get install postgresql); none in /usr/lib/postgresql. Set BACKSTOP_SKIP_POSTGRES=1 to skip them on purpose")
        }
        let directory = NSTemporaryDirectory() + "backstop-pg-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let root = getuid() == 0
        if root { try run("/bin/chown", ["-R", "postgres:postgres", directory]) }
        let pg = PrivatePostgres(directory: directory, port: freePort(), bin: bin, asPostgresUser: root)
        try pg.postgres("initdb", ["-D", pg.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        // The port was free a moment ago; if something took it since, try another one.
        for attempt in 1...3 {
            do {
                try pg.startServer()
                break
            } catch {
                if attempt == 3 {
                    let log = pg.log
                    pg.destroy()
                    throw CommandFailed(description: "\(error)\nserver log:\n\(log.suffix(3000))")
                }
                pg.port = freePort()
            }
        }
        return pg
    }

    private init(directory: String, port: Int, bin: String, asPostgresUser: Bool) {
        self.directory = directory
        self.port = port
        self.bin = bin
        self.asPostgresUser = asPostgresUser
    }

    var data: String { directory + "/data" }

    func startServer() throws {
        try postgres("pg_ctl", ["-D", data, "-l", directory + "/server.log", "-w", "-t", "60", "-o",
                                "-p \(port) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
                                "start"])
    }

    func stopServer() throws {
        try postgres("pg_ctl", ["-D", data, "-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// Stops the server if it runs and removes the cluster.
    func destroy() {
        _ = try? postgres("pg_ctl", ["-D", data, "-m", "immediate", "-w", "-t", "60", "stop"])
        try? FileManager.default.removeItem(atPath: directory)
    }

    var log: String { (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? "" }

    /// Runs one SQL statement with psql and returns its unaligned output (tuples only).
    func sql(_ statement: String) throws -> String {
        try postgres("psql", ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-c", statement])
    }

    @discardableResult
    private func postgres(_ tool: String, _ arguments: [String]) throws -> String {
        if asPostgresUser {
            return try Self.run("/usr/sbin/runuser", ["-u", "postgres", "--", bin + "/" + tool] + arguments)
        } else {
            return try Self.run(bin + "/" + tool, arguments)
        }
    }

    struct CommandFailed: Error, CustomStringConvertible { let description: String }

    /// Runs a command and returns its output. posix_spawn and waitpid rather than Foundation's
    /// Process, whose wait does not return here once `pg_ctl start` has left a server running
    /// (the server inherits the descriptors Process watches), and so that every descriptor
    /// but 0, 1 and 2 is closed in the child. The output goes through a file.
    @discardableResult
    static func run(_ path: String, _ arguments: [String]) throws -> String {
        let outputPath = NSTemporaryDirectory() + "backstop-pg-cmd-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of this process may leak into PostgreSQL: tests running alongside hold
        // thousands of sockets, which would count against the server's descriptor limit and
        // stay open for as long as the server runs.
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard spawned == 0 else { throw CommandFailed(description: "cannot run \(path): error \(spawned)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        let exited = status & 0x7F == 0
        let code = (status >> 8) & 0xFF
        guard exited && code == 0 else {
            throw CommandFailed(description: "\(path) \(arguments.joined(separator: " ")) failed (status \(status)): \(text)")
        }
        return text
    }

    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+), which the Glibc module does not export.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    /// A port that was free a moment ago (bind to 0, read it back, close).
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
