// `backstop spf-worker`: the main of a worker process. Descriptor 0 is its socket to the
// server; 1 and 2 are /dev/null (nothing it prints reaches the server's log; it reports
// through `notice` frames instead). It drops root, limits itself, installs its seccomp
// filter, then serves frames until the socket closes: many evaluations at a time, each
// run again when the server brings the DNS answer it stopped for. Single-threaded.

import BackstopCore
import CSPF2
import Glibc

public enum SPFWorkerProcess {
    /// Exit status when root cannot be dropped (the server names it in its log).
    public static let exitCannotDropPrivileges: Int32 = 77
    /// Exit status when the sandbox cannot be set up.
    public static let exitNoSandbox: Int32 = 71
    /// Exit status of a worker given a frame it cannot read.
    public static let exitProtocol: Int32 = 76
    /// Evaluations a worker holds at once; the server sends fewer (SPFWorkerSlot).
    static let maxEvaluations = 1_024

    /// Runs the worker; returns its exit status. `user` is the account it switches to when
    /// started as root; `parent` the process that spawned it (gone means nobody listens).
    public static func run(user: String, parent: Int32) -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        _ = backstop_close_from(3)
        var io = FrameIO(fd: 0)
        do { try SPFSandbox.dropPrivileges(to: user) } catch {
            io.send(SPFWire.frame(.notice(Array("cannot switch to worker_user \(user): \(error)".utf8))))
            return exitCannotDropPrivileges
        }
        // A credential change clears the parent-death signal: it is set after the switch.
        guard SPFSandbox.dieWithParent(parent) else { return 0 }
        guard case .hello(let receiver, let maxQueries)? = io.next() else { return exitProtocol }
        let engine = LibSPF2(receiver: receiver)
        // Everything that allocates for the first time, before the filter is in place.
        var worker = Worker(engine: engine, receiver: receiver, maxQueries: maxQueries)
        worker.warmUp()
        do { try SPFSandbox.limitResources() } catch {
            io.send(SPFWire.frame(.notice(Array("cannot limit resources: \(error)".utf8))))
            return exitNoSandbox
        }
        do { try SPFSeccomp.install() } catch {
            io.send(SPFWire.frame(.notice(Array("runs without a seccomp filter: \(error)".utf8))))
        }
        while let message = io.next() {
            worker.handle(message, output: &io.output)
            if io.pending == 0 { io.flush() }
        }
        io.flush()
        return io.failed ? exitProtocol : 0
    }

    /// `backstop spf-worker --sandbox-test`: sets up the sandbox as a worker does, then
    /// tries to open a socket, which the filter must answer by killing the process.
    public static func sandboxTest(user: String) -> Int32 {
        do { try SPFSandbox.dropPrivileges(to: user) } catch { print(error); return exitCannotDropPrivileges }
        do {
            try SPFSandbox.limitResources()
            try SPFSeccomp.install()
        } catch { print(error); return exitNoSandbox }
        _ = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        return 0  // reached only without a working filter
    }

    /// `backstop spf-worker --bench N`: N evaluations of `record` (for example.org, the DNS
    /// answer given) through the same code a worker runs for a frame, without the socket and
    /// without the sandbox, for counting instructions under callgrind (bench/profile.sh).
    public static func benchmark(count: Int, record: String) -> Int32 {
        guard case .success(let parsed) = SPFRecord.parse(Array(record.utf8)) else { return 65 }
        let name = DNSName(text: "example.org")!
        var answer = SPFAnswer(status: .success, ttl: 300)
        answer.recordCount = 1
        answer.spf = .record(parsed)
        let receiver = Array("mx.test".utf8)
        var worker = Worker(engine: LibSPF2(receiver: receiver), receiver: receiver, maxQueries: 140)
        var output: [UInt8] = []
        let frames = (0..<count).map { n in
            let client: [UInt8] = [198, 18, UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)]
            return SPFWire.frame(.evaluate(SPFWire.Evaluate(
                id: UInt32(n + 1), identity: .mailfrom, upperNibbles: false, client: client,
                sender: Array("user@example.org".utf8), helo: Array("mail.example.org".utf8),
                answers: [SPFWire.Answer(DNSQuestion(name, .txt), answer)])))
        }
        for frame in frames {
            guard benchmarkFrame(frame, worker: &worker, output: &output) else { return 70 }
            output.removeAll(keepingCapacity: true)
        }
        return 0
    }

    /// What a worker does with one frame: decode it, evaluate, encode the answer. Its own
    /// function so callgrind can count it alone (--toggle-collect).
    @inline(never)
    static func benchmarkFrame(_ frame: [UInt8], worker: inout Worker, output: inout [UInt8]) -> Bool {
        guard let message = try? SPFWire.decodeToWorker(frame[4...]) else { return false }
        worker.handle(message, output: &output)
        return true
    }

    struct Worker {
        let engine: LibSPF2
        let receiver: [UInt8]
        let maxQueries: Int
        var evaluations: [UInt32: SPFWorkerEvaluation] = [:]

        init(engine: LibSPF2, receiver: [UInt8], maxQueries: Int) {
            self.engine = engine
            self.receiver = receiver
            self.maxQueries = max(1, min(maxQueries, 1_000))
        }

        /// One evaluation of an IPv4 and an IPv6 client with a made-up answer, so that
        /// libspf2's and the runtime's first allocations happen before the sandbox.
        mutating func warmUp() {
            var ignored: [UInt8] = []
            for client in [[UInt8]([192, 0, 2, 1]), [UInt8](repeating: 0x20, count: 16)] {
                let name = DNSName(text: "warm-up.invalid")!
                var answer = SPFAnswer(status: .success)
                answer.recordCount = 1
                if case .success(let record) = SPFRecord.parse(Array("v=spf1 ip4:192.0.2.0/24 a:%{d} -all".utf8)) { answer.spf = .record(record) }
                let evaluate = SPFWire.Evaluate(id: 0, identity: .mailfrom, upperNibbles: false, client: client,
                                                sender: Array("postmaster@warm-up.invalid".utf8), helo: Array("warm-up.invalid".utf8),
                                                answers: [SPFWire.Answer(DNSQuestion(name, .txt), answer)])
                handle(.evaluate(evaluate), output: &ignored)
                handle(.cancel(id: 0), output: &ignored)
            }
        }

        mutating func handle(_ message: SPFWire.ToWorker, output: inout [UInt8]) {
            switch message {
            case .hello:
                break
            case .evaluate(let e):
                guard evaluations.count < SPFWorkerProcess.maxEvaluations else {
                    output += SPFWire.frame(.done(id: e.id, SPFWire.Result(result: .temperror, problem: Array("worker is full".utf8))))
                    return
                }
                let evaluation = SPFWorkerEvaluation(e)
                evaluations[e.id] = evaluation
                step(evaluation, output: &output)
            case .answers(let id, let list):
                guard let evaluation = evaluations[id] else { return }
                evaluation.add(list)
                step(evaluation, output: &output)
            case .cancel(let id):
                evaluations[id] = nil
            }
        }

        /// Runs one pass; asks for the answer it stopped at, or reports the result.
        mutating func step(_ evaluation: SPFWorkerEvaluation, output: inout [UInt8]) {
            evaluation.passes += 1
            let state = SPFRun(evaluation, receiver: receiver, maxQueries: maxQueries)
            var result = engine.pass(state)
            if let missing = state.missing {
                if evaluation.passes <= maxQueries + 1 {
                    output += SPFWire.frame(.need(id: evaluation.id, missing))
                    return
                }
                result = SPFWire.Result(result: .permerror, problem: Array("more than \(maxQueries) DNS queries".utf8))
            }
            output += SPFWire.frame(.done(id: evaluation.id, result))
            evaluations[evaluation.id] = nil
        }
    }

    /// Blocking frame reading and writing on the socket.
    struct FrameIO {
        let fd: Int32
        var input: [UInt8] = []
        var head = 0
        var output: [UInt8] = []
        var failed = false
        private var chunk = [UInt8](repeating: 0, count: 1 << 16)

        init(fd: Int32) {
            self.fd = fd
            input.reserveCapacity(1 << 16)
        }

        /// Octets buffered beyond the frames handed out so far.
        var pending: Int { input.count - head }

        /// The next message, reading as needed; nil at end of input or on a bad frame.
        mutating func next() -> SPFWire.ToWorker? {
            while true {
                do {
                    if let length = try SPFWire.frameLength(input[head...], limit: SPFWire.maxToWorker), pending >= 4 + length {
                        let body = input[(head + 4)..<(head + 4 + length)]
                        head += 4 + length
                        let message = try SPFWire.decodeToWorker(body)
                        return message
                    }
                } catch {
                    failed = true
                    return nil
                }
                flush()
                if head > 0 {
                    input.removeFirst(head)
                    head = 0
                }
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return nil }
                input += chunk[..<n]
            }
        }

        mutating func send(_ frame: [UInt8]) {
            output += frame
            flush()
        }

        mutating func flush() {
            var offset = 0
            while offset < output.count {
                let n = output[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { failed = true; break }
                offset += n
            }
            output.removeAll(keepingCapacity: true)
        }
    }
}
