// `backstop spf-worker` and `backstop spf-supervisor`: the processes behind SPF. The server
// (or its supervisor) spawns them with their socket as descriptor 0; they are not for
// people and are hidden from help. All the work is BackstopSPF's.

import ArgumentParser
import BackstopSPF

struct SPFWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spf-worker",
        abstract: "Internal: an SPF worker process spawned by the server.",
        shouldDisplay: false)

    @Option(help: "The user to switch to when started as root (spf.worker_user).") var user = "nobody"
    @Option(help: "Process id of the process that spawned this worker.") var parent: Int32 = 0
    @Flag(help: "Set up the sandbox, then try to open a socket (the filter must kill the process).") var sandboxTest = false
    @Option(help: "Run this many evaluations of --record in process and exit (instruction counts, bench/profile.sh).") var bench: Int?
    @Option(help: "The SPF record --bench evaluates.") var record = "v=spf1 ip4:198.18.0.0/15 -all"

    func run() throws {
        let status: Int32
        if let bench {
            status = SPFWorkerProcess.benchmark(count: max(0, bench), record: record)
        } else {
            status = sandboxTest ? SPFWorkerProcess.sandboxTest(user: user) : SPFWorkerProcess.run(user: user, parent: parent)
        }
        if status != 0 { throw ExitCode(status) }
    }
}

struct SPFSupervisorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spf-supervisor",
        abstract: "Internal: starts SPF workers as spf.worker_user for a server that gave up root.",
        shouldDisplay: false)

    @Option(help: "Process id of the server.") var parent: Int32 = 0
    @Option(help: "The one user it starts workers as (spf.worker_user at the server's start).") var user: String

    func run() throws {
        let status = SPFSupervisor.run(parent: parent, user: user)
        if status != 0 { throw ExitCode(status) }
    }
}
