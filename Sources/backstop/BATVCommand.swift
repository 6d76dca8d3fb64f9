// `backstop batv sign|verify ADDRESS`: makes or checks a BATV tag by hand with the keys and
// settings of a configuration's [batv] section, exactly as the running server would. It
// does not talk to a server.

import ArgumentParser
import BackstopCore
import Logging

struct BATVCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batv", abstract: "Sign an address or check its BATV tag with the configured keys.",
        subcommands: [Sign.self, Verify.self])

    struct Options: ParsableArguments {
        @Option(name: .shortAndLong, help: "Configuration whose [batv] section is used.") var config = Configuration.defaultPath

        /// The configured check, with its keys; exit 3 when there is none.
        func check() throws -> BATVCheck {
            do {
                let loaded = try Configuration.load(path: config)
                guard let settings = loaded.checks["batv"] as? BATVSettings else {
                    printError("\(config): has no [batv] section")
                    throw ExitStatus.cannotAsk.code
                }
                // Built as the server builds it (the recipients' delimiters included).
                let context = CheckBuildContext(logger: Logger(label: "backstop.batv", factory: { _ in SwiftLogNoOpLogHandler() }),
                                                recipientDelimiters: loaded.recipientDelimiters)
                guard let check = try settings.makeCheck(context) as? BATVCheck else { throw ExitStatus.cannotAsk.code }
                return check
            } catch let error as ConfigError {
                for issue in error.issues { printError(issue.description) }
                throw ExitStatus.cannotAsk.code
            }
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the signed form of a sender address, as the batv-sign map answers it.",
            discussion: "Exit status: 0 signed, 1 not signed (not a signing domain, excluded, already tagged, too long), 3 configuration error.")
        @Argument(help: "The envelope sender, user@domain.") var address: String
        @OptionGroup var options: Options

        func run() throws {
            let check = try options.check()
            guard let signed = check.signedSender(address) else {
                printError("not signed: \(LogEscaping.escape(address)) is not in a signing domain (\(check.settings.domains.sorted().joined(separator: ", "))), is excluded, is already tagged, or is too long to tag")
                throw ExitStatus.refused.code
            }
            print(signed)
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the BATV tag of an address: valid, no_tag, bad_signature, expired or unknown_key.",
            discussion: "Exit status: 0 valid, 1 anything else, 3 configuration error.")
        @Argument(help: "A tagged address, prvs=KDDDSSSSSS=user@domain.") var address: String
        @OptionGroup var options: Options

        func run() throws {
            let check = try options.check()
            let result = check.verification(of: address)
            guard case .valid(let key, let daysLeft) = result else {
                print("\(result.label): \(LogEscaping.escape(address))")
                throw ExitStatus.refused.code
            }
            let plain = BATVTag.parse(address)?.address ?? address
            print("valid: \(LogEscaping.escape(plain)) (key \(key), \(daysLeft) day\(daysLeft == 1 ? "" : "s") left)")
        }
    }
}
