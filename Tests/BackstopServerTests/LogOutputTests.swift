// The log output's choices that need no process: which stream the journal reads, and that
// a library's chatter is demoted to debug while its warnings stay warnings.

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

    @Test func libraryMessagesBelowWarningAreDebug() {
        #expect(LogOutput.effectiveLevel(.info, label: LogLabels.library) == .debug)
        #expect(LogOutput.effectiveLevel(.notice, label: LogLabels.library) == .debug)
        #expect(LogOutput.effectiveLevel(.warning, label: LogLabels.library) == .warning)
        #expect(LogOutput.effectiveLevel(.info, label: "backstop") == .info)
    }
}
