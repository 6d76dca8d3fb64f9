// HugePages: a large filled array ends up in huge pages when the kernel offers them, as the
// kernel itself reports (/proc/self/smaps), and a large recipient table asks for them. Where
// THP is off ("never", or no THP at all) the same tests check that nothing was asked for.

import Foundation
import Testing
@testable import BackstopCore

struct HugePagesTests {
    /// The kernel's THP mode ("always", "madvise", "never"), or nil without THP.
    static var mode: String? {
        guard let text = try? String(contentsOfFile: "/sys/kernel/mm/transparent_hugepage/enabled", encoding: .utf8),
              let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]") else { return nil }
        return String(text[text.index(after: open)..<close])
    }

    /// AnonHugePages of the mapping that holds `address`, in KiB, as /proc/self/smaps says.
    static func hugeKiB(at address: UInt) throws -> Int {
        // Read to the end: procfs reports no size, and a sized read stops after one page.
        let data = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/self/smaps")).readToEnd() ?? Data()
        let smaps = String(decoding: data, as: UTF8.self)
        var inside = false
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
               let start = UInt(line[..<dash], radix: 16), let end = UInt(line[line.index(after: dash)..<space], radix: 16) {
                inside = start <= address && address < end
            } else if inside, line.hasPrefix("AnonHugePages:") {
                return Int(line.split(separator: " ")[1]) ?? 0
            }
        }
        return 0
    }

    @Test func aLargeFilledArrayIsCollapsedIntoHugePages() throws {
        #if os(Linux)
        let array = [UInt8](repeating: 7, count: 12 << 20)
        let advised = HugePages.advise(array)
        let address = array.withUnsafeBytes { UInt(bitPattern: $0.baseAddress!) }
        let huge = try Self.hugeKiB(at: address + UInt(6 << 20))
        #expect(HugePages.mode == Self.mode)
        switch Self.mode {
        case "always", "madvise":
            // 12 MiB holds at least five whole 2 MiB pages, wherever it starts.
            #expect(advised >= 10 << 20)
            #expect(huge >= 10 << 10, "AnonHugePages \(huge) KiB")
        default:
            #expect(advised == 0 && huge == 0)
        }
        #expect(array.allSatisfy { $0 == 7 })
        #endif
    }

    /// The VmFlags of the mapping that holds `address` ("hg": advised into huge pages, "nh":
    /// advised out of them), as /proc/self/smaps says.
    static func flags(at address: UInt) throws -> [Substring] {
        let data = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/self/smaps")).readToEnd() ?? Data()
        var inside = false
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
               let start = UInt(line[..<dash], radix: 16), let end = UInt(line[line.index(after: dash)..<space], radix: 16) {
                inside = start <= address && address < end
            } else if inside, line.hasPrefix("VmFlags:") {
                return line.split(separator: " ").dropFirst().map { $0 }
            }
        }
        return []
    }

    /// What a freed table gives back: the range no longer invites huge pages.
    @Test func theAdviceIsTakenBack() throws {
        #if os(Linux)
        guard Self.mode == "always" || Self.mode == "madvise" else {
            #expect(HugePages.advise([UInt8](repeating: 1, count: 8 << 20)) == 0)
            return
        }
        let array = [UInt8](repeating: 3, count: 8 << 20)
        let inside = array.withUnsafeBytes { UInt(bitPattern: $0.baseAddress!) } + UInt(4 << 20)
        HugePages.advise(array)
        #expect(try Self.flags(at: inside).contains("hg"))
        HugePages.unadvise(array)
        let after = try Self.flags(at: inside)
        #expect(after.contains("nh") && !after.contains("hg"), "\(after)")
        #endif
    }

    @Test func aSmallArrayIsLeftAlone() {
        let array = [UInt8](repeating: 1, count: 1 << 20)
        #expect(HugePages.advise(array) == 0)
    }

    @Test func aLargeRecipientTableAsksForHugePages() throws {
        #if os(Linux)
        // 150,000 keys: 2^19 slots of 16 octets, 8 MiB of probes.
        var builder = RecipientTableBuilder(expectedEntries: 150_000, rules: RecipientNormalisation())
        for i in 0..<150_000 {
            let key = Array("user\(i)@example.test".utf8)
            _ = key.withUnsafeBytes { builder.add(key: $0, file: 0, line: i + 1, override: nil) }
        }
        let table = builder.finish(files: ["t"])
        switch Self.mode {
        case "always", "madvise": #expect(table.hugePageBytes >= 4 << 20)
        default: #expect(table.hugePageBytes == 0)
        }
        #expect(table.lookup("user149999@example.test") == .valid(file: "t", line: 150_000))
        #endif
    }
}
