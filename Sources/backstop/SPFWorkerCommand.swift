// `backstop spf-worker`: the worker process behind spf.isolation = "process". Spawned by
// the server's SPF verifier with a socketpair as stdin and stdout; reads the settings and
// then evaluation requests as frames, answers each, and exits when stdin closes. Not for
// people: hidden from help. All the work is SPFWorkerProcess's (BackstopCore).

import ArgumentParser
import BackstopCore

struct SPFWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spf-worker",
        abstract: "Internal: an SPF worker process spawned by the server (spf.isolation = \"process\").",
        shouldDisplay: false)

    @Option(help: "Process id of the server that spawned this worker.") var parent: Int32

    func run() throws {
        let status = SPFWorkerProcess.run(parent: parent)
        if status != 0 { throw ExitCode(status) }
    }
}
