// `backstop spf`: evaluates SPF for one client, sender and HELO with the same verifier,
// settings and fixes as the server, and prints the result word alone on the first line.
// The exit status says what the server would answer: 0 accepted, 1 refused (5xx), 2
// deferred (4xx), 3 an error (a broken configuration).

import ArgumentParser
import BackstopCore
import Glibc
import BackstopSPF

struct SPFCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spf",
        abstract: "Evaluate SPF as the server would: result word first, then mechanism, header and time.",
        discussion: "An empty --sender '' is a bounce: the HELO identity postmaster@HELO is checked. Exit status: 0 accepted, 1 refused (5xx), 2 deferred (4xx), 3 error.")

    @Option(help: "SMTP client IP address.") var ip: String
    @Option(help: "Envelope sender (MAIL FROM); '' for a bounce.") var sender: String
    @Option(help: "HELO/EHLO name.") var helo: String
    @Option(name: .shortAndLong, help: "Configuration file whose [spf] settings (and test mode) are used (default: \(Configuration.defaultPath) when it exists, else the built-in defaults).")
    var config: String?

    func validate() throws {
        guard IPAddress(ip) != nil else { throw ValidationError("--ip must be an IPv4 or IPv6 address, not \"\(ip)\"") }
    }

    func run() throws {
        SPFProcesses.registerRunningExecutable()  // evaluations run in `backstop spf-worker` processes
        let settings: SPFSettings
        var testMode = false
        do {
            // Like the server: the installed configuration unless another is named.
            let path = config ?? (access(Configuration.defaultPath, F_OK) == 0 ? Configuration.defaultPath : nil)
            if let path {
                let configuration = try Configuration.load(path: path)
                settings = SPFSettings.from(configuration)
                testMode = configuration.policy.testMode
            } else {
                settings = SPFSettings()
            }
        } catch {
            for issue in error.issues { printError(issue.description) }
            throw ExitStatus.cannotAsk.code
        }
        let (ip, sender, helo, configTestMode) = (ip, sender, helo, testMode)
        let answer = try runBlocking { () async -> PolicyAction in
            let (text, answer) = await SPFReport.run(settings: settings, ip: ip, sender: sender, helo: helo, testMode: configTestMode)
            print(text, terminator: "")
            return answer
        }
        if answer.isRefusal { throw (answer.isTemporary ? ExitStatus.temporary : ExitStatus.refused).code }
    }
}
