// `backstop check-config FILE`: validates the configuration and every table it names,
// printing each problem as file:line: key: what is wrong, and exits non-zero on any.
// Settings that are valid but never take effect are printed as warnings; --strict fails
// on those too.

import ArgumentParser
import BackstopCore
import Foundation
import Logging

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and the tables it names.")

    @Argument(help: "Configuration file (the same as --config).")
    var file: String?

    @Option(name: .shortAndLong, help: "Configuration file (default: \(Configuration.defaultPath)).")
    var config: String?

    @Flag(help: "Fail (exit 1) on warnings too: settings that can never take effect.")
    var strict = false

    func run() throws {
        if file != nil && config != nil && file != config { throw ValidationError("give the file once: as an argument or with --config") }
        let file = self.file ?? self.config ?? Configuration.defaultPath
        do {
            let config = try Configuration.load(path: file)
            let logger = Logger(label: "backstop.check-config", factory: { _ in SwiftLogNoOpLogHandler() })
            _ = try EngineBuilder.build(config, previous: nil, logger: logger, validating: true)
            // With start_without_table the build tolerates a broken table; check-config does not.
            try (config.checks["recipients"] as? RecipientsSettings)?.validateTables()
            for warning in config.warnings { printError("warning: \(warning.description)") }
            if strict && !config.warnings.isEmpty {
                printError("\(file): \(config.warnings.count) warning(s), and --strict fails on them")
                throw ExitStatus.refused.code
            }
            print(config.warnings.isEmpty ? "\(file): OK" : "\(file): OK, with \(config.warnings.count) warning(s)")
        } catch let error as ConfigError {
            for issue in error.issues { printError(issue.description) }
            throw ExitStatus.refused.code
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
