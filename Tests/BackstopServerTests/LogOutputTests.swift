// The log output's choices that need no process: which stream the journal reads, that
// a library's chatter is demoted to debug while its warnings stay warnings, and that syslog
// is handed the line's characters.

import Testing
import Foundation
import Logging
@testable import BackstopCore
@testable import BackstopServer

@Suite struct LogOutputTests {
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
