// The `backstop` command: its subcommands are the ways an administrator runs and inspects
// the server. Each subcommand lives in its own file.

import ArgumentParser
import BackstopCore
import BackstopPostgres
import BackstopSPF
import BackstopServer

@main
struct Backstop: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backstop",
        abstract: "A Postfix policy-delegation server: recipients, SPF and rate limits at RCPT TO.",
        version: BuildInfo.version,
        subcommands: [Serve.self, CheckConfig.self, Query.self, Lookup.self, SPFCommand.self, RateLimitCommand.self, BATVCommand.self, Bench.self, SPFWorkerCommand.self, SPFSupervisorCommand.self],
        defaultSubcommand: Serve.self
    )

    /// Registers the backends that live in their own targets, then runs the command.
    static func main() {
        LogOutput.openClosedStandardDescriptors()
        CounterStoreRegistry.register("postgres", PostgresCounterStoreBackend())
        SPFSettings.register()
        main(nil)
    }
}
