// The executable under hostile conditions: privileges dropped after binding, 10,000 idle
// connections held with bounded memory, and a client that never reads its answers.

import Testing
import Foundation
@testable import BackstopCore
@testable import BackstopServer

func processStatus(_ pid: Int32, _ field: String) -> String? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
    }
    return nil
}

func rssKiB(_ pid: Int32) -> Int {
    Int(processStatus(pid, "VmRSS")?.split(separator: " ").first ?? "0") ?? 0
}

@Suite(.serialized) struct HardeningTests {
    @Test(.enabled(if: geteuid() == 0, "needs root to switch users"))
    func dropsPrivilegesAfterBinding() async throws {
        let dir = tempDirectory()
        chmod(dir, 0o755)
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[[listen]]\naddress = \"unix:\(dir)/policy.sock\"\nmode = \"0600\"\nowner = \"nobody\"\n[server]\nuser = \"nobody\"\ngroup = \"nogroup\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o644)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        let pid = serve.process.processIdentifier
        // The main thread has exited (Dispatch's main loop replaces it); every live thread
        // must run as nobody.
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        var live = 0
        for task in tasks {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8),
                  !text.contains("State:\tZ") else { continue }
            live += 1
            let uid = text.split(separator: "\n").first { $0.hasPrefix("Uid:") } ?? ""
            #expect(uid.split(separator: "\t").dropFirst().allSatisfy { $0 == "65534" }, "task \(task): \(uid)")
        }
        #expect(live >= 2)
        #expect(serve.log.contains("dropped privileges to uid=65534 gid=65534"))
        var info = stat()
        #expect(stat(dir + "/policy.sock", &info) == 0 && info.st_uid == 65534)
        #expect(info.st_mode & 0o777 == 0o600, "mode as configured: \(String(info.st_mode & 0o777, radix: 8))")
        #expect(try await waitForClient(port: port).ask(rcptRequest) == "action=DUNNO")
        #expect(try PolicyClient(endpoint: .unix(path: dir + "/policy.sock")).ask(rcptRequest) == "action=DUNNO")
        // As nobody, the server cannot remove its socket from a directory only root may
        // write: it says so, and the next start finds the file stale and replaces it.
        #expect(serve.stop() == 0)
        #expect(lstat(dir + "/policy.sock", &info) == 0)
        #expect(serve.log.contains("cannot remove unix:\(dir)/policy.sock on stop: Permission denied"), "\(serve.log)")
        chown(dir, 65534, 65534)
        let again = try ServeProcess(config: path)
        #expect(await again.waitForLog("backstop started"), "\(again.log)")
        #expect(try PolicyClient(endpoint: .unix(path: dir + "/policy.sock")).ask(rcptRequest) == "action=DUNNO")
        // In a directory the server user may write, stop removes the socket.
        #expect(again.stop() == 0)
        #expect(lstat(dir + "/policy.sock", &info) != 0, "\(again.log)")
    }

    /// Read as root at start, a table only root may read would fail at its first edit or
    /// reload, long after: the start says so.
    @Test(.enabled(if: geteuid() == 0, "needs root to switch users"))
    func filesServerUserCannotReadAreNamedAtStart() async throws {
        let dir = tempDirectory()
        chmod(dir, 0o755)
        let port = freePort()
        let table = dir + "/recipients", path = dir + "/backstop.toml"
        try "alice@example.org OK\n".write(toFile: table, atomically: true, encoding: .utf8)
        chmod(table, 0o600)
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[server]\nuser = \"nobody\"\n[policy]\nrcpt = [\"recipients\"]\n[recipients]\ntables = [\"\(table)\"]\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o644)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        #expect(await serve.waitForLog("backstop started"), "\(serve.log)")
        #expect(serve.log.contains("\(table) cannot be read as nobody (Permission denied): it loaded as root, but its next edit or a reload will fail"), "\(serve.log)")
        #expect(!serve.log.contains("\(path) cannot be read"))
    }

    @Test func tenThousandIdleConnectionsStayCheap() async throws {
        Privileges.raiseFileLimit()
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[server]\nmax_connections = 12000\n[log]\nlevel = \"warning\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let first = try await waitForClient(port: port)
        #expect(try first.ask(rcptRequest) == "action=DUNNO")
        let pid = serve.process.processIdentifier
        let before = rssKiB(pid)
        // The 10,000 clients live in a process of their own (Tests/Support/idle_clients.py):
        // Foundation's Process.run in tests running beside this one crashed while this
        // process held them. It asks on the first and the last: every one is served, not
        // just accepted.
        let clients = Process(), input = Pipe(), output = Pipe()
        clients.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        clients.arguments = ["python3", packageRoot + "/Tests/Support/idle_clients.py", String(port), "10000"]
        clients.standardInput = input
        clients.standardOutput = output
        try clients.run()
        defer { try? input.fileHandleForWriting.close(); clients.waitUntilExit() }
        var text = ""
        while text.split(separator: "\n").count < 2 {
            let data = output.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
        }
        #expect(text.split(separator: "\n") == ["action=DUNNO", "action=DUNNO"], "\(text)")
        let after = rssKiB(pid)
        let perConnection = Double(after - before) * 1024 / 10_000
        print("10,000 idle connections: RSS \(before / 1024) MiB -> \(after / 1024) MiB, \(Int(perConnection)) bytes per connection")
        #expect(after - before < 200 * 1024, "RSS grew by \((after - before) / 1024) MiB")
    }

    @Test func clientThatNeverReadsCannotGrowMemory() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[log]\nlevel = \"warning\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(config: path)
        defer { _ = serve.stop() }
        let client = try await waitForClient(port: port)
        #expect(try client.ask(rcptRequest) == "action=DUNNO")
        let pid = serve.process.processIdentifier
        let before = rssKiB(pid)
        // Pipeline requests without ever reading answers, until the kernel buffers fill
        // and sending blocks (the send timeout ends the attempt).
        let request = Array("request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=x@y\n\n".utf8)
        var batch: [UInt8] = []
        for _ in 0..<1000 { batch += request }
        var sent = 0
        let sender = try PolicyClient(endpoint: .tcp(host: "127.0.0.1", port: port), timeoutSeconds: 2)
        sender.setSendTimeout(seconds: 2)
        while sent < 200_000_000 {
            do { try sender.send(batch) } catch { break }
            sent += batch.count
        }
        let after = rssKiB(pid)
        print("client that never reads: sent \(sent / 1024) KiB before the server stopped reading; server RSS \(before / 1024) -> \(after / 1024) MiB")
        #expect(sent < 100_000_000, "the server kept reading without answers being read")
        #expect(after - before < 64 * 1024)
        // The server is still answering others.
        #expect(try await waitForClient(port: port).ask(rcptRequest) == "action=DUNNO")
    }
}
