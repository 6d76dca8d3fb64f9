// A log reader that stops reading (a stalled journald, a full pipe) costs log lines, never
// answers: the server's lines wait in a bounded queue off the event loops, and what does
// not fit is dropped and counted in a warning. Against the real binary, its stderr a pipe
// that nobody reads until the requests are answered.

import Testing
import Foundation
import NIOConcurrencyHelpers
@testable import BackstopServer

@Suite struct LogWriterTests {
    @Test func aStalledLogReaderDoesNotStopAnswers() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n[log]\nlevel = \"info\"\ndecisions = \"all\"\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: backstopBinary)
        process.arguments = ["serve", "--config", path]
        let log = Pipe()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let client = try await waitForClient(port: port)
        // Long values make each decision line about 2.5 KB: 2,500 of them are more than the
        // 4 MiB queue holds, and a pipe holds 64 KiB.
        let long = String(repeating: "s", count: 500)
        let request = rcptRequest.map { name, value in
            (name, ["sender", "recipient"].contains(name) ? long + "@example.org" : ["instance", "client_address"].contains(name) ? long : value)
        } + [("helo_name", long), ("queue_id", long)]
        let count = 2_500
        var answered = 0
        for _ in 0..<count where try client.ask(request) == "action=DUNNO" { answered += 1 }
        #expect(answered == count, "the server stopped answering while its log was not read")
        // Now read the log, on a thread of its own: the lines that fit, then the count of those
        // that did not. Stopped only once the count is read, so that no line of the stop can
        // be dropped too.
        let collected = NIOLockedValueBox(Data())
        let reader = Thread {
            while true {
                let chunk = log.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                collected.withLockedValue { $0.append(chunk) }
            }
        }
        reader.start()
        let deadline = Date().addingTimeInterval(60)
        let marker = Data(" log lines dropped".utf8)
        while collected.withLockedValue({ $0.range(of: marker) == nil }), Date() < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        while !reader.isFinished, Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        let text = String(decoding: collected.withLockedValue { $0 }, as: UTF8.self)
        let decisions = text.components(separatedBy: " decision ").count - 1
        let dropped = text.split(separator: "\n").compactMap { line -> Int? in
            guard let range = line.range(of: " log lines dropped") else { return nil }
            return Int(line[..<range.lowerBound].split(separator: " ").last ?? "")
        }.reduce(0, +)
        #expect(dropped > 0, "the queue never filled: \(decisions) decision lines")
        #expect(decisions + dropped == count, "\(decisions) written + \(dropped) dropped")
        #expect(text.contains("backstop stopped"), "the exit wrote out the queue")
    }

    /// Started with stdout and stderr closed, the server opens them on /dev/null before
    /// anything else, so no socket it opens later takes their numbers (and its log lines).
    @Test func closedStandardDescriptorsAreOpenedOnDevNull() async throws {
        let dir = tempDirectory()
        let port = freePort()
        let path = dir + "/backstop.toml"
        try "[[listen]]\naddress = \"127.0.0.1:\(port)\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "exec \"$0\" serve --config \"$1\" 1>&- 2>&-", backstopBinary, path]
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let client = try await waitForClient(port: port)
        #expect(try client.ask(rcptRequest) == "action=DUNNO")
        for fd in [1, 2] {
            let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process.processIdentifier)/fd/\(fd)")
            #expect(target == "/dev/null", "descriptor \(fd): \(target ?? "closed")")
        }
    }
}
