// What `backstop lookup ADDRESS` prints, and the load benchmark `backstop bench` runs, kept
// here so the CLI only wires arguments to these functions. No argument parsing, no printing.

import Foundation
import Logging
import NIOCore

public struct RecipientLookupReport: Sendable {
    public var address: String
    public var result: RecipientLookupResult
    /// The form the address was looked up under (after normalisation), if it has one.
    public var normalised: String?
    /// The table key that matched (`user@domain` or `@domain`), if any.
    public var matchedKey: String?
    /// The answer Backstop would give at RCPT TO (before test mode).
    public var answer: PolicyAction
    /// Why an address not in the table is accepted all the same (postmaster, an SRS
    /// address with pass_srs), as the check says it.
    public var acceptedUnlisted: String?

    /// One line: `ADDRESS: valid (FILE:LINE, key KEY)`, `ADDRESS: unknown (…answer…)`,
    /// `ADDRESS: not our domain (no opinion)`.
    public var text: String {
        let shown = LogEscaping.escape(address)
        let via = normalised.map { $0 == address ? "" : ", looked up as \(LogEscaping.escape($0))" } ?? ""
        switch result {
        case .valid(let file, let line):
            return "\(shown): valid (\(Self.place(file, line)), key \(LogEscaping.escape(matchedKey ?? ""))\(via))"
        case .override(let action, let file, let line):
            return "\(shown): valid, with its own answer \(answer) (\(Self.place(file, line)), key \(LogEscaping.escape(matchedKey ?? "")); value \(action.keyword))"
        case .unknown where acceptedUnlisted == "postmaster":
            return "\(shown): accepted: postmaster of our domain, not in the table (RFC 5321 §4.5.1; answer: DUNNO)"
        case .unknown where acceptedUnlisted != nil:
            return "\(shown): accepted: an SRS address, not in the table (pass_srs; answer: DUNNO)"
        case .unknown:
            return "\(shown): unknown (our domain, no entry\(via); answer: \(answer))"
        case .notOurDomain:
            return "\(shown): not our domain (no opinion)"
        case .noAddress:
            return "\(shown): no address to look up (no opinion)"
        }
    }

    /// 0 valid, 1 unknown or refused by an override, 2 not our domain or nothing to look up.
    public var exitStatus: Int32 {
        switch result {
        case .valid: 0
        case .unknown where acceptedUnlisted != nil: 0
        case .unknown, .override: 1
        case .notOurDomain, .noAddress: 2
        }
    }

    static func place(_ file: String, _ line: Int) -> String {
        line > 0 ? "\(file):\(line)" : file
    }

    /// Looks `address` up in `table` with the rules and answers of `settings`.
    public static func describe(address: String, table: RecipientTable, settings: RecipientsSettings) -> RecipientLookupReport {
        let result = table.lookup(address, rules: settings.rules)
        let (normalised, key) = table.explain(address, rules: settings.rules)
        var answer = PolicyAction.dunno
        let accepted = result == .unknown ? Octets.with(address) { settings.acceptsUnlisted($0) } : nil
        switch result {
        case .unknown where accepted != nil: break
        case .unknown: answer = RecipientsCheck.fill(settings.rejectAction, recipient: address)
        case .override(let action, _, _): answer = RecipientsCheck.fill(action, recipient: address)
        default: break
        }
        return RecipientLookupReport(address: address, result: result, normalised: normalised, matchedKey: key, answer: answer,
                                     acceptedUnlisted: accepted)
    }

    /// For `backstop lookup ADDRESS [--config FILE | --table FILE]`: reads the [recipients]
    /// settings and tables of a configuration, or one table file with default settings,
    /// and looks the address up. Throws ConfigError (file:line) when they cannot be read.
    public static func lookup(address: String, configPath: String?, tablePath: String?,
                              recipientDelimiter: String = "") throws -> RecipientLookupReport {
        let settings: RecipientsSettings
        if let tablePath {
            settings = RecipientsSettings(source: RecipientTableSource(files: [tablePath]),
                                          rules: RecipientNormalisation(recipientDelimiter: recipientDelimiter))
        } else {
            let config = try Configuration.load(path: configPath ?? Configuration.defaultPath)
            guard let found = config.checks["recipients"] as? RecipientsSettings else {
                throw ConfigError(issues: [ConfigIssue(file: config.file, line: nil, key: "recipients",
                                                       message: "there is no [recipients] section: add one, or use --table FILE")])
            }
            settings = found
        }
        let table = try settings.source.load()
        return describe(address: address, table: table, settings: settings)
    }
}

/// How long a generated table of N addresses takes to load, and how much memory it holds.
public struct RecipientLoadBenchmark: Sendable, CustomStringConvertible {
    public var entries: Int
    public var fileBytes: Int
    public var loadSeconds: Double
    public var tableBytes: Int
    /// Resident set size of the process after loading (Linux; 0 elsewhere), and its peak.
    public var residentBytes: Int
    public var peakResidentBytes: Int
    public var lookupsPerSecond: Double
    /// Whole requests through RecipientsCheck (read lock, counters, verdict), one thread.
    public var checkRequestsPerSecond: Double

    public var description: String {
        func mb(_ n: Int) -> String { String(format: "%.1f MB", Double(n) / 1_048_576) }
        return "recipients: \(entries) addresses (\(mb(fileBytes)) file) loaded in \(String(format: "%.3f", loadSeconds)) s; "
            + "table \(mb(tableBytes)), RSS \(mb(residentBytes)) (peak \(mb(peakResidentBytes))); "
            + "\(String(format: "%.0f", lookupsPerSecond)) lookups/s, "
            + "\(String(format: "%.0f", checkRequestsPerSecond)) requests/s through the check"
    }

    /// Writes N addresses (1,000 per domain) to a temporary file, loads it, looks up each
    /// address once, and removes the file.
    /// `probes` lookups (default: one per address, at most a million) are timed after the load.
    public static func run(entries: Int, probes: Int? = nil, directory: String = NSTemporaryDirectory()) throws -> RecipientLoadBenchmark {
        let path = (directory as NSString).appendingPathComponent("backstop-bench-recipients-\(getpid())")
        try writeTable(entries: entries, to: path)
        defer { unlink(path) }
        let fileBytes = Int((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0)
        let started = NIODeadline.now()
        let table = try RecipientTableSource(files: [path]).load()
        let loadSeconds = Double((NIODeadline.now() - started).nanoseconds) / 1e9
        let (rss, peak) = residentMemory()
        let rules = RecipientNormalisation(recipientDelimiter: "+")
        var hits = 0
        let lookupStart = NIODeadline.now()
        let probes = min(entries, probes ?? 1_000_000)
        var buffer = [UInt8](repeating: 0, count: 64)
        for i in 0..<probes {
            let length = address(i, into: &buffer)
            let match = buffer.withUnsafeBytes { table.match(UnsafeRawBufferPointer(rebasing: $0[0..<length]), rules: rules) }
            if case .entry = match { hits += 1 }
        }
        let lookupSeconds = Double((NIODeadline.now() - lookupStart).nanoseconds) / 1e9
        guard hits == probes else {
            throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "", message: "benchmark: only \(hits) of \(probes) generated addresses were found")])
        }
        // The same through the check, as the server calls it (memory was measured above).
        let directory = RecipientDirectory(source: RecipientTableSource(files: [path]), interval: .zero,
                                           logger: Logger(label: "backstop.bench"))
        directory.adopt(table)  // the snapshot just measured; loading it twice would double the time
        let check = RecipientsCheck(settings: RecipientsSettings(source: directory.source, rules: rules), directory: directory)
        let requests = (0..<1000).map { i in
            let k = i * 997 % max(entries, 1)
            return PolicyRequest([("request", "smtpd_access_policy"), ("protocol_state", "RCPT"),
                                  ("recipient", i % 2 == 0 ? "user\(k)@d\(k / 1000).example" : "nobody\(i)@d0.example")])
        }
        let checkStart = NIODeadline.now()
        var refused = 0
        for i in 0..<probes where !check.verdict(for: requests[i % requests.count]).isNoOpinion { refused += 1 }
        guard refused == probes / 2 else {
            throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "", message: "benchmark: \(refused) of \(probes) requests refused, expected half")])
        }
        let checkSeconds = Double((NIODeadline.now() - checkStart).nanoseconds) / 1e9
        return RecipientLoadBenchmark(entries: entries, fileBytes: fileBytes, loadSeconds: loadSeconds,
                                      tableBytes: table.memoryBytes, residentBytes: rss, peakResidentBytes: peak,
                                      lookupsPerSecond: Double(probes) / max(lookupSeconds, 1e-9),
                                      checkRequestsPerSecond: Double(probes) / max(checkSeconds, 1e-9))
    }

    /// "user<i>@d<i/1000>.example" without allocating; returns the length.
    static func address(_ i: Int, into buffer: inout [UInt8]) -> Int {
        var n = 0
        func put(_ s: StaticString) { for j in 0..<s.utf8CodeUnitCount { buffer[n] = s.utf8Start[j]; n += 1 } }
        func put(_ v: Int) {
            var digits = 0, x = v
            repeat { digits += 1; x /= 10 } while x > 0
            x = v
            for j in stride(from: digits - 1, through: 0, by: -1) { buffer[n + j] = UInt8(48 + x % 10); x /= 10 }
            n += digits
        }
        put("user"); put(i); put("@d"); put(i / 1000); put(".example")
        return n
    }

    /// Writes the generated table (with a comment line every 1,000 entries).
    public static func writeTable(entries: Int, to path: String) throws {
        var out = [UInt8]()
        out.reserveCapacity(entries * 32)
        var buffer = [UInt8](repeating: 0, count: 64)
        for i in 0..<entries {
            if i % 1000 == 0 { out.append(contentsOf: "# domain d\(i / 1000).example\n".utf8) }
            let length = address(i, into: &buffer)
            out.append(contentsOf: buffer[0..<length])
            out.append(contentsOf: "\tOK\n".utf8)
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(out)) else {
            throw ConfigError(issues: [ConfigIssue(file: path, line: nil, key: "", message: "cannot write the benchmark table")])
        }
    }

    /// VmRSS and VmHWM from /proc/self/status, in bytes.
    static func residentMemory() -> (Int, Int) {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return (0, 0) }
        func value(_ key: String) -> Int {
            for line in status.split(separator: "\n") where line.hasPrefix(key) {
                let digits = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
                return digits * 1024
            }
            return 0
        }
        return (value("VmRSS:"), value("VmHWM:"))
    }
}
