// The table file format: Postfix lookup-table source as postmap reads it, with the edge
// cases admins' files actually contain, and errors that name file:line.

import Foundation
import Testing
@testable import BackstopCore

@Suite struct RecipientsTableFormatTests {
    @Test func commentsBlankLinesAndValues() throws {
        let dir = try RecipientTableDirectory()
        let table = try dir.table("""
            # relay_recipient_maps for example.com
            alice@example.com   OK

               # an indented comment
            bob@example.com\tx
            carol@example.com
            @catchall.example   anything at all
            """)
        let file = dir.file("recipients")
        #expect(table.lookup("alice@example.com") == .valid(file: file, line: 2))
        #expect(table.lookup("bob@example.com") == .valid(file: file, line: 5))
        #expect(table.lookup("carol@example.com") == .valid(file: file, line: 6))  // a key alone is accepted
        #expect(table.lookup("whoever@catchall.example") == .valid(file: file, line: 7))
        #expect(table.lookup("dave@example.com") == .unknown)
        #expect(table.addressCount == 3)
        #expect(table.catchAllCount == 1)
        #expect(table.domainCount == 2)
    }

    @Test func continuationLinesExtendTheValue() throws {
        let dir = try RecipientTableDirectory()
        let table = try dir.table("""
            gone@example.com  REJECT This person
            \tleft the company;
                # a comment inside the entry does not end it

              write to office@example.com
            next@example.com  OK
            """)
        let file = dir.file("recipients")
        #expect(table.lookup("gone@example.com") == .override(
            .reject("This person left the company; write to office@example.com"), file: file, line: 1))
        #expect(table.lookup("next@example.com") == .valid(file: file, line: 6))
    }

    @Test func continuationWithoutAnEntryIsAnError() throws {
        let dir = try RecipientTableDirectory()
        #expect {
            try dir.table("# header\n   indented@example.com OK\n")
        } throws: { error in
            let text = "\(error)"
            return text.contains(dir.file("recipients") + ":2: ") && text.contains("starts with whitespace")
        }
    }

    @Test func crlfAndTabs() throws {
        let dir = try RecipientTableDirectory()
        let table = try dir.table("# windows\r\nalice@example.com\tOK\r\n\t\r\nbob@example.com \t REJECT  moved away \r\n")
        let file = dir.file("recipients")
        #expect(table.lookup("alice@example.com") == .valid(file: file, line: 2))
        #expect(table.lookup("bob@example.com") == .override(.reject("moved away"), file: file, line: 4))
    }

    /// A byte order mark is no part of the first key (Windows editors write one); a NUL or
    /// a carriage return that does not end a line makes the edit fail with its line, where
    /// it would have changed keys without a word (alice unknown, the rest one long value).
    @Test func byteOrderMarkAndControlCharacters() throws {
        let dir = try RecipientTableDirectory()
        let table = try dir.table("\u{FEFF}alice@example.com OK\nbob@example.com OK\n")
        #expect(table.lookup("alice@example.com") == .valid(file: dir.file("recipients"), line: 1))
        let commented = try dir.table("\u{FEFF}# a comment\nalice@example.com OK\n")
        #expect(commented.lookup("alice@example.com") == .valid(file: dir.file("recipients"), line: 2))
        for (bytes, message) in [
            (Array("alice@example.com OK\rbob@example.com OK\r".utf8), ":1: a carriage return inside the line"),
            (Array("alice@example.com OK\n".utf8) + [0, 0, 0] + Array("bob@example.com OK\n".utf8), ":2: a control character (byte 0) in the line"),
        ] {
            let path = try dir.write("broken", bytes: bytes)
            #expect {
                try RecipientTableSource(files: [path]).load()
            } throws: { error in
                "\(error)".contains(path + message)
            }
        }
    }

    /// The arrays are sized for the lines that can hold an entry: four million blank and
    /// comment lines around one mailbox once reserved slots for eight million entries (32 MiB
    /// written, and 96 MB more reserved) for a table of two.
    @Test func blankLinesReserveNothing() throws {
        let dir = try RecipientTableDirectory()
        let filler = [UInt8](repeating: 10, count: 2_000_000) + Array(String(repeating: "#\n", count: 1_000_000).utf8)
        let path = try dir.write("recipients", bytes: filler + Array("alice@example.com OK\n".utf8))
        let table = try RecipientTableSource(files: [path]).load()
        #expect(table.entryCount == 2)
        #expect(table.memoryBytes < 1 << 20, "\(table.memoryBytes) bytes for two entries")
    }

    @Test func duplicateKeysLaterWins() throws {
        let dir = try RecipientTableDirectory()
        let first = try dir.write("first", "alice@example.com OK\nbob@example.com REJECT gone\nAlice@Example.COM DEFER wait\n")
        let second = try dir.write("second", "bob@example.com OK\n@example.org OK\n@example.org 550 5.1.6 moved\n")
        let table = try RecipientTableSource(files: [first, second]).load()
        #expect(table.lookup("alice@example.com") == .override(.deferTemporarily("wait"), file: first, line: 3))
        #expect(table.lookup("bob@example.com") == .valid(file: second, line: 1))
        #expect(table.lookup("x@example.org") == .override(.reply(code: 550, enhanced: "5.1.6", text: "moved"), file: second, line: 3))
        #expect(table.addressCount == 2)
    }

    @Test func laterFilesAddToEarlierOnes() throws {
        let dir = try RecipientTableDirectory()
        let first = try dir.write("first", "alice@example.com OK\n")
        let second = try dir.write("second", "bob@example.net OK\n")
        let table = try RecipientTableSource(files: [first, second]).load()
        #expect(table.lookup("alice@example.com") == .valid(file: first, line: 1))
        #expect(table.lookup("bob@example.net") == .valid(file: second, line: 1))
        #expect(table.lookup("carol@example.com") == .unknown)
        #expect(table.lookup("carol@example.net") == .unknown)
    }

    @Test func veryLongLines() throws {
        let dir = try RecipientTableDirectory()
        let longLocal = String(repeating: "l", count: 100_000)
        let longValue = "OK " + String(repeating: "v", count: 1_000_000)
        let table = try dir.table("\(longLocal)@example.com \(longValue)\nshort@example.com OK\n")
        let file = dir.file("recipients")
        #expect(table.lookup("\(longLocal)@example.com") == .valid(file: file, line: 1))
        #expect(table.lookup("\(longLocal)x@example.com") == .unknown)
        #expect(table.lookup("short@example.com") == .valid(file: file, line: 2))
    }

    @Test func nonUTF8InCommentsAndValuesIsTolerated() throws {
        let dir = try RecipientTableDirectory()
        var bytes = Array("# Bj".utf8) + [0xF6, 0x72, 0x6E] + Array(" (Latin-1)\nbjorn@example.com OK ".utf8) + [0xE9, 0xFF]
        bytes += Array("\ngone@example.com REJECT d".utf8) + [0xE9] + Array("part\n".utf8)
        let path = try dir.write("recipients", bytes: bytes)
        let table = try RecipientTableSource(files: [path]).load()
        #expect(table.lookup("bjorn@example.com") == .valid(file: path, line: 2))
        #expect(table.lookup("gone@example.com") == .override(.reject("d\u{FFFD}part"), file: path, line: 3))
    }

    @Test func nonUTF8InAKeyIsAnErrorWithItsLine() throws {
        let dir = try RecipientTableDirectory()
        let bytes = Array("ok@example.com OK\nj".utf8) + [0xF6] + Array("rg@example.com OK\n".utf8)
        let path = try dir.write("recipients", bytes: bytes)
        #expect {
            try RecipientTableSource(files: [path]).load()
        } throws: { error in
            let text = "\(error)"
            return text.contains("\(path):2: ") && text.contains("not valid UTF-8")
        }
    }

    @Test func badKeysAndValuesAreReportedWithFileAndLine() throws {
        let dir = try RecipientTableDirectory()
        let path = try dir.write("recipients", """
            good@example.com OK
            example REJECT
            user@ OK
            bad@example.com 550 4.1.1 mismatched
            "unterminated@example.com OK
            ""@example.com OK
            """)
        do {
            _ = try RecipientTableSource(files: [path]).load()
            Issue.record("a broken table loaded")
        } catch {
            let lines = error.issues.map(\.description)
            #expect(lines.count == 5)
            #expect(lines.contains { $0.hasPrefix("\(path):2: ") && $0.contains("neither user@domain nor @domain") })
            #expect(lines.contains { $0.hasPrefix("\(path):3: ") && $0.contains("empty domain") })
            #expect(lines.contains { $0.hasPrefix("\(path):4: ") && $0.contains("not a valid answer") })
            #expect(lines.contains { $0.hasPrefix("\(path):5: ") && $0.contains("closing quote") })
            #expect(lines.contains { $0.hasPrefix("\(path):6: ") && $0.contains("empty quoted local part") })
        }
    }

    /// An alias file (virtual(5)) listed as a table: its domain lines declare the domain
    /// (they were errors, so such a file could not be listed), its values are ignored, and
    /// a catch-all stays one whatever line comes after it.
    @Test func aVirtualAliasFileLoadsAsATable() throws {
        let dir = try RecipientTableDirectory()
        let path = try dir.write("virtual", """
            example.com           anything
            sales@example.com     alice@example.com, bob@example.com
            @example.org          catchall@example.com
            example.org           anything
            Bücher.example        x
            """)
        let table = try RecipientTableSource(files: [path]).load()
        #expect(table.lookup("sales@example.com") == .valid(file: path, line: 2))
        #expect(table.lookup("nobody@example.com") == .unknown)
        #expect(table.lookup("anyone@example.org") == .valid(file: path, line: 3))
        #expect(table.lookup("nobody@xn--bcher-kva.example") == .unknown)
        #expect(table.domainCount == 3)
        // A domain line with an answer of its own is an error (write @domain).
        let answered = try dir.write("answered", "example.net REJECT closed\n")
        #expect(throws: ConfigError.self) { try RecipientTableSource(files: [answered]).load() }
    }

    @Test func missingFileIsAnError() throws {
        let dir = try RecipientTableDirectory()
        let path = dir.file("nonexistent")
        #expect {
            try RecipientTableSource(files: [path]).load()
        } throws: { error in
            "\(error)".contains(path) && "\(error)".contains("No such file")
        }
    }

    @Test func emptyFileHasNoDomains() throws {
        let dir = try RecipientTableDirectory()
        let table = try dir.table("")
        #expect(table.lookup("anyone@example.com") == .notOurDomain)
        #expect(table.entryCount == 0)
    }
}
