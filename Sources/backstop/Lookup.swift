// `backstop lookup ADDRESS`: says whether the recipient tables know an address, and which
// file and line decided, exactly as the running server would judge it.

import ArgumentParser
import BackstopCore

struct Lookup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look a recipient up in the tables: valid, unknown or not our domain.",
        discussion: "Exit status: 0 valid, 1 unknown (or an entry with its own refusal), 2 not our domain, 3 configuration or table error.")

    @Argument(help: "The recipient address.") var address: String
    @Option(name: .shortAndLong, help: "Configuration file whose [recipients] tables are used.") var config: String?
    @Option(name: .shortAndLong, help: "A single table file, instead of the configuration.") var table: String?
    @Option(name: .customLong("recipient-delimiter"), help: "With --table: recipient_delimiter, e.g. \"+\" (the configuration's otherwise).")
    var recipientDelimiter: String?

    func run() throws {
        if config != nil && table != nil { throw ValidationError("give --config or --table, not both") }
        if recipientDelimiter != nil && table == nil {
            throw ValidationError("--recipient-delimiter goes with --table; with a configuration its recipient_delimiter is used")
        }
        do {
            let report = try RecipientLookupReport.lookup(address: address, configPath: config, tablePath: table,
                                                          recipientDelimiter: recipientDelimiter ?? "")
            print(report.text)
            if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
        } catch let error as ConfigError {
            for issue in error.issues { printError(issue.description) }
            throw ExitStatus.cannotAsk.code
        }
    }
}
