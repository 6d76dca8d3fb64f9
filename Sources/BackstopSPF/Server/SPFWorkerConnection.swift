// One worker process as the server sees it: its socket as a NIO channel on one event loop,
// and the evaluations in flight on it. An evaluation goes out with the DNS answers it will
// need that are already cached; each answer the worker then asks for is fetched and sent
// with those its record needs next. Every frame from the worker is checked: an answer to
// an evaluation that was not asked, a question asked twice, a count out of range or a
// malformed frame is a protocol fault, and the worker is killed and replaced. Its
// evaluations end as temperror within their deadline, always. Only its event loop
// touches it.

import BackstopCore
import Glibc
import Logging
import NIOCore

/// One evaluation on a worker. @unchecked Sendable: touched only on its slot's event loop
/// once submitted.
final class SPFJob: @unchecked Sendable {
    let query: SPFQuery
    let request: SPFWire.Evaluate
    let promise: EventLoopPromise<SPFOutcome>
    let started: NIODeadline
    let deadline: NIODeadline
    var id: UInt32 = 0
    /// Its deadline timer while it waits in its slot's queue (on a worker, the connection's
    /// one timer watches it).
    var timer: Scheduled<Void>?
    /// Answers already sent to the worker.
    var sent = Set<DNSQuestion>()
    /// Macro letters of every record and explanation sent: what the outcome depends on.
    var macros = SPFMacroSet()
    /// The same for the records alone (what the result, not its explanation, may depend on).
    var recordMacros = SPFMacroSet()
    /// Shortest TTL of the answers sent: how long the outcome may be kept.
    var ttl = UInt32.max
    /// When the worker was last handed something it must answer; nil while DNS is awaited.
    var owedSince: NIODeadline?
    var needs = 0
    /// The worker evaluates postmaster@domain for a sender longer than it takes
    /// (SPFWire.maxSender): the outcome holds only if no record on its path read the sender.
    let standIn: Bool

    init(query: SPFQuery, request: SPFWire.Evaluate, promise: EventLoopPromise<SPFOutcome>, deadline: NIODeadline,
         standIn: Bool = false) {
        self.query = query
        self.request = request
        self.promise = promise
        self.started = .now()
        self.deadline = deadline
        self.standIn = standIn
    }

    /// Record and explanation octets sent for it (SPFAnswer.heldOctets).
    var heldOctets = 0

    /// The outcome of a stand-in evaluation: permerror when a record it was sent reads the
    /// sender (a record sent ahead but not used counts too: only a sender over 1,024
    /// octets, which no mail system sends, can lose its result so). An explanation that
    /// reads it was expanded for the stand-in: the result stands, without its text (a
    /// forged sender's fail became permerror, accepted, when only the exp= read %{s}).
    func judged(_ outcome: SPFOutcome) -> SPFOutcome {
        guard standIn, outcome.result != .temperror else { return outcome }
        if !recordMacros.isDisjoint(with: SPFMacroSet.readsLocalPart) {
            return SPFOutcome(result: .permerror, query: query,
                              problem: "sender longer than \(SPFWire.maxSender) octets, and a record on its path reads it (%{s}, %{l})")
        }
        guard !macros.isDisjoint(with: SPFMacroSet.readsLocalPart) else { return outcome }
        var judged = outcome
        judged.explanation = nil
        return judged
    }

    func note(_ answers: [SPFWire.Answer]) {
        for entry in answers {
            sent.insert(entry.question)
            macros.formUnion(entry.answer.macros)
            recordMacros.formUnion(entry.answer.recordMacros)
            ttl = min(ttl, entry.answer.ttl)
        }
    }
}

/// @unchecked Sendable: confined to `loop`; every method runs there (the handler's and the
/// slot's calls).
final class SPFWorkerConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let pid: pid_t
    let loop: any EventLoop
    unowned let slot: SPFWorkerSlot
    private(set) var channel: (any Channel)?
    private var jobs: [UInt32: SPFJob] = [:]
    /// Record and explanation octets sent for the evaluations in `jobs`: the worker holds
    /// each record it was sent, parsed (up to 36 octets of memory per octet of record),
    /// until the evaluation ends.
    private var heldOctets = 0
    /// The most record and explanation octets one evaluation may be sent: three records of
    /// the largest size a DNS message carries. No domain needs more (an evaluation reads at
    /// most 11 records and an explanation); one that publishes more gets permerror.
    static let maxOctetsPerEvaluation = 3 * 65_536
    private var nextID: UInt32 = 1
    private(set) var evaluations = 0
    /// Evaluations ended by their deadline while the worker still had them: a late frame
    /// for one of these is a race, not a fault. Bounded.
    private var abandoned = Set<UInt32>()
    private var abandonedOrder = CircularBuffer<UInt32>()
    static let maxAbandoned = 1_024
    private(set) var ended = false
    private var flushPending = false
    /// Octets written to the worker and still held by the server (not yet taken by its
    /// socket) past which it is handed nothing more but cancels: 8 MiB. New evaluations wait
    /// in the slot's queue, and answers it asked for wait in `parked`, until it has read
    /// half of them. So NIO holds at most this plus one frame (SPFWire.maxToWorker) for a
    /// worker, however large the records and however slowly it reads, besides the parked
    /// answers (at most one per evaluation it holds, sharing their octets with the DNS
    /// cache while it keeps them). A worker that does not read down to half of it within
    /// `slot.wedgeLimit` (at least `minReadTime`) is stuck, or was taken over, and is killed
    /// (`blocked`).
    static let writeBudget = 8 << 20
    /// The least time a worker is given to read down to half its budget, however short the
    /// evaluation deadline: 4 MiB of the largest records is ~15 frames of ~50 ms each for a
    /// worker built for debugging.
    static let minReadTime: TimeAmount = .seconds(1)
    /// The most octets NIO held for this worker at once, measured past the budget (tests
    /// hold it to `writeBudget` and one frame).
    private(set) var mostHeld = 0
    /// Answers the worker asked for while it had no room, oldest first: sent once it has.
    private var parked = CircularBuffer<(job: SPFJob, id: UInt32, question: DNSQuestion, answer: SPFAnswer)>()
    /// Set while the worker is over `writeBudget`: it is killed when this fires.
    private var blocked: Scheduled<Void>?
    /// Notices this worker sent, and the most it may send.
    private var notices = 0
    static let maxNotices = 4
    /// One timer for the evaluations in flight, armed for the earliest deadline among them
    /// (not one per evaluation: scheduling and cancelling a timer cost ~9,000 instructions
    /// per evaluation). An evaluation that ends first leaves it armed; when it fires it
    /// ends what is due and re-arms for the next.
    private var timer: Scheduled<Void>?
    private var timerAt: NIODeadline?
    /// Set when the worker broke the protocol or hung: how it ends is then ours to say.
    private var fault: (SPFRestartReason, String)?

    var inFlight: Int { jobs.count }

    /// Whether the slot may hand it another evaluation: it holds fewer than
    /// SPFWorkerSlot.maxInFlight, has read enough of what it was sent (`writeBudget`), and
    /// no answer it asked for waits (those go first).
    var hasRoom: Bool { !ended && jobs.count < SPFWorkerSlot.maxInFlight && canSendAnswer }

    /// Whether an answer the worker asks for may go out now: it has read enough, and none
    /// asked for earlier waits.
    private var canSendAnswer: Bool { parked.isEmpty && channel?.isWritable == true }

    init(pid: pid_t, slot: SPFWorkerSlot) {
        self.pid = pid
        self.slot = slot
        self.loop = slot.loop
    }

    func attach(_ channel: any Channel, hello: [UInt8]) {
        self.channel = channel
        write(hello)
    }

    // MARK: evaluations

    func start(_ job: SPFJob) {
        job.id = nextID
        nextID &+= 1
        if nextID == 0 { nextID = 1 }
        jobs[job.id] = job
        evaluations += 1
        var request = job.request
        request.id = job.id
        var answers = request.answers
        let base = request
        guard let frame = Self.fitted(&answers, { var r = base; r.answers = $0; return .evaluate(r) }) else {
            return finish(job, SPFOutcome(result: .temperror, query: job.query, problem: Self.tooLarge))
        }
        if let over = hold(answers, for: job) { return finish(job, over) }
        job.note(answers)
        job.owedSince = .now()
        arm(for: job.deadline)
        write(frame)
    }

    static let tooLarge = "a DNS answer too large to hand to an SPF worker"

    /// Counts `answers` as held for `job` and its worker, or, when they would pass a bound
    /// on the record octets held (the evaluation's own, or the worker's across its
    /// evaluations), counts nothing and returns the outcome `job` gets instead.
    private func hold(_ answers: [SPFWire.Answer], for job: SPFJob) -> SPFOutcome? {
        let added = answers.reduce(0) { $0 + $1.answer.heldOctets }
        if job.heldOctets + added > Self.maxOctetsPerEvaluation {
            return SPFOutcome(result: .permerror, query: job.query,
                              problem: "the records on its path hold more than \(Self.maxOctetsPerEvaluation) octets")
        }
        if heldOctets + added > slot.recordBudget {
            return SPFOutcome(result: .temperror, query: job.query,
                              problem: "the SPF worker holds \(slot.recordBudget) octets of records already")
        }
        job.heldOctets += added
        heldOctets += added
        return nil
    }

    /// The frame of `message(answers)`. If it would pass `SPFWire.maxToWorker`, the answers
    /// sent ahead are left out (the worker asks for them); nil if the first answer alone
    /// does not fit, which no answer the DNS layer makes can do (SPFWireTests encodes the
    /// largest). A frame the worker would refuse would end the worker and all it holds.
    static func fitted(_ answers: inout [SPFWire.Answer], _ message: ([SPFWire.Answer]) -> SPFWire.ToWorker) -> [UInt8]? {
        let frame = SPFWire.frame(message(answers))
        if frame.count <= 4 + SPFWire.maxToWorker { return frame }
        answers = Array(answers.prefix(1))
        let alone = SPFWire.frame(message(answers))
        return alone.count <= 4 + SPFWire.maxToWorker ? alone : nil
    }

    private func arm(for deadline: NIODeadline) {
        if let at = timerAt, at <= deadline { return }
        timer?.cancel()
        timerAt = deadline
        timer = loop.scheduleTask(deadline: deadline) { [weak self] in self?.timerFired() }
    }

    private func timerFired() {
        timer = nil
        timerAt = nil
        let now = NIODeadline.now()
        // In the order they were sent; expiring one can end the worker (and all of them).
        for job in jobs.values.filter({ $0.deadline <= now }).sorted(by: { $0.id < $1.id }) where !ended {
            expired(job)
        }
        guard !ended, let next = jobs.values.lazy.map(\.deadline).min() else { return }
        arm(for: next)
    }

    private func expired(_ job: SPFJob) {
        guard jobs[job.id] === job else { return }
        if let at = parked.firstIndex(where: { $0.job === job }) { parked.remove(at: at) }
        finish(job, SPFOutcome(result: .temperror, query: job.query, problem: "SPF evaluation deadline expired"))
        // A pass over answers already sent takes microseconds: a worker that owes one for
        // this long is stuck, and so are its other evaluations.
        if let owed = job.owedSince, NIODeadline.now() - owed >= slot.wedgeLimit {
            kill(.timeout, "did not answer within \(DurationText.format(slot.wedgeLimit))")
        } else {
            abandon(job.id)
            write(SPFWire.frame(.cancel(id: job.id)))
        }
    }

    private func abandon(_ id: UInt32) {
        abandoned.insert(id)
        abandonedOrder.append(id)
        if abandonedOrder.count > SPFWorkerConnection.maxAbandoned, let oldest = abandonedOrder.popFirst() {
            abandoned.remove(oldest)
        }
    }

    private func finish(_ job: SPFJob, _ outcome: SPFOutcome) {
        jobs[job.id] = nil
        heldOctets -= job.heldOctets
        job.heldOctets = 0
        var outcome = job.judged(outcome)
        outcome.elapsed = .now() - job.started
        // Cached first, so whoever the answer wakes finds it in the outcome cache.
        slot.finished(job, outcome, on: self)
        job.promise.succeed(outcome)
    }

    // MARK: frames from the worker

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !ended else { return }
        let buffer = unwrapInboundIn(data)
        let message: SPFWire.FromWorker
        do {
            message = try buffer.withUnsafeReadableBytes { raw throws(SPFWire.DecodeError) in
                try SPFWire.decodeFromWorker(Array(raw)[...])
            }
        } catch {
            kill(.protocol, "sent a malformed frame (\(error.description))")
            return
        }
        switch message {
        case .need(let id, let question):
            guard let job = live(id, "asked for DNS") else { return }
            guard job.owedSince != nil else { return kill(.protocol, "asked for DNS while waiting for an answer") }
            guard !job.sent.contains(question) else { return kill(.protocol, "asked again for an answer it was given") }
            job.needs += 1
            guard job.needs <= slot.maxQueries + 1 else { return kill(.protocol, "asked for more answers than an evaluation may use") }
            job.owedSince = nil
            slot.dns.answer(question, on: loop).whenSuccess { [weak self] answer in
                guard let self, self.jobs[id] === job, !self.ended else { return }
                if self.canSendAnswer {
                    self.send(answer, to: question, for: job, id: id)
                } else {
                    self.parked.append((job, id, question, answer))
                }
            }
        case .done(let id, let result):
            guard let job = live(id, "answered") else { return }
            guard job.owedSince != nil else { return kill(.protocol, "answered while waiting for DNS") }
            guard result.lookups <= 11, result.voidLookups <= 3, result.queries <= slot.maxQueries + 1 else {
                return kill(.protocol, "reported counts out of range")
            }
            var outcome = SPFOutcome(result: result.result, query: job.query,
                                     mechanism: result.mechanism.isEmpty ? nil : String(decoding: result.mechanism, as: UTF8.self),
                                     explanation: result.explanation.isEmpty ? nil : String(decoding: result.explanation, as: UTF8.self),
                                     problem: result.problem.isEmpty ? nil : String(decoding: result.problem, as: UTF8.self))
            outcome.lookups = result.lookups
            outcome.voidLookups = result.voidLookups
            outcome.queries = result.queries
            finish(job, outcome)
        case .notice(let text):
            // A worker has at most three things to say, as it starts; more is a worker taken
            // over and writing to the server's log.
            notices += 1
            guard notices <= Self.maxNotices else { return kill(.protocol, "more than \(Self.maxNotices) notices") }
            slot.logger.warning("spf worker \(slot.index) (pid \(pid)): \(LogEscaping.field(String(decoding: text, as: UTF8.self)))")
        }
    }

    /// The job `id` names, or nil: an id never issued, or one the worker already answered,
    /// is a fault; one whose deadline passed as the worker answered is ignored.
    private func live(_ id: UInt32, _ what: String) -> SPFJob? {
        if let job = jobs[id] { return job }
        if abandoned.contains(id) { return nil }
        kill(.protocol, id == 0 || id >= nextID ? "\(what) for an evaluation never sent" : "\(what) for an evaluation it had already answered")
        return nil
    }

    /// Sends the answer to `question` that evaluation `id` asked for, with the answers its
    /// record needs next that are already cached.
    private func send(_ answer: SPFAnswer, to question: DNSQuestion, for job: SPFJob, id: UInt32) {
        var answers = [SPFWire.Answer(question, answer)]
        var sent = job.sent
        sent.insert(question)
        if question.type == .txt { slot.dns.related(to: answer, client: job.request.client, sent: &sent, into: &answers) }
        guard let frame = Self.fitted(&answers, { .answers(id: id, $0) }) else {
            finish(job, SPFOutcome(result: .temperror, query: job.query, problem: Self.tooLarge))
            abandon(id)
            write(SPFWire.frame(.cancel(id: id)))
            return
        }
        if let over = hold(answers, for: job) {
            finish(job, over)
            abandon(id)
            write(SPFWire.frame(.cancel(id: id)))
            return
        }
        job.note(answers)
        job.owedSince = .now()
        write(frame)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // NIO calls this from inside a write or flush: what waits goes out once that returns.
        if context.channel.isWritable {
            blocked?.cancel()
            blocked = nil
            loop.execute { [self] in resume() }
        } else if blocked == nil {
            let limit = max(slot.wedgeLimit, Self.minReadTime)
            blocked = loop.scheduleTask(in: limit) { [weak self] in
                guard let self, !self.ended, self.channel?.isWritable == false else { return }
                self.kill(.timeout, "did not read what it was sent within \(DurationText.format(limit))")
            }
        }
        context.fireChannelWritabilityChanged()
    }

    /// The worker has read what held it back: the answers parked for it go first (it asked
    /// for them), then the slot hands it what waits in its queue, while it has room.
    private func resume() {
        while !ended, channel?.isWritable == true, let next = parked.popFirst() {
            guard jobs[next.id] === next.job else { continue }  // ended by its deadline meanwhile
            send(next.answer, to: next.question, for: next.job, id: next.id)
        }
        if !ended, parked.isEmpty { slot.roomFreed(on: self) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        end()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is SPFWire.DecodeError {
            kill(.protocol, "sent an oversized or malformed frame")
        } else {
            context.close(promise: nil)
        }
    }

    // MARK: ending

    /// Frames written in one turn of the event loop go out with one flush (one system call).
    private func write(_ frame: [UInt8]) {
        guard let channel, !ended else { return }
        channel.write(channel.allocator.buffer(bytes: frame), promise: nil)
        if !channel.isWritable, let held = try? channel.syncOptions?.getOption(.bufferedWritableBytes), held > mostHeld { mostHeld = held }
        guard !flushPending else { return }
        flushPending = true
        loop.execute { [self] in
            flushPending = false
            self.channel?.flush()
        }
    }

    /// Ends the worker for `reason`: it is killed, its evaluations answered temperror.
    func kill(_ reason: SPFRestartReason, _ why: String) {
        if fault == nil { fault = (reason, why) }
        channel?.close(promise: nil)
        end()
    }

    /// Closes the socket of a retired worker once it has nothing in flight.
    func closeIfIdle() {
        if jobs.isEmpty { channel?.close(promise: nil) }
    }

    /// Its evaluations are answered at once; the slot learns how the process ended once it
    /// is killed and reaped, off the event loop (SPFWorkerSlot.processWork). Until then the
    /// slot queues new evaluations, as while a worker starts.
    private func end() {
        guard !ended else { return }
        ended = true
        let lost = jobs.values
        jobs.removeAll()
        parked.removeAll()
        timer?.cancel()
        timer = nil
        blocked?.cancel()
        blocked = nil
        for job in lost {
            var outcome = SPFOutcome(result: .temperror, query: job.query, problem: "SPF worker ended during the evaluation")
            outcome.elapsed = .now() - job.started
            job.promise.succeed(outcome)
        }
        let slot = self.slot, spawner = slot.spawner, pid = self.pid, fault = self.fault
        slot.processWork("a worker's end", { spawner.killAndReap(pid) }) { [self] result in
            slot.ended(self, status: (try? result.get()) ?? nil, fault: fault, lost: lost.count)
        }
    }
}

/// Frames from a worker: the 4-octet length and the body, at most `SPFWire.maxFromWorker`.
struct SPFFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard length >= 1, length <= UInt32(SPFWire.maxFromWorker) else {
            throw SPFWire.DecodeError("frame length \(length) outside 1...\(SPFWire.maxFromWorker)")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        context.fireChannelRead(NIOAny(buffer.readSlice(length: Int(length))!))
        return .continue
    }
}
