// `backstop check-config FILE`: validates the configuration and every table it names,
// printing each problem as file:line: key: what is wrong, and exits non-zero on any.

import ArgumentParser
import BackstopCore
import Foundation
import Logging

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and the tables it names.")

    @Argument(help: "Configuration file.")
    var file: String

    func run() throws {
        do {
            let config = try Configuration.load(path: file)
            let logger = Logger(label: "backstop.check-config", factory: { _ in SwiftLogNoOpLogHandler() })
            _ = try EngineBuilder.build(config, previous: nil, logger: logger)
            // With start_without_table the build tolerates a broken table; check-config does not.
            try (config.checks["recipients"] as? RecipientsSettings)?.validateTables()
            print("\(file): OK")
        } catch let error as ConfigError {
            for issue in error.issues { printError(issue.description) }
            throw ExitCode(1)
        }
    }
}

func printError(_ text: String) {
    var stderr = StandardError()
    print(text, to: &stderr)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        FileHandle.standardError.write(Data(string.utf8))
    }
}
