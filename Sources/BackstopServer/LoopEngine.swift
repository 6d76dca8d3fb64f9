// One holder of the current PolicyEngine per event loop. Connections read it without a
// lock because only its own loop touches it; a reload hands every loop the new engine.

import BackstopCore
import NIOCore

final class LoopEngine: @unchecked Sendable {
    let eventLoop: any EventLoop
    private var current: PolicyEngine
    private(set) var generation: Int

    init(eventLoop: any EventLoop, engine: PolicyEngine, generation: Int) {
        self.eventLoop = eventLoop
        self.current = engine
        self.generation = generation
    }

    /// Only on `eventLoop`.
    var engine: PolicyEngine {
        eventLoop.assertInEventLoop()
        return current
    }

    func replace(with engine: PolicyEngine, generation: Int) {
        eventLoop.execute {
            self.current = engine
            self.generation = generation
        }
    }
}
