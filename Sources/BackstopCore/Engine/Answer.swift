// The one shape of "answered now, or later": checks (Answer<Verdict>), the engine
// (Answer<Decision>) and counter stores (Answer<GCRAOutcome>) all return it. The synchronous
// case costs no allocation; `.later` carries a future completed on some event loop.

import NIOCore

public enum Answer<Value: Sendable>: Sendable {
    case now(Value)
    case later(EventLoopFuture<Value>)
}
