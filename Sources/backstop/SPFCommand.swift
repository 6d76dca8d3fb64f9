// `backstop spf`: evaluates SPF for one client, sender and HELO with the same verifier,
// settings and fixes as the server, and prints the result word alone on the first line.

import ArgumentParser
import BackstopCore

struct SPFCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spf",
        abstract: "Evaluate SPF as the server would: result word first, then mechanism, header and time.",
        discussion: "An empty --sender '' is a bounce: the HELO identity postmaster@HELO is checked.")

    @Option(help: "SMTP client IP address.") var ip: String
    @Option(help: "Envelope sender (MAIL FROM); '' for a bounce.") var sender: String
    @Option(help: "HELO/EHLO name.") var helo: String
    @Option(name: .shortAndLong, help: "Configuration file whose [spf] settings are used.") var config: String?

    func run() throws {
        SPFVerifier.registerRunningExecutable()  // spf.isolation = "process" spawns `backstop spf-worker`
        let settings: SPFSettings
        do {
            settings = try config.map { SPFSettings.from(try Configuration.load(path: $0)) } ?? SPFSettings()
        } catch let error as ConfigError {
            for issue in error.issues { printError(issue.description) }
            throw ExitCode(3)
        }
        let (ip, sender, helo) = (ip, sender, helo)
        try runBlocking {
            print(await SPFReport.run(settings: settings, ip: ip, sender: sender, helo: helo), terminator: "")
        }
    }
}
