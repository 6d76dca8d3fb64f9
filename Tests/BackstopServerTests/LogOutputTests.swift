// The log output's choices that need no process: which stream the journal reads, that
// a library's chatter is demoted to debug while its warnings stay warnings, and that syslog
// is handed the line's characters.

import Testing
import Foundation
import Logging
@testable import BackstopCore
@testable import BackstopServer

@Suite struct LogOutputTests {
    /// The level a logger reads back is the one configured, for every level.
    @Test func theConfiguredLevelIsTheOneReadBack() {
        let output = LogOutput()
        for level in Logger.Level.allCases {
            var settings = LogSettings()
            settings.level = level.rawValue
            output.configure(settings)
            #expect(output.level == level)
            #expect(Logger.Level(rank: level.rank) == level)
        }
    }

    @Test func journalStreamIsRecognisedOnlyForTheStreamItNames() {
        var info = stat()
        #expect(fstat(2, &info) == 0)
        let stderrBit = LogOutput.journalStreams("\(info.st_dev):\(info.st_ino)")
        #expect(stderrBit & 1 == 1)
        #expect(LogOutput.journalStreams("1:1") == 0)
        #expect(LogOutput.journalStreams("nonsense") == 0)
        #expect(LogOutput.journalStreams(nil) == 0)
    }

    /// What syslog is given for its "%s": the line's characters (a Swift String passed as
    /// CVarArg is an object, and "%s" would read its header). Formatted here by libc's own
    /// vsnprintf from the same va_list.
    @Test func syslogGetsTheLineAsACString() {
        let line = "rate limit exceeded: key=\"h\u{E9}llo\" 100% done"
        let formatted = LogOutput.withCStringArgument(line) { arguments -> String in
            var buffer = [CChar](repeating: 0, count: 256)
            let length = Int(vsnprintf(&buffer, buffer.count, "%s", arguments))
            return String(decoding: buffer.prefix(max(0, min(length, buffer.count - 1))).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        #expect(formatted == line)
    }

    @Test func libraryMessagesBelowWarningAreDebug() {
        #expect(LogOutput.effectiveLevel(.info, label: LogLabels.library) == .debug)
        #expect(LogOutput.effectiveLevel(.notice, label: LogLabels.library) == .debug)
        #expect(LogOutput.effectiveLevel(.warning, label: LogLabels.library) == .warning)
        #expect(LogOutput.effectiveLevel(.info, label: "backstop") == .info)
    }
}

/// Writing to a reader that stops part-way: whole lines count as written, the rest (a cut one
/// included) as dropped, and the next line starts on a line of its own.
@Suite struct LogOutputWriteTests {
    @Test func aStreamThatFillsCutsNoLineIntoTheNext() throws {
        let setPipeSize: Int32 = 1031, getPipeSize: Int32 = 1032  // F_SETPIPE_SZ, F_GETPIPE_SZ
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
        _ = fcntl(fds[1], setPipeSize, 4096)
        let size = Int(fcntl(fds[1], getPipeSize))
        #expect(size >= 4096)
        let line = String(repeating: "x", count: size * 3 / 4 - 1) + "\n"
        let lines = (0..<3).map { _ in LogWriter.Line(fd: fds[1], priority: LOG_INFO, text: line) }
        // An output of its own: the shared one's writer thread may be writing other suites'
        // lines, and `emit` runs on one thread only.
        let output = LogOutput()
        // The pipe takes one line and part of the next; after 1 s of waiting the rest is given up.
        #expect(output.emit(lines, dropped: 0) == 2)
        var buffer = [UInt8](repeating: 0, count: size * 2)
        #expect(read(fds[0], &buffer, buffer.count) == size)
        #expect(output.emit([LogWriter.Line(fd: fds[1], priority: LOG_INFO, text: "after\n")], dropped: 0) == 0)
        let n = read(fds[0], &buffer, buffer.count)
        #expect(String(decoding: buffer.prefix(max(0, n)), as: UTF8.self) == "\nafter\n", "the cut line is ended before the next")
    }
}
